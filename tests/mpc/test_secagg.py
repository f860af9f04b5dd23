"""Secure aggregation state machines: exact sums under dropouts, reordering, garbage.

The oracle is the plain uint32 sum of the included members' inputs; every run is
audited for the unmasking rules (never both shares of one member; nothing revealed
below the threshold).
"""

from __future__ import annotations

import random
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpc.secagg as sa
from mpc.secagg import (
    AggState,
    ConsistencySig,
    GroupConfig,
    MaskedInput,
    MemberState,
    Message,
    OutputReady,
    ProtocolError,
    ShareKeys,
    SignedKeys,
    Stage,
    UnmaskShares,
)
from mpc.secagg.harness import Harness, build_group, random_inputs, ring_sum

CTX = b"fed-test/round-7/group-2"
DROP_KINDS: list[type[Message]] = [SignedKeys, ShareKeys, MaskedInput, ConsistencySig, UnmaskShares]


def _no_errors(h: Harness) -> None:
    for (role, p), evs in h.events.items():
        bad = [e for e in evs if isinstance(e, ProtocolError)]
        assert not bad, f"{role} {p}: {bad}"


def _audit_never_both(h: Harness) -> None:
    for owner, kinds in h.reveals().items():
        assert not (kinds["b"] and kinds["sk"]), f"both shares of member {owner} revealed"


def _masked_at_primary(h: Harness) -> set[int]:
    return {d.sender for d in h.sent(MaskedInput) if d.recipient == h.cfg.primary}


# ---------------------------------------------------------------- scenarios


@pytest.mark.parametrize(
    ("n", "t", "k", "aggs"),
    [
        (2, 2, None, (0, 1)),
        (6, 3, None, (0, 1)),
        (10, 3, 3, (0, 1)),
        (7, 4, None, (7, 8)),
        (5, 3, None, (4,)),
        (12, 2, 2, (3, 12)),
    ],
)
def test_full_round_outputs_the_exact_sum(
    n: int, t: int, k: int | None, aggs: tuple[int, ...]
) -> None:
    cfg = GroupConfig(CTX, n=n, threshold=t, dim=257, k=k, aggregators=aggs)
    xs = random_inputs(n, 257, n)
    h = build_group(cfg, xs)
    h.run()
    _no_errors(h)
    outs = h.outputs()
    assert set(outs) == set(aggs)
    for o in outs.values():
        assert o.included == frozenset(range(n)) and not o.excluded and not o.dropped
        assert np.array_equal(o.total, ring_sum(xs, o.included, 257))
    for u, m in h.members.items():
        assert m.state is MemberState.DONE, u
    assert all(a.state is AggState.DONE for a in h.aggregators.values())


def test_uploads_are_four_bytes_per_parameter() -> None:
    cfg = GroupConfig(CTX, n=4, threshold=2, dim=1000)
    h = build_group(cfg, random_inputs(4, 1000, 1))
    h.run()
    for d in h.sent(MaskedInput):
        assert d.msg.y.dtype == np.uint32 and d.msg.y.nbytes == 4 * 1000


def test_dropout_after_masked_input_is_a_survivor() -> None:
    cfg = GroupConfig(CTX, n=6, threshold=3, dim=64)
    xs = random_inputs(6, 64, 2)
    h = build_group(cfg, xs, crash_after={4: MaskedInput})
    h.run()
    outs = h.outputs()
    assert set(outs) == {0, 1}
    for o in outs.values():
        assert 4 in o.survivors and 4 in o.included
        assert np.array_equal(o.total, ring_sum(xs, o.included, 64))
    assert h.reveals()[4]["b"] and not h.reveals()[4]["sk"]


def test_dropout_before_masked_input_is_removed_by_its_mask_key() -> None:
    cfg = GroupConfig(CTX, n=6, threshold=3, dim=64, k=3)
    xs = random_inputs(6, 64, 3)
    h = build_group(cfg, xs, crash_before={5: MaskedInput})
    h.run()
    for o in h.outputs().values():
        assert 5 in o.dropped and 5 not in o.included
        assert np.array_equal(o.total, ring_sum(xs, o.included, 64))
    assert h.reveals()[5]["sk"] and not h.reveals()[5]["b"]


