"""The composed overlay protocol, without trio: single machines and a synchronous network."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.identity import Signed
from p2pfl.identity._keys import KeyFile
from p2pfl.overlay import (
    Close,
    DirectReceived,
    OverlayConfig,
    OverlayProtocol,
    PeerGraylisted,
    PeerUnreachable,
    Send,
)
from p2pfl.overlay._messages import (
    Ack,
    Direct,
    Disconnect,
    ForwardJoin,
    Gossip,
    Graft,
    IHave,
    Join,
    JoinReply,
    Neighbor,
    NeighborReply,
    PeerInfo,
    Ping,
    PingReq,
    PingReqAck,
    Priority,
    Prune,
    Relay,
    Relayed,
    Shuffle,
    ShuffleReply,
    Status,
    Update,
)
from p2pfl.wire import PeerId

from ._simnet import SimNet, identity

CFG = OverlayConfig(network_id=b"proto", link_rate=10.0, link_burst=20.0)
OTHER = identity(7).peer_id


def proto(cfg: OverlayConfig = CFG) -> OverlayProtocol:
    p = OverlayProtocol(identity(0), cfg, rng=random.Random(0), address="mem:0")
    p.start(0.0)
    return p


def events(p: OverlayProtocol) -> list[object]:
    out = []
    while (e := p.next_event()) is not None:
        out.append(e)
    return out


def test_a_flooding_link_is_graylisted_closed_and_refused() -> None:
    p = proto()
    assert p.link_up(OTHER, 0.0)
    for k in range(400):
        p.receive(OTHER, Ping(k, ()), 0.0, 10)
    assert p.scores.is_graylisted(OTHER, 0.0)
    assert Close(OTHER) in p.messages_to_send()
    assert any(isinstance(e, PeerGraylisted) and e.peer == OTHER for e in events(p))
    assert not p.link_up(OTHER, 1.0)
    dropped = p.dropped_graylisted
    assert dropped > 0  # the rest of the burst was not even looked at
    p.receive(OTHER, Ping(1, ()), 1.0, 10)
    assert not [c for c in p.messages_to_send() if isinstance(c, Send)]
    assert p.dropped_graylisted == dropped + 1


def test_malformed_and_misplaced_messages_cost_score() -> None:
    p = proto()
    p.link_up(OTHER, 0.0)
    p.receive_malformed(OTHER, RemoteProtocolError("garbage"), 0.0)
    p.receive(OTHER, KeyFile("ed25519", b"\0" * 32), 0.0)  # a valid message of another layer
    p.receive(OTHER, Join("no spaces allowed"), 0.0)  # an address that is not one
    assert p.penalties == {"malformed": 3}
    assert p.scores.is_graylisted(OTHER, 0.0)  # 3² * 10 > 50


def test_tree_traffic_from_a_non_neighbour_is_told_to_disconnect() -> None:
    p = proto()
    p.link_up(OTHER, 0.0)
    p.receive(OTHER, Prune(), 0.0)
    assert Send(OTHER, Disconnect(alive=True)) in p.messages_to_send()


def test_a_direct_probe_from_a_non_neighbour_heals_the_asymmetric_view() -> None:
    p = proto()
    p.link_up(OTHER, 0.0)
    p.receive(OTHER, Ping(1, (), neighbor=True), 0.0)  # e.g. our NEIGHBOR_REPLY was lost
    out = p.messages_to_send()
    assert Send(OTHER, Ack(1, ())) in out and Send(OTHER, Disconnect(alive=True)) in out
    p.receive(OTHER, Ping(2, (), neighbor=False), 0.0)  # an indirect probe: fine
    assert Send(OTHER, Disconnect(alive=True)) not in p.messages_to_send()
    p.membership.receive(OTHER, Neighbor(Priority.HIGH, "mem:7"), 0.0)
    p.messages_to_send()
    p.receive(OTHER, Ping(3, (), neighbor=True), 0.0)
    assert Send(OTHER, Disconnect(alive=True)) not in p.messages_to_send()


def test_direct_over_an_open_link() -> None:
    p = proto()
    p.link_up(OTHER, 0.0)
    p.send_direct(OTHER, b"hi", 0.0)
    assert Send(OTHER, Direct(b"hi")) in p.messages_to_send()
    p.receive(OTHER, Direct(b"yo"), 0.0)
    assert DirectReceived(OTHER, b"yo") in events(p)


def test_direct_errors() -> None:
    p = proto()
    with pytest.raises(PeerUnreachable):
        p.send_direct(OTHER, b"x", 0.0)
    with pytest.raises(LocalProtocolError):
        p.send_direct(p.local, b"x", 0.0)
    with pytest.raises(LocalProtocolError):
        p.send_direct(OTHER, b"x" * (CFG.max_payload + 1), 0.0)
    with pytest.raises(LocalProtocolError):
        p.publish("", b"x", 0.0)


def test_a_relay_only_forwards_what_its_requester_signed() -> None:
    p = proto()
    p.link_up(OTHER, 0.0)
    third = identity(8)
    p.link_up(third.peer_id, 0.0)
    from p2pfl.identity import seal
    from p2pfl.overlay._messages import DirectBody

    body = DirectBody(third.peer_id, 0.0, 1, b"secret")
    env = seal(identity(7), body, domain=CFG.direct_domain)
    p.receive(OTHER, Relay(third.peer_id, env), 0.0)
    assert Send(third.peer_id, Relayed(env)) in p.messages_to_send()
    forged = seal(identity(9), body, domain=CFG.direct_domain)  # not signed by the requester
    p.receive(OTHER, Relay(third.peer_id, forged), 0.0)
    assert p.penalties == {"malformed": 1}
    bad = Signed(env.signer, env.body, b"\0" * 64)
    p.receive(OTHER, Relay(third.peer_id, bad), 0.0)
    assert p.penalties == {"malformed": 1, "invalid": 1}


_pid = st.integers(0, 5).map(lambda i: identity(i).peer_id)
_addr = st.sampled_from([None, "mem:a", "bad addr", "x" * 300, "mem:\x00"])
_info = st.builds(PeerInfo, _pid, _addr)
_ids = st.lists(st.binary(min_size=20, max_size=20), max_size=4).map(tuple)
_upd = st.builds(Update, _pid, st.sampled_from(list(Status)), st.integers(0, 5), _addr)
_ups = st.lists(_upd, max_size=3).map(tuple)
_env = st.builds(Signed, st.binary(min_size=32, max_size=32), st.binary(max_size=40),
                 st.binary(min_size=64, max_size=64))
_msgs = st.one_of(
    st.builds(Join, _addr), st.builds(JoinReply, st.lists(_info, max_size=3).map(tuple)),
    st.builds(ForwardJoin, _info, st.integers(0, 32)),
    st.builds(Neighbor, st.sampled_from(list(Priority)), _addr),
    st.builds(NeighborReply, st.booleans()), st.builds(Disconnect, st.booleans()),
    st.builds(Shuffle, _info, st.integers(0, 32), st.lists(_info, max_size=3).map(tuple)),
    st.builds(ShuffleReply, st.lists(_info, max_size=3).map(tuple)),
    st.builds(Ping, st.integers(0, 9), _ups), st.builds(Ack, st.integers(0, 9), _ups),
    st.builds(PingReq, st.integers(0, 9), _info, _ups),
    st.builds(PingReqAck, st.integers(0, 9), _pid, st.booleans(), _ups),
    st.builds(Gossip, _env, st.integers(0, 255)), st.builds(IHave, _ids),
    st.builds(Graft, _ids), st.just(Prune()), st.builds(Direct, st.binary(max_size=8)),
    st.builds(Relay, _pid, _env), st.builds(Relayed, _env),
)


@settings(max_examples=60)
@given(st.lists(st.tuples(_pid, _msgs, st.floats(0, 2)), max_size=40))
def test_any_sequence_of_hostile_messages_never_crashes(steps: list[tuple[PeerId, object, float]]) -> None:
    p = proto(OverlayConfig(network_id=b"proto"))
    now = 0.0
    for sender, msg, dt in steps:
        now += dt
        p.link_up(sender, now)
        p.receive(sender, msg, now, 100)
        p.handle_timer(max(now, p.next_deadline() or now))
        p.messages_to_send()
        events(p)
        m = p.membership
        assert len(m.active) <= p.config.active_size and p.local not in m.active
        assert all(a is None or (" " not in a and len(a) <= 256) for a in m.active.values())


# -- many peers, no trio ------------------------------------------------------------


def test_simnet_join_crash_and_broadcast() -> None:
    net = SimNet(seed=11)
    boot = net.add(identity(0))
    for i in range(1, 100):
        net.add(identity(i), bootstrap=[boot.address or ""])
        net.run_for(0.01)
    net.run_for(10)
    assert net.active_symmetric()
    mid = net.publish(identity(5).peer_id, "t", b"one")
    net.run_for(2)
    assert net.reached(mid) == 1.0
    for p in random.Random(1).sample(list(net.nodes)[1:], 30):
        net.crash(p)
    net.run_for(15)
    for i in range(3):
        origin = net.alive()[i * 7]
        mid = net.publish(origin, "t", b"after %d" % i)
        net.run_for(2)
        assert net.reached(mid) == 1.0


def test_simnet_direct_by_dial_and_by_relay() -> None:
    net = SimNet(seed=12)
    boot = net.add(identity(0))
    for i in range(1, 20):
        net.add(identity(i), bootstrap=[boot.address or ""])
        net.run_for(0.01)
    net.add(identity(50), bootstrap=[boot.address or ""], listen=False)
    net.run_for(10)
    h = identity(50).peer_id
    # a learns how to reach the hidden peer from its signed publication (relays)
    net.publish(h, "t", b"hello from behind NAT")
    net.run_for(2)
    far = next(p for p in net.nodes if p != h and not net.nodes[p].proto.connected(h))
    net.send_direct(far, h, b"to the hidden one")
    net.run_for(2)
    got = [e for e in net.nodes[h].events if isinstance(e, DirectReceived)]
    assert got and got[0].payload == b"to the hidden one" and got[0].origin == far
    assert got[0].relayed
    # and the hidden peer reaches a peer whose address it learned by dialing it
    hp = net.nodes[h].proto
    a = next(p for p in net.nodes if p != h and hp.address_of(p) and not hp.connected(p))
    net.send_direct(h, a, b"back")
    net.run_for(2)
    assert DirectReceived(h, b"back") in net.nodes[a].events
