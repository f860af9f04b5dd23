"""Active adversaries: equivocating aggregators, lying members, exclusions, the
never-both invariant, and the sketch stage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc.field import BIG_PRIME
from mpc.secagg import (
    Aborted,
    AggState,
    Announce,
    Completed,
    ConsistencySig,
    Decision,
    EvidenceKind,
    GroupConfig,
    LocalProtocolError,
    MaskedInput,
    MemberState,
    Message,
    ProtocolError,
    RevealLedger,
    ScoreShares,
    ShareKeys,
    SigBundle,
    SketchConfig,
    SketchScore,
    SketchShares,
    UnmaskShares,
)
from mpc.secagg.harness import FakeIdentities, Harness, build_group, random_inputs, ring_sum

CTX = b"fed-test/round-9/group-0"


def _audit_never_both(h: Harness) -> None:
    for owner, kinds in h.reveals().items():
        assert not (kinds["b"] and kinds["sk"]), f"both shares of member {owner} revealed"


def _equivocate(ids: FakeIdentities, liar: int, victims: set[int], drop: int):  # type: ignore[no-untyped-def]
    """Tamper: the aggregator ``liar`` tells ``victims`` that ``drop`` dropped out."""
    sign = ids.signer(liar)

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender == liar and to in victims and isinstance(msg, Announce):
            survivors = tuple(u for u in msg.survivors if u != drop)
            fake = Announce(liar, survivors, msg.excluded, b"")
            return replace(fake, signature=sign(fake.signed_bytes(CTX)))
        return msg

    return tamper


def test_equivocating_primary_is_named_and_nothing_is_revealed() -> None:
    n = 7
    cfg = GroupConfig(CTX, n=n, threshold=4, dim=32, aggregators=(7, 8))
    ids = FakeIdentities(b"eq")
    h = build_group(cfg, random_inputs(n, 32, 1), ids=ids, tamper=_equivocate(ids, 7, {0, 1, 2}, 6))
    h.run()
    assert not h.outputs()
    assert not h.sent(UnmaskShares)
    replica = h.aggregators[8]
    assert replica.state is AggState.ABORTED
    eq = [e for e in replica.evidence if e.kind is EvidenceKind.EQUIVOCATION]
    assert eq and {e.accused for e in eq} == {7}
    decided, announced = eq[0].proof  # the primary's signed U3 and its signed lie
    assert isinstance(decided, Decision) and isinstance(announced, Announce)
    assert decided.members != announced.survivors
    assert ids.verify(7, decided.signed_bytes(CTX), decided.signature)
    assert ids.verify(7, announced.signed_bytes(CTX), announced.signature)
    # a victim that saw both announcements before the abort notice names the primary
    assert any(
        e.kind is EvidenceKind.DISAGREEMENT and e.accused == 7
        for u in (0, 1, 2)
        for e in h.members[u].evidence
    )
    for u in range(n):
        assert h.members[u].state is MemberState.ABORTED


def test_equivocating_single_aggregator_cannot_get_both_shares() -> None:
    """One aggregator, t > n/2: the consistency signatures stop the minority."""
    n = 7
    cfg = GroupConfig(CTX, n=n, threshold=4, dim=32, aggregators=(7,))
    ids = FakeIdentities(b"eq1")
    xs = random_inputs(n, 32, 2)
    lie = _equivocate(ids, 7, {0, 1, 2}, 6)

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if isinstance(msg, ConsistencySig):  # the liar hides the echoes from itself
            return replace(msg, echoes=())
        return lie(sender, to, msg)

    h = build_group(cfg, xs, ids=ids, tamper=tamper)
    h.run()
    _audit_never_both(h)
    assert not h.reveals().get(6, {}).get("sk")
    for u in (0, 1, 2):
        m = h.members[u]
        assert m.state is MemberState.ABORTED
        assert not [d for d in h.sent(UnmaskShares) if d.sender == u]
        assert any(e.accused == 7 for e in m.evidence)
    out = h.outputs()[7]  # the majority's view completes
    assert np.array_equal(out.total, ring_sum(xs, out.included, 32))


@pytest.mark.parametrize("kind", ["b", "sk"])
def test_member_revealing_a_bad_share_is_named_and_corrected(kind: str) -> None:
    n, liar = 8, 2
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=32, aggregators=(8, 9))
    xs = random_inputs(n, 32, 3)

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender == liar and isinstance(msg, UnmaskShares):
            field_name = "b_shares" if kind == "b" else "sk_shares"
            shares = list(getattr(msg, field_name))
            owner, s = shares[0]
            shares[0] = (owner, (s + 1) % BIG_PRIME)
            return replace(msg, **{field_name: tuple(shares)})
        return msg

    h = build_group(cfg, xs, tamper=tamper, crash_before={5: MaskedInput})
    h.run()
    outs = h.outputs()
    assert set(outs) == {8, 9}
    for p, o in outs.items():
        assert np.array_equal(o.total, ring_sum(xs, o.included, 32))
        bad = [e for e in h.aggregators[p].evidence if e.kind is EvidenceKind.INCONSISTENT_SHARE]
        assert bad and {e.accused for e in bad} == {liar}


def test_bad_share_without_redundancy_aborts() -> None:
    cfg = GroupConfig(CTX, n=4, threshold=3, dim=8, aggregators=(4, 5))

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender == 1 and isinstance(msg, UnmaskShares):
            (owner, s), *rest = msg.b_shares
            return replace(msg, b_shares=((owner, (s + 1) % BIG_PRIME), *rest))
        return msg

    h = build_group(cfg, random_inputs(4, 8, 4), tamper=tamper)
    h.run()
    assert not h.outputs()
    for a in h.aggregators.values():
        assert a.state is AggState.ABORTED


def test_dealer_sending_a_bad_ciphertext_is_named_and_round_completes() -> None:
    n, dealer, victim = 6, 2, 4
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=16, aggregators=(6, 7))
    xs = random_inputs(n, 16, 5)

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if sender == dealer and isinstance(msg, ShareKeys):
            cts = tuple(
                (v, ct[:-1] + bytes([ct[-1] ^ 1]) if v == victim else ct)
                for v, ct in msg.ciphertexts
            )
            return ShareKeys(cts)
        return msg

    h = build_group(cfg, xs, tamper=tamper)
    h.run()
    for o in h.outputs().values():
        assert o.included == frozenset(range(n))
        assert np.array_equal(o.total, ring_sum(xs, o.included, 16))
    ev = h.members[victim].evidence
    assert any(e.kind is EvidenceKind.DECRYPTION_FAILED and e.accused == dealer for e in ev)


def test_forged_sig_bundle_entries_are_blamed_on_the_relay() -> None:
    cfg = GroupConfig(CTX, n=5, threshold=3, dim=8, aggregators=(5,))

    def tamper(sender: int, to: int, msg: Message) -> Message | None:
        if isinstance(msg, SigBundle) and to == 0:
            return SigBundle(tuple((w, b"x" * 32) for w, _ in msg.signatures))
        return msg

    h = build_group(cfg, random_inputs(5, 8, 6), tamper=tamper)
    h.run()
    m = h.members[0]
    assert m.state is MemberState.ABORTED
    assert any(e.accused == 5 and e.kind is EvidenceKind.BAD_SIGNATURE for e in m.evidence)
    assert not [d for d in h.sent(UnmaskShares) if d.sender == 0]


# ---------------------------------------------------------------- exclusion


def test_exclusion_behaves_exactly_like_a_dropout() -> None:
    n, dim, victim = 6, 24, 2
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=dim, k=3, aggregators=(6, 7))
    xs = random_inputs(n, dim, 7)
    h = build_group(cfg, xs, decide_exclusions=lambda scores, seed: {victim})
    h.run()
    dropped = build_group(cfg, xs, crash_before={victim: MaskedInput})
    dropped.run()
    outs, douts = h.outputs(), dropped.outputs()
    assert set(outs) == set(douts) == {6, 7}
    for p in outs:
        assert outs[p].excluded == frozenset({victim}) and victim in outs[p].survivors
        assert outs[p].included == douts[p].included == frozenset(range(n)) - {victim}
        assert np.array_equal(outs[p].total, douts[p].total)
        assert np.array_equal(outs[p].total, ring_sum(xs, outs[p].included, dim))
    for hh in (h, dropped):  # the same kind of share is revealed for the victim
        r = hh.reveals()[victim]
        assert r["sk"] and not r["b"]
    _audit_never_both(h)
    assert h.members[victim].state is MemberState.DONE  # it still helps unmask the others
    done = [e for e in h.events[("member", victim)] if isinstance(e, Completed)]
    assert done and done[0].excluded == frozenset({victim})


# ---------------------------------------------------------------- the invariant


def test_reveal_ledger_refuses_the_second_kind() -> None:
    ledger = RevealLedger()
    ledger.reveal(3, "b")
    ledger.reveal(3, "b")
    ledger.reveal(4, "sk")
    with pytest.raises(LocalProtocolError):
        ledger.reveal(3, "sk")
    with pytest.raises(LocalProtocolError):
        ledger.reveal(4, "b")
    assert ledger.revealed() == {3: "b", 4: "sk"}


def test_member_never_reveals_both_shares_of_a_peer() -> None:
    """A member that (by a bug or a replayed state) already revealed s_sk of a peer
    refuses to reveal its b-share: it stops with a ProtocolError and sends nothing."""
    n = 5
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=8, aggregators=(5, 6))
    xs = random_inputs(n, 8, 8)
    h = build_group(cfg, xs)
    while h.members[1].state is not MemberState.CONSISTENCY:
        assert h.step()
    h.members[1].ledger.reveal(3, "sk")  # pretend an earlier reveal of s_sk_3
    h.run()
    assert h.members[1].state is MemberState.ERROR
    assert any(isinstance(e, ProtocolError) for e in h.events[("member", 1)])
    assert not [d for d in h.sent(UnmaskShares) if d.sender == 1]
    for o in h.outputs().values():  # the others still complete the round
        assert np.array_equal(o.total, ring_sum(xs, o.included, 8))


# ---------------------------------------------------------------- sketches


def test_sketch_scores_exclusion_and_binding_sum() -> None:
    n, rows, dim = 7, 16, 12
    sk = SketchConfig(rows=rows, threshold=2, with_reference=True)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=dim, aggregators=(7, 8), sketch=sk)
    xs = random_inputs(n, dim, 9)
    seeds: list[bytes] = []

    def sketch_of(u: int):  # type: ignore[no-untyped-def]
        def f(seed: bytes) -> np.ndarray:
            seeds.append(seed)
            rng = np.random.default_rng(int.from_bytes(seed[:8], "big") + u)
            return rng.integers(-1000, 1000, rows).astype(np.int64) * (10 if u == 4 else 1)

        return f

    zs = {}
    ref = np.arange(rows, dtype=np.int64) - 5

    def hook(scores, seed):  # type: ignore[no-untyped-def]
        assert seed == seeds[0]
        return {u for u, s in scores.items() if s is not None and s.norm > 10**8}

    h = build_group(
        cfg,
        xs,
        sketches=[sketch_of(u) for u in range(n)],
        reference=ref,
        decide_exclusions=hook,
        crash_after={5: MaskedInput},
    )
    h.run()
    assert len(set(seeds)) == 1
    for u in range(n):
        if u != 5:
            zs[u] = sketch_of(u)(seeds[0])
    outs = h.outputs()
    assert set(outs) == {7, 8}
    for o in outs.values():
        assert o.excluded == frozenset({4})
        assert np.array_equal(o.total, ring_sum(xs, o.included, dim))
        for u, z in zs.items():
            assert o.scores[u] == SketchScore(int(z @ z), int(z @ ref))
        assert o.scores[5] is None  # crashed before sharing its sketch
        assert 5 in o.included  # but its masked input arrived: a survivor
        # binding: the sketch sum is over the included members that shared a sketch;
        # 5 did not, so the validators could not form it
        assert o.sketch_sum is None
    _audit_never_both(h)


def test_sketch_sum_opens_when_every_included_member_shared() -> None:
    n, rows, dim = 5, 8, 6
    sk = SketchConfig(rows=rows, threshold=2)
    cfg = GroupConfig(CTX, n=n, threshold=3, dim=dim, aggregators=(5, 6), sketch=sk)
    xs = random_inputs(n, dim, 10)
    zs = {u: np.arange(rows, dtype=np.int64) * (u - 2) for u in range(n)}
    h = build_group(
        cfg,
        xs,
        sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
        decide_exclusions=lambda s, seed: {0},
    )
    h.run()
    for o in h.outputs().values():
        assert o.included == frozenset({1, 2, 3, 4})
        assert o.sketch_sum is not None
        assert np.array_equal(o.sketch_sum, sum(zs[u] for u in o.included))


def test_aborted_events_carry_evidence() -> None:
    cfg = GroupConfig(CTX, n=7, threshold=4, dim=8, aggregators=(7, 8))
    ids = FakeIdentities(b"ev")
    h = build_group(cfg, random_inputs(7, 8, 11), ids=ids, tamper=_equivocate(ids, 7, {0}, 6))
    h.run()
    aborted = [e for e in h.events[("aggregator", 8)] if isinstance(e, Aborted)]
    assert aborted and aborted[0].evidence and aborted[0].evidence[0].accused == 7


@given(
    st.integers(3, 8),
    st.sets(st.integers(0, 7), max_size=2),
    st.dictionaries(
        st.integers(0, 7),
        st.tuples(
            st.sampled_from([ShareKeys, MaskedInput, SketchShares, ScoreShares, UnmaskShares]),
            st.sampled_from(["before", "mid", "after"]),
        ),
        max_size=2,
    ),
    st.integers(0, 2**31),
)
def test_property_sketch_stage(n: int, exclude: set[int], crashes: dict, seed: int) -> None:  # type: ignore[type-arg]
    rows, dim = 6, 10
    sk = SketchConfig(rows=rows, threshold=2, with_reference=True)
    cfg = GroupConfig(CTX, n=n, threshold=2, dim=dim, aggregators=(n, n + 1), sketch=sk)
    xs = random_inputs(n, dim, seed)
    zs = {u: (np.arange(rows, dtype=np.int64) - u) * (u + 1) for u in range(n)}
    ref = np.ones(rows, dtype=np.int64)
    crashes = {u: c for u, c in crashes.items() if u < n}
    modes = {
        m: {u: k for u, (k, mm) in crashes.items() if mm == m} for m in ("before", "mid", "after")
    }
    h = build_group(
        cfg,
        xs,
        sketches=[(lambda s, u=u: zs[u]) for u in range(n)],
        reference=ref,
        decide_exclusions=lambda scores, seed: {u for u in exclude if u in scores},
        crash_before=modes["before"],
        crash_mid=modes["mid"],
        crash_after=modes["after"],
    )
    h.run()
    _audit_never_both(h)
    for evs in h.events.values():
        assert not [e for e in evs if isinstance(e, ProtocolError)]
    outs = h.outputs()
    if not crashes and n - len({u for u in exclude if u < n}) >= cfg.min_sum:
        assert set(outs) == {n, n + 1}
    for o in outs.values():
        assert o.excluded == frozenset(exclude) & o.survivors
        assert np.array_equal(o.total, ring_sum(xs, o.included, dim))
        for u, s in o.scores.items():
            if s is not None:
                assert s == SketchScore(int(zs[u] @ zs[u]), int(zs[u] @ ref))
        if o.sketch_sum is not None:
            assert np.array_equal(o.sketch_sum, sum(zs[u] for u in o.included))
        for u in o.excluded:
            assert not h.reveals().get(u, {}).get("b")