@pytest.mark.parametrize("aggs", [(6, 7), (0, 1)])
def test_member_crashing_between_its_two_uploads_is_forwarded(aggs: tuple[int, int]) -> None:
    cfg = GroupConfig(CTX, n=6, threshold=3, dim=32, aggregators=aggs)
    xs = random_inputs(6, 32, 12)
    h = build_group(cfg, xs, crash_mid={3: MaskedInput})
    h.run()
    got = {d.recipient for d in h.sent(MaskedInput) if d.sender == 3}
    assert got == {aggs[0]}  # only the primary got it directly
    assert h.sent(sa.ForwardedInput)
    outs = h.outputs()
    assert set(outs) == set(aggs)
    for o in outs.values():
        assert 3 in o.included
        assert np.array_equal(o.total, ring_sum(xs, o.included, 32))


def test_below_threshold_aborts_and_reveals_nothing() -> None:
    cfg = GroupConfig(CTX, n=6, threshold=4, dim=16, aggregators=(6, 7))
    h = build_group(
        cfg, random_inputs(6, 16, 4), crash_before={0: MaskedInput, 1: MaskedInput, 2: MaskedInput}
    )
    h.run()
    assert not h.outputs()
    assert not h.sent(UnmaskShares)
    for a in h.aggregators.values():
        assert a.state is AggState.ABORTED
    for u in (3, 4, 5):
        assert h.members[u].state is MemberState.ABORTED


def test_late_unmask_dropouts_below_threshold_abort_without_both_shares() -> None:
    cfg = GroupConfig(CTX, n=5, threshold=4, dim=16, aggregators=(5, 6))
    h = build_group(cfg, random_inputs(5, 16, 5), crash_before={0: UnmaskShares, 1: UnmaskShares})
    h.run()
    assert not h.outputs()
    _audit_never_both(h)


def test_input_given_later() -> None:
    cfg = GroupConfig(CTX, n=3, threshold=2, dim=8)
    xs = random_inputs(3, 8, 6)
    h = build_group(cfg, [xs[0], None, xs[2]])
    for _ in range(200):  # deliver until member 1 waits for its input
        if h.members[1].state is MemberState.INPUT:
            break
        assert h.step()
    h.members[1].set_input(xs[1], h.now)
    h.collect(1)
    h.run()
    for o in h.outputs().values():
        assert np.array_equal(o.total, ring_sum(xs, frozenset(range(3)), 8))


def test_missing_input_drops_the_member() -> None:
    cfg = GroupConfig(CTX, n=4, threshold=2, dim=8, aggregators=(4, 5))
    xs = random_inputs(4, 8, 7)
    h = build_group(cfg, [xs[0], xs[1], None, xs[3]])
    h.run()
    assert h.members[2].state is MemberState.ABORTED
    for o in h.outputs().values():
        assert o.included == frozenset({0, 1, 3})
        assert np.array_equal(o.total, ring_sum(xs, o.included, 8))


def test_replica_silent_blocks_reveals_unless_quorum_allows() -> None:
    xs = random_inputs(5, 8, 8)
    cfg = GroupConfig(CTX, n=5, threshold=3, dim=8, aggregators=(5, 6))
    h = build_group(cfg, xs, crash_before={6: sa.Announce})
    h.run()
    assert not h.outputs() and not h.sent(UnmaskShares)
    cfg1 = GroupConfig(CTX, n=5, threshold=3, dim=8, aggregators=(5, 6), quorum=1)
    h = build_group(cfg1, xs, crash_before={6: sa.Announce})
    h.run()
    assert np.array_equal(h.outputs()[5].total, ring_sum(xs, frozenset(range(5)), 8))


def test_primary_silent_members_abort_with_evidence() -> None:
    cfg = GroupConfig(CTX, n=4, threshold=2, dim=8, aggregators=(4, 5))
    h = build_group(cfg, random_inputs(4, 8, 9), crash_before={4: sa.ShareRelay})
    h.run()
    for u in range(4):
        assert h.members[u].state is MemberState.ABORTED
        assert any(
            e.accused == 4 and e.kind is sa.EvidenceKind.SILENT for e in h.members[u].evidence
        )
    assert h.aggregators[5].state is AggState.ABORTED


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        GroupConfig(CTX, n=5, threshold=6, dim=1)
    with pytest.raises(ValueError):
        GroupConfig(CTX, n=10, threshold=5, dim=1, k=3)  # holders are k + 1 = 4
    with pytest.raises(ValueError):
        GroupConfig(CTX, n=5, threshold=2, dim=1, aggregators=(1, 1))
    with pytest.raises(ValueError):
        GroupConfig(CTX, n=5, threshold=2, dim=0)


