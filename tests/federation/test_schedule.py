"""The schedule is a pure function: every peer computes the same one."""

from __future__ import annotations

import collections
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.federation import (
    initial_beacon,
    next_beacon,
    schedule_round,
    select_cohort,
    split_groups,
)
from p2pfl.identity import Identity
from p2pfl.wire import PeerId

from .harness import make_federation

peer_ids = st.binary(min_size=20, max_size=20).map(PeerId)
beacons = st.binary(min_size=32, max_size=32)


def _pid(i: int) -> PeerId:
    return PeerId(hashlib.blake2b(i.to_bytes(4, "little"), digest_size=20).digest())


@given(
    peers=st.lists(peer_ids, max_size=60, unique=True),
    beacon=beacons,
    rnd=st.integers(0, 2**40),
    size=st.integers(1, 40),
    group=st.integers(1, 12),
    min_frac=st.floats(0.0, 1.0),
    aggs=st.integers(1, 3),
    data=st.data(),
)
def test_schedule_is_deterministic_and_well_formed(
    peers: list[PeerId], beacon: bytes, rnd: int, size: int, group: int, min_frac: float,
    aggs: int, data: st.DataObject,
) -> None:
    min_group = max(1, min(group, round(min_frac * group)))
    aggs = min(aggs, min_group)
    fed = make_federation(**{"cohort.size": max(size, min_group), "cohort.group_size": group,
                             "cohort.min_group_size": min_group, "cohort.aggregators": aggs,
                             "secagg.threshold": 1})
    a = schedule_round(fed, rnd, beacon, peers)
    # another peer sees the candidates in another order, with duplicates
    shuffled = data.draw(st.permutations(peers)) + data.draw(st.lists(st.sampled_from(peers))
                                                             if peers else st.just([]))
    b = schedule_round(fed, rnd, beacon, shuffled)
    assert a == b and a.digest == b.digest

    members = [p for g in a.groups for p in g.members]
    assert len(members) == len(set(members)) == len(a.cohort)
    assert set(members) <= set(peers)
    expected = min(fed.cohort.size, len(peers))
    assert len(a.cohort) == (expected if expected >= min_group else 0)
    for i, g in enumerate(a.groups):
        assert g.index == i and list(g.members) == sorted(g.members)
        assert len(a.groups) == 1 or min_group <= len(g) <= fed.cohort.max_group_size
        assert len(g) <= max(group, fed.cohort.max_group_size)
        assert len(g.aggregators) == min(aggs, len(g)) == len(set(g.aggregators))
        assert all(x in g for x in g.aggregators)
        assert all(a.group_of(p) is g for p in g.members)


@given(peers=st.lists(peer_ids, min_size=2, max_size=30, unique=True), beacon=beacons,
       size=st.integers(1, 30), data=st.data())
def test_weighted_cohort_is_deterministic_and_skips_zero_weights(
    peers: list[PeerId], beacon: bytes, size: int, data: st.DataObject
) -> None:
    weights = {p: data.draw(st.sampled_from([0.0, 0.25, 1.0, 3.5])) for p in peers}
    a = select_cohort(beacon, peers, size, weights.__getitem__)
    b = select_cohort(beacon, data.draw(st.permutations(peers)), size, weights.__getitem__)
    assert a == b
    assert len(set(a)) == len(a) == min(size, sum(1 for w in weights.values() if w > 0))
    assert all(weights[p] > 0 for p in a)


def test_weighted_sampling_favours_heavy_peers() -> None:
    peers = [_pid(i) for i in range(10)]
    weight = {p: (9.0 if i == 0 else 1.0) for i, p in enumerate(peers)}
    counts: collections.Counter[PeerId] = collections.Counter()
    beacon = bytes(32)
    for _ in range(2000):
        beacon = hashlib.blake2b(beacon, digest_size=32).digest()
        counts.update(select_cohort(beacon, peers, 1, weight.__getitem__))
    assert 0.44 < counts[peers[0]] / 2000 < 0.56  # 9 / 18
    with pytest.raises(ValueError):
        select_cohort(beacon, peers, 1, lambda p: -1.0)


def test_uniform_sampling_is_roughly_uniform() -> None:
    peers = [_pid(i) for i in range(20)]
    counts: collections.Counter[PeerId] = collections.Counter()
    beacon = bytes(32)
    for _ in range(1000):
        beacon = hashlib.blake2b(beacon, digest_size=32).digest()
        counts.update(select_cohort(beacon, peers, 5))
    assert all(180 < counts[p] < 320 for p in peers)  # expectation 250


@pytest.mark.parametrize("n, g, m, sizes", [
    (12, 5, 3, [5, 7]), (13, 5, 3, [5, 5, 3]), (10, 5, 3, [5, 5]), (4, 5, 3, [4]),
    (2, 5, 3, []), (1, 1, 1, [1]), (7, 3, 1, [3, 3, 1]),
])
def test_split_groups(n: int, g: int, m: int, sizes: list[int]) -> None:
    members = [_pid(i) for i in range(n)]
    groups = split_groups(members, g, m)
    assert [len(x) for x in groups] == sizes
    assert [p for grp in groups for p in grp] == (members if sizes else [])


