"""HyParView membership (Leitão, Pereira, Rodrigues, DSN 2007), sans-I/O.

Theory of operation
-------------------
Each peer keeps two partial views of the network:

* the **active view** (``active_size`` ≈ log2(n) + c peers) -- symmetric
  neighbour relations, each backed by an open link; broadcast and failure
  detection run over it;
* the **passive view** (``passive_size`` peers, addresses only, no links) --
  a reservoir of candidates to repair the active view.

Messages (all over authenticated links; the link tells who sent them):

``JOIN(addr)``  newcomer → contact (a bootstrap address).  The contact adds the
    newcomer to its active view, answers ``JOIN_REPLY(sample)`` and starts one
    ``FORWARD_JOIN(newcomer, ttl=ARWL)`` random walk per other active neighbour.
``FORWARD_JOIN(joiner, ttl)``  the walk: a peer at ``ttl == PRWL`` also puts the
    joiner in its passive view; the walk ends (``ttl == 0`` or the peer has no
    other neighbour) with a ``NEIGHBOR(HIGH)`` to the joiner.
``NEIGHBOR(priority, addr)`` / ``NEIGHBOR_REPLY(accepted)``  ask to become
    active neighbours.  HIGH (the asker has an empty active view, ends a join
    walk, or reconnects after a failure) is always accepted, evicting a random
    neighbour if the view is full; LOW only when there is room.
``DISCONNECT(alive)``  the sender dropped us (evicted us, or is leaving).
``SHUFFLE(origin, ttl, entries)`` / ``SHUFFLE_REPLY(entries)``  every
    ``shuffle_interval`` a random walk carries a sample of the origin's views;
    where it ends, a sample of that peer's passive view goes straight back to
    the origin and both integrate what they received (evicting first what they
    sent).

Evicting or losing a neighbour never closes the link by itself (messages in
flight would be lost); the driver closes idle links no protocol wants.

Failures: when a neighbour's links all break, or failure detection declares it
dead, it leaves the active view and the view is **repaired** by NEIGHBOR
requests to random passive peers (at most ``repair_parallel`` at a time,
HIGH when the active view is below ``high_priority_below``).  A peer that
could not be reached goes to a small **dead table** and is retried with
exponential backoff (one per ``reconnect_interval``) for ``dead_retention``
seconds: this is what heals a partition, because both sides still remember
peers of the other side and reconnect to them with a HIGH NEIGHBOR once the
network lets them.  A peer isolated for ``rejoin_after`` seconds joins again
through its bootstrap addresses.

Addresses: a peer without a dialable address (it only connects out) can be an
active neighbour but never enters a passive view and cannot end a join walk;
it fills its active view from the JOIN_REPLY sample and shuffles.  Addresses
are *hints*: links authenticate peer ids, so a wrong hint only costs a dial.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from p2pfl.wire import PeerId

from ._config import OverlayConfig
from ._messages import (
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
from ._util import Connect, Outbox, sample

__all__ = ["MEMBERSHIP_MESSAGES", "Membership"]

MEMBERSHIP_MESSAGES = (
    Join,
    JoinReply,
    ForwardJoin,
    Neighbor,
    NeighborReply,
    Disconnect,
    Shuffle,
    ShuffleReply,
)
_SAMPLE = 8


@dataclass
class _Pending:
    deadline: float
    addr: str | None
    reconnect: bool


@dataclass
class _Dead:
    addr: str
    since: float
    next_try: float
    backoff: float


PeerCallback = Callable[[PeerId, float], None]


def _nothing(peer: PeerId, now: float) -> None:
    return None


class Membership:
    """The HyParView state machine of one peer (see the module docstring)."""

    def __init__(
        self,
        local: PeerId,
        config: OverlayConfig,
        rng: random.Random,
        *,
        address: str | None = None,
        bootstrap: Sequence[str] = (),
        outbox: Outbox | None = None,
        is_graylisted: Callable[[PeerId], bool] = lambda p: False,
    ) -> None:
        self.local = local
        self.config = config
        self.rng = rng
        self.address = address
        self.out = outbox if outbox is not None else Outbox()
        self.is_graylisted = is_graylisted
        self.on_neighbor_up: PeerCallback = _nothing
        self.on_neighbor_down: PeerCallback = _nothing
        self.active: dict[PeerId, str | None] = {}
        self.passive: dict[PeerId, str] = {}
        self.pending: dict[PeerId, _Pending] = {}
        self.dead: OrderedDict[PeerId, _Dead] = OrderedDict()
        self._bootstrap = [a for a in dict.fromkeys(bootstrap) if a != address]
        self._join_attempts: dict[str, float] = {}
        self._bootstrap_peer: dict[str, PeerId] = {}  # bootstrap address -> who answered
        self._refresh_dials: dict[str, float] = {}  # address -> give-up time
        self._next_refresh: float | None = None
        self._refresh_backoff = config.bootstrap_refresh
        self._joined_via: dict[PeerId, float] = {}
        self._next_join: float | None = None
        self._last_join = -math.inf
        self._joined_once = False
        self._join_backoff = config.repair_interval
        self._next_repair: float | None = None
        self._repair_not_before = 0.0
        self._repair_backoff = config.repair_interval
        self._next_shuffle: float | None = None
        self._shuffle_sent: tuple[PeerId, ...] = ()
        self._shuffle_deadline = -1.0
        self._next_reconnect: float | None = None
        self._empty_since: float | None = None
        self.joins_handled = 0
        self.shuffles = 0

    # -- lifecycle -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: join through a bootstrap address (if any) and arm the timers."""
        self.rng.shuffle(self._bootstrap)
        self._next_shuffle = now + self.config.shuffle_interval * (0.5 + self.rng.random())
        self._empty_since = now
        if self._bootstrap:
            self._next_join = now
            if self.config.bootstrap_refresh > 0:
                self._next_refresh = now + self.config.bootstrap_refresh * (
                    0.5 + self.rng.random())

    def leave(self, now: float) -> None:
        """Tell every neighbour we are leaving (``DISCONNECT(alive=False)``)."""
        for p in list(self.active):
            self.out.send(p, Disconnect(alive=False))
            del self.active[p]
            self.on_neighbor_down(p, now)
        self.pending.clear()
        self._next_join = self._next_repair = self._next_shuffle = self._next_reconnect = None
        self._next_refresh = None
        self._refresh_dials.clear()
        self._bootstrap = []

    # -- inputs from the driver ------------------------------------------------------

    def link_up(self, peer: PeerId, now: float, address: str | None) -> None:
        """A link to ``peer`` opened; ``address`` is what we dialed (None if inbound)."""
        if address is not None and self._refresh_dials.pop(address, None) is not None:
            self._bootstrap_peer[address] = peer
            self._request(peer, address, Priority.LOW, now)  # only if it has room
            return
        if address is None or address not in self._join_attempts:
            return
        del self._join_attempts[address]
        self._bootstrap_peer[address] = peer
        if peer == self.local or self.is_graylisted(peer):
            self._maybe_rejoin(now)
            return
        self.out.send(peer, Join(self.address))
        self._joined_once = True
        self._joined_via[peer] = now + self.config.join_timeout
        self._add_active(peer, address, now)

    def connect_failed(self, address: str, now: float) -> None:
        """A :class:`Connect` (bootstrap dial) failed."""
        self._refresh_dials.pop(address, None)
        if self._join_attempts.pop(address, None) is not None:
            self._maybe_rejoin(now)

    def link_down(self, peer: PeerId, now: float) -> None:
        """Every link to ``peer`` is gone: a neighbour failed (or a request did)."""
        if peer in self.active:
            self.peer_failed(peer, now)
        elif peer in self.pending:
            self._request_failed(peer, now)

    def send_failed(self, peer: PeerId, now: float) -> None:
        """Messages to ``peer`` could not be delivered (dial failed, no route)."""
        if peer in self.active:
            self.peer_failed(peer, now)
        elif peer in self.pending:
            self._request_failed(peer, now)
        else:
            addr = self.passive.pop(peer, None)
            if addr is not None:
                self._bury(peer, addr, now)

    def peer_failed(self, peer: PeerId, now: float) -> None:
        """Failure detection declared ``peer`` dead: drop it and repair."""
        was_active = peer in self.active
        addr = self.active.pop(peer) if was_active else self.passive.get(peer)
        self.passive.pop(peer, None)
        self.pending.pop(peer, None)
        if addr is not None:
            self._bury(peer, addr, now)
        if was_active:
            self._lost_neighbor(peer, now)
        self._schedule_repair(now)

    def remove(self, peer: PeerId, now: float) -> None:
        """Forget ``peer`` entirely (it was graylisted)."""
        was_active = peer in self.active
        self.active.pop(peer, None)
        self.passive.pop(peer, None)
        self.pending.pop(peer, None)
        self.dead.pop(peer, None)
        if was_active:
            self._lost_neighbor(peer, now)
        self._schedule_repair(now)

    def hint_alive(self, peer: PeerId, addr: str | None, now: float) -> None:
        """Someone says ``peer`` is alive at ``addr``: a passive candidate again."""
        if peer in self.dead and addr is not None:
            del self.dead[peer]
            self._add_passive(peer, addr)

    def hint_dead(self, peer: PeerId, now: float) -> None:
        """Someone says ``peer`` is dead: stop offering it (never cuts an active link)."""
        self.passive.pop(peer, None)

    # -- messages -----------------------------------------------------------------

    def receive(self, sender: PeerId, msg: object, now: float) -> None:
        """Handle one membership message from ``sender`` (authenticated by the link)."""
        if isinstance(msg, Join):
            self._on_join(sender, msg, now)
        elif isinstance(msg, ForwardJoin):
            self._on_forward_join(sender, msg, now)
        elif isinstance(msg, Neighbor):
            self._on_neighbor(sender, msg, now)
        elif isinstance(msg, NeighborReply):
            self._on_neighbor_reply(sender, msg, now)
        elif isinstance(msg, Disconnect):
            self._on_disconnect(sender, msg, now)
        elif isinstance(msg, Shuffle):
            self._on_shuffle(sender, msg, now)
        elif isinstance(msg, ShuffleReply):
            if now <= self._shuffle_deadline:
                self._integrate(msg.entries, self._shuffle_sent)
                self._shuffle_deadline = -1.0  # one reply per shuffle
        elif isinstance(msg, JoinReply) and self._joined_via.pop(sender, 0.0) >= now:
            self._join_backoff = self.config.repair_interval  # the join worked
            self._integrate(msg.peers, ())
            self._schedule_repair(now)

    def _on_join(self, sender: PeerId, msg: Join, now: float) -> None:
        if sender == self.local or sender in self.active:
            return  # a repeated JOIN never starts new walks (no amplification)
        self.joins_handled += 1
        self._add_active(sender, msg.addr, now)
        pool = [p for p in self.active if p != sender] + [
            p for p in self.passive if p != sender
        ]
        entries = tuple(PeerInfo(p, self._addr(p)) for p in sample(self.rng, pool, _SAMPLE))
        self.out.send(sender, JoinReply(tuple(e for e in entries if e.addr is not None)))
        if msg.addr is not None:
            fj = ForwardJoin(PeerInfo(sender, msg.addr), self.config.arwl)
            for p in self.active:
                if p != sender:
                    self.out.send(p, fj)

    def _on_forward_join(self, sender: PeerId, msg: ForwardJoin, now: float) -> None:
        j = msg.joiner
        if sender not in self.active or j.addr is None:
            return
        if j.peer == self.local or j.peer in self.active or self.is_graylisted(j.peer):
            return
        ttl = min(msg.ttl, self.config.arwl)
        if ttl == 0 or len(self.active) <= 1:
            self._request(j.peer, j.addr, Priority.HIGH, now)
            return
        if ttl == self.config.prwl:
            self._add_passive(j.peer, j.addr)
        nxt = [p for p in self.active if p != sender and p != j.peer]
        if not nxt:
            self._request(j.peer, j.addr, Priority.HIGH, now)
            return
        self.out.send(self.rng.choice(nxt), ForwardJoin(j, ttl - 1))

    def _on_neighbor(self, sender: PeerId, msg: Neighbor, now: float) -> None:
        if sender == self.local:
            return
        if sender in self.active:
            if msg.addr is not None:
                self.active[sender] = msg.addr
            self.out.send(sender, NeighborReply(True))
            return
        if msg.priority == Priority.HIGH or len(self.active) < self.config.active_size:
            self.pending.pop(sender, None)
            self._add_active(sender, msg.addr, now)
            self.out.send(sender, NeighborReply(True))
        else:
            self.out.send(sender, NeighborReply(False))
            if msg.addr is not None:
                self._add_passive(sender, msg.addr)

    def _on_neighbor_reply(self, sender: PeerId, msg: NeighborReply, now: float) -> None:
        p = self.pending.pop(sender, None)
        if p is None:
            if msg.accepted and sender not in self.active:
                self.out.send(sender, Disconnect(alive=True))  # we gave up waiting
            return
        if msg.accepted:
            self.dead.pop(sender, None)
            self._add_active(sender, p.addr, now)
            self._repair_backoff = self.config.repair_interval
        else:
            if p.reconnect:
                self.dead.pop(sender, None)
            if p.addr is not None:
                self._add_passive(sender, p.addr)
            # refused: the others are full; try again later and later
            self._repair_backoff = min(2 * self._repair_backoff, 3 * self.config.shuffle_interval)
            self._repair_not_before = now + self._repair_backoff
        self._schedule_repair(now)

    def _on_disconnect(self, sender: PeerId, msg: Disconnect, now: float) -> None:
        self.pending.pop(sender, None)
        was_active = sender in self.active
        addr = self.active.pop(sender, None)
        if msg.alive:
            if addr is not None:
                self._add_passive(sender, addr)
        else:
            self.passive.pop(sender, None)
            self.dead.pop(sender, None)
        if was_active:
            self._lost_neighbor(sender, now)
        self._schedule_repair(now)

    def _on_shuffle(self, sender: PeerId, msg: Shuffle, now: float) -> None:
        if sender not in self.active or msg.origin.peer == self.local:
            return
        ttl = min(msg.ttl, self.config.shuffle_ttl) - 1
        if ttl > 0 and len(self.active) > 1:
            nxt = [p for p in self.active if p != sender and p != msg.origin.peer]
            if nxt:
                self.out.send(self.rng.choice(nxt), Shuffle(msg.origin, ttl, msg.entries))
                return
        mine = sample(self.rng, list(self.passive), len(msg.entries))
        if msg.origin.addr is not None or msg.origin.peer in self.active:
            reply = ShuffleReply(tuple(PeerInfo(p, self.passive[p]) for p in mine))
            self.out.send(msg.origin.peer, reply, msg.origin.addr)
        self._integrate((msg.origin, *msg.entries), tuple(mine))

    # -- timers -------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [
            d
            for d in (self._next_join, self._next_repair, self._next_shuffle, self._next_reconnect,
                      self._next_refresh)
            if d is not None
        ]
        ds.extend(p.deadline for p in self.pending.values())
        ds.extend(self._join_attempts.values())
        ds.extend(self._refresh_dials.values())
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        for addr, dl in [*self._join_attempts.items(), *self._refresh_dials.items()]:
            if dl <= now:
                self.connect_failed(addr, now)
        for peer, p in list(self.pending.items()):
            if p.deadline <= now:
                self._request_failed(peer, now)
        for peer, dl in list(self._joined_via.items()):
            if dl < now:
                del self._joined_via[peer]
        if self.active:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = now
        if self._next_join is not None and self._next_join <= now:
            self._next_join = None
            if not self.active or not self._joined_once:  # still isolated (or never joined)
                self._join(now)
        if self._next_repair is not None and self._next_repair <= now:
            self._next_repair = None
            self._repair(now)
        if self._next_shuffle is not None and self._next_shuffle <= now:
            self._next_shuffle = now + cfg.shuffle_interval * (0.75 + 0.5 * self.rng.random())
            self._shuffle(now)
        if self._next_reconnect is not None and self._next_reconnect <= now:
            self._next_reconnect = None
            self._reconnect(now)
        if self._next_refresh is not None and self._next_refresh <= now:
            self._refresh(now)
            self._next_refresh = now + self._refresh_backoff * (0.75 + 0.5 * self.rng.random())
        self._maybe_rejoin(now)

    # -- internals -----------------------------------------------------------------

    def _addr(self, peer: PeerId) -> str | None:
        a = self.active.get(peer)
        return a if a is not None else self.passive.get(peer)

    def _add_active(self, peer: PeerId, addr: str | None, now: float) -> None:
        if peer == self.local:
            return
        if peer in self.active:
            if addr is not None:
                self.active[peer] = addr
            return
        if len(self.active) >= self.config.active_size:
            victim = self.rng.choice([p for p in self.active if p != peer])
            vaddr = self.active.pop(victim)
            self.out.send(victim, Disconnect(alive=True))
            if vaddr is not None:
                self._add_passive(victim, vaddr)
            self.on_neighbor_down(victim, now)
        self.passive.pop(peer, None)
        self.pending.pop(peer, None)
        self.dead.pop(peer, None)
        self.active[peer] = addr
        self._empty_since = None
        self.on_neighbor_up(peer, now)
        self._schedule_repair(now)

    def _add_passive(self, peer: PeerId, addr: str) -> None:
        if peer == self.local or peer in self.active or self.is_graylisted(peer):
            return
        if peer in self.passive:
            self.passive[peer] = addr
            return
        if len(self.passive) >= self.config.passive_size:
            del self.passive[self.rng.choice(list(self.passive))]
        self.passive[peer] = addr

    def _integrate(self, entries: Sequence[PeerInfo], sent: Sequence[PeerId]) -> None:
        drop_first = [p for p in sent if p in self.passive]
        for e in entries:
            p = e.peer
            if e.addr is None or p == self.local or p in self.active or self.is_graylisted(p):
                continue
            if p in self.passive:
                self.passive[p] = e.addr
                continue
            if len(self.passive) >= self.config.passive_size:
                victim = drop_first.pop() if drop_first else self.rng.choice(list(self.passive))
                self.passive.pop(victim, None)
            self.passive[p] = e.addr

    def _request(
        self, peer: PeerId, addr: str | None, priority: Priority, now: float, reconnect: bool = False
    ) -> None:
        if peer == self.local or peer in self.active or peer in self.pending:
            return
        if self.is_graylisted(peer):
            return
        self.pending[peer] = _Pending(now + self.config.neighbor_timeout, addr, reconnect)
        self.out.send(peer, Neighbor(priority, self.address), addr)

    def _request_failed(self, peer: PeerId, now: float) -> None:
        p = self.pending.pop(peer, None)
        self.passive.pop(peer, None)
        if p is not None and p.addr is not None:
            d = self.dead.get(peer)
            if p.reconnect and d is not None:
                d.backoff = min(d.backoff * 2, self.config.reconnect_backoff_max)
                d.next_try = now + d.backoff
                self._arm_reconnect(now)
            else:
                self._bury(peer, p.addr, now)
        self._schedule_repair(now)

    def _bury(self, peer: PeerId, addr: str, now: float) -> None:
        cfg = self.config
        if peer in self.dead or cfg.dead_table_size == 0:
            return
        self.dead[peer] = _Dead(addr, now, now + cfg.reconnect_interval, cfg.reconnect_interval)
        while len(self.dead) > cfg.dead_table_size:
            self.dead.popitem(last=False)
        self._arm_reconnect(now)

    def _arm_reconnect(self, now: float) -> None:
        if self._next_reconnect is None and self.dead:
            self._next_reconnect = now + self.config.reconnect_interval * (
                0.5 + self.rng.random()
            )

    def _reconnect(self, now: float) -> None:
        cfg = self.config
        for peer, d in list(self.dead.items()):
            if now - d.since > cfg.dead_retention or peer in self.active:
                del self.dead[peer]
        due = [p for p, d in self.dead.items() if d.next_try <= now and p not in self.pending]
        if due:
            peer = self.rng.choice(due)
            d = self.dead[peer]
            d.next_try = now + d.backoff  # provisional, until the attempt ends
            self._request(peer, d.addr, Priority.HIGH, now, reconnect=True)
        self._arm_reconnect(now)

    def _lost_neighbor(self, peer: PeerId, now: float) -> None:
        """An active neighbour is gone: repair promptly again."""
        self._repair_backoff = self.config.repair_interval
        self._repair_not_before = min(self._repair_not_before, now)
        self._refresh_backoff = self.config.bootstrap_refresh
        self.on_neighbor_down(peer, now)

    def _schedule_repair(self, now: float) -> None:
        if not self.active:
            self._maybe_rejoin(now)
        if len(self.active) + len(self.pending) < self.config.active_size:
            at = max(now, self._repair_not_before)
            if self._next_repair is None or at < self._next_repair:
                self._next_repair = at

    def _repair(self, now: float) -> None:
        cfg = self.config
        need = cfg.active_size - len(self.active) - len(self.pending)
        if need <= 0:
            return
        slots = min(need, max(0, cfg.repair_parallel - len(self.pending)))
        candidates = [p for p in self.passive if p not in self.pending]
        prio = Priority.HIGH if len(self.active) < cfg.high_priority_below else Priority.LOW
        for peer in sample(self.rng, candidates, slots):
            self._request(peer, self.passive[peer], prio, now)
        self._repair_not_before = self._next_repair = now + self._repair_backoff

    def _shuffle(self, now: float) -> None:
        cfg = self.config
        if not self.active:
            return
        target = self.rng.choice(list(self.active))
        act = sample(self.rng, [p for p in self.active if p != target], cfg.shuffle_active)
        pas = sample(self.rng, list(self.passive), cfg.shuffle_passive)
        entries = tuple(
            PeerInfo(p, a) for p in act + pas if (a := self._addr(p)) is not None
        )
        self._shuffle_sent = tuple(pas)
        self._shuffle_deadline = now + cfg.shuffle_interval / 2
        self.shuffles += 1
        me = PeerInfo(self.local, self.address)
        self.out.send(target, Shuffle(me, cfg.shuffle_ttl, entries))

    def _maybe_rejoin(self, now: float) -> None:
        """Isolated (no neighbour, and repair from the passive view is not working):
        schedule a JOIN through a bootstrap address, with exponential backoff."""
        if self.active or self._join_attempts or self._next_join is not None or not self._bootstrap:
            return
        if self._empty_since is None:
            self._empty_since = now
        at = self._empty_since + (self.config.rejoin_after if self.passive else 0.0)
        self._next_join = max(now, at, self._last_join + self._join_backoff)

    def _refresh(self, now: float) -> None:
        """Not isolated, view not full: ask one bootstrap peer that is not a neighbour
        for a LOW-priority NEIGHBOR (accepted only where it has room: no eviction, no
        walks).  Concurrent joins through different bootstraps can leave components
        that never hear of each other (their passive views hold only their own
        members); the bootstrap list is the one address set known to span them.  Each
        refresh doubles the interval (up to 16x), so a full network is not pestered."""
        cfg = self.config
        if (not self.active or self._join_attempts or self._refresh_dials
                or not self._joined_once
                or len(self.active) + len(self.pending) >= cfg.active_size):
            return
        known = {a.partition("#")[0] for a in self.active.values() if a is not None}
        for addr in self._bootstrap:
            peer = self._bootstrap_peer.get(addr)
            if peer == self.local or peer in self.active or peer in self.pending:
                continue
            if addr.partition("#")[0] in known:
                continue
            self._bootstrap.remove(addr)
            self._bootstrap.append(addr)  # the next refresh tries the next one
            self._refresh_dials[addr] = now + cfg.join_timeout
            self._refresh_backoff = min(2 * self._refresh_backoff, 16 * cfg.bootstrap_refresh)
            self.out.commands.append(Connect(addr))
            return

    def _join(self, now: float) -> None:
        if not self._bootstrap or self._join_attempts:
            return
        addr = self._bootstrap.pop(0)
        self._bootstrap.append(addr)
        self._join_attempts[addr] = now + self.config.join_timeout
        if self._last_join > -math.inf:
            self._join_backoff = min(2 * self._join_backoff, self.config.reconnect_backoff_max)
        self._last_join = now
        self.out.commands.append(Connect(addr))
