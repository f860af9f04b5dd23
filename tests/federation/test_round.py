"""The round machine over the synchronous harness: agreement, FedAvg, dropouts,
failover, aborts, and forged or tampered group results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.federation import (
    BROADCAST,
    TRANSITIONS,
    GlobalState,
    GroupPayload,
    OutOfSync,
    RoundMachine,
    RoundState,
    SignedGroupAbort,
    SignedGroupResult,
    SignRequest,
    TrainRequested,
    message_round,
    schedule_round,
)
from p2pfl.federation.messages import (
    ABORT_DOMAIN,
    RESULT_DOMAIN,
    AbortBody,
    ResultBody,
    digest_of,
    endorse,
)

from .harness import Net, Outcome, identities, make_federation, oracle_fedavg

TWO_GROUPS = {"cohort.group_size": 4, "cohort.min_group_size": 2}


def _agree(net: Net, out: Outcome) -> None:
    assert not out.failed
    assert not out.rejected
    assert len(out.hashes()) == 1
    assert net.states_agree(out.completed)


@pytest.mark.parametrize("n, over", [(5, {}), (9, TWO_GROUPS), (13, {"cohort.group_size": 4})])
def test_all_peers_agree_and_match_fedavg(n: int, over: dict[str, int]) -> None:
    fed = make_federation(**over)
    net = Net(fed, n)
    everyone = {p: (net.targets[p], net.samples[p]) for p in net.peers}
    for _ in range(3):
        before = net.states[net.peers[0]]
        out = net.run_round()
        _agree(net, out)
        assert len(out.completed) == n
        expect = oracle_fedavg(fed, before, everyone)
        np.testing.assert_allclose(net.states[net.peers[0]].model, expect, rtol=1e-6, atol=1e-7)
        rec = out.completed[net.peers[0]].record
        assert rec.updated and all(g.status == "accepted" for g in rec.groups)
        assert rec.model_hash == net.states[net.peers[0]].model_hash


def test_converges_to_the_weighted_optimum() -> None:
    fed = make_federation(**TWO_GROUPS)
    net = Net(fed, 8)
    cap = fed.update.sample_cap
    w = np.array([min(net.samples[p], cap) / cap for p in net.peers])
    optimum = (w[:, None] * np.stack([net.targets[p] for p in net.peers])).sum(0) / w.sum()
    for _ in range(25):
        _agree(net, net.run_round())
    np.testing.assert_allclose(net.states[net.peers[0]].model, optimum, atol=1e-4)


@pytest.mark.parametrize("strategy", [{"name": "fedadam", "server_lr": 0.1},
                                      {"name": "fedyogi"}, {"name": "fedprox", "mu": 0.1}])
def test_server_optimizers_agree_bit_for_bit(strategy: dict[str, object]) -> None:
    net = Net(make_federation(strategy=strategy, **TWO_GROUPS), 9)
    for _ in range(3):
        _agree(net, net.run_round())
    st = net.states[net.peers[0]]
    assert st.strategy_state.step == 3


def test_member_dropout_before_training() -> None:
    fed = make_federation(**TWO_GROUPS)
    net = Net(fed, 9)
    sched = net.schedule(net.peers[0])
    victim = next(p for p in sched.groups[1].members if sched.groups[1].rank(p) is None)
    before = net.states[net.peers[0]]
    out = net.run_round(crash={victim: "start"})
    _agree(net, out)
    assert victim not in out.completed and len(out.completed) == 8
    rec = next(iter(out.completed.values())).record
    assert victim in rec.groups[1].dropped and victim not in rec.groups[1].included
    survivors = {p: (net.targets[p], net.samples[p]) for p in net.peers if p != victim}
    np.testing.assert_allclose(net.states[next(iter(out.completed))].model, oracle_fedavg(fed, before, survivors),
                               rtol=1e-6, atol=1e-7)


def test_member_crash_after_submitting_is_still_included() -> None:
    net = Net(make_federation(**TWO_GROUPS), 9)
    sched = net.schedule(net.peers[0])
    victim = next(p for p in sched.groups[0].members if sched.groups[0].rank(p) is None)
    out = net.run_round(crash={victim: "after_submit"})
    _agree(net, out)
    g = next(iter(out.completed.values())).record.groups[0]
    assert victim in g.included and victim not in g.signers


def test_late_training_counts_as_dropout() -> None:
    fed = make_federation(**TWO_GROUPS)
    net = Net(fed, 9)
    sched = net.schedule(net.peers[0])
    slow = next(p for p in sched.groups[0].members if sched.groups[0].rank(p) is None)
    out = net.run_round(train_time={slow: fed.timeouts.train + 1})
    _agree(net, out)
    assert slow in out.completed  # it still follows the round as everyone else
    assert slow in out.completed[slow].record.groups[0].dropped


@pytest.mark.parametrize("when", ["start", "before_publish", "after_submit"])
def test_primary_aggregator_failover(when: str) -> None:
    fed = make_federation(**TWO_GROUPS)
    net = Net(fed, 9)
    g0 = net.schedule(net.peers[0]).groups[0]
    primary, backup = g0.aggregators
    out = net.run_round(crash={primary: when})
    _agree(net, out)
    rec = next(iter(out.completed.values())).record
    assert rec.groups[0].status == "accepted"
    assert backup in rec.groups[0].signers and primary not in rec.groups[0].signers
    assert (primary in rec.groups[0].included) == (when != "start")


def test_backup_cross_checks_and_cosigns_when_primary_is_alive() -> None:
    net = Net(make_federation(**TWO_GROUPS), 9)
    g0 = net.schedule(net.peers[0]).groups[0]
    out = net.run_round()
    _agree(net, out)
    results = [m for m in out.broadcasts if isinstance(m, SignedGroupResult) and m.body.group == 0]
    assert len(results) == 1  # the backup stood down
    signers = {e.signer for e in results[0].endorsements}
    assert set(g0.aggregators) <= signers


def test_group_aborts_while_others_complete() -> None:
    fed = make_federation(**TWO_GROUPS)  # threshold 0.5: 3 of the 5 in group 1
    net = Net(fed, 9)
    g1 = net.schedule(net.peers[0]).groups[1]
    dropped = [p for p in g1.members if g1.rank(p) is None][:3]
    before = net.states[net.peers[0]]
    out = net.run_round(crash={p: "start" for p in dropped})
    _agree(net, out)
    rec = next(iter(out.completed.values())).record
    assert [g.status for g in rec.groups] == ["accepted", "aborted"]
    assert "threshold" in rec.groups[1].reason
    assert out.end_time < fed.timeouts.round  # every aggregator announced: no waiting
    first_group = {p: (net.targets[p], net.samples[p]) for p in rec.groups[0].included}
    alive = next(iter(out.completed))
    np.testing.assert_allclose(net.states[alive].model,
                               oracle_fedavg(fed, before, first_group), rtol=1e-6, atol=1e-7)
    assert any(not ev.accepted for evs in out.resolved.values() for ev in evs)


def test_no_group_completes_keeps_the_model() -> None:
    fed = make_federation(**{"secagg.threshold": 1.0})
    net = Net(fed, 4)
    before = net.states[net.peers[0]]
    out = net.run_round(crash={net.peers[3]: "start"})
    _agree(net, out)
    rec = next(iter(out.completed.values())).record
    assert not rec.updated and rec.groups[0].status == "aborted"
    assert net.states[net.peers[0]].model_hash == before.model_hash
    assert net.states[net.peers[0]].round == 1 and net.peers[0] in out.completed


def test_cohort_below_min_group_size_skips_the_round() -> None:
    fed = make_federation(**{"cohort.min_group_size": 3, "cohort.group_size": 4})
    net = Net(fed, 5)
    out = net.run_round(candidates=net.peers[:2])
    _agree(net, out)
    assert out.end_time == 0.0 and not next(iter(out.completed.values())).record.groups


# ----------------------------------------------------------------------------
# forged and tampered results


def _one_result(n: int = 9) -> tuple[Net, SignedGroupResult, RoundMachine]:
    """A finished round's group-0 result, and a fresh machine of a peer for that round."""
    net = Net(make_federation(**TWO_GROUPS), n)
    base = net.states[net.peers[0]]
    out = net.run_round()
    msg = next(m for m in out.broadcasts if isinstance(m, SignedGroupResult) and m.body.group == 0)
    observer = identities(1, b"observer")[0]
    sched0 = schedule_round(net.fed, 0, base.beacon, net.peers)
    rm = RoundMachine(net.fed, observer, base, sched0)
    rm.start(0.0)
    return net, msg, rm


