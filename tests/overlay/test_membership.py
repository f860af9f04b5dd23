"""HyParView membership, one machine at a time (no network)."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.overlay import Connect, OverlayConfig, Send
from p2pfl.overlay._membership import Membership
from p2pfl.overlay._messages import (
    Disconnect,
    ForwardJoin,
    Join,
    JoinReply,
    Neighbor,
    NeighborReply,
    PeerInfo,
    Priority,
    Shuffle,
    ShuffleReply,
)
from p2pfl.wire import PeerId

CFG = OverlayConfig(active_size=3, passive_size=5, arwl=4, prwl=2, shuffle_ttl=3)


def pid(i: int) -> PeerId:
    return PeerId(bytes([i]) * 20)


def addr(i: int) -> str:
    return f"mem:{i}"


ME = pid(0)


def make(**kw: object) -> Membership:
    m = Membership(ME, CFG, random.Random(1), address=addr(0), **kw)  # type: ignore[arg-type]
    m.start(0.0)
    return m


def sends(m: Membership) -> list[Send]:
    out = [c for c in m.out.commands if isinstance(c, Send)]
    m.out.commands.clear()
    return out


def fill(m: Membership, *peers: int) -> None:
    for i in peers:
        m.receive(pid(i), Neighbor(Priority.HIGH, addr(i)), 0.0)
    sends(m)


def test_join_through_bootstrap_address() -> None:
    m = make(bootstrap=[addr(9)])
    m.handle_timer(0.0)
    assert m.out.commands == [Connect(addr(9))]
    m.out.commands.clear()
    m.link_up(pid(9), 0.1, addr(9))
    (s,) = sends(m)
    assert s.peer == pid(9) and s.msg == Join(addr(0))
    assert list(m.active) == [pid(9)]
    m.receive(pid(9), JoinReply((PeerInfo(pid(5), addr(5)), PeerInfo(pid(6), None))), 0.2)
    assert list(m.passive) == [pid(5)]  # addressless peers never enter the passive view


def test_failed_bootstrap_is_retried_with_exponential_backoff() -> None:
    m = make(bootstrap=[addr(9)])
    t = 0.0
    attempts = []
    while t < 60.0:
        m.handle_timer(t)
        if Connect(addr(9)) in m.out.commands:
            attempts.append(t)
            m.out.commands.clear()
            m.connect_failed(addr(9), t)  # refused at once
        t = m.next_deadline() or t + 1.0
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps == sorted(gaps) and gaps[0] > 0 and gaps[-1] > 4 * gaps[0]


def test_contact_adds_joiner_and_starts_one_walk_per_other_neighbour() -> None:
    m = make()
    fill(m, 1, 2)
    m.receive(pid(7), Join(addr(7)), 1.0)
    out = sends(m)
    assert pid(7) in m.active
    assert isinstance(out[0].msg, JoinReply) and out[0].peer == pid(7)
    walks = [s for s in out if isinstance(s.msg, ForwardJoin)]
    assert {s.peer for s in walks} == {pid(1), pid(2)}
    assert all(s.msg.ttl == CFG.arwl and s.msg.joiner == PeerInfo(pid(7), addr(7)) for s in walks)  # type: ignore[union-attr]
    m.receive(pid(7), Join(addr(7)), 1.1)  # a repeated JOIN starts nothing
    assert not [s for s in sends(m) if isinstance(s.msg, ForwardJoin)]


def test_forward_join_walk_passive_at_prwl_and_ends_with_high_neighbor() -> None:
    m = make()
    fill(m, 1, 2)
    m.receive(pid(1), ForwardJoin(PeerInfo(pid(7), addr(7)), CFG.prwl), 0.0)
    (s,) = sends(m)
    assert s.peer == pid(2) and s.msg == ForwardJoin(PeerInfo(pid(7), addr(7)), CFG.prwl - 1)
    assert pid(7) in m.passive
    m.receive(pid(1), ForwardJoin(PeerInfo(pid(8), addr(8)), 0), 0.0)
    (s,) = sends(m)
    assert s.peer == pid(8) and s.msg == Neighbor(Priority.HIGH, addr(0)) and s.address == addr(8)
    m.receive(pid(8), NeighborReply(True), 0.1)
    assert pid(8) in m.active


def test_forward_join_from_a_stranger_is_ignored() -> None:
    m = make()
    fill(m, 1)
    m.receive(pid(5), ForwardJoin(PeerInfo(pid(7), addr(7)), 0), 0.0)
    assert not sends(m) and pid(7) not in m.passive


def test_low_neighbor_refused_when_full_high_evicts() -> None:
    m = make()
    fill(m, 1, 2, 3)
    m.receive(pid(4), Neighbor(Priority.LOW, addr(4)), 0.0)
    assert sends(m)[0].msg == NeighborReply(False)
    assert pid(4) in m.passive and len(m.active) == 3
    m.receive(pid(5), Neighbor(Priority.HIGH, addr(5)), 0.0)
    out = sends(m)
    evicted = [s.peer for s in out if s.msg == Disconnect(alive=True)]
    assert len(evicted) == 1 and evicted[0] in m.passive
    assert NeighborReply(True) in [s.msg for s in out]
    assert pid(5) in m.active and len(m.active) == 3


def test_disconnect_moves_to_passive_and_repairs() -> None:
    m = make()
    fill(m, 1, 2, 3)
    m.receive(pid(4), Neighbor(Priority.LOW, addr(4)), 0.0)  # 4 lands in the passive view
    sends(m)
    m.receive(pid(1), Disconnect(alive=True), 1.0)
    assert pid(1) in m.passive and pid(1) not in m.active
    m.handle_timer(1.0)
    reqs = [s for s in sends(m) if isinstance(s.msg, Neighbor)]
    assert len(reqs) == 1 and reqs[0].peer in (pid(1), pid(4))
    assert reqs[0].msg.priority == Priority.HIGH  # type: ignore[union-attr]  # 2 < high_priority_below


def test_leaving_peer_is_forgotten() -> None:
    m = make()
    fill(m, 1, 2)
    m.receive(pid(1), Disconnect(alive=False), 1.0)
    assert pid(1) not in m.active and pid(1) not in m.passive and pid(1) not in m.dead


def test_failed_neighbour_goes_to_dead_table_and_is_reconnected_later() -> None:
    m = make()
    fill(m, 1, 2)
    m.link_down(pid(1), 5.0)
    assert pid(1) not in m.active and pid(1) in m.dead
    t = 5.0
    reconnect = None
    while t < 5.0 + 3 * CFG.reconnect_interval and reconnect is None:
        t = max(t + 0.01, m.next_deadline() or t + 1)
        m.handle_timer(t)
        reconnect = next(
            (s for s in sends(m) if s.peer == pid(1) and isinstance(s.msg, Neighbor)), None
        )
    assert reconnect is not None and reconnect.msg.priority == Priority.HIGH  # type: ignore[union-attr]
    assert reconnect.address == addr(1)
    m.receive(pid(1), NeighborReply(True), t + 0.1)
    assert pid(1) in m.active and pid(1) not in m.dead


def test_unreachable_reconnect_backs_off() -> None:
    m = make()
    fill(m, 1)
    m.link_down(pid(1), 0.0)
    first = m.dead[pid(1)].backoff
    m._request(pid(1), addr(1), Priority.HIGH, 1.0, reconnect=True)
    m.send_failed(pid(1), 1.1)
    assert m.dead[pid(1)].backoff == 2 * first


def test_shuffle_walk_forwarded_then_answered_from_passive() -> None:
    m = make()
    fill(m, 1, 2)
    for i in (4, 5):
        m.receive(pid(i), JoinReply(()), 0.0)
        m._add_passive(pid(i), addr(i))
    entries = (PeerInfo(pid(20), addr(20)), PeerInfo(pid(21), addr(21)))
    m.receive(pid(1), Shuffle(PeerInfo(pid(9), addr(9)), 3, entries), 0.0)
    (s,) = sends(m)
    assert s.peer == pid(2) and isinstance(s.msg, Shuffle) and s.msg.ttl == 2
    m.receive(pid(1), Shuffle(PeerInfo(pid(9), addr(9)), 1, entries), 0.0)
    (s,) = sends(m)
    assert s.peer == pid(9) and s.address == addr(9) and isinstance(s.msg, ShuffleReply)
    assert {pid(9), pid(20), pid(21)} <= set(m.passive)
    assert len(m.passive) <= CFG.passive_size


def test_own_shuffle_and_reply_integrate() -> None:
    m = make()
    fill(m, 1)
    m._next_shuffle = 0.0
    m.handle_timer(0.0)
    (s,) = [x for x in sends(m) if isinstance(x.msg, Shuffle)]
    assert s.peer == pid(1) and s.msg.origin == PeerInfo(ME, addr(0))  # type: ignore[union-attr]
    m.receive(pid(30), ShuffleReply((PeerInfo(pid(31), addr(31)),)), 0.5)
    assert pid(31) in m.passive
    m.receive(pid(30), ShuffleReply((PeerInfo(pid(32), addr(32)),)), 0.6)  # only one reply
    assert pid(32) not in m.passive


def test_graylisted_peers_never_enter_views() -> None:
    bad = pid(66)
    m = make(is_graylisted=lambda p: p == bad)
    fill(m, 1)
    m.receive(pid(1), ForwardJoin(PeerInfo(bad, addr(66)), 0), 0.0)
    m.receive(pid(1), ShuffleReply((PeerInfo(bad, addr(66)),)), 0.0)
    m._integrate((PeerInfo(bad, addr(66)),), ())
    assert bad not in m.active and bad not in m.passive and not sends(m)


_peer = st.integers(1, 12)
_info = st.builds(lambda i, a: PeerInfo(pid(i), addr(i) if a else None), st.integers(0, 12), st.booleans())
_msg = st.one_of(
    st.builds(Join, st.sampled_from([None, "mem:x"])),
    st.builds(JoinReply, st.lists(_info, max_size=5).map(tuple)),
    st.builds(ForwardJoin, _info, st.integers(0, 32)),
    st.builds(Neighbor, st.sampled_from(list(Priority)), st.sampled_from([None, "mem:y"])),
    st.builds(NeighborReply, st.booleans()),
    st.builds(Disconnect, st.booleans()),
    st.builds(Shuffle, _info, st.integers(0, 32), st.lists(_info, max_size=6).map(tuple)),
    st.builds(ShuffleReply, st.lists(_info, max_size=6).map(tuple)),
)
_step = st.one_of(
    st.tuples(st.just("msg"), _peer, _msg),
    st.tuples(st.just("down"), _peer, st.none()),
    st.tuples(st.just("failed"), _peer, st.none()),
    st.tuples(st.just("timer"), st.just(0), st.none()),
)


@settings(max_examples=80)
@given(st.lists(_step, max_size=60))
def test_invariants_under_any_message_sequence(steps: list[tuple[str, int, object]]) -> None:
    m = make(bootstrap=[addr(99)])
    now = 0.0
    for kind, i, msg in steps:
        now += 0.3
        if kind == "msg":
            m.receive(pid(i), msg, now)
        elif kind == "down":
            m.link_down(pid(i), now)
        elif kind == "failed":
            m.send_failed(pid(i), now)
        else:
            m.handle_timer(max(now, m.next_deadline() or now))
        assert len(m.active) <= CFG.active_size
        assert len(m.passive) <= CFG.passive_size
        assert len(m.dead) <= CFG.dead_table_size
        assert ME not in m.active and ME not in m.passive
        assert not set(m.active) & set(m.passive)
        assert all(a is not None for a in m.passive.values())
        m.out.commands.clear()


def _refresh_due(m: Membership, t: float) -> list[object]:
    """Run the timers from ``t`` for 40 s; the Connect commands they issue."""
    out: list[object] = []
    end = t + 40.0
    while t < end:
        m.handle_timer(t)
        out += [c for c in m.out.commands if isinstance(c, Connect)]
        m.out.commands.clear()
        t = min(m.next_deadline() or end, end)
        if out:
            return out
    return out


def test_bootstrap_refresh_asks_a_bootstrap_peer_that_is_not_a_neighbour() -> None:
    """Joined through one bootstrap, view not full: the other bootstrap address is dialed
    and asked for a LOW-priority NEIGHBOR (it merges components joined concurrently)."""
    m = make(bootstrap=[addr(9), addr(8)])
    m.handle_timer(0.0)
    (first,) = [c for c in m.out.commands if isinstance(c, Connect)]
    m.out.commands.clear()
    joined = int(first.address.split(":")[1])
    other = 17 - joined
    m.link_up(pid(joined), 0.1, first.address)
    sends(m)
    assert _refresh_due(m, 0.2) == [Connect(addr(other))]
    m.link_up(pid(other), 12.0, addr(other))
    (s,) = sends(m)
    assert s.peer == pid(other) and s.msg == Neighbor(Priority.LOW, addr(0))
    m.receive(pid(other), NeighborReply(True), 12.1)
    assert set(m.active) == {pid(9), pid(8)}
    assert _refresh_due(m, 12.2) == []  # every bootstrap peer is a neighbour now


def test_bootstrap_refresh_stays_quiet_when_the_view_is_full() -> None:
    m = make(bootstrap=[addr(9), addr(8)])
    m.handle_timer(0.0)
    (first,) = [c for c in m.out.commands if isinstance(c, Connect)]
    m.out.commands.clear()
    m.link_up(pid(int(first.address.split(":")[1])), 0.1, first.address)
    fill(m, 1, 2)  # active_size 3: full
    assert _refresh_due(m, 0.2) == []
