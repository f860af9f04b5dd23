"""Transcript audit: the aggregators plus t-1 colluding members learn nothing about an
honest member's update; with t colluders the audit does recover it (sanity check).

The adversary's view is every message delivered to an aggregator plus everything the
colluding members hold (their decrypted shares and their own secrets). For every
honest member we try every reconstruction of its secrets from that view, and test
its masked vector (with everything the adversary can strip off removed) for
uniformity with a chi-square test on bytes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from mpc import ka, prg
from mpc.errors import NotEnoughShares
from mpc.field import BIG_PRIME
from mpc.secagg import GroupConfig, MaskedInput, MemberState, UnmaskShares
from mpc.secagg.harness import Harness, build_group
from mpc.shamir import reconstruct_int

CTX = b"fed-test/round-3/group-1"
N, T, DIM = 8, 4, 1 << 15
AGGS = (8, 9)
DROPPED = 7  # crashes before its masked input: its s_sk is rebuilt, its b must stay hidden


class Snapshot:
    """Each member's secrets, captured while the run goes (the machines wipe them)."""

    def __init__(self, h: Harness) -> None:
        self.b: dict[int, bytes] = {}
        self.s_sk: dict[int, bytes] = {}
        self.s_pk: dict[int, bytes] = {}
        self.held: dict[int, dict[int, tuple[int, int]]] = {}
        self.h = h

    def __call__(self, role: str, party: int, now: float) -> None:
        if role != "member":
            return
        m = self.h.members[party]
        if m._keys is not None:
            self.s_sk[party] = m._keys.s.secret
            self.s_pk[party] = m._keys.s.public
        if m._b:
            self.b[party] = m._b
        if m.state in (MemberState.INPUT, MemberState.ANNOUNCE, MemberState.CONSISTENCY):
            self.held[party] = dict(m._held)


def _run(x_honest: np.ndarray) -> tuple[Harness, Snapshot, list[np.ndarray]]:
    cfg = GroupConfig(CTX, n=N, threshold=T, dim=DIM, aggregators=AGGS)
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 2**16, DIM, dtype=np.uint32) for _ in range(N)]
    xs[5] = x_honest
    h = build_group(cfg, xs, crash_before={DROPPED: MaskedInput})
    snap = Snapshot(h)
    h.on_flush = snap
    for u in range(N):
        snap("member", u, 0.0)
    h.run()
    assert set(h.outputs()) == set(AGGS)
    return h, snap, xs


def _view(
    h: Harness, snap: Snapshot, colluders: set[int], owner: int, kind: int
) -> list[tuple[int, int]]:
    """(x, share) points of owner's secret (kind 0: b, 1: s_sk) the adversary holds."""
    pts: dict[int, int] = {}
    for d in h.transcript:
        if d.recipient in AGGS and isinstance(d.msg, UnmaskShares):
            for o, s in d.msg.b_shares if kind == 0 else d.msg.sk_shares:
                if o == owner:
                    pts[d.sender + 1] = s
    for c in colluders:
        held = snap.held.get(c, {})
        if owner in held:
            pts[c + 1] = held[owner][kind]
    return sorted(pts.items())


def _every_attempt_fails(points: list[tuple[int, int]], secret: int) -> None:
    assert len(points) < T
    with pytest.raises(NotEnoughShares):
        reconstruct_int(points, T)
    for r in range(1, len(points) + 1):  # pretend a lower threshold: always wrong
        for subset in itertools.combinations(points, r):
            assert reconstruct_int(list(subset), r) != secret


def _uniform(v: np.ndarray) -> None:
    for byte in (0, 3):  # lowest and highest byte of each word
        counts = np.bincount(v.view(np.uint8)[byte::4], minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-4


@pytest.fixture(scope="module")
def structured_run() -> tuple[Harness, Snapshot, list[np.ndarray]]:
    return _run(np.zeros(DIM, dtype=np.uint32))  # the most structured input there is


def test_aggregators_with_t_minus_1_colluders_learn_nothing(structured_run) -> None:  # type: ignore[no-untyped-def]
    h, snap, _ = structured_run
    colluders = {0, 1, 2}  # t - 1
    for honest in set(range(N)) - colluders:
        b = int.from_bytes(snap.b[honest], "big")
        sk = int.from_bytes(snap.s_sk[honest], "big")
        if honest == DROPPED:
            _every_attempt_fails(_view(h, snap, colluders, honest, 0), b)
        else:
            _every_attempt_fails(_view(h, snap, colluders, honest, 1), sk)
        assert b < BIG_PRIME and sk < BIG_PRIME


def test_honest_masked_vector_is_uniform_even_without_its_self_mask(structured_run) -> None:  # type: ignore[no-untyped-def]
    h, snap, _ = structured_run
    honest, colluders = 5, {0, 1, 2}
    y = next(
        d.msg.y
        for d in h.transcript
        if isinstance(d.msg, MaskedInput) and d.sender == honest and d.recipient == AGGS[0]
    )
    _uniform(y.copy())
    # the aggregators legitimately learn b_5 (it survived); strip it and the pairwise
    # masks shared with colluders: the masks with honest peers still hide x_5 = 0
    pts = _view(h, snap, colluders, honest, 0)
    b = reconstruct_int(pts, T).to_bytes(32, "big")
    assert b == snap.b[honest]
    z = y.copy()
    prg.MaskExpander().sub_mask(z, b)
    ctx = b"p2pfl/secagg/s\x00" + CTX
    for c in colluders:
        seed = ka.agree(snap.s_sk[c], snap.s_pk[honest], ctx)
        m = prg.expand(seed, DIM)
        z = z - m if honest < c else z + m
    _uniform(z)
    assert np.count_nonzero(z) > DIM * 0.99


def test_t_colluders_do_recover_the_update(structured_run) -> None:  # type: ignore[no-untyped-def]
    """Sanity: the audit is able to find a leak where one exists."""
    h, snap, xs = structured_run
    honest, colluders = 5, {0, 1, 2, 3}  # t colluders
    sk_pts = _view(h, snap, colluders, honest, 1)
    assert len(sk_pts) == T
    sk = reconstruct_int(sk_pts, T).to_bytes(32, "big")
    assert sk == snap.s_sk[honest]
    b = reconstruct_int(_view(h, snap, colluders, honest, 0), T).to_bytes(32, "big")
    y = next(
        d.msg.y
        for d in h.transcript
        if isinstance(d.msg, MaskedInput) and d.sender == honest and d.recipient == AGGS[0]
    )
    x = y.copy()
    plus, minus = [], [b]
    ctx = b"p2pfl/secagg/s\x00" + CTX
    for v in sorted(set(range(N)) - {honest}):
        if v == DROPPED and v not in h.aggregators[AGGS[0]].u2:
            continue
        seed = ka.agree(sk, snap.s_pk[v], ctx)
        (minus if honest < v else plus).append(seed)
    prg.MaskExpander().apply(x, plus, minus)
    assert np.array_equal(x, xs[honest])


def test_random_input_transcript_also_uniform() -> None:
    rng = np.random.default_rng(5)
    h, _, _ = _run(rng.integers(0, 4, DIM, dtype=np.uint32))
    y = next(
        d.msg.y
        for d in h.transcript
        if isinstance(d.msg, MaskedInput) and d.sender == 5 and d.recipient == AGGS[0]
    )
    _uniform(y.copy())