def _reject(rm: RoundMachine, msg: object, exc: type[Exception] = RemoteProtocolError) -> None:
    with pytest.raises(exc):
        rm.receive(rm.me, msg, 1.0)


def test_valid_result_is_accepted_by_an_observer() -> None:
    _, msg, rm = _one_result()
    rm.receive(rm.me, msg, 1.0)
    assert rm.outcomes()[0] == (msg,)


def test_tampered_sum_is_rejected() -> None:
    _, msg, rm = _one_result()
    s = msg.body.update_sum.copy()
    s[0] += 1e-3
    _reject(rm, SignedGroupResult(dataclasses.replace(msg.body, update_sum=s), msg.endorsements))
    w = dataclasses.replace(msg.body, total_weight=msg.body.total_weight / 2)
    _reject(rm, SignedGroupResult(w, msg.endorsements))
    assert rm.outcomes() == ((), ())


def test_result_signed_by_outsiders_or_too_few_is_rejected() -> None:
    _, msg, rm = _one_result()
    digest = digest_of(msg.body)
    outsiders = tuple(endorse(i, RESULT_DOMAIN, digest) for i in identities(4, b"mallory"))
    _reject(rm, SignedGroupResult(msg.body, outsiders))
    _reject(rm, SignedGroupResult(msg.body, msg.endorsements + outsiders[:1]))
    _reject(rm, SignedGroupResult(msg.body, msg.endorsements[:1]))  # below quorum
    _reject(rm, SignedGroupResult(msg.body, msg.endorsements + msg.endorsements[:1]))  # repeated
    bad = dataclasses.replace(msg.endorsements[0], signature=bytes(64))
    _reject(rm, SignedGroupResult(msg.body, (bad, *msg.endorsements[1:])))