def test_beacon_chain() -> None:
    fed_a, fed_b = make_federation(), make_federation(name="b")
    b0 = initial_beacon(fed_a.id)
    assert b0 != initial_beacon(fed_b.id) and len(b0) == 32
    h, z = bytes(range(32)), bytes(32)
    b1 = next_beacon(b0, h)
    assert b1 == next_beacon(b0, h, z)
    assert len({b1, next_beacon(b0, z), next_beacon(b0, h, h), next_beacon(b1, h)}) == 4
    with pytest.raises(ValueError):
        next_beacon(b0, b"short")


def test_schedule_depends_on_beacon_and_candidates_and_policy() -> None:
    fed = make_federation(**{"cohort.size": 6, "cohort.group_size": 3})
    peers = [_pid(i) for i in range(20)]
    s = schedule_round(fed, 1, bytes(32), peers)
    assert s.digest != schedule_round(fed, 1, bytes([1]) * 32, peers).digest
    assert s.digest != schedule_round(fed, 2, bytes(32), peers).digest
    assert s.digest != schedule_round(fed, 1, bytes(32), peers[1:]).digest or s.cohort[0] != peers[0]
    ids = [Identity.from_seed(bytes([i]) * 32) for i in range(5)]
    perm = make_federation(**{"membership.policy": "permissioned",
                              "membership.members": [i.public_key.hex() for i in ids[:3]]})
    s2 = schedule_round(perm, 0, bytes(32), [i.peer_id for i in ids])
    assert set(s2.cohort) == {i.peer_id for i in ids[:3]}


def test_schedule_golden_vector() -> None:
    """Pins the algorithm: a change here forks a running federation."""
    fed = make_federation(**{"cohort.size": 7, "cohort.group_size": 3, "cohort.min_group_size": 2})
    peers = [_pid(i) for i in range(12)]
    s = schedule_round(fed, 3, initial_beacon(b"\x01" * 32), peers)
    assert [len(g) for g in s.groups] == [3, 4]
    assert s.digest.hex()[:16] == GOLDEN


GOLDEN = "dcc883c08c47e0bd"


def test_schedule_memo_shares_only_equal_inputs() -> None:
    """Equal inputs give the same schedule object (one computation per process); any
    changed input -- beacon, round, candidates, one weight, the federation -- a fresh,
    correct one; the memo never changes a result."""
    from p2pfl.federation import schedule as sched_mod

    fed = make_federation(**{"cohort.size": 6, "cohort.group_size": 3})
    peers = [_pid(i) for i in range(12)]
    beacon = initial_beacon(fed.id)
    weights = {p: 1.0 + (i % 3) for i, p in enumerate(peers)}

    def fresh(f=fed, r=4, b=beacon, cands=peers, w=weights.get):  # type: ignore[no-untyped-def]
        sched_mod._memo.clear()
        return schedule_round(f, r, b, cands, w)

    a = schedule_round(fed, 4, beacon, peers, weights.get)
    assert schedule_round(fed, 4, beacon, list(reversed(peers)) + peers[:3], weights.get) is a
    assert schedule_round(fed, 4, beacon, peers, dict(weights).get) is a  # same weights, new fn
    assert a == fresh()
    changed_weight = {**weights, peers[0]: 1.5}
    other_fed = make_federation(name="other", **{"cohort.size": 6, "cohort.group_size": 3})
    variants = [
        (fed, 5, beacon, peers, weights.get),
        (fed, 4, next_beacon(beacon, bytes(32)), peers, weights.get),
        (fed, 4, beacon, peers[:-1], weights.get),
        (fed, 4, beacon, peers, changed_weight.get),
        (fed, 4, beacon, peers, None),
        (other_fed, 4, beacon, peers, weights.get),
    ]
    for f, r, b, c, w in variants:
        got = schedule_round(f, r, b, c, w)
        assert got is not a
        assert got == fresh(f, r, b, c, w)  # what an empty memo computes
    # a bad weight still raises (never memoized)
    with pytest.raises(ValueError):
        schedule_round(fed, 4, beacon, peers, {**weights, peers[1]: -1.0}.get)
    with pytest.raises(ValueError):
        schedule_round(fed, 4, beacon, peers, {**weights, peers[1]: float("nan")}.get)


def test_schedule_memo_is_bounded() -> None:
    from p2pfl.federation import schedule as sched_mod

    fed = make_federation(**{"cohort.size": 4, "cohort.group_size": 2})
    peers = [_pid(i) for i in range(6)]
    for r in range(sched_mod._MEMO_MAX + 10):
        schedule_round(fed, r, initial_beacon(fed.id), peers)
    assert len(sched_mod._memo._items) == sched_mod._MEMO_MAX
