"""SWIM failure detection of the active view (no network)."""

from __future__ import annotations

import random

from p2pfl.overlay import OverlayConfig, Send
from p2pfl.overlay._messages import Ack, PeerInfo, Ping, PingReq, PingReqAck, Status, Update
from p2pfl.overlay._swim import FailureDetector
from p2pfl.wire import PeerId

CFG = OverlayConfig(probe_interval=1.0, probe_timeout=0.3, indirect_probes=2, suspicion_timeout=2.0)


def pid(i: int) -> PeerId:
    return PeerId(bytes([i]) * 20)


ME = pid(0)


class Env:
    def __init__(self, n: int = 3) -> None:
        self.nbrs: dict[PeerId, str | None] = {pid(i): f"mem:{i}" for i in range(1, n + 1)}
        self.dead: list[PeerId] = []
        self.alive_hints: list[PeerId] = []
        self.dead_hints: list[PeerId] = []
        fd = FailureDetector(ME, CFG, random.Random(3), address="mem:0", neighbors=lambda: self.nbrs)
        fd.on_dead = lambda p, now: self.dead.append(p)
        fd.on_alive_hint = lambda p, a, now: self.alive_hints.append(p)
        fd.on_dead_hint = lambda p, now: self.dead_hints.append(p)
        fd.start(0.0)
        self.fd = fd
        self.now = 0.0

    def sends(self) -> list[Send]:
        out = [c for c in self.fd.out.commands if isinstance(c, Send)]
        self.fd.out.commands.clear()
        return out

    def tick(self, until: float, answer: frozenset[PeerId] = frozenset()) -> list[Send]:
        """Run the timers until ``until``; peers in ``answer`` ack pings at once."""
        out = []
        while (dl := self.fd.next_deadline()) is not None and dl <= until:
            self.now = dl
            self.fd.handle_timer(dl)
            for s in self.sends():
                out.append(s)
                if isinstance(s.msg, Ping) and s.peer in answer:
                    self.fd.receive(s.peer, Ack(s.msg.seq, ()), dl)
                    self.fd.heard_from(s.peer, dl)
        return out


def first_ping(e: Env) -> Send:
    while True:
        for s in e.tick(e.fd.next_deadline() or 0.0):
            if isinstance(s.msg, Ping):
                return s


def others(e: Env, p: PeerId) -> frozenset[PeerId]:
    return frozenset(q for q in e.nbrs if q != p)


def test_ping_is_answered_with_ack() -> None:
    e = Env()
    e.fd.receive(pid(5), Ping(42, ()), 0.0)
    (s,) = e.sends()
    assert s.peer == pid(5) and isinstance(s.msg, Ack) and s.msg.seq == 42


def test_acked_probe_suspects_nobody() -> None:
    e = Env()
    p = first_ping(e)
    e.fd.receive(p.peer, Ack(p.msg.seq, ()), 0.1)  # type: ignore[union-attr]
    e.fd.heard_from(p.peer, 0.1)
    e.tick(10.0, answer=frozenset(e.nbrs))
    assert not e.fd.suspects and not e.dead


def test_silent_target_indirect_probe_then_suspect_then_dead() -> None:
    e = Env()
    p = first_ping(e)
    target = p.peer
    ok = others(e, target)
    out = e.tick(e.now + CFG.probe_timeout, answer=ok)
    reqs = [s for s in out if isinstance(s.msg, PingReq)]
    assert len(reqs) == 2 and all(s.msg.target.peer == target for s in reqs)  # type: ignore[union-attr]
    assert target not in {s.peer for s in reqs}
    e.tick(e.now + CFG.probe_interval, answer=ok)
    assert target in e.fd.suspects and not e.dead
    # still silent after the suspicion timeout: dead, and DEAD is gossiped
    e.tick(e.now + CFG.suspicion_timeout + 0.01, answer=ok)
    assert e.dead == [target]
    e.fd.receive(pid(9), Ping(1, ()), e.now)
    (ack,) = e.sends()
    assert any(u.peer == target and u.status == Status.DEAD for u in ack.msg.updates)  # type: ignore[union-attr]