def test_result_without_an_aggregator_signature_is_rejected() -> None:
    net, msg, rm = _one_result()
    g0 = rm.schedule.groups[0]
    members = [net.identity(p) for p in g0.members if g0.rank(p) is None]
    digest = digest_of(msg.body)
    _reject(rm, SignedGroupResult(msg.body, tuple(endorse(i, RESULT_DOMAIN, digest) for i in members)))


def test_result_for_other_round_state_or_group_shape_is_rejected() -> None:
    _, msg, rm = _one_result()
    b = msg.body
    _reject(rm, SignedGroupResult(dataclasses.replace(b, round=5), msg.endorsements))
    _reject(rm, SignedGroupResult(dataclasses.replace(b, base_state=bytes(32)), msg.endorsements),
            OutOfSync)
    _reject(rm, SignedGroupResult(dataclasses.replace(b, update_sum=b.update_sum[:-1]),
                                  msg.endorsements))
    _reject(rm, SignedGroupResult(dataclasses.replace(b, included=b.included[::-1]),
                                  msg.endorsements))
    _reject(rm, SignedGroupResult(dataclasses.replace(b, included=b.included[:1]), msg.endorsements))


def test_forged_abort_is_rejected_and_genuine_one_recorded() -> None:
    net, msg, rm = _one_result()
    g0 = rm.schedule.groups[0]
    body = AbortBody(net.fed.id, 0, 0, rm.schedule.digest, rm.view.base_state, "forged")
    member = next(p for p in g0.members if g0.rank(p) is None)
    forged = SignedGroupAbort(body, endorse(net.identity(member), ABORT_DOMAIN, digest_of(body)))
    _reject(rm, forged)
    agg = net.identity(g0.aggregators[0])
    wrong_domain = SignedGroupAbort(body, endorse(agg, RESULT_DOMAIN, digest_of(body)))
    _reject(rm, wrong_domain)
    genuine = SignedGroupAbort(body, endorse(agg, ABORT_DOMAIN, digest_of(body)))
    rm.receive(rm.me, genuine, 1.0)
    rm.receive(rm.me, msg, 1.0)  # a valid result still wins over an abort
    assert rm.outcomes() == ((msg,), (genuine,))


