"""The overlay protocol of one peer: membership + failure detection + broadcast + scoring.

Theory of operation
-------------------
:class:`OverlayProtocol` is the one sans-I/O object a driver talks to.  It owns
the three protocol machines (:class:`~._membership.Membership`,
:class:`~._swim.FailureDetector`, :class:`~._plumtree.Broadcast`), the
:class:`~._scoring.Scoreboard`, per-link token buckets, an address book and
direct-message routing, and wires them together with callbacks (a neighbour
that comes up in membership becomes an eager link in Plumtree and a probe
target in SWIM; a peer SWIM declares dead leaves membership; ...).

Driver contract (h11 style; every input takes ``now``)::

    link_up(peer, now, address=None) -> bool    # False: close this link (graylisted)
    link_down(peer, now)                        # once per link that closed
    connect_failed(address, now)                # a Connect command failed
    send_failed(peer, now, unsent=())           # messages to peer were not sent
    receive(sender, msg, now, size=0)           # a decoded message from a link
    receive_malformed(sender, error, now)       # an undecodable frame
    handle_timer(now); next_deadline()
    messages_to_send() -> [Send | Connect | Close]
    next_event() -> Delivered | DirectReceived | ... | None

Every input is hostile until checked: the codec has validated types and
sizes; here every address and topic is checked, every neighbour has a token
bucket (messages and bytes per second), and anything invalid, unknown or
misplaced lowers the sender's score.  A graylisted peer's messages are dropped
before any processing and its links are refused.

Direct messages (for point-to-point protocol stages): ``send_direct(peer,
payload)`` uses an open link to the peer when there is one, otherwise dials
the peer's address (learned from membership messages, or -- authenticated --
from the peer's own signed publications), otherwise asks one of the peer's
*relays* (neighbours it listed in its publications because it has no
address) to pass on a signed copy: ``RELAY(to, signed)`` → ``RELAYED(signed)``.
A relay forwards only to a peer it has a link to, only envelopes signed by the
requester itself, and verifies them first; the addressee verifies again.
Delivery is best effort: callers that need it acknowledge at their level.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.identity import Identity, Signed, seal, verify_signature
from p2pfl.wire import PeerId, decode_as

from ._config import OverlayConfig
from ._events import (
    DirectFailed,
    DirectReceived,
    NeighborDown,
    NeighborUp,
    OverlayStatistics,
    PeerFailed,
    PeerGraylisted,
)
from ._membership import MEMBERSHIP_MESSAGES, Membership
from ._messages import (
    Direct,
    DirectBody,
    Disconnect,
    ForwardJoin,
    Gossip,
    Graft,
    IHave,
    Join,
    JoinReply,
    Neighbor,
    PeerInfo,
    Ping,
    PingReq,
    Prune,
    Publication,
    Relay,
    Relayed,
    Shuffle,
    ShuffleReply,
    valid_address,
)
from ._plumtree import BROADCAST_MESSAGES, Broadcast, message_id
from ._scoring import Offense, Scoreboard
from ._swim import SWIM_MESSAGES, FailureDetector
from ._util import Close, Command, ExpiringSet, Outbox, TokenBucket

__all__ = ["OverlayProtocol", "PeerRecord", "PeerUnreachable"]

_TREE = (Gossip, IHave, Graft, Prune)


class PeerUnreachable(LocalProtocolError):
    """No link, address or relay is known for the peer of a direct message."""


@dataclass
class PeerRecord:
    """What we know about a peer: how to reach it and when it last proved alive."""

    addr: str | None = None
    relays: tuple[PeerInfo, ...] = ()
    last_seen: float = float("-inf")
    failed_at: float = float("-inf")


class OverlayProtocol:
    """All overlay protocols of one peer behind one sans-I/O interface."""

    def __init__(
        self,
        identity: Identity,
        config: OverlayConfig | None = None,
        *,
        rng: random.Random,
        address: str | None = None,
        bootstrap: Sequence[str] = (),
        wall_offset: float = 0.0,
    ) -> None:
        cfg = config if config is not None else OverlayConfig()
        if address is not None and not valid_address(address):
            raise LocalProtocolError(f"invalid local address {address!r}")
        self.identity = identity
        self.local = identity.peer_id
        self.config = cfg
        self.rng = rng
        self.address = address
        self.wall_offset = wall_offset
        self.out = Outbox()
        self._events = self.out.events
        self.scores = Scoreboard(cfg.scoring)
        self._now = 0.0
        gl = self._is_graylisted
        self.membership = Membership(
            self.local, cfg, rng, address=address, bootstrap=bootstrap, outbox=self.out,
            is_graylisted=gl,
        )
        self.swim = FailureDetector(
            self.local, cfg, rng, address=address, outbox=self.out,
            neighbors=lambda: self.membership.active,
        )
        self.broadcast = Broadcast(
            identity, cfg, rng, address=address, outbox=self.out, wall_offset=wall_offset
        )
        m, s, b = self.membership, self.swim, self.broadcast
        m.on_neighbor_up = self._neighbor_up
        m.on_neighbor_down = self._neighbor_down
        s.on_dead = self._declared_dead
        s.on_alive_hint = m.hint_alive
        s.on_dead_hint = lambda p, now: m.hint_dead(p, now)
        b.penalize = self.penalize
        b.reward = self.scores.reward
        b.on_origin = self._on_origin
        b.relays = lambda: tuple(
            PeerInfo(p, a) for p, a in m.active.items() if not cfg.needs_relay(a)
        )
        self._links: dict[PeerId, int] = {}
        self._buckets: OrderedDict[PeerId, tuple[TokenBucket, TokenBucket]] = OrderedDict()
        self.book: OrderedDict[PeerId, PeerRecord] = OrderedDict()
        self._direct_seen: ExpiringSet[bytes] = ExpiringSet(2 * cfg.direct_max_age, 65536)
        self.received: dict[str, int] = {}
        self.penalties: dict[str, int] = {}
        self.dropped_graylisted = 0

    # -- lifecycle -----------------------------------------------------------------

    def start(self, now: float) -> None:
        self._now = now
        self.membership.start(now)
        self.swim.start(now)

    def leave(self, now: float) -> None:
        """Leave gracefully: DISCONNECT every neighbour and stop the timers."""
        self.membership.leave(now)
        self.swim.stop()

    # -- driver inputs ---------------------------------------------------------------

    def link_up(self, peer: PeerId, now: float, address: str | None = None) -> bool:
        """A link to ``peer`` opened (``address``: what we dialed).  False: refuse it."""
        self._now = now
        if peer == self.local or self.scores.is_graylisted(peer, now):
            return False
        self._links[peer] = self._links.get(peer, 0) + 1
        rec = self._record(peer)
        rec.last_seen = now
        if address is not None:
            rec.addr = address
        self.membership.link_up(peer, now, address)
        return True

    def link_down(self, peer: PeerId, now: float) -> None:
        """One link to ``peer`` closed or broke."""
        self._now = now
        n = self._links.get(peer, 0) - 1
        if n > 0:
            self._links[peer] = n
            return
        self._links.pop(peer, None)
        if peer in self.membership.active:
            self._events.append(PeerFailed(peer))
            self._record(peer).failed_at = now
        self.membership.link_down(peer, now)

    def connect_failed(self, address: str, now: float) -> None:
        self._now = now
        self.membership.connect_failed(address, now)

    def send_failed(self, peer: PeerId, now: float, unsent: Sequence[object] = ()) -> None:
        """Messages to ``peer`` were not sent (dial failed, link broke, queue full)."""
        self._now = now
        if peer in self.membership.active and peer not in self._links:
            self._events.append(PeerFailed(peer))
        self.membership.send_failed(peer, now)
        self.swim.send_failed(peer, now)
        for msg in unsent:
            if isinstance(msg, Direct) and not self._relay_direct(peer, msg.payload, now):
                self._events.append(DirectFailed(peer))

    def receive_malformed(self, sender: PeerId, error: Exception, now: float) -> None:
        """An undecodable or oversized frame from ``sender``."""
        self._now = now
        self.received["<malformed>"] = self.received.get("<malformed>", 0) + 1
        self.penalize(sender, Offense.MALFORMED, now)

    def receive(self, sender: PeerId, msg: object, now: float, size: int = 0) -> None:
        """One decoded message from the link to ``sender``."""
        self._now = now
        name = type(msg).__name__
        self.received[name] = self.received.get(name, 0) + 1
        if self.scores.is_graylisted(sender, now):
            self.dropped_graylisted += 1
            return
        if not self._admit(sender, size, now):
            self.penalize(sender, Offense.FLOOD, now)
            return
        self.swim.heard_from(sender, now)
        self._record(sender).last_seen = now
        if isinstance(msg, MEMBERSHIP_MESSAGES):
            if not self._valid_infos(sender, msg):
                self.penalize(sender, Offense.MALFORMED, now)
                return
            self.membership.receive(sender, msg, now)
        elif isinstance(msg, SWIM_MESSAGES):
            if not all(valid_address(u.addr) for u in msg.updates) or (
                isinstance(msg, PingReq) and not valid_address(msg.target.addr)
            ):
                self.penalize(sender, Offense.MALFORMED, now)
                return
            self.swim.receive(sender, msg, now)
            m = self.membership
            if isinstance(msg, Ping) and msg.neighbor and sender not in m.active and (
                sender not in m.pending
            ):
                # it counts us as a neighbour, we do not (a lost JOIN, NEIGHBOR_REPLY or
                # DISCONNECT): tell it, so that both views agree again
                self.out.send(sender, Disconnect(alive=True))
        elif isinstance(msg, BROADCAST_MESSAGES):
            self.broadcast.receive(sender, msg, now)
            m = self.membership
            if isinstance(msg, _TREE) and sender not in m.active and sender not in m.pending:
                self.out.send(sender, Disconnect(alive=True))  # heal an asymmetric view
        elif isinstance(msg, Direct):
            self._events.append(DirectReceived(sender, msg.payload))
        elif isinstance(msg, Relay):
            self._on_relay(sender, msg, now)
        elif isinstance(msg, Relayed):
            self._on_relayed(sender, msg.envelope, now)
        else:
            self.penalize(sender, Offense.MALFORMED, now)

    # -- timers ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [
            d
            for d in (
                self.membership.next_deadline(),
                self.swim.next_deadline(),
                self.broadcast.next_deadline(),
            )
            if d is not None
        ]
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.swim.handle_timer(now)
        self.membership.handle_timer(now)
        self.broadcast.handle_timer(now)
        self._direct_seen.expire(now)

    # -- outputs -----------------------------------------------------------------------

    def messages_to_send(self) -> list[Command]:
        """Commands for the driver, in order (and clears them)."""
        cmds, self.out.commands = self.out.commands, []
        return cmds

    def next_event(self) -> object | None:
        """The next event for the application, or None."""
        return self._events.popleft() if self._events else None

    # -- application calls -----------------------------------------------------------

    def publish(self, topic: str, payload: bytes, now: float) -> bytes:
        """Broadcast ``payload`` on ``topic``; returns the message id (see Broadcast)."""
        self._now = now
        return self.broadcast.publish(topic, payload, now)

    def send_direct(self, peer: PeerId, payload: bytes, now: float, *, dial: bool = True) -> None:
        """Send ``payload`` to ``peer`` (best effort).

        ``dial=False`` never dials ``peer`` itself: an open link, else a relay --
        one the peer named, else up to ``relay_fanout`` linked neighbours at once
        (each passes it on only if it has a link to ``peer``; the addressee drops
        the copies).  This is how WebRTC signaling travels: dialing a
        ``webrtc:`` address is what the message is needed for.

        Raises :class:`PeerUnreachable` when no link, address or relay is known,
        :class:`LocalProtocolError` for ourselves or an oversized payload.
        """
        self._now = now
        if peer == self.local:
            raise LocalProtocolError("cannot send a direct message to ourselves")
        if not isinstance(payload, bytes) or len(payload) > self.config.max_payload:
            raise LocalProtocolError(f"direct payload must be bytes <= {self.config.max_payload}")
        if peer in self._links:
            self.out.send(peer, Direct(payload))
            return
        addr = self.address_of(peer) if dial else None
        if addr is not None:
            self.out.send(peer, Direct(payload), addr)
            return
        if not self._relay_direct(peer, payload, now, fan_out=not dial):
            raise PeerUnreachable(f"no link, address or relay known for {peer.short()}")

    # -- introspection -----------------------------------------------------------------

    def neighbors(self) -> list[PeerId]:
        return list(self.membership.active)

    def wants_link(self, peer: PeerId) -> bool:
        """Whether the protocol needs the links to ``peer`` kept open."""
        return peer in self.membership.active or peer in self.membership.pending

    def connected(self, peer: PeerId) -> bool:
        return peer in self._links

    def public_key(self, peer: PeerId) -> bytes | None:
        """``peer``'s Ed25519 key as its verified publications showed it (None: none heard)."""
        if peer == self.identity.peer_id:
            return self.identity.public_key
        return self.broadcast.signers.get(peer)

    def address_of(self, peer: PeerId) -> str | None:
        m = self.membership
        a = m.active.get(peer) or m.passive.get(peer)
        if a is None:
            rec = self.book.get(peer)
            a = rec.addr if rec is not None else None
        return a

    def live_peers(self, now: float, max_age: float) -> list[PeerId]:
        """Peers with first-hand evidence of life in the last ``max_age`` seconds.

        Evidence is a message over a link or a signed publication.  Active
        neighbours always count.  This is a *local* view: it covers the peers
        we talked to or heard publish, not the whole network.
        """
        out = dict.fromkeys(self.membership.active)
        for p, r in self.book.items():
            if r.last_seen >= now - max_age and r.last_seen > r.failed_at:
                out[p] = None
        out.pop(self.local, None)
        return list(out)

    def statistics(self) -> OverlayStatistics:
        return OverlayStatistics(
            peer=self.local,
            active=tuple(self.membership.active),
            passive=len(self.membership.passive),
            dead=len(self.membership.dead),
            links=len(self._links),
            incarnation=self.swim.incarnation,
            messages_sent=dict(self.out.sent),
            messages_received=dict(self.received),
            broadcast=dict(self.broadcast.stats),
            failure_detector={
                "probes": self.swim.probes,
                "indirect": self.swim.indirect,
                "declared_dead": self.swim.declared_dead,
                "refutations": self.swim.refutations,
            },
            penalties=dict(self.penalties),
            graylisted=len(self.scores.graylist()),
        )

    # -- scoring ---------------------------------------------------------------------------

    def penalize(self, peer: PeerId, offense: Offense, now: float) -> None:
        """Record an offense by ``peer``; graylist and disconnect it below the threshold."""
        self.penalties[offense.value] = self.penalties.get(offense.value, 0) + 1
        if self.scores.penalize(peer, offense, now):
            self.membership.remove(peer, now)
            self.book.pop(peer, None)
            self.out.commands.append(Close(peer))
            self._events.append(PeerGraylisted(peer, now + self.config.scoring.graylist_duration))

    def _is_graylisted(self, peer: PeerId) -> bool:
        return self.scores.is_graylisted(peer, self._now)

    def _admit(self, sender: PeerId, size: int, now: float) -> bool:
        cfg = self.config
        b = self._buckets.get(sender)
        if b is None:
            b = (
                TokenBucket(cfg.link_rate, cfg.link_burst, now),
                TokenBucket(cfg.link_byte_rate, cfg.link_byte_burst, now),
            )
            self._buckets[sender] = b
            while len(self._buckets) > cfg.address_book_size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(sender)
        return b[0].take(now) and b[1].take(now, size)

    # -- wiring ---------------------------------------------------------------------------

    def _neighbor_up(self, peer: PeerId, now: float) -> None:
        self.broadcast.neighbor_up(peer, now)
        self._events.append(NeighborUp(peer))

    def _neighbor_down(self, peer: PeerId, now: float) -> None:
        self.broadcast.neighbor_down(peer, now)
        self.swim.forget(peer)
        self._events.append(NeighborDown(peer))

    def _declared_dead(self, peer: PeerId, now: float) -> None:
        self._events.append(PeerFailed(peer))
        self._record(peer).failed_at = now
        self.membership.peer_failed(peer, now)
        self.out.commands.append(Close(peer))

    def _on_origin(self, origin: PeerId, body: Publication, now: float) -> None:
        rec = self._record(origin)
        rec.last_seen = max(rec.last_seen, now - max(0.0, now + self.wall_offset - body.ts))
        if body.addr is not None:
            rec.addr = body.addr
        rec.relays = body.relays

    def _record(self, peer: PeerId) -> PeerRecord:
        rec = self.book.get(peer)
        if rec is None:
            rec = self.book[peer] = PeerRecord()
            while len(self.book) > self.config.address_book_size:
                self.book.popitem(last=False)
        else:
            self.book.move_to_end(peer)
        return rec

    def _valid_infos(self, sender: PeerId, msg: object) -> bool:
        infos: tuple[PeerInfo, ...]
        if isinstance(msg, Join | Neighbor):
            if not valid_address(msg.addr):
                return False
            if msg.addr is not None:
                self._record(sender).addr = msg.addr  # the peer's own claim
            return True
        if isinstance(msg, ForwardJoin):
            infos = (msg.joiner,)
        elif isinstance(msg, Shuffle):
            infos = (msg.origin, *msg.entries)
        elif isinstance(msg, ShuffleReply):
            infos = msg.entries
        elif isinstance(msg, JoinReply):
            infos = msg.peers
        else:
            return True
        if not all(valid_address(i.addr) for i in infos):
            return False
        for i in infos:  # unauthenticated hints only fill gaps
            rec = self.book.get(i.peer)
            if i.addr is not None and (rec is None or rec.addr is None) and i.peer != self.local:
                self._record(i.peer).addr = i.addr
        return True

    # -- direct messages ----------------------------------------------------------------

    def _relay_direct(self, peer: PeerId, payload: bytes, now: float, *,
                      fan_out: bool = False) -> bool:
        rec = self.book.get(peer)
        known = rec.relays if rec is not None else ()
        relays = [r for r in known if r.peer in self._links and r.peer != peer] or [
            r for r in known
            if not self.config.needs_relay(r.addr) and r.peer not in (self.local, peer)
        ]
        if relays:
            r = relays[0] if relays[0].peer in self._links else self.rng.choice(relays)
            targets = [(r.peer, r.addr)]
        elif fan_out:
            linked = [p for p in self._links if p != peer]
            linked.sort(key=lambda p: p not in self.membership.active)  # neighbours first
            targets = [(p, None) for p in linked[: self.config.relay_fanout]]
        else:
            targets = []
        if not targets:
            return False
        body = DirectBody(peer, now + self.wall_offset, self.rng.getrandbits(62), payload)
        env = seal(self.identity, body, domain=self.config.direct_domain)
        for p, addr in targets:
            self.out.send(p, Relay(peer, env), addr)
        return True

    def _open_direct(self, env: Signed, now: float) -> DirectBody | None:
        cfg = self.config
        if len(env.body) > cfg.max_payload + 1024 or not verify_signature(
            env.signer, cfg.direct_domain, env.body, env.signature
        ):
            return None
        try:
            body = decode_as(env.body, DirectBody, max_size=cfg.max_payload + 1024)
        except RemoteProtocolError:
            return None
        if len(body.payload) > cfg.max_payload:
            return None
        return body

    def _on_relay(self, sender: PeerId, msg: Relay, now: float) -> None:
        if msg.to == self.local:
            self._on_relayed(sender, msg.envelope, now)
            return
        if msg.envelope.peer_id != sender:
            self.penalize(sender, Offense.MALFORMED, now)
            return
        body = self._open_direct(msg.envelope, now)
        if body is None or body.to != msg.to:
            self.penalize(sender, Offense.INVALID, now)
            return
        if msg.to in self._links:
            self.out.send(msg.to, Relayed(msg.envelope))

    def _on_relayed(self, sender: PeerId, env: Signed, now: float) -> None:
        body = self._open_direct(env, now)
        if body is None or body.to != self.local:
            self.penalize(sender, Offense.INVALID, now)
            return
        wall = now + self.wall_offset
        if not wall - self.config.direct_max_age <= body.ts <= wall + self.config.clock_skew:
            return
        mid = message_id(env)
        if mid in self._direct_seen:
            return
        self._direct_seen.add(mid, now)
        self._events.append(DirectReceived(env.peer_id, body.payload, relayed=True))
