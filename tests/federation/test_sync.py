"""Late joiners: listen, fetch the state of an attested round, verify, finish the round."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mpc.rand import SeededRng
from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import (
    CatchUp,
    CaughtUp,
    RoundMachine,
    RoundState,
    SignedGroupResult,
    StateRequest,
    StateResponse,
    answer_state_request,
    attested_state,
    schedule_round,
)
from p2pfl.wire import PeerId, decode, encode

from .harness import Net, identities, make_federation

FED = {"cohort.group_size": 3, "cohort.min_group_size": 2}


def _net_with_listener(skip_group: int | None = 0) -> tuple[Net, CatchUp, Any]:
    """Two rounds run; a joiner listens to round 2's broadcasts (missing those of
    ``skip_group``) while the others run it."""
    net = Net(make_federation(**FED), 7)
    for _ in range(2):
        net.run_round()
    joiner = CatchUp(net.fed, [net.peers[0], net.peers[1]], rng=SeededRng(b"j"), timeout=3.0)

    def listen(sender: PeerId, to: PeerId | None, msg: object) -> object:
        if to is None and not (isinstance(msg, SignedGroupResult) and msg.body.group == skip_group):
            joiner.receive(sender, decode(encode(msg)), net.now)
        return msg

    out = net.run_round(intercept=listen)
    assert len(out.hashes()) == 1
    return net, joiner, out


def _serve(net: Net, peer: PeerId, req: StateRequest) -> StateResponse:
    m = net.machines[peer]  # that peer's round-2 machine: its base is round 2's start state
    results, aborts = m.outcomes()
    return answer_state_request(net.fed, req, m.base if m.base.round == req.round else None,
                                results, aborts)


def _finish_round(net: Net, ev: CaughtUp) -> RoundMachine:
    me = identities(1, b"joiner")[0]
    sched = schedule_round(net.fed, ev.state.round, ev.state.beacon, net.peers)
    rm = RoundMachine(net.fed, me, ev.state, sched)
    rm.start(net.now)
    for msg in (*ev.results, *ev.aborts):
        rm.receive(me.peer_id, msg, net.now)
    return rm


def test_late_joiner_catches_up_and_agrees() -> None:
    net, joiner, out = _net_with_listener()
    [o] = joiner.messages_to_send()
    assert o.recipient == net.peers[0] and isinstance(o.message, StateRequest)
    assert o.message.round == 2
    resp = _serve(net, net.peers[0], o.message)
    joiner.receive(net.peers[0], decode(encode(resp)), net.now)
    ev = joiner.next_event()
    assert isinstance(ev, CaughtUp) and ev.state.round == 2
    rm = _finish_round(net, ev)
    assert rm.state is RoundState.DONE and rm.result is not None
    assert rm.result.record.model_hash in out.hashes()
    assert rm.result.next_state().digest == net.states[net.peers[0]].digest


def test_tampered_state_is_refused_and_the_next_neighbour_asked() -> None:
    net, joiner, _ = _net_with_listener(skip_group=None)
    [o] = joiner.messages_to_send()
    assert isinstance(o.message, StateRequest)
    good = _serve(net, net.peers[0], o.message)
    assert good.snapshot is not None
    model = good.snapshot.model + np.float32(1.0)
    bad = dataclasses.replace(good, snapshot=dataclasses.replace(good.snapshot, model=model))
    with pytest.raises(RemoteProtocolError, match="attested"):
        joiner.receive(net.peers[0], bad, net.now)
    [o2] = joiner.messages_to_send()
    assert o2.recipient == net.peers[1] and isinstance(o2.message, StateRequest)
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        joiner.receive(net.peers[0], good, net.now)  # old nonce, wrong peer
    joiner.receive(net.peers[1], _serve(net, net.peers[1], o2.message), net.now)
    ev = joiner.next_event()
    assert isinstance(ev, CaughtUp)
    assert _finish_round(net, ev).state is RoundState.DONE


def test_silent_neighbour_times_out_and_missing_state_moves_on() -> None:
    net, joiner, _ = _net_with_listener()
    [o] = joiner.messages_to_send()
    deadline = joiner.next_deadline()
    assert deadline is not None
    joiner.handle_timer(deadline)
    [o2] = joiner.messages_to_send()
    assert o2.recipient == net.peers[1] and isinstance(o2.message, StateRequest)
    assert isinstance(o.message, StateRequest)
    none = answer_state_request(net.fed, o2.message, None)
    joiner.receive(net.peers[1], none, net.now)
    assert joiner.messages_to_send() == []  # everyone asked: wait for a newer round
    assert joiner.next_event() is None
    with pytest.raises(RemoteProtocolError):
        answer_state_request(make_federation(name="x"), o.message, None)


def test_attestation_needs_a_quorum_of_valid_signatures() -> None:
    _, _, out = _net_with_listener()
    msg = next(m for m in out.broadcasts if isinstance(m, SignedGroupResult))
    fed = make_federation(**FED)
    assert attested_state(fed, msg) == (2, msg.body.base_state)
    q = fed.threshold_for(fed.cohort.min_group_size)  # 1 here: min group 2, threshold 0.5
    assert attested_state(fed, SignedGroupResult(msg.body, msg.endorsements[:q])) is not None
    assert attested_state(fed, SignedGroupResult(msg.body, msg.endorsements[: q - 1])) is None
    forged = [dataclasses.replace(e, signature=bytes(64)) for e in msg.endorsements]
    assert attested_state(fed, SignedGroupResult(msg.body, tuple(forged))) is None
    assert attested_state(make_federation(name="other"), msg) is None