def test_round_survives_garbage_injected_by_an_attacker() -> None:
    """A man in the middle replaces every result broadcast of group 0 by a tampered
    copy; peers reject them, the group times out, and everyone still agrees."""
    fed = make_federation(**TWO_GROUPS)
    net = Net(fed, 9)

    def tamper(sender: object, to: object, msg: object) -> object:
        if isinstance(msg, SignedGroupResult) and msg.body.group == 0:
            s = msg.body.update_sum + 1.0
            return SignedGroupResult(dataclasses.replace(msg.body, update_sum=s), msg.endorsements)
        return msg

    g0 = net.schedule(net.peers[0]).groups[0]
    out = net.run_round(intercept=tamper)
    assert out.rejected and not out.failed and len(out.completed) == 9
    # Only the aggregators (who built the genuine result) hold it; everyone else
    # rejected every copy and skipped the group at the deadline, identically.
    holders = {p for p, c in out.completed.items() if c.record.groups[0].status == "accepted"}
    assert holders <= set(g0.aggregators)
    others = [c.record.model_hash for p, c in out.completed.items() if p not in holders]
    assert len(set(others)) == 1
    assert out.end_time == net.fed.timeouts.round


# ----------------------------------------------------------------------------
# the machine's own rules


_NET3 = Net(make_federation(), 3)


@pytest.mark.parametrize("src", list(RoundState))
@pytest.mark.parametrize("dst", list(RoundState))
def test_every_state_pair_is_legal_or_fails_loudly(src: RoundState, dst: RoundState) -> None:
    p = _NET3.peers[0]
    rm = RoundMachine(_NET3.fed, _NET3.identity(p), _NET3.states[p], _NET3.schedule(p))
    rm._state = src
    if dst in TRANSITIONS[src]:
        rm._goto(dst)
        assert rm.state is dst
    else:
        with pytest.raises(LocalProtocolError):
            rm._goto(dst)
        assert rm.state is RoundState.FAILED
    assert not TRANSITIONS[RoundState.DONE] and not TRANSITIONS[RoundState.FAILED]


def test_api_misuse_raises_local_protocol_error() -> None:
    net = Net(make_federation(), 3)
    p = net.peers[0]
    rm = RoundMachine(net.fed, net.identity(p), net.states[p], net.schedule(p))
    with pytest.raises(LocalProtocolError):
        rm.training_done(np.zeros(6), 10, 0.0)  # before start
    rm.start(0.0)
    ev = rm.next_event()
    assert isinstance(ev, TrainRequested) and ev.round == 0
    with pytest.raises(LocalProtocolError):
        rm.training_done(np.zeros(5), 10, 0.0)  # wrong shape
    with pytest.raises(LocalProtocolError):
        rm._goto(RoundState.DONE)  # illegal: TRAINING -> DONE
    assert rm.state is RoundState.FAILED
    other = GlobalState.initial(make_federation(name="other"), np.zeros(6, np.float32))
    with pytest.raises(LocalProtocolError):
        RoundMachine(net.fed, net.identity(p), other, net.schedule(p))


def test_messages_before_start_are_buffered() -> None:
    net = Net(make_federation(), 3)
    a, b = net.peers[:2]
    ma = RoundMachine(net.fed, net.identity(a), net.states[a], net.schedule(a))
    mb = RoundMachine(net.fed, net.identity(b), net.states[b], net.schedule(b))
    ma.start(0.0)
    ma.training_done(np.ones(6), 50, 0.5)
    for o in ma.messages_to_send():
        if o.recipient == b:
            assert message_round(o.message) == 0 and isinstance(o.message, GroupPayload)
            mb.receive(a, o.message, 0.6)  # b has not started yet
    mb.start(1.0)
    assert mb.state is RoundState.TRAINING


def test_payload_from_outside_the_group_is_rejected() -> None:
    net = Net(make_federation(**TWO_GROUPS), 9)
    sched = net.schedule(net.peers[0])
    g0, g1 = sched.groups
    agg = g0.aggregators[0]
    rm = RoundMachine(net.fed, net.identity(agg), net.states[agg], net.schedule(agg))
    rm.start(0.0)
    with pytest.raises(RemoteProtocolError):
        rm.receive(g1.members[0], GroupPayload(net.fed.id, 0, 0, b"x"), 0.1)
    with pytest.raises(RemoteProtocolError):  # a member, but garbage
        rm.receive(next(p for p in g0.members if p != agg), GroupPayload(net.fed.id, 0, 0, b"x"), 0.1)
    assert BROADCAST is not None and rm.state is RoundState.TRAINING