def test_plan_is_symmetric_and_deterministic() -> None:
    cfg = GroupConfig(CTX, n=20, threshold=3, dim=1, k=4)
    again = GroupConfig(CTX, n=20, threshold=3, dim=1, k=4)
    assert cfg.plan == again.plan
    for u, nb in enumerate(cfg.plan.neighbours):
        assert u not in nb and len(nb) >= 4
        assert all(u in cfg.plan.neighbours[v] for v in nb)


def test_public_names() -> None:
    assert set(sa.__all__) == {
        "AbortNotice",
        "Aborted",
        "AggState",
        "Aggregator",
        "Announce",
        "Complaint",
        "Completed",
        "ConsistencySig",
        "Decision",
        "Event",
        "Evidence",
        "EvidenceFound",
        "EvidenceKind",
        "ExclusionHook",
        "ForwardedInput",
        "GroupConfig",
        "InputRequest",
        "KeyBundle",
        "LocalProtocolError",
        "MaskedInput",
        "Member",
        "MemberState",
        "Message",
        "MessageError",
        "OutputReady",
        "Phase",
        "Plan",
        "ProtocolError",
        "ReferenceFn",
        "RevealLedger",
        "ScoreShares",
        "ShareKeys",
        "ShareRelay",
        "SigBundle",
        "Sign",
        "SignedKeys",
        "SketchConfig",
        "SketchFn",
        "SketchRelay",
        "SketchRequest",
        "SketchScore",
        "SketchShares",
        "Stage",
        "StageReached",
        "Timeouts",
        "UnmaskShares",
        "Verify",
        "sketch_seed",
    }
    for name in sa.__all__:
        assert hasattr(sa, name)


def test_stage_events_in_order() -> None:
    cfg = GroupConfig(CTX, n=3, threshold=2, dim=4)
    h = build_group(cfg, random_inputs(3, 4, 10))
    h.run()
    stages = [e.stage for e in h.events[("aggregator", 0)] if isinstance(e, sa.StageReached)]
    assert stages == [
        Stage.KEYS,
        Stage.SHARES,
        Stage.MASKED,
        Stage.CONSISTENCY,
        Stage.UNMASK,
        Stage.OUTPUT,
    ]
    mstages = [e.stage for e in h.events[("member", 2)] if isinstance(e, sa.StageReached)]
    assert mstages == [Stage.KEYS, Stage.SHARES, Stage.MASKED, Stage.UNMASK]


# ---------------------------------------------------------------- properties


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(2, 12))
    k = draw(st.one_of(st.none(), st.integers(1, n - 1)))
    probe = GroupConfig(CTX, n=n, threshold=1, dim=1, k=k, aggregators=(0,))
    smallest = min(len(h) for h in probe.plan.holders)
    t = draw(st.integers(1, smallest))
    outside = draw(st.booleans())
    aggs = (n, n + 1) if outside else (0, 1)
    candidates = [u for u in range(n) if u not in aggs]
    crashes = draw(
        st.dictionaries(
            st.sampled_from(candidates) if candidates else st.nothing(),
            st.tuples(st.sampled_from(DROP_KINDS), st.sampled_from(["before", "mid", "after"])),
            max_size=len(candidates),
        )
    )
    return {
        "n": n,
        "k": k,
        "t": t,
        "aggs": aggs,
        "crashes": crashes,
        "dim": draw(st.integers(1, 40)),
        "seed": draw(st.integers(0, 2**31)),
        "reorder": draw(st.one_of(st.none(), st.integers(0, 2**31))),
    }


