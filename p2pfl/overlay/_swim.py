"""SWIM-style failure detection of the active view (Das, Gupta, Motivala, DSN 2002).

Theory of operation
-------------------
Every ``probe_interval`` a peer probes the next neighbour of its active view
(a shuffled round robin, so each neighbour is probed once per round):

1. ``PING(seq)``; the neighbour answers ``ACK(seq)`` within ``probe_timeout``.
2. Otherwise ``PING_REQ(seq, target)`` goes to ``indirect_probes`` other
   neighbours, which ping the target themselves (over a link they open on
   demand if they have none) and answer ``PING_REQ_ACK(ok)`` -- ``ok=False``
   is Lifeguard's nack, sent when the target stayed silent.
3. No answer by the end of the protocol period: the target becomes *suspect*
   for ``suspicion_timeout`` seconds; any message from it in that time clears
   the suspicion (every message is evidence of life, as in Lifeguard).
4. Still silent: it is declared *dead*; membership drops it and repairs.

With HyParView every neighbour has an open reliable link, so a link that
breaks is itself a strong failure signal: the driver reports it and membership
acts at once.  SWIM catches what links cannot: a peer that hangs, a
black-holed path, a half-open connection.

Dissemination: each PING/ACK/PING_REQ carries up to ``piggyback_max`` membership
*updates* ``(peer, ALIVE|SUSPECT|DEAD, incarnation, addr)``, each sent
``piggyback_transmissions`` times.  A peer that hears itself suspected or
declared dead at an incarnation ≥ its own *refutes* by incrementing its
incarnation and spreading ``ALIVE``.  Updates are unsigned hints, so they are
used conservatively: ``DEAD`` removes a peer from the passive view (saving a
useless dial) and ``ALIVE`` at a higher incarnation revives a peer from the
dead table, but gossip never cuts an active link -- only first-hand evidence
(our own probes, our own links) does.  A liar can therefore cost a dial or
delay a passive clean-up, never eclipse anyone.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from p2pfl.wire import PeerId

from ._config import OverlayConfig
from ._messages import Ack, PeerInfo, Ping, PingReq, PingReqAck, Status, Update
from ._util import Outbox, sample

__all__ = ["SWIM_MESSAGES", "FailureDetector"]

SWIM_MESSAGES = (Ping, Ack, PingReq, PingReqAck)
_MAX_KNOWN = 8192


class _Phase(enum.Enum):
    DIRECT = "direct"
    INDIRECT = "indirect"


@dataclass
class _Probe:
    target: PeerId
    seq: int
    phase: _Phase
    deadline: float


@dataclass
class _Forward:
    requester: PeerId
    seq: int
    target: PeerId
    deadline: float


def _no_neighbors() -> dict[PeerId, str | None]:
    return {}


def _ignore(peer: PeerId, now: float) -> None:
    return None


def _ignore_hint(peer: PeerId, addr: str | None, now: float) -> None:
    return None


class FailureDetector:
    """SWIM over the active view of one peer (see the module docstring)."""

    def __init__(
        self,
        local: PeerId,
        config: OverlayConfig,
        rng: random.Random,
        *,
        address: str | None = None,
        outbox: Outbox | None = None,
        neighbors: Callable[[], dict[PeerId, str | None]] = _no_neighbors,
    ) -> None:
        self.local = local
        self.config = config
        self.rng = rng
        self.address = address
        self.out = outbox if outbox is not None else Outbox()
        self.neighbors = neighbors
        self.on_dead: Callable[[PeerId, float], None] = _ignore
        self.on_alive_hint: Callable[[PeerId, str | None, float], None] = _ignore_hint
        self.on_dead_hint: Callable[[PeerId, float], None] = _ignore
        self.incarnation = 0
        self.suspects: dict[PeerId, float] = {}
        self._probe: _Probe | None = None
        self._order: list[PeerId] = []
        self._next_probe: float | None = None
        self._forwarded: dict[int, _Forward] = {}
        self._updates: OrderedDict[PeerId, list[object]] = OrderedDict()
        self._known: OrderedDict[PeerId, tuple[int, Status]] = OrderedDict()
        self._seq = 0
        self.probes = 0
        self.indirect = 0
        self.declared_dead = 0
        self.refutations = 0

    def start(self, now: float) -> None:
        self._next_probe = now + self.config.probe_interval * self.rng.random()

    def stop(self) -> None:
        self._next_probe = None
        self._probe = None

    # -- inputs --------------------------------------------------------------------

    def heard_from(self, peer: PeerId, now: float) -> None:
        """Any authenticated message from ``peer`` proves it alive."""
        if self._probe is not None and self._probe.target == peer:
            self._probe = None
        if peer in self.suspects:
            del self.suspects[peer]

    def send_failed(self, peer: PeerId, now: float) -> None:
        """A message to ``peer`` could not be sent: skip ahead in the probe."""
        p = self._probe
        if p is not None and p.target == peer and p.phase is _Phase.DIRECT:
            p.deadline = now
        for k, f in list(self._forwarded.items()):
            if f.target == peer:
                del self._forwarded[k]
                self.out.send(f.requester, PingReqAck(f.seq, peer, False, self._piggyback()))

    def forget(self, peer: PeerId) -> None:
        """``peer`` left the active view: stop probing or suspecting it."""
        self.suspects.pop(peer, None)
        if self._probe is not None and self._probe.target == peer:
            self._probe = None

    def receive(self, sender: PeerId, msg: object, now: float) -> None:
        if isinstance(msg, Ping):
            self._apply(msg.updates, now)
            self.out.send(sender, Ack(msg.seq, self._piggyback()))
        elif isinstance(msg, Ack):
            self._apply(msg.updates, now)
            f = self._forwarded.get(msg.seq)
            if f is not None and f.target == sender:
                del self._forwarded[msg.seq]
                self.out.send(f.requester, PingReqAck(f.seq, sender, True, self._piggyback()))
        elif isinstance(msg, PingReq):
            self._apply(msg.updates, now)
            self._on_ping_req(sender, msg, now)
        elif isinstance(msg, PingReqAck):
            self._apply(msg.updates, now)
            p = self._probe
            if p is not None and msg.ok and p.seq == msg.seq and p.target == msg.target:
                self._probe = None
                self.suspects.pop(msg.target, None)

    def _on_ping_req(self, sender: PeerId, msg: PingReq, now: float) -> None:
        target = msg.target
        if target.peer == self.local:
            self.out.send(sender, PingReqAck(msg.seq, self.local, True, self._piggyback()))
            return
        if target.peer == sender or len(self._forwarded) >= self.config.max_forwarded_probes:
            self.out.send(sender, PingReqAck(msg.seq, target.peer, False, ()))
            return
        self._seq += 1
        self._forwarded[self._seq] = _Forward(
            sender, msg.seq, target.peer, now + self.config.probe_timeout
        )
        addr = self.neighbors().get(target.peer) or target.addr
        self.out.send(target.peer, Ping(self._seq, self._piggyback()), addr)

    # -- timers --------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [d for d in (self._next_probe,) if d is not None]
        if self._probe is not None:
            ds.append(self._probe.deadline)
        if self.suspects:
            ds.append(min(self.suspects.values()))
        if self._forwarded:
            ds.append(min(f.deadline for f in self._forwarded.values()))
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        for k, f in list(self._forwarded.items()):
            if f.deadline <= now:
                del self._forwarded[k]
                self.out.send(f.requester, PingReqAck(f.seq, f.target, False, ()))
        nbrs = self.neighbors()
        p = self._probe
        if p is not None and p.deadline <= now:
            if p.target not in nbrs:
                self._probe = None
            elif p.phase is _Phase.DIRECT:
                helpers = sample(self.rng, [q for q in nbrs if q != p.target], cfg.indirect_probes)
                if helpers:
                    self.indirect += 1
                    req = PingReq(p.seq, PeerInfo(p.target, nbrs[p.target]), self._piggyback())
                    for h in helpers:
                        self.out.send(h, req)
                    p.phase = _Phase.INDIRECT
                    p.deadline = now + max(cfg.probe_timeout, cfg.probe_interval - cfg.probe_timeout)
                else:
                    self._suspect(p.target, now)
            else:
                self._suspect(p.target, now)
        for peer, dl in list(self.suspects.items()):
            if dl <= now:
                del self.suspects[peer]
                if peer in self.neighbors():
                    self.declared_dead += 1
                    inc = self._known.get(peer, (0, Status.ALIVE))[0]
                    self._note(peer, inc, Status.DEAD)
                    self._queue(Update(peer, Status.DEAD, inc, None))
                    self.on_dead(peer, now)
        if self._next_probe is not None and self._next_probe <= now:
            self._next_probe = now + cfg.probe_interval
            if self._probe is None:
                self._start_probe(now)

    def _start_probe(self, now: float) -> None:
        nbrs = self.neighbors()
        while self._order and self._order[-1] not in nbrs:
            self._order.pop()
        if not self._order:
            self._order = list(nbrs)
            self.rng.shuffle(self._order)
        if not self._order:
            return
        target = self._order.pop()
        self._seq += 1
        self.probes += 1
        self._probe = _Probe(target, self._seq, _Phase.DIRECT, now + self.config.probe_timeout)
        self.out.send(target, Ping(self._seq, self._piggyback(), True), nbrs.get(target))

    def _suspect(self, peer: PeerId, now: float) -> None:
        self._probe = None
        if peer not in self.suspects:
            self.suspects[peer] = now + self.config.suspicion_timeout
            inc = self._known.get(peer, (0, Status.ALIVE))[0]
            self._queue(Update(peer, Status.SUSPECT, inc, None))

    # -- dissemination -------------------------------------------------------------

    def _queue(self, u: Update) -> None:
        self._updates[u.peer] = [u, self.config.piggyback_transmissions]
        self._updates.move_to_end(u.peer, last=False)

    def _piggyback(self) -> tuple[Update, ...]:
        out: list[Update] = []
        for peer in list(self._updates)[: self.config.piggyback_max]:
            entry = self._updates[peer]
            u, left = entry
            assert isinstance(u, Update) and isinstance(left, int)
            out.append(u)
            if left <= 1:
                del self._updates[peer]
            else:
                entry[1] = left - 1
                self._updates.move_to_end(peer)
        return tuple(out)

    def _note(self, peer: PeerId, inc: int, status: Status) -> None:
        self._known[peer] = (inc, status)
        self._known.move_to_end(peer)
        while len(self._known) > _MAX_KNOWN:
            self._known.popitem(last=False)

    def _apply(self, updates: tuple[Update, ...], now: float) -> None:
        for u in updates:
            if u.peer == self.local:
                if u.status != Status.ALIVE and u.incarnation >= self.incarnation:
                    self.incarnation = u.incarnation + 1
                    self.refutations += 1
                    self._queue(Update(self.local, Status.ALIVE, self.incarnation, self.address))
                continue
            inc, status = self._known.get(u.peer, (-1, Status.ALIVE))
            if u.status == Status.ALIVE:
                if u.incarnation > inc or (u.incarnation == inc and status != Status.ALIVE):
                    self._note(u.peer, u.incarnation, Status.ALIVE)
                    self._queue(u)
                    self.on_alive_hint(u.peer, u.addr, now)
            elif u.status == Status.DEAD:
                if u.incarnation > inc or (u.incarnation == inc and status != Status.DEAD):
                    self._note(u.peer, u.incarnation, Status.DEAD)
                    self._queue(u)
                    self.on_dead_hint(u.peer, now)
            elif u.incarnation > inc:  # SUSPECT of someone else: remember, pass on
                self._note(u.peer, u.incarnation, Status.SUSPECT)