def test_indirect_ack_clears_the_probe() -> None:
    e = Env()
    p = first_ping(e)
    ok = others(e, p.peer)
    out = e.tick(e.now + CFG.probe_timeout, answer=ok)
    req = next(s for s in out if isinstance(s.msg, PingReq))
    e.fd.receive(req.peer, PingReqAck(req.msg.seq, p.peer, True, ()), e.now + 0.1)  # type: ignore[union-attr]
    e.tick(e.now + 0.9, answer=ok)
    assert p.peer not in e.fd.suspects and not e.dead


def test_any_message_refutes_a_suspicion() -> None:
    e = Env()
    p = first_ping(e)
    e.tick(e.now + CFG.probe_interval, answer=others(e, p.peer))
    assert p.peer in e.fd.suspects
    e.fd.heard_from(p.peer, e.now + 0.5)
    assert p.peer not in e.fd.suspects
    e.tick(e.now + 10.0, answer=frozenset(e.nbrs))
    assert not e.dead


def test_suspicion_of_ourselves_is_refuted_with_a_higher_incarnation() -> None:
    e = Env()
    e.fd.receive(pid(2), Ping(7, (Update(ME, Status.SUSPECT, 0, None),)), 0.0)
    assert e.fd.incarnation == 1
    (ack,) = e.sends()
    assert Update(ME, Status.ALIVE, 1, "mem:0") in ack.msg.updates  # type: ignore[union-attr]
    e.fd.receive(pid(2), Ping(8, (Update(ME, Status.DEAD, 0, None),)), 0.0)
    assert e.fd.incarnation == 1  # older news: nothing to refute


def test_gossip_hints_never_touch_the_active_view() -> None:
    e = Env()
    e.fd.receive(pid(2), Ping(1, (Update(pid(1), Status.DEAD, 5, None),)), 0.0)
    assert e.dead_hints == [pid(1)] and not e.dead
    e.fd.receive(pid(2), Ping(2, (Update(pid(1), Status.DEAD, 5, None),)), 0.0)
    assert e.dead_hints == [pid(1)]  # same news twice is applied once
    e.fd.receive(pid(2), Ping(3, (Update(pid(1), Status.ALIVE, 6, "mem:1"),)), 0.0)
    assert e.alive_hints == [pid(1)]


def test_ping_req_is_forwarded_and_nacked_on_timeout() -> None:
    e = Env()
    e.fd.receive(pid(1), PingReq(77, PeerInfo(pid(8), "mem:8"), ()), 0.0)
    (ping,) = e.sends()
    assert ping.peer == pid(8) and ping.address == "mem:8" and isinstance(ping.msg, Ping)
    e.fd.receive(pid(8), Ack(ping.msg.seq, ()), 0.1)
    (ok,) = e.sends()
    assert ok.peer == pid(1) and ok.msg == PingReqAck(77, pid(8), True, ())
    e.fd.receive(pid(1), PingReq(78, PeerInfo(pid(9), "mem:9"), ()), 1.0)
    e.sends()
    nack = [s for s in e.tick(1.0 + CFG.probe_timeout) if isinstance(s.msg, PingReqAck)]
    assert nack and nack[0].msg == PingReqAck(78, pid(9), False, ())


def test_forwarded_probes_are_bounded() -> None:
    e = Env()
    for i in range(CFG.max_forwarded_probes + 5):
        e.fd.receive(pid(1), PingReq(i, PeerInfo(pid(50), "mem:50"), ()), 0.0)
    out = e.sends()
    assert sum(isinstance(s.msg, Ping) for s in out) == CFG.max_forwarded_probes
    assert sum(isinstance(s.msg, PingReqAck) and not s.msg.ok for s in out) == 5


def test_every_neighbour_is_probed_once_per_round() -> None:
    e = Env(n=4)
    targets = []
    t = 0.0
    while len(targets) < 8:
        t += 0.05
        for s in e.tick(t):
            if isinstance(s.msg, Ping):
                targets.append(s.peer)
                e.fd.heard_from(s.peer, t)
    assert set(targets[:4]) == set(e.nbrs) and set(targets[4:]) == set(e.nbrs)
