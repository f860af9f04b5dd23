"""Reputation and credits as a pure function of the chain (hypothesis + exact cases)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.errors import ConfigError
from p2pfl.federation import schedule_round
from p2pfl.ledger import (
    GroupStatus,
    LedgerParams,
    RecordBody,
    Standing,
    credits,
    reputation,
    standing,
)
from p2pfl.wire import PeerId

from .bodies import FED, PEERS, GroupPlan, body, chains, fake_proof
from .net import fed_for


def snapshot(s: Standing) -> dict[PeerId, tuple[object, ...]]:
    """Every number of a standing, floats as exact hex strings."""
    return {p: tuple(v.hex() if isinstance(v, float) else v for v in dataclasses.astuple(x))
            for p, x in s.peers.items()}


def weights(s: Standing) -> list[str]:
    return [f"{s.score(p).hex()} {s.weight_factor(p).hex()} {s.weight(p).hex()}" for p in PEERS]


@given(chains(), st.integers(0, 10))
def test_incremental_equals_recomputation(chain: list[RecordBody], k: int) -> None:
    batch = standing(chain, FED)
    inc = Standing.initial(FED)
    for b in chain:
        inc = inc.apply(b)
    k = min(k, len(chain))
    split = standing(chain[:k], FED)
    for b in chain[k:]:
        split = split.apply(b)
    assert snapshot(inc) == snapshot(batch) == snapshot(split)
    assert weights(inc) == weights(batch) == weights(split)


@given(chains())
def test_scores_and_weights_are_bounded(chain: list[RecordBody]) -> None:
    s = standing(chain, FED)
    p = s.params
    for peer in PEERS:
        assert 0.0 < s.score(peer) < 1.0
        assert 0.0 <= s.weight_factor(peer) <= 1.0
        assert 0.0 <= s.weight(peer) <= 1.0 + p.credit_priority
        x = s.get(peer)
        assert x.alpha >= 0 and x.beta >= 0 and x.beta_soft >= 0 and x.credits >= 0
        if s.score(peer) < p.floor:
            assert s.weight(peer) == 0.0 == s.weight_factor(peer)


@given(chains(), st.permutations(PEERS))
def test_order_of_evaluation_does_not_matter(chain: list[RecordBody], order: list[PeerId]) -> None:
    """Queries in any order, interleaved with the fold, and a second fold agree."""
    s = Standing.initial(FED)
    for b in chain:
        for peer in order:  # touching the standing between steps changes nothing
            s.weight(peer)
        s = s.apply(b)
    again = standing(chain, FED)
    assert [s.score(p).hex() for p in order] == [again.score(p).hex() for p in order]
    assert reputation(chain, FED) == again.reputation() and credits(chain, FED) == again.credits()


def _only_about(chain: list[RecordBody], me: PeerId) -> list[RecordBody]:
    """The chain with every accepted-group role and proof about other peers removed."""
    out = []
    for b in chain:
        slots = []
        for s in b.groups:
            h = s.header
            if s.status is GroupStatus.ACCEPTED and h is not None:
                h = dataclasses.replace(
                    h, included=tuple(p for p in h.included if p == me),
                    dropped=tuple(p for p in h.dropped if p == me),
                    excluded=tuple(e for e in h.excluded if e[0] == me))
                s = dataclasses.replace(s, header=h)
            slots.append(s)
        ev = tuple(p for p in b.evidence if p.items[0].endorsement.signer == me)
        out.append(dataclasses.replace(b, groups=tuple(slots), evidence=ev))
    return out


@given(chains(), st.sampled_from(PEERS))
def test_a_score_depends_only_on_evidence_about_that_peer(chain: list[RecordBody], me: PeerId) -> None:
    a, b = standing(chain, FED), standing(_only_about(chain, me), FED)
    assert a.score(me).hex() == b.score(me).hex()


def _excluded_at(when: int, total: int) -> Standing:
    """Peer 0 excluded in round ``when`` of ``total`` (no other cohort ever)."""
    chain = [body(r, PEERS[:6], [GroupPlan(roles={PEERS[0]: "excl"})]) if r == when
             else body(r, []) for r in range(total)]
    return standing(chain, FED)


@pytest.mark.parametrize("total", [30, 60])
def test_old_evidence_matters_less(total: int) -> None:
    """The same exclusion hurts less the longer ago it was, and fades to the prior."""
    x = PEERS[0]
    scores = [_excluded_at(when, total).score(x) for when in range(total)]
    assert all(a > b for a, b in itertools.pairwise(scores))  # older -> higher
    p = FED.ledger
    assert scores[-1] < p.floor < scores[0] < 0.5


def test_negative_evidence_is_forgotten_more_slowly() -> None:
    """alpha decays by ``forgetting``, beta by ``negative_forgetting`` (exactly); a peer
    excluded in rounds 0 and 1 (default weights) comes back above the floor after 14
    rounds, where symmetric forgetting (0.95) would let it back after 6."""
    x = PEERS[0]
    p = FED.ledger
    assert p.negative_forgetting > p.forgetting
    chain = [body(0, PEERS[:6]), body(1, PEERS[:6], [GroupPlan(roles={x: "excl"})])]
    chain += [body(r, []) for r in range(2, 12)]
    s = standing(chain, FED)
    a, b = 1.0, p.excluded
    a *= p.forgetting
    for _ in range(10):
        a, b = a * p.forgetting, b * p.negative_forgetting
    assert (s.get(x).alpha, s.get(x).beta) == (a, b)

    def back_after(params: LedgerParams) -> int:
        excl = [body(r, PEERS[:6], [GroupPlan(roles={x: "excl"})]) for r in range(2)]
        st = standing(excl, FED, params)
        k = 0
        while st.score(x) < params.floor:
            st, k = st.apply(body(st.height, [])), k + 1
        return k

    d = LedgerParams()  # the defaults (the test federation charges 4.0 per exclusion)
    slow, sym = back_after(d), back_after(dataclasses.replace(d, negative_forgetting=d.forgetting))
    assert (sym, slow) == (6, 14)


def test_bad_luck_is_forgotten_at_the_usual_pace() -> None:
    """Dropouts and failed groups (every member is charged, one lied) go to
    ``beta_soft``, which decays by ``forgetting``, not ``negative_forgetting``."""
    x, y = PEERS[:2]
    p = FED.ledger
    chain = [body(0, PEERS[:4], [GroupPlan("binding")]),
             body(1, PEERS[:4], [GroupPlan(roles={x: "drop", y: "excl"})])]
    chain += [body(r, []) for r in range(2, 8)]
    s = standing(chain, FED)
    soft = p.failed_group
    soft *= p.forgetting
    soft += p.dropout
    for _ in range(6):
        soft *= p.forgetting
    assert (s.get(x).beta, s.get(x).beta_soft) == (0.0, soft)
    hard = p.excluded
    for _ in range(6):
        hard *= p.negative_forgetting
    assert s.get(y).beta == hard and s.get(y).failed_groups == 1
    assert s.score(x) > s.score(y)


def test_exclusion_evidence_weights_rank_offences() -> None:
    roles = {"in": None, "drop": None, "excl": None, "viol": None, "zero": None}
    s = {}
    for role in roles:
        chain = [body(0, PEERS[:4], [GroupPlan(roles={PEERS[0]: role})])]
        s[role] = standing(chain, FED).score(PEERS[0])
    assert s["in"] > 0.5 > s["drop"] > s["excl"] == s["zero"] >= s["viol"]
    eq = standing([body(0, PEERS[:4], evidence=[fake_proof(0, 0, 0)])], FED).score(PEERS[0])
    assert eq < s["viol"]


def test_newcomers_are_capped_for_their_first_contributions() -> None:
    x = PEERS[0]
    m = FED.membership
    chain = [body(r, PEERS[:4]) for r in range(m.newcomer_rounds + 1)]
    for k in range(len(chain) + 1):
        s = standing(chain[:k], FED)
        assert s.get(x).contributions == k
        expect = m.newcomer_weight if k < m.newcomer_rounds else 1.0
        assert s.weight_factor(x) == expect
    perm = fed_for(**{"membership.policy": "permissioned", "membership.members": ["00" * 32]})
    assert Standing.initial(perm).is_newcomer(x) is False


def test_below_the_floor_a_peer_is_never_selected() -> None:
    x = PEERS[0]
    chain = [body(r, PEERS[:6], [GroupPlan(roles={x: "excl"})]) for r in range(2)]
    s = standing(chain, FED)
    assert s.score(x) < s.params.floor and s.weight(x) == 0.0
    for r in range(20):
        sched = schedule_round(FED, 5, bytes([r]) * 32, PEERS, weight=s.weight)
        assert x not in sched.cohort and len(sched.cohort) == len(PEERS) - 1


def test_credits_reward_accepted_work_and_free_riders_earn_nothing() -> None:
    x, y, z = PEERS[:3]
    b = body(0, PEERS[:4], [GroupPlan(roles={y: "zero", z: "drop"}, samples=300)])
    s = standing([b], FED)
    cap = FED.update.sample_cap
    w0 = Standing.initial(FED).weight_factor(x)
    assert s.get(x).credits == w0 * min(300 / 2, cap)
    assert s.get(y).credits == 0.0 == s.get(z).credits
    big = standing([body(0, PEERS[:4], [GroupPlan(samples=10**6)])], FED)
    assert big.get(x).credits == w0 * cap  # capped
    many = standing([body(r, PEERS[:4], [GroupPlan(samples=400)]) for r in range(8)], FED)
    assert many.get(x).credits > big.get(x).credits and many.weight(x) > many.weight_factor(x)


def test_a_failed_binding_check_charges_every_member_only_if_all_aggregators_say_so() -> None:
    all_aggs = standing([body(0, PEERS[:4], [GroupPlan("binding")])], FED)
    one_agg = standing([body(0, PEERS[:4], [GroupPlan("binding-one")])], FED)
    other = standing([body(0, PEERS[:4], [GroupPlan("aborted")])], FED)
    assert all(all_aggs.get(p).failed_groups == 1 for p in PEERS[:4])
    assert all(one_agg.get(p).failed_groups == 0 == other.get(p).failed_groups for p in PEERS[:4])


def test_the_liar_common_to_failed_groups_sinks_lowest() -> None:
    """Groups are redrawn every round; only the liar is in every failed group."""
    liar = PEERS[0]
    chain = []
    for r in range(10):
        b = body(r, PEERS, beacon=bytes([r + 1]) * 32)
        plans = [GroupPlan("binding" if liar in (s.header.included if s.header else ()) else "accepted")
                 for s in b.groups]
        chain.append(body(r, PEERS, plans, beacon=bytes([r + 1]) * 32))
    s = standing(chain, FED)
    assert min(PEERS, key=s.score) == liar
    assert s.score(liar) < s.params.floor


def test_equivocation_is_charged_once_per_round_and_group() -> None:
    p = fake_proof(0, 0, 0)
    s = standing([body(0, PEERS[:4], evidence=[p, fake_proof(0, 0, 0)]),
                  body(1, PEERS[:4], evidence=[p])], FED)
    assert s.get(PEERS[0]).equivocations == 1
    assert s.charged(0, 0, PEERS[0]) and not s.charged(0, 1, PEERS[0])


def test_params_are_validated_and_round_trip() -> None:
    p = LedgerParams()
    assert LedgerParams(**p.to_dict()) == p == LedgerParams.from_dict(p.to_dict())
    assert LedgerParams.from_dict({"floor": 0.1}).floor == 0.1
    with pytest.raises(ConfigError, match=r"ledger\.flor: unknown key"):
        LedgerParams.from_dict({"flor": 0.1})
    with pytest.raises(ConfigError, match=r"ledger\.floor: must be"):
        LedgerParams.from_dict({"floor": 2})
    for bad in ({"forgetting": 0.0}, {"negative_forgetting": 1.5}, {"floor": 1.0}, {"excluded": -1.0}, {"enforce_floor": 1},
                {"evidence_window": 0}, {"full_weight_at": 2.0}, {"accepted": float("nan")}):
        with pytest.raises(ValueError, match=r"ledger\."):
            LedgerParams(**bad)