@given(scenarios())
def test_property_exact_sum_or_clean_abort(sc: dict[str, object]) -> None:
    n, k, t, dim = sc["n"], sc["k"], sc["t"], sc["dim"]
    assert isinstance(n, int) and isinstance(t, int) and isinstance(dim, int)
    aggs = sc["aggs"]
    assert isinstance(aggs, tuple)
    crashes = sc["crashes"]
    assert isinstance(crashes, dict)
    cfg = GroupConfig(CTX, n=n, threshold=t, dim=dim, k=k, aggregators=aggs)  # type: ignore[arg-type]
    xs = random_inputs(n, dim, sc["seed"])  # type: ignore[arg-type]
    modes = {
        m: {u: kind for u, (kind, mode) in crashes.items() if mode == m}
        for m in ("before", "mid", "after")
    }
    rs = sc["reorder"]
    h = build_group(
        cfg,
        xs,
        seed=str(sc["seed"]).encode(),
        crash_before=modes["before"],
        crash_mid=modes["mid"],
        crash_after=modes["after"],
        reorder=None if rs is None else random.Random(rs),
    )
    h.run()
    _no_errors(h)
    _audit_never_both(h)
    live = [m for p, m in h.members.items() if p not in h.dead]
    assert all(m.finished for m in live)
    outs = h.outputs()
    if not crashes:
        assert set(outs) == set(aggs)
    masked = _masked_at_primary(h)
    for o in outs.values():
        assert isinstance(o, OutputReady)
        assert np.array_equal(o.total, ring_sum(xs, o.included, dim))
        assert o.survivors == frozenset(masked) and o.included == o.survivors
        assert len(o.included) >= t
        assert all(u in o.included for u in range(n) if u not in crashes)
    if len(outs) == 2:
        a, b = outs.values()
        assert np.array_equal(a.total, b.total) and a.included == b.included
    if len(masked) < t:
        assert not outs and not h.sent(UnmaskShares)


# ---------------------------------------------------------------- garbage


def _junk() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.integers(-5, 2**40),
        st.binary(max_size=40),
        st.text(max_size=4),
        st.tuples(st.integers(-2, 20), st.binary(max_size=8)),
        st.lists(st.tuples(st.integers(-2, 20), st.binary(max_size=8)), max_size=3).map(tuple),
    )


def _garbage_message() -> st.SearchStrategy[Message]:
    kinds = [getattr(sa, name) for name in sa.__all__]
    kinds = [
        c for c in kinds if isinstance(c, type) and issubclass(c, Message) and c is not Message
    ]

    def build(cls: type[Message], data: st.DataObject) -> Message:
        args = {f.name: data.draw(_junk()) for f in fields(cls)}
        return cls(**args)

    return st.builds(lambda c, d: build(c, d), st.sampled_from(kinds), st.data())


@given(
    st.lists(
        st.tuples(st.sampled_from([3, 4, 99]), st.integers(0, 6), _garbage_message()),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 2**31),
)
def test_garbage_never_breaks_a_round(garbage: list[tuple[int, int, Message]], seed: int) -> None:
    cfg = GroupConfig(CTX, n=5, threshold=3, dim=16, aggregators=(0, 6))
    xs = random_inputs(5, 16, seed)
    h = build_group(cfg, xs, reorder=random.Random(seed), garbage=garbage, garbage_rate=0.3)
    h.run()
    _no_errors(h)
    outs = h.outputs()
    assert set(outs) == {0, 6}
    for o in outs.values():
        assert np.array_equal(o.total, ring_sum(xs, frozenset(range(5)), 16))


def test_every_message_kind_in_every_state_is_survived() -> None:
    """h2-style: at every step of a run, offer every kind of message to every machine
    from a party outside the group (messages of another run), and duplicate what was
    just delivered."""
    cfg = GroupConfig(CTX, n=4, threshold=2, dim=8, aggregators=(0, 4))
    xs = random_inputs(4, 8, 11)
    ref = build_group(cfg, xs, seed=b"ref")
    ref.run()
    foreign = list({type(d.msg): d.msg for d in ref.transcript}.values())
    h = build_group(cfg, xs)
    step = 0
    while h.step():
        step += 1
        for d in list(h.transcript)[-3:]:  # a network that duplicates
            h.inject(d.sender, d.recipient, d.msg)
        for msg in foreign:
            for recipient in (0, 1, 4):
                h.inject(99, recipient, msg)
    h.run()
    _no_errors(h)
    outs = h.outputs()
    assert step > 10 and set(outs) == {0, 4}
    for o in outs.values():
        assert np.array_equal(o.total, ring_sum(xs, frozenset(range(4)), 8))
    assert h.aggregators[0].evidence and h.members[1].evidence
