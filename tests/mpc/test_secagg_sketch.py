"""The sketch stage: exact scores across several primes (CRT), pairwise similarity,
the reference as a function of the seed, the exact binding sum, hostile shares and
the privacy of the opened pair polynomials.

The oracle is Python-int arithmetic on the members' sketches in the clear; values
beyond the configured capacity must come out reduced (centred) modulo the product
of the primes, which the single-prime runs show is a real difference.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpc.secagg as sa
from mpc import _rs, ka, ring, shamir
from mpc.errors import NotEnoughShares
from mpc.field import PRIMES_31
from mpc.rand import SeededRng
from mpc.secagg import (
    EvidenceKind,
    GroupConfig,
    MaskedInput,
    Member,
    MemberState,
    Message,
    MessageError,
    OutputReady,
    ProtocolError,
    ScoreShares,
    SketchConfig,
    SketchRequest,
    SketchScore,
    SketchShares,
    UnmaskShares,
)
from mpc.secagg import _crypto as cx
from mpc.secagg.harness import FakeIdentities, Harness, build_group, random_inputs, ring_sum
from mpc.sketch import SketchMap

CTX = b"fed-test/round-4/group-5"


def _dot(a: np.ndarray, b: np.ndarray) -> int:
    return sum(int(x) * int(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))


def _wrap(v: int, sk: SketchConfig) -> int:
    """What an opening modulo M = sk.modulus yields for the true value v."""
    m = sk.modulus
    r = v % m
    return r - m if r > (m - 1) // 2 else r


def _no_errors(h: Harness) -> None:
    for (role, p), evs in h.events.items():
        bad = [e for e in evs if isinstance(e, ProtocolError)]
        assert not bad, f"{role} {p}: {bad}"


def _never_both(h: Harness) -> None:
    for owner, kinds in h.reveals().items():
        assert not (kinds["b"] and kinds["sk"]), f"both shares of member {owner} revealed"


def _big_sketches(n: int, rows: int, bits: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {u: rng.integers(-(2**bits), 2**bits, rows, dtype=np.int64) for u in range(n)}


def _check_scores(o: OutputReady, zs: dict[int, np.ndarray], ref: np.ndarray | None,
                  sk: SketchConfig) -> None:
    for u, s in o.scores.items():
        if s is None:
            continue
        assert s.norm == _wrap(_dot(zs[u], zs[u]), sk)
        assert s.dot == (None if ref is None else _wrap(_dot(zs[u], ref), sk))
        for v, val in s.pairs.items():
            assert val == _wrap(_dot(zs[u], zs[v]), sk)
            other = o.scores[v]  # None when v's own norm could not be opened
            assert other is None or other.pairs[u] == val  # symmetric


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("primes", [1, 2, 3])
def test_scores_are_exact_integers_with_enough_primes(primes: int) -> None:
    n, rows, dim = 6, 8, 16
    sk = SketchConfig(rows=rows, threshold=2, with_reference=True, primes=primes, pairwise=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=dim, aggregators=(n, n + 1), sketch=sk)
    zs = _big_sketches(n, rows, 40, 1)  # ||z||^2 ~ 2**83: needs 3 primes
    ref_of: dict[bytes, np.ndarray] = {}

    def reference(seed: bytes) -> np.ndarray:
        ref_of[seed] = np.frombuffer(seed[:rows], dtype=np.uint8).astype(np.int64) * 2**20 - 2**27
        return ref_of[seed]

    hook_calls: list[tuple[dict[int, SketchScore | None], bytes | None]] = []

    def hook(scores, seed):  # type: ignore[no-untyped-def]
        hook_calls.append((dict(scores), seed))
        return set()

    xs = random_inputs(n, dim, 2)
    h = build_group(cfg, xs, sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
                    reference=reference, decide_exclusions=hook)
    h.run()
    _no_errors(h)
    outs = h.outputs()
    assert set(outs) == {n, n + 1}
    (seed,) = ref_of  # one seed, the same for every member
    commits = [(u, h.members[u].commitment) for u in range(n)]
    assert sa.sketch_seed(CTX, commits) == seed
    ref = ref_of[seed]
    assert len(hook_calls) == 2 and all(s == seed for _, s in hook_calls)
    exact_norms = {u: _dot(z, z) for u, z in zs.items()}
    for p, o in outs.items():
        assert o.sketch_seed == seed == h.aggregators[p].sketch_seed
        assert all(h.members[u].sketch_seed == seed for u in range(n))
        assert np.array_equal(o.total, ring_sum(xs, o.included, dim))
        assert all(s is not None for s in o.scores.values())
        assert all(set(s.pairs) == set(range(n)) - {u} for u, s in o.scores.items() if s)
        _check_scores(o, zs, ref, sk)
        assert o.sketch_sum is not None and o.sketch_sum.dtype == np.int64
        true_sum = [sum(int(zs[u][r]) for u in range(n)) for r in range(rows)]
        assert o.sketch_sum.tolist() == [_wrap(v, sk) for v in true_sum]
        norms = {u: s.norm for u, s in o.scores.items() if s is not None}
        if primes == 3:  # capacity ~ 2**92 > every value
            assert norms == exact_norms
            assert o.sketch_sum.tolist() == true_sum
        else:  # the same run modulo fewer primes wraps: the check above can fail
            assert all(norms[u] != exact_norms[u] for u in range(n))
        if primes == 1:
            assert o.sketch_sum.tolist() != true_sum  # |sum| ~ 2**42 > 2**30
        else:
            assert o.sketch_sum.tolist() == true_sum
        assert hook_calls[0][0] == dict(o.scores)


def test_capacity_and_primes_for() -> None:
    caps = [SketchConfig(rows=1, threshold=1, primes=k).capacity for k in range(1, 5)]
    assert caps[0] == (PRIMES_31[0] - 1) // 2
    assert caps == sorted(caps) and caps[3].bit_length() == 123
    for k, cap in enumerate(caps, start=1):
        assert SketchConfig.primes_for(cap) == k
        if k < 4:
            assert SketchConfig.primes_for(cap + 1) == k + 1
    with pytest.raises(ValueError):
        SketchConfig.primes_for(caps[3] + 1)
    for bad in (0, 5, True):
        with pytest.raises(ValueError):
            SketchConfig(rows=4, threshold=1, primes=bad)
    sk = SketchConfig(rows=4, threshold=2, with_reference=True, primes=3, pairwise=True)
    assert sk.moduli == PRIMES_31[:3] and sk.n_scores == 6 and sk.zero_count(5) == 5
    assert SketchConfig(rows=4, threshold=2, primes=2).zero_count(5) == 1


def test_sketch_score_is_immutable_hashable_and_positional() -> None:
    a = SketchScore(5, 3)
    assert a == SketchScore(norm=5, dot=3, pairs={}) and a.pairs == {}
    b = SketchScore(5, None, {4: -1, 2: 7})
    assert list(b.pairs) == [2, 4] and isinstance(b.pairs, MappingProxyType)
    assert b == SketchScore(5, None, {2: 7, 4: -1}) and hash(b) == hash(SketchScore(5, None, {2: 7, 4: -1}))
    with pytest.raises(TypeError):
        b.pairs[3] = 1  # type: ignore[index]
    src = {1: 2}
    c = SketchScore(0, 0, src)
    src[1] = 99
    assert c.pairs[1] == 2


# ---------------------------------------------------------------- the real map


def test_binding_check_with_a_sketch_map_and_a_seeded_reference() -> None:
    """The federation's use: z_u = S(seed) @ signed(Q(x_u)), a reference sketched with
    the same S, primes chosen from the map's worst case, a norm-based hook."""
    n, rows, dim, q = 7, 32, 5000, 2**12
    rng = np.random.default_rng(4)
    signed = [rng.integers(-q, q + 1, dim) for _ in range(n)]
    signed[3] = signed[3] * 50  # an outlier (still a valid uint32 encoding)
    xs = [s.astype(np.uint32) for s in signed]  # two's complement, as quant does
    ref_vec = rng.standard_normal(dim)
    ref_q = np.round(ref_vec * q).astype(np.int64)
    probe = SketchMap.from_seed(bytes(32), dim, rows, 2)
    bound = max(probe.norm_bound(2**31), probe.max_abs(2**31) * rows * int(abs(ref_q).max()))
    # the map changes with the seed, so allow margin over this seed's row counts
    primes = SketchConfig.primes_for(4 * bound)
    sk = SketchConfig(rows=rows, threshold=2, with_reference=True, primes=primes, pairwise=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=dim, aggregators=(0, 1), sketch=sk)

    def smap(seed: bytes) -> SketchMap:
        return SketchMap.from_seed(seed, dim, rows, 2)

    def hook(scores, seed):  # type: ignore[no-untyped-def]
        norms = sorted(s.norm for s in scores.values() if s is not None)
        median = norms[len(norms) // 2]
        return {u for u, s in scores.items() if s is not None and s.norm > 100 * median}

    h = build_group(
        cfg,
        xs,
        sketches=[(lambda seed, u=u: smap(seed).apply(signed[u])) for u in range(n)],
        reference=lambda seed: smap(seed).apply(ref_q),
        decide_exclusions=hook,
    )
    h.run()
    _no_errors(h)
    _never_both(h)
    outs = h.outputs()
    assert set(outs) == {0, 1}
    for o in outs.values():
        assert o.excluded == frozenset({3}) and o.included == frozenset(range(n)) - {3}
        assert not h.reveals().get(3, {}).get("b")  # the outlier's update stays hidden
        assert o.sketch_seed is not None and o.sketch_sum is not None
        s = smap(o.sketch_seed)
        assert np.array_equal(s.apply(ring.centered(o.total)), o.sketch_sum)  # binding
        zs = {u: s.apply(signed[u]) for u in range(n)}
        _check_scores(o, zs, s.apply(ref_q), sk)
        for u, sc in o.scores.items():  # well within capacity: exact
            assert sc is not None and sc.norm == _dot(zs[u], zs[u])


# ---------------------------------------------------------------- properties


@given(
    st.integers(3, 7),
    st.integers(1, 3),
    st.booleans(),
    st.booleans(),
    st.integers(0, 44),
    st.sets(st.integers(0, 6), max_size=2),
    st.dictionaries(
        st.integers(0, 6),
        st.tuples(
            st.sampled_from([MaskedInput, SketchShares, ScoreShares, UnmaskShares]),
            st.sampled_from(["before", "mid", "after"]),
        ),
        max_size=2,
    ),
    st.integers(0, 2**31),
)
def test_property_sketch_stage_with_primes_and_pairs(  # type: ignore[type-arg]
    n: int, primes: int, pairwise: bool, with_ref: bool, bits: int, exclude: set[int],
    crashes: dict, seed: int,
) -> None:
    rows, dim = 5, 6
    sk = SketchConfig(rows=rows, threshold=2, with_reference=with_ref, primes=primes,
                      pairwise=pairwise)
    cfg = GroupConfig(CTX, n=n, threshold=2, dim=dim, aggregators=(n, n + 1), sketch=sk)
    xs = random_inputs(n, dim, seed)
    zs = _big_sketches(n, rows, bits, seed)
    ref = np.arange(rows, dtype=np.int64) * 2**30 - 2**31 if with_ref else None
    crashes = {u: c for u, c in crashes.items() if u < n}
    modes = {m: {u: k for u, (k, mm) in crashes.items() if mm == m}
             for m in ("before", "mid", "after")}
    h = build_group(
        cfg,
        xs,
        seed=str(seed).encode(),
        sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
        reference=ref,
        decide_exclusions=lambda scores, s: {u for u in exclude if u in scores},
        crash_before=modes["before"],
        crash_mid=modes["mid"],
        crash_after=modes["after"],
        reorder=random.Random(seed),
    )
    h.run()
    _no_errors(h)
    _never_both(h)
    outs = h.outputs()
    if not crashes and n - len({u for u in exclude if u < n}) >= cfg.min_sum:
        assert set(outs) == {n, n + 1}
        for o in outs.values():
            assert all(s is not None for s in o.scores.values())
            if pairwise:
                assert all(len(s.pairs) == n - 1 for s in o.scores.values() if s)
    for o in outs.values():
        assert o.excluded == frozenset(exclude) & o.survivors
        assert np.array_equal(o.total, ring_sum(xs, o.included, dim))
        _check_scores(o, zs, ref, sk)
        if not pairwise:
            assert all(not s.pairs for s in o.scores.values() if s)
        if o.sketch_sum is not None:
            want = [_wrap(sum(int(zs[u][r]) for u in o.included), sk) for r in range(rows)]
            assert o.sketch_sum.tolist() == want
        for u in o.excluded:
            assert not h.reveals().get(u, {}).get("b")
    if len(outs) == 2 and not crashes:  # (a crash mid-send can starve one aggregator)
        a, b = outs.values()
        assert a.scores == b.scores


# ---------------------------------------------------------------- hostile input


def _scored_group(tamper, n: int = 7, primes: int = 2, ids: FakeIdentities | None = None):  # type: ignore[no-untyped-def]
    rows, dim = 6, 8
    sk = SketchConfig(rows=rows, threshold=2, with_reference=True, primes=primes, pairwise=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=dim, aggregators=(n, n + 1), sketch=sk)
    zs = _big_sketches(n, rows, 35, 9)
    ref = np.arange(rows, dtype=np.int64) - 2
    xs = random_inputs(n, dim, 9)
    h = build_group(cfg, xs, ids=ids, sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
                    reference=ref, tamper=tamper)
    h.run()
    _no_errors(h)
    _never_both(h)
    return h, zs, ref, sk, xs


def _evidence(h: Harness, role: str, party: int) -> list[sa.Evidence]:
    return [e.evidence for e in h.events[(role, party)] if isinstance(e, sa.EvidenceFound)]


@pytest.mark.parametrize("how", ["non-canonical", "short", "bad pair order", "pair of stranger"])
def test_malformed_score_shares_are_evidence_against_the_validator(how: str) -> None:
    liar = 2

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender != liar or not isinstance(msg, ScoreShares):
            return msg
        u, s = msg.scores[0]
        if how == "non-canonical":  # below P31 but not below the second prime
            return replace(msg, scores=((u, (s[0], PRIMES_31[1] + 3, *s[2:])), *msg.scores[1:]))
        if how == "short":
            return replace(msg, scores=((u, s[:-1]), *msg.scores[1:]))
        if how == "bad pair order":
            a, b, sh = msg.pairs[0]
            return replace(msg, pairs=((b, a, sh), *msg.pairs[1:]))
        a, b, sh = msg.pairs[-1]
        return replace(msg, pairs=(*msg.pairs, (a, b + 9, sh)))  # beyond the group

    h, zs, ref, sk, _xs = _scored_group(tamper)
    outs = h.outputs()
    assert set(outs) == {7, 8}
    for p, o in outs.items():
        ev = _evidence(h, "aggregator", p)
        assert any(e.accused == liar and e.kind is EvidenceKind.MALFORMED for e in ev)
        assert all(s is not None for s in o.scores.values())  # 6 validators suffice
        _check_scores(o, zs, ref, sk)


def test_wrong_score_shares_name_the_validator_and_are_corrected() -> None:
    liar = 4

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender == liar and isinstance(msg, ScoreShares):
            scores = tuple((u, tuple((x + 1) % PRIMES_31[0] for x in s)) for u, s in msg.scores)
            pairs = tuple((u, v, (s[0] ^ 1, *s[1:])) for u, v, s in msg.pairs)
            return replace(msg, scores=scores, pairs=pairs)
        return msg

    h, zs, ref, sk, _ = _scored_group(tamper)
    for p, o in h.outputs().items():
        bad = {e.accused for e in _evidence(h, "aggregator", p)
               if e.kind is EvidenceKind.INCONSISTENT_SHARE}
        assert bad == {liar}
        assert all(s is not None and len(s.pairs) == 6 for s in o.scores.values())
        _check_scores(o, zs, ref, sk)


def test_wrong_length_sketch_ciphertexts_are_refused_by_the_aggregator() -> None:
    liar = 5

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender == liar and isinstance(msg, SketchShares):
            return replace(msg, ciphertexts=tuple((v, ct[:-4]) for v, ct in msg.ciphertexts))
        return msg

    h, _zs, _ref, _sk, xs = _scored_group(tamper)
    outs = h.outputs()
    assert set(outs) == {7, 8}
    ev = _evidence(h, "aggregator", 7)
    assert any(e.accused == liar and e.kind is EvidenceKind.MALFORMED for e in ev)
    for o in outs.values():
        assert o.scores[liar] is None
        assert all(liar not in s.pairs for s in o.scores.values() if s)
        assert o.sketch_sum is None  # an included member shared no sketch
        assert np.array_equal(o.total, ring_sum(xs, o.included, 8))


def test_authentic_but_malformed_sketch_payload_is_evidence_against_its_owner() -> None:
    liar, victim = 1, 3
    box: dict[str, Harness] = {}

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender != liar or not isinstance(msg, SketchShares):
            return msg
        m = box["h"].members[liar]
        out = []
        for v, ct in msg.ciphertexts:
            if v == victim:  # re-encrypt a payload with a non-canonical share
                aad = cx.share_aad(CTX, liar, v, b"sketch")
                plain = bytearray(ka.decrypt(m._c_key(v), ct, aad))
                plain[8:12] = (2**32 - 1).to_bytes(4, "little")
                ct = ka.encrypt(m._c_key(v), bytes(plain), aad, m._rng)
            out.append((v, ct))
        return replace(msg, ciphertexts=tuple(out))

    n, rows = 7, 6
    sk = SketchConfig(rows=rows, threshold=2, primes=2, pairwise=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=8, aggregators=(n, n + 1), sketch=sk)
    zs = _big_sketches(n, rows, 20, 3)
    h = build_group(cfg, random_inputs(n, 8, 3), sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
                    tamper=tamper)
    box["h"] = h
    h.run()
    _no_errors(h)
    ev = h.members[victim].evidence
    assert any(e.accused == liar and e.kind is EvidenceKind.MALFORMED for e in ev)
    for o in h.outputs().values():  # the others' shares of the liar still open it
        _check_scores(o, zs, None, sk)
        assert o.scores[liar] is not None


def test_malformed_sketch_sum_share_is_evidence() -> None:
    liar = 6

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender == liar and isinstance(msg, UnmaskShares) and msg.sketch_sum:
            return replace(msg, sketch_sum=(*msg.sketch_sum[:-1], PRIMES_31[1]))
        return msg

    h, zs, _ref, sk, _xs = _scored_group(tamper)
    for p, o in h.outputs().items():
        ev = _evidence(h, "aggregator", p)
        assert any(e.accused == liar and e.kind is EvidenceKind.MALFORMED for e in ev)
        assert o.sketch_sum is not None
        assert o.sketch_sum.tolist() == [
            _wrap(sum(int(zs[u][r]) for u in o.included), sk) for r in range(6)]


def test_score_share_checks_reject_bad_shapes() -> None:
    sk = SketchConfig(rows=3, threshold=2, with_reference=True, primes=2, pairwise=True)
    cfg = GroupConfig(CTX, n=5, threshold=2, dim=4, sketch=sk)
    good = ScoreShares(((0, (1, 2, 3, 4)), (2, (0, 0, 0, 0))), ((0, 2, (5, 6)),))
    good.check(cfg)
    bad = [
        ScoreShares(((0, (1, 2, 3)),)),
        ScoreShares(((0, (1, PRIMES_31[1], 3, 4)),)),
        ScoreShares(((0, (1, 2, 3, -1)),)),
        ScoreShares(good.scores, ((2, 0, (5, 6)),)),
        ScoreShares(good.scores, ((0, 2, (5, 6)), (0, 2, (5, 6)))),
        ScoreShares(good.scores, ((0, 2, (5,)),)),
        ScoreShares(good.scores, ((0, 7, (5, 6)),)),
        ScoreShares(good.scores, ((0, 2, 5),)),
        ScoreShares(good.scores, [(0, 2, (5, 6))]),  # type: ignore[arg-type]
    ]
    for msg in bad:
        with pytest.raises(MessageError):
            msg.check(cfg)
    flat = replace(cfg, sketch=replace(sk, pairwise=False))
    with pytest.raises(MessageError):
        good.check(flat)
    short = UnmaskShares((), (), (1,) * 5)
    with pytest.raises(MessageError):
        short.check(cfg)
    UnmaskShares((), (), (PRIMES_31[0] - 1,) * 3 + (PRIMES_31[1] - 1,) * 3).check(cfg)
    with pytest.raises(MessageError):
        UnmaskShares((), (), (0,) * 3 + (PRIMES_31[1],) * 3).check(cfg)
    big = SketchShares(((1, bytes(cx.sketch_ciphertext_bytes(sk, 5) + 1)),))
    with pytest.raises(MessageError):
        big.check(cfg)


def test_bad_sketch_or_reference_functions_stop_only_that_member() -> None:
    n, rows = 6, 4
    sk = SketchConfig(rows=rows, threshold=2, with_reference=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=4, aggregators=(n, n + 1), sketch=sk)
    ids = FakeIdentities(b"x")
    with pytest.raises(ValueError):
        Member(cfg, 0, SeededRng(b"m"), ids.signer(0), ids.verify, start=0.0,
               sketch=lambda s: np.zeros(rows), reference=np.zeros(rows + 1, dtype=np.int64))
    with pytest.raises(ValueError):
        Member(cfg, 0, SeededRng(b"m"), ids.signer(0), ids.verify, start=0.0,
               sketch=lambda s: np.zeros(rows), reference=np.full(rows, 2**62))
    with pytest.raises(ValueError):
        Member(cfg, 0, SeededRng(b"m"), ids.signer(0), ids.verify, start=0.0,
               sketch=lambda s: np.zeros(rows))

    def sketch(u: int):  # type: ignore[no-untyped-def]
        if u == 1:
            return lambda s: np.full(rows, 2**62, dtype=np.int64)  # out of range
        if u == 2:
            return lambda s: np.zeros(rows + 1, dtype=np.int64)  # wrong shape
        return lambda s: np.arange(rows, dtype=np.int64) * u

    h = build_group(cfg, random_inputs(n, 4, 5), sketches=[sketch(u) for u in range(n)],
                    reference=lambda s: np.ones(rows, dtype=np.int64))
    h.run()
    for u in (1, 2):
        assert h.members[u].state is MemberState.ERROR
    outs = h.outputs()
    assert set(outs) == {n, n + 1}
    for o in outs.values():
        assert o.scores[1] is None and o.scores[2] is None
        assert o.scores[3] == SketchScore(9 * 14, 18)
    h = build_group(cfg, random_inputs(n, 4, 5), sketches=[sketch(u + 3) for u in range(n)],
                    reference=lambda s: 1 / 0)
    h.run()
    assert all(m.state is MemberState.ERROR for m in h.members.values())
    assert not h.outputs()


def test_hook_gets_none_seed_without_a_sketch_stage() -> None:
    seen: list[object] = []
    cfg = GroupConfig(CTX, n=4, threshold=2, dim=4, aggregators=(0, 1))
    h = build_group(cfg, random_inputs(4, 4, 1),
                    decide_exclusions=lambda s, seed: seen.append(seed) or set())
    h.run()
    assert seen == [None, None]
    assert all(o.sketch_seed is None and o.sketch_sum is None for o in h.outputs().values())


# ---------------------------------------------------------------- privacy


class SketchSnapshot:
    """Each validator's decrypted sketch shares, captured before they are wiped."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.z: dict[int, dict[int, np.ndarray]] = {}
        self.zero: dict[int, dict[int, np.ndarray]] = {}

    def __call__(self, role: str, party: int, now: float) -> None:
        m = self.h.members.get(party)
        if role == "member" and m is not None and m._z_shares and party not in self.z:
            self.z[party] = dict(m._z_shares)
            self.zero[party] = dict(m._zero_shares)


def test_pair_masks_are_the_sum_of_both_endpoints_zero_sharings() -> None:
    n, t, rows = 7, 3, 5
    sk = SketchConfig(rows=rows, threshold=t, primes=2, pairwise=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=8, aggregators=(n, n + 1), sketch=sk)
    zs = _big_sketches(n, rows, 30, 6)
    h = build_group(cfg, random_inputs(n, 8, 6), sketches=[(lambda s, u=u: zs[u]) for u in range(n)])
    snap = SketchSnapshot(h)
    h.on_flush = snap
    h.run()
    _no_errors(h)
    assert set(snap.z) == set(range(n))
    shares = {d.sender: d.msg for d in h.sent(ScoreShares) if d.recipient == n}
    validators = sorted(shares)
    others = {u: [v for v in range(n) if v != u] for u in range(n)}
    for i, p in enumerate(sk.moduli):
        for u, v in itertools.combinations(range(n), 2):
            cu, cv = 1 + others[u].index(v), 1 + others[v].index(u)
            r_u = [int(snap.zero[w][u][i, cu]) for w in validators]  # u's zero for (u, v)
            r_v = [int(snap.zero[w][v][i, cv]) for w in validators]
            for k, w in enumerate(validators):
                got = dict(((a, b), s) for a, b, s in shares[w].pairs)[(u, v)][i]
                prod = _dot(snap.z[w][u][i], snap.z[w][v][i])
                assert got == (prod + r_u[k] + r_v[k]) % p  # both endpoints' masks
            xs = [w + 1 for w in validators]
            for r in (r_u, r_v):  # each a degree-2(t-1) sharing of zero, not zero itself
                coeffs = _rs.berlekamp_welch(xs, r, 2 * t - 1, p)
                assert coeffs is not None and coeffs[0] == 0 and any(coeffs[1:])
            # the opened polynomial minus u's mask (what u + the aggregators can strip)
            # still carries v's random mask: it is not the raw product polynomial
            opened = [dict(((a, b), s) for a, b, s in shares[w].pairs)[(u, v)][i]
                      for w in validators]
            raw = [_dot(snap.z[w][u][i], snap.z[w][v][i]) % p for w in validators]
            stripped = [(o - r) % p for o, r in zip(opened, r_u, strict=True)]
            assert stripped != raw
            c_open = _rs.berlekamp_welch(xs, opened, 2 * t - 1, p)
            assert c_open is not None and c_open[0] == _dot(zs[u], zs[v]) % p
    # masks dealt by one owner for different pairs are independent sharings
    w = validators[0]
    assert len(set(snap.zero[w][0][0].tolist())) == n


def test_t_minus_1_validators_and_the_aggregators_cannot_rebuild_a_sketch() -> None:
    n, t, rows = 7, 3, 6
    sk = SketchConfig(rows=rows, threshold=t, primes=3, pairwise=True, with_reference=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=8, aggregators=(n, n + 1), sketch=sk)
    zs = _big_sketches(n, rows, 40, 8)
    h = build_group(cfg, random_inputs(n, 8, 8), sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
                    reference=np.ones(rows, dtype=np.int64))
    snap = SketchSnapshot(h)
    h.on_flush = snap
    h.run()
    assert set(h.outputs()) == {n, n + 1}
    colluders, honest = [0, 1], 5  # t - 1 validators
    # the aggregators' view of sketches: AEAD ciphertexts to the validators, scalar
    # score shares, and shares of the included members' sum: never a share of one z_u
    for d in h.transcript:
        if d.recipient >= n and isinstance(d.msg, SketchShares):
            for _, ct in d.msg.ciphertexts:
                assert len(ct) == cx.sketch_ciphertext_bytes(sk, n)
        if d.recipient >= n and isinstance(d.msg, ScoreShares):
            assert all(len(sc) == sk.n_scores for _, sc in d.msg.scores)
    for i, p in enumerate(sk.moduli):
        pts = [(c + 1, snap.z[c][honest][i]) for c in colluders]
        xs = [x for x, _ in pts]
        ys = np.stack([y for _, y in pts])
        with pytest.raises(NotEnoughShares):
            shamir.reconstruct_vector(xs, ys, t, p=p)
        truth = np.mod(zs[honest], p)
        for r in range(1, t):  # pretend a lower threshold: always wrong
            for sub in itertools.combinations(range(len(xs)), r):
                guess = shamir.reconstruct_vector([xs[j] for j in sub], ys[list(sub)], r, p=p)
                assert not np.array_equal(guess, truth)
        # t shares do rebuild it (the audit can find a leak where one exists)
        pts3 = [(c + 1, snap.z[c][honest][i]) for c in [*colluders, 2]]
        got = shamir.reconstruct_vector([x for x, _ in pts3], np.stack([y for _, y in pts3]), t, p=p)
        assert np.array_equal(got, truth)


def test_excluded_member_never_has_its_b_revealed_under_reordering() -> None:
    n, rows = 6, 4
    sk = SketchConfig(rows=rows, threshold=2, primes=2, pairwise=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=8, aggregators=(0, n), sketch=sk)
    zs = _big_sketches(n, rows, 25, 2)  # norms ~ 2**52 < capacity ~ 2**61
    zs[4] = zs[4] * 8  # the largest norm
    xs = random_inputs(n, 8, 2)

    def hook(scores, seed):  # type: ignore[no-untyped-def]
        top = max((s.norm, u) for u, s in scores.items() if s is not None)
        return {top[1]}

    for r in range(4):
        h = build_group(cfg, xs, sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
                        decide_exclusions=hook, reorder=random.Random(r))
        h.run()
        _no_errors(h)
        _never_both(h)
        outs = h.outputs()
        assert set(outs) == {0, n}
        for o in outs.values():
            assert o.excluded == frozenset({4})
            assert np.array_equal(o.total, ring_sum(xs, o.included, 8))
            assert o.sketch_sum is not None
            assert o.sketch_sum.tolist() == [sum(int(zs[u][j]) for u in o.included)
                                             for j in range(rows)]
        assert h.reveals()[4]["sk"] and not h.reveals()[4]["b"]
        assert not [d for d in h.transcript if isinstance(d.msg, SketchRequest) and d.sender != 0]


def _junk_residues() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.integers(-3, 2**32),
        st.lists(st.integers(-3, 2**32), max_size=5).map(tuple),
        st.binary(max_size=6),
    )


def _junk_sketch_message() -> st.SearchStrategy[Message]:
    pair = st.tuples(st.integers(-1, 9), st.integers(-1, 9), _junk_residues())
    owner = st.tuples(st.integers(-1, 9), _junk_residues())
    return st.one_of(
        st.builds(ScoreShares, st.lists(owner, max_size=4).map(tuple),
                  st.lists(pair, max_size=4).map(tuple)),
        st.builds(ScoreShares, st.lists(st.tuples(st.integers(0, 5),
                                                  st.tuples(*[st.integers(0, 2**31)] * 4)),
                                        max_size=3, unique_by=lambda x: x[0])
                  .map(lambda x: tuple(sorted(x)))),
        st.builds(SketchShares, st.lists(st.tuples(st.integers(-1, 9), st.binary(max_size=80)),
                                         max_size=3).map(tuple)),
        st.builds(sa.SketchRelay, st.lists(st.tuples(st.integers(-1, 9), st.binary(max_size=80)),
                                           max_size=3).map(tuple)),
        st.builds(UnmaskShares, st.just(()), st.just(()), _junk_residues()),
        st.builds(SketchRequest, st.lists(st.tuples(st.integers(0, 5), st.tuples(
            st.binary(min_size=32, max_size=32), st.binary(max_size=8))), max_size=2).map(tuple)),
    )


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 7), _junk_sketch_message()),
             min_size=1, max_size=10),
    st.integers(0, 2**31),
)
def test_garbage_sketch_messages_never_break_a_scored_round(  # type: ignore[type-arg]
    garbage: list, seed: int
) -> None:
    n, rows = 6, 3
    sk = SketchConfig(rows=rows, threshold=2, with_reference=True, primes=2, pairwise=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=4, aggregators=(0, n), sketch=sk)
    zs = _big_sketches(n, rows, 30, seed)
    ref = np.arange(rows, dtype=np.int64)
    xs = random_inputs(n, 4, seed)
    h = build_group(cfg, xs, sketches=[(lambda s, u=u: zs[u]) for u in range(n)], reference=ref,
                    reorder=random.Random(seed), garbage=garbage, garbage_rate=0.3)
    h.run()
    _no_errors(h)
    _never_both(h)
    for o in h.outputs().values():
        assert np.array_equal(o.total, ring_sum(xs, o.included, 4))
        _check_scores(o, zs, ref, sk)