def test_peer_out_of_sync_fails_instead_of_forking() -> None:
    """An observer that holds another model (same beacon, so the same schedule)
    rejects every result as OutOfSync and ends FAILED, asking for a resync."""
    net = Net(make_federation(**TWO_GROUPS), 9)
    base = net.states[net.peers[0]]
    stale = GlobalState(base.federation_id, base.round, base.beacon,
                        base.model + np.float32(1), base.strategy_state)
    me = identities(1, b"stale")[0]
    rm = RoundMachine(net.fed, me, stale, net.schedule(net.peers[0]))
    out = net.run_round(extra={me.peer_id: rm})
    assert rm.state is RoundState.FAILED and "out of sync" in out.failed[me.peer_id].reason
    assert all("differs" in why for to, _, why in out.rejected if to == me.peer_id)
    assert len(out.completed) == 9 and len(out.hashes()) == 1


def test_member_refuses_to_sign_two_different_bodies_for_one_aggregator() -> None:
    net = Net(make_federation(**TWO_GROUPS), 9)
    g0 = net.schedule(net.peers[0]).groups[0]
    agg = g0.aggregators[0]
    member = next(p for p in g0.members if g0.rank(p) is None)
    out = net.run_round()
    res = next(m for m in out.broadcasts if isinstance(m, SignedGroupResult) and m.body.group == 0)
    rm = RoundMachine(net.fed, net.identity(member), net.machines[member].base,
                      net.machines[member].schedule)
    rm.start(0.0)
    aid = net.identity(agg)

    def req(body: ResultBody) -> SignRequest:
        return SignRequest(body, endorse(aid, RESULT_DOMAIN, digest_of(body)))

    rm.training_done(np.zeros(6), 10, 0.1)
    body = dataclasses.replace(res.body, update_sum=res.body.update_sum * 0)
    rm.receive(agg, req(body), 0.2)
    assert any(type(o.message).__name__ == "SignatureReply" for o in rm.messages_to_send())
    rm.receive(agg, req(body), 0.3)  # the same body again: fine
    other = dataclasses.replace(body, total_samples=body.total_samples + 1)
    with pytest.raises(RemoteProtocolError, match="two different"):
        rm.receive(agg, req(other), 0.4)


def test_a_decoded_result_is_verified_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peers of one process share decoded broadcasts; the verification of a read-only
    result is remembered for the same view, never for a failure, a writeable sum or
    another schedule."""
    from p2pfl.federation import round as round_mod
    from p2pfl.wire import decode, encode

    net = Net(make_federation(**TWO_GROUPS), 9)
    base = net.states[net.peers[0]]
    out = net.run_round()
    msg = next(m for m in out.broadcasts if isinstance(m, SignedGroupResult) and m.body.group == 0)
    sched0 = schedule_round(net.fed, 0, base.beacon, net.peers)
    rm = RoundMachine(net.fed, identities(1, b"observer")[0], base, sched0)
    rm.start(0.0)
    calls: list[object] = []
    real = round_mod.verify_result

    def counting(view: object, m: SignedGroupResult, sender: object = None) -> object:
        calls.append(m)
        return real(view, m, sender)  # type: ignore[arg-type]

    monkeypatch.setattr(round_mod, "verify_result", counting)
    shared = decode(encode(msg))
    assert not shared.body.update_sum.flags.writeable
    first = round_mod.verify_result_once(rm.view, shared)
    assert round_mod.verify_result_once(rm.view, shared) is first and len(calls) == 1
    other = RoundMachine(net.fed, identities(1, b"observer2")[0], base,
                         sched0)  # another peer, the same schedule object
    other.start(0.0)
    other.receive(other.me, shared, 1.0)
    assert len(calls) == 1 and other.outcomes()[0] == (shared,)
    # an equal but distinct object, a writeable sum: verified each time
    round_mod.verify_result_once(rm.view, decode(encode(msg)))
    writeable = SignedGroupResult(
        dataclasses.replace(msg.body, update_sum=msg.body.update_sum.copy()), msg.endorsements)
    round_mod.verify_result_once(rm.view, writeable)
    round_mod.verify_result_once(rm.view, writeable)
    assert len(calls) == 4
    # a failure is never remembered
    s = msg.body.update_sum.copy()
    s[0] += 1e-3
    bad = decode(encode(SignedGroupResult(dataclasses.replace(msg.body, update_sum=s),
                                          msg.endorsements)))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            round_mod.verify_result_once(rm.view, bad)
    assert len(calls) == 6
    # another view (base state) is another entry, and refuses the result
    view2 = dataclasses.replace(rm.view, base_state=bytes(32))
    with pytest.raises(OutOfSync):
        round_mod.verify_result_once(view2, shared)
