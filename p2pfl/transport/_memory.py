"""An in-process network: thousands of peers in one trio run, for simulations and tests.

Theory of operation
-------------------
A :class:`MemoryNetwork` holds named endpoints (:class:`MemoryTransport`, address
``"mem:<name>"``).  ``connect`` creates a connection of two :class:`MemoryLink`
ends joined by two one-way *pipes*.  A pipe is a deque of ``(deliver_at, bytes)``
entries plus counters; there is **no background task at all**:

* ``send`` asks the router how this message travels (:class:`Route`): deliver
  after a delay, drop, or break the link.  A delivered message is appended with
  ``deliver_at = max(previous deliver_at on this pipe, start + transmit + delay)``
  where ``start = max(now, end of the previous transmission)`` -- so jitter never
  reorders a link and bandwidth queues messages behind each other.
* ``receive`` looks at the head entry; when its time has come it pops it,
  otherwise it sleeps (``trio.move_on_at``) until then or until something
  happens on the link.  The receiving task *is* the delivery task.

No per-message or per-link task means the cost of a peer is a few small objects,
and time comes only from trio (``trio.current_time``): everything runs under
pytest-trio's ``autojump_clock`` / :class:`trio.testing.MockClock`, where a
simulated minute of latency costs nothing.  The only tasks are the ones
``serve`` owns: one per inbound link, running the handler, inside ``serve``'s
own nursery (structured: cancel ``serve`` and they go too).

Back-pressure: each pipe counts the messages and bytes sent on it but not yet
received by the other end (in flight *or* waiting in the receiver's buffer),
like a TCP window.  ``send`` waits while that exceeds ``buffer_messages`` or
``buffer_bytes`` (one message is always admitted into an empty pipe, however
large).  With latency L a pipe therefore carries at most one window per L, as
real links do (bandwidth-delay product).

Trust: there is no cryptography here.  The network is in-process, so it vouches
for identities itself: a link's ``remote_peer`` is the peer id the other
transport was created with.  This is what makes thousands of peers affordable;
every layer above the transport is the same code that runs over TCP.

Close, crash and failures (see :mod:`p2pfl.transport._base`):

* ``aclose`` on one end: the other end receives what was already sent, then
  :class:`trio.EndOfChannel`; its ``send`` raises :class:`trio.BrokenResourceError`
  at once (the network tells the sender immediately, without waiting for a
  round trip).  Messages in flight *to* the closed end are discarded.
* a break (``Route.BREAK``, :meth:`MemoryNetwork.crash`, a partition) is
  immediate on both ends: every pending and future ``send``/``receive`` raises
  :class:`trio.BrokenResourceError`; messages in flight are lost.
* ``Route.DROP`` loses one message silently and leaves the link up.  A real
  :class:`~p2pfl.transport.Link` is reliable, so this models an unreliable hop
  (a lossy datagram path) for gossip experiments; protocols that need every
  message must not be tested with loss unless they repair it themselves.
* :meth:`MemoryNetwork.crash` cuts a peer's network: all its links break at
  once, its server refuses connections, its own ``connect`` fails.  It does not
  stop the peer's tasks: a simulation that wants the *process* dead cancels the
  peer's cancel scope too.  :meth:`MemoryNetwork.restart` reconnects it (old
  links stay broken); or a new transport with the same name replaces it.

The end-of-channel of a clean close arrives right after the last message sent
before it (no extra latency); connects take ``connect_delay`` and are not routed.

Determinism: the router draws from the seeded ``rng`` in the order messages are
sent.  That order is fixed for one sending task, but trio breaks ties between
tasks runnable at the same instant at random; bit-for-bit replay of a whole
simulation also needs trio's scheduler seeded (as hypothesis does for tests).
"""

from __future__ import annotations

import enum
import errno
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import trio
from trio.lowlevel import ParkingLot, cancel_shielded_checkpoint, checkpoint_if_cancelled

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.wire import PeerId

from ._base import DEFAULT_MAX_MESSAGE, LinkHandler, Transport, _PeerLink

__all__ = [
    "MemoryLink",
    "MemoryNetwork",
    "MemoryTransport",
    "NetworkStatistics",
    "PeerStatistics",
    "Route",
    "RouteKind",
    "Router",
    "StandardRouter",
]

ADDRESS_PREFIX = "mem:"
log = logging.getLogger(__name__)


class RouteKind(enum.Enum):
    DELIVER = "deliver"
    DROP = "drop"
    BREAK = "break"


@dataclass(frozen=True, slots=True)
class Route:
    """What happens to one message: deliver after ``transmit + delay``, drop, or break.

    ``transmit`` is the serialization time (size / bandwidth): transmissions on
    one pipe queue behind each other.  ``delay`` is propagation (latency,
    jitter) and overlaps.  Build with :meth:`deliver` or use :attr:`DROP` /
    :attr:`BREAK` / :attr:`NOW`.
    """

    kind: RouteKind
    delay: float = 0.0
    transmit: float = 0.0

    DROP: ClassVar[Route]
    BREAK: ClassVar[Route]
    NOW: ClassVar[Route]

    @staticmethod
    def deliver(delay: float = 0.0, transmit: float = 0.0) -> Route:
        """Deliver after ``transmit`` (serialized per pipe) plus ``delay`` seconds."""
        if not (delay >= 0.0 and transmit >= 0.0 and math.isfinite(delay + transmit)):
            raise ValueError(f"route times must be finite and >= 0: {delay=} {transmit=}")
        if delay == 0.0 and transmit == 0.0:
            return Route.NOW
        return Route(RouteKind.DELIVER, delay, transmit)


Route.DROP = Route(RouteKind.DROP)
Route.BREAK = Route(RouteKind.BREAK)
Route.NOW = Route(RouteKind.DELIVER)

#: ``router(src, dst, nbytes) -> Route``, called once per message sent.
Router = Callable[[PeerId, PeerId, int], Route]


class StandardRouter:
    """The built-in router: latency, uniform jitter, bandwidth and random loss.

    ``delay = latency + uniform(0, jitter)``; ``transmit = nbytes / bandwidth``
    (bytes per second, per link direction; ``None`` is unlimited); a message is
    dropped with probability ``loss``.  Randomness comes only from ``rng``: seed
    it and a simulation replays exactly (given the same task schedule).
    Compose by wrapping: ``lambda s, d, n: Route.BREAK if bad(s, d) else std(s, d, n)``.
    """

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        latency: float = 0.0,
        jitter: float = 0.0,
        bandwidth: float | None = None,
        loss: float = 0.0,
    ) -> None:
        if not (latency >= 0.0 and jitter >= 0.0 and math.isfinite(latency + jitter)):
            raise ValueError("latency and jitter must be finite and >= 0")
        if bandwidth is not None and not bandwidth > 0.0:
            raise ValueError("bandwidth must be > 0 bytes/s (or None)")
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss must be a probability")
        self.rng = rng if rng is not None else random.Random(0)
        self.latency = latency
        self.jitter = jitter
        self.bandwidth = bandwidth
        self.loss = loss
        self._trivial = latency == 0.0 and jitter == 0.0 and bandwidth is None and loss == 0.0

    def __call__(self, src: PeerId, dst: PeerId, nbytes: int) -> Route:
        if self._trivial:
            return Route.NOW
        if self.loss and self.rng.random() < self.loss:
            return Route.DROP
        delay = self.latency + (self.rng.uniform(0.0, self.jitter) if self.jitter else 0.0)
        transmit = nbytes / self.bandwidth if self.bandwidth is not None else 0.0
        return Route.deliver(delay, transmit)


@dataclass(frozen=True)
class PeerStatistics:
    """Payload counters of one peer over all its links (and transports)."""

    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    messages_dropped: int
    bytes_dropped: int


@dataclass(frozen=True)
class NetworkStatistics:
    """Totals and per-peer counters of a :class:`MemoryNetwork`."""

    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    messages_dropped: int
    bytes_dropped: int
    links_opened: int
    links_open: int
    links_broken: int
    peers: Mapping[PeerId, PeerStatistics]

    def bytes_sent_per_peer(self) -> dict[str, int]:
        """``{str(peer id): bytes sent}`` (the simulations' ``bytes_sent_per_peer``)."""
        return {str(p): s.bytes_sent for p, s in self.peers.items()}


class _Counters:
    __slots__ = (
        "bytes_dropped",
        "bytes_received",
        "bytes_sent",
        "messages_dropped",
        "messages_received",
        "messages_sent",
    )

    def __init__(self) -> None:
        self.messages_sent = self.bytes_sent = 0
        self.messages_received = self.bytes_received = 0
        self.messages_dropped = self.bytes_dropped = 0

    def freeze(self) -> PeerStatistics:
        return PeerStatistics(
            self.messages_sent,
            self.bytes_sent,
            self.messages_received,
            self.bytes_received,
            self.messages_dropped,
            self.bytes_dropped,
        )


class _Pipe:
    """One direction of a connection: messages in flight or buffered, unreceived."""

    __slots__ = (
        "dst_closed",
        "eof_at",
        "last_delivery",
        "nbytes",
        "queue",
        "recv_lot",
        "send_lot",
        "tx_free_at",
    )

    def __init__(self) -> None:
        self.queue: deque[tuple[float, bytes]] = deque()
        self.nbytes = 0
        self.last_delivery = -math.inf
        self.tx_free_at = -math.inf
        self.eof_at: float | None = None  # the sender closed; EOF visible from then on
        self.dst_closed = False  # the receiver closed; sends fail
        self.recv_lot = ParkingLot()
        self.send_lot = ParkingLot()

    def clear(self) -> None:
        self.queue.clear()
        self.nbytes = 0


class _Connection:
    __slots__ = ("broken", "ends", "net")

    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net
        self.broken = False
        self.ends: tuple[MemoryLink, ...] = ()  # (client end, server end) once connected

    def break_(self) -> None:
        """Break both ends at once: pending data lost, everyone woken."""
        if self.broken:
            return
        self.broken = True
        self.net._links_broken += 1
        for end in self.ends:
            end._in.clear()
            end._in.recv_lot.unpark_all()
            end._in.send_lot.unpark_all()
            end._transport._links.discard(end)
        self.net._connections.discard(self)


class MemoryLink(_PeerLink):
    """One end of an in-memory connection (see the module docstring)."""

    def __init__(
        self,
        conn: _Connection,
        transport: MemoryTransport,
        remote: PeerId,
        out_pipe: _Pipe,
        in_pipe: _Pipe,
    ) -> None:
        super().__init__(transport.local_peer, remote)
        self._conn = conn
        self._transport = transport
        self._net = transport._net
        self._out = out_pipe
        self._in = in_pipe
        self._closed = False
        self._counters = transport._counters

    @property
    def max_message(self) -> int:
        return self._net.max_message

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._conn.broken else "open"
        return f"<MemoryLink {self._local.short()}->{self._remote.short()} {state}>"

    def _check_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if self._conn.broken:
            raise trio.BrokenResourceError(f"link to {self._remote.short()} broke")
        if self._out.dst_closed:
            raise trio.BrokenResourceError(f"{self._remote.short()} closed the link")

    async def send(self, value: bytes) -> None:
        """Send one message; waits while the pipe's window is full.

        Raises ValueError (too large), ClosedResourceError (we closed),
        BrokenResourceError (the remote closed or crashed, or the network broke).
        """
        if type(value) is not bytes:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise TypeError(f"send() takes bytes, not {type(value).__name__}")
            value = bytes(value)  # a private copy: the caller may mutate its buffer
        n = len(value)
        if n > self._net.max_message:
            raise ValueError(f"message of {n} bytes exceeds max_message {self._net.max_message}")
        await checkpoint_if_cancelled()
        pipe = self._out
        net = self._net
        blocked = False
        while True:
            self._check_send()
            if not pipe.queue or (
                len(pipe.queue) < net.buffer_messages and pipe.nbytes + n <= net.buffer_bytes
            ):
                break
            blocked = True
            await pipe.send_lot.park()
        route = net._route(self._local, self._remote, n)
        if route.kind is RouteKind.BREAK:
            self._conn.break_()
            raise trio.BrokenResourceError(f"network broke the link to {self._remote.short()}")
        counters = self._counters
        self._stats.sent(n)
        counters.messages_sent += 1
        counters.bytes_sent += n
        if route.kind is RouteKind.DELIVER:
            now = trio.current_time()
            if route is Route.NOW:
                at = now if now > pipe.last_delivery else pipe.last_delivery
            else:
                start = now
                if route.transmit:
                    start = max(now, pipe.tx_free_at)
                    pipe.tx_free_at = start + route.transmit
                at = max(pipe.last_delivery, start + route.transmit + route.delay)
            pipe.last_delivery = at
            pipe.queue.append((at, value))
            pipe.nbytes += n
            if len(pipe.queue) == 1:
                pipe.recv_lot.unpark_all()
        else:
            counters.messages_dropped += 1
            counters.bytes_dropped += n
        if not blocked:
            await cancel_shielded_checkpoint()

    async def receive(self) -> bytes:
        """The next whole message.

        Raises EndOfChannel (the remote closed and everything was received),
        ClosedResourceError (we closed), BrokenResourceError (crash or break).
        """
        await checkpoint_if_cancelled()
        pipe = self._in
        blocked = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("link was closed")
            if self._conn.broken:
                raise trio.BrokenResourceError(f"link to {self._remote.short()} broke")
            queue = pipe.queue
            if queue:
                deadline = queue[0][0]
                if deadline <= trio.current_time():
                    value = queue.popleft()[1]
                    break
            elif pipe.eof_at is not None:
                deadline = pipe.eof_at
                if deadline <= trio.current_time():
                    raise trio.EndOfChannel
            else:
                deadline = math.inf
            blocked = True
            if deadline == math.inf:
                await pipe.recv_lot.park()
            else:
                with trio.move_on_at(deadline):
                    await pipe.recv_lot.park()
        n = len(value)
        pipe.nbytes -= n
        pipe.send_lot.unpark_all()
        self._stats.received(n)
        self._counters.messages_received += 1
        self._counters.bytes_received += n
        if not blocked:
            await cancel_shielded_checkpoint()
        return value

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._transport._links.discard(self)
        conn = self._conn
        if not conn.broken:
            out, inp = self._out, self._in
            # The remote receives what we already sent, then EndOfChannel.
            out.eof_at = max(out.last_delivery, trio.current_time())
            out.recv_lot.unpark_all()
            # The remote's sends to us fail from now on; what was in flight is lost.
            inp.dst_closed = True
            inp.clear()
            if all(end._closed for end in conn.ends):
                self._net._connections.discard(conn)
        # Wake our own blocked receivers and senders (ClosedResourceError).
        self._in.recv_lot.unpark_all()
        self._in.send_lot.unpark_all()
        self._out.send_lot.unpark_all()

    async def aclose(self) -> None:
        """Close this end (idempotent); wakes blocked ``send``/``receive`` calls."""
        self._close_now()
        await trio.lowlevel.checkpoint()


class MemoryTransport(Transport):
    """One peer's endpoint on a :class:`MemoryNetwork` (make it with ``net.transport``)."""

    def __init__(self, net: MemoryNetwork, peer: PeerId, network_id: bytes, name: str) -> None:
        self._net = net
        self._peer = peer
        self.network_id = network_id
        self.name = name
        self._links: set[MemoryLink] = set()
        self._crashed = False
        self._listener: tuple[trio.Nursery, LinkHandler] | None = None
        self._counters = net._peer_counters.setdefault(peer, _Counters())

    @property
    def local_peer(self) -> PeerId:
        return self._peer

    @property
    def address(self) -> str:
        """``"mem:<name>"``: what others pass to ``connect``."""
        return ADDRESS_PREFIX + self.name

    @property
    def network(self) -> MemoryNetwork:
        return self._net

    @property
    def crashed(self) -> bool:
        return self._crashed

    def links(self) -> frozenset[MemoryLink]:
        """The links of this transport that are neither closed here nor broken."""
        return frozenset(self._links)

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.address} peer={self._peer.short()}>"

    async def connect(self, address: str) -> MemoryLink:
        """Open a link to ``address``.

        Raises ConnectionRefusedError (unknown address, nobody serving, crashed
        or partitioned peer), OSError ENETDOWN (we are crashed),
        RemoteProtocolError (the peer belongs to another network id), ValueError
        (not a ``mem:`` address).
        """
        if not address.startswith(ADDRESS_PREFIX):
            raise ValueError(f"not a memory address: {address!r}")
        net = self._net
        if net.connect_delay:
            await trio.sleep(net.connect_delay)
        else:
            await trio.lowlevel.checkpoint()
        if self._crashed:
            raise OSError(errno.ENETDOWN, f"{self.address} is crashed")
        target = net._by_name.get(address[len(ADDRESS_PREFIX) :])
        if target is None or target._crashed or target._listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"nobody serves {address}")
        if net._cut(self._peer, target._peer) is not None:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"{address} is unreachable (partition)"
            )
        if target.network_id != self.network_id:
            raise RemoteProtocolError(f"{address} belongs to another network", peer=target._peer)
        conn = _Connection(net)
        forward, backward = _Pipe(), _Pipe()
        client = MemoryLink(conn, self, target._peer, forward, backward)
        server = MemoryLink(conn, target, self._peer, backward, forward)
        conn.ends = (client, server)
        self._links.add(client)
        target._links.add(server)
        net._connections.add(conn)
        net._links_opened += 1
        nursery, handler = target._listener
        nursery.start_soon(_run_handler, handler, server)
        return client

    async def serve(
        self,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept links until cancelled, one task per link running ``handler``.

        The handler tasks live in this call's nursery.  As in the TCP transport,
        handler exceptions caused by the remote (BrokenResourceError,
        EndOfChannel, RemoteProtocolError) are logged and end only that link;
        any other exception propagates out of ``serve``.  While crashed,
        connects are refused; after ``restart`` this same call accepts again.
        """
        if self._listener is not None:
            raise trio.BusyResourceError(f"{self.address} is already being served")
        try:
            async with trio.open_nursery() as nursery:
                self._listener = (nursery, handler)
                task_status.started(self.address)
                await trio.sleep_forever()
        finally:
            self._listener = None

    def statistics(self) -> PeerStatistics:
        """This peer's counters (shared by all transports of the same peer id)."""
        return self._counters.freeze()


async def _run_handler(handler: LinkHandler, link: MemoryLink) -> None:
    try:
        await handler(link)
    except (trio.BrokenResourceError, trio.EndOfChannel, RemoteProtocolError) as e:
        log.debug("link %r ended: %r", link, e)  # the remote's doing: only this link ends
    finally:
        link._close_now()


@dataclass(frozen=True)
class _Cut:
    a: frozenset[PeerId]
    b: frozenset[PeerId] | None  # None: everybody not in a
    blackhole: bool

    def separates(self, x: PeerId, y: PeerId) -> bool:
        if self.b is None:
            return (x in self.a) != (y in self.a)
        return (x in self.a and y in self.b) or (x in self.b and y in self.a)


PeerLike = PeerId | Identity | MemoryTransport


def _peer_of(p: PeerLike) -> PeerId:
    if isinstance(p, PeerId):
        return p
    if isinstance(p, Identity):
        return p.peer_id
    return p.local_peer


class MemoryNetwork:
    """An in-process network; see the module docstring.

    ``rng`` seeds the default :class:`StandardRouter` (latency ``default_latency``
    plus uniform ``jitter``, ``bandwidth`` bytes/s per link direction, ``loss``
    probability).  ``buffer_messages``/``buffer_bytes`` bound each direction of
    each link (back-pressure).  ``connect_delay`` is how long ``connect`` takes.
    """

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        default_latency: float = 0.0,
        jitter: float = 0.0,
        bandwidth: float | None = None,
        loss: float = 0.0,
        buffer_messages: int = 1024,
        buffer_bytes: int = 8 * 1024 * 1024,
        max_message: int = DEFAULT_MAX_MESSAGE,
        connect_delay: float = 0.0,
    ) -> None:
        if buffer_messages < 1 or buffer_bytes < 1 or max_message < 1:
            raise ValueError("buffer_messages, buffer_bytes and max_message must be >= 1")
        if not (connect_delay >= 0.0 and math.isfinite(connect_delay)):
            raise ValueError("connect_delay must be finite and >= 0")
        self.rng = rng if rng is not None else random.Random(0)
        self.buffer_messages = buffer_messages
        self.buffer_bytes = buffer_bytes
        self.max_message = max_message
        self.connect_delay = connect_delay
        self._default_router = StandardRouter(
            rng=self.rng, latency=default_latency, jitter=jitter, bandwidth=bandwidth, loss=loss
        )
        self._router: Router = self._default_router
        self._by_name: dict[str, MemoryTransport] = {}
        self._by_peer: dict[PeerId, MemoryTransport] = {}
        self._peer_counters: dict[PeerId, _Counters] = {}
        self._connections: set[_Connection] = set()
        self._cuts: list[_Cut] = []
        self._links_opened = 0
        self._links_broken = 0

    # -- peers -----------------------------------------------------------------

    def transport(
        self, peer: PeerId | Identity, network_id: bytes, name: str | None = None
    ) -> MemoryTransport:
        """A transport for ``peer`` at ``"mem:<name>"`` (default name: the peer id).

        Raises ValueError when the name, or the peer, already has a live
        (not crashed) transport; a crashed one is replaced.
        """
        peer_id = _peer_of(peer)
        if not isinstance(network_id, bytes):
            raise TypeError("network_id must be bytes")
        name = str(peer_id) if name is None else name
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"bad transport name {name!r}")
        old = self._by_name.get(name)
        if old is not None and not old._crashed:
            raise ValueError(f"{ADDRESS_PREFIX}{name} is already in use")
        other = self._by_peer.get(peer_id)
        if other is not None and not other._crashed and other is not old:
            raise ValueError(f"peer {peer_id.short()} already has a live transport")
        if other is not None and other.name != name and self._by_name.get(other.name) is other:
            del self._by_name[other.name]
        t = MemoryTransport(self, peer_id, network_id, name)
        self._by_name[name] = t
        self._by_peer[peer_id] = t
        return t

    def transport_of(self, peer: PeerId) -> MemoryTransport | None:
        """The current transport of ``peer``, if any."""
        return self._by_peer.get(peer)

    def crash(self, peer: PeerLike) -> None:
        """Cut ``peer`` off: all its links break at once, connects to and from it fail."""
        t = self._resolve(peer)
        t._crashed = True
        for link in list(t._links):
            link._conn.break_()

    def restart(self, peer: PeerLike) -> None:
        """Undo :meth:`crash` for ``peer``'s transport (its broken links stay broken)."""
        self._resolve(peer)._crashed = False

    def _resolve(self, peer: PeerLike) -> MemoryTransport:
        if isinstance(peer, MemoryTransport):
            return peer
        t = self._by_peer.get(_peer_of(peer))
        if t is None:
            raise KeyError(f"no transport for peer {_peer_of(peer).short()}")
        return t

    # -- routing ---------------------------------------------------------------

    @property
    def router(self) -> Router:
        return self._router

    def set_router(self, router: Router | None) -> None:
        """Route every later message with ``router(src, dst, nbytes)``; None: default."""
        self._router = self._default_router if router is None else router

    def partition(
        self,
        group_a: Iterable[PeerLike],
        group_b: Iterable[PeerLike] | None = None,
        *,
        blackhole: bool = False,
    ) -> None:
        """Separate ``group_a`` from ``group_b`` (default: from everybody else).

        Connects across are refused.  Existing links across break at once
        (``blackhole=False``, what a reliable link does when its retries time
        out) or stay up while every message across is dropped
        (``blackhole=True``: failure detectors must notice by themselves;
        closing still propagates).  Partitions add up until :meth:`heal`.
        """
        a = frozenset(_peer_of(p) for p in group_a)
        b = None if group_b is None else frozenset(_peer_of(p) for p in group_b)
        cut = _Cut(a, b, blackhole)
        self._cuts.append(cut)
        if not blackhole:
            for conn in list(self._connections):
                x, y = conn.ends
                if cut.separates(x.local_peer, y.local_peer):
                    conn.break_()

    def heal(self) -> None:
        """Remove every partition (broken links stay broken)."""
        self._cuts.clear()

    def _cut(self, x: PeerId, y: PeerId) -> _Cut | None:
        for cut in self._cuts:
            if cut.separates(x, y):
                return cut
        return None

    def _route(self, src: PeerId, dst: PeerId, nbytes: int) -> Route:
        if self._cuts:
            cut = self._cut(src, dst)
            if cut is not None:
                return Route.DROP if cut.blackhole else Route.BREAK
        return self._router(src, dst, nbytes)

    # -- introspection ---------------------------------------------------------

    def statistics(self) -> NetworkStatistics:
        """Totals and per-peer payload counters since the network was made."""
        peers = {p: c.freeze() for p, c in self._peer_counters.items()}
        total = _Counters()
        for c in self._peer_counters.values():
            total.messages_sent += c.messages_sent
            total.bytes_sent += c.bytes_sent
            total.messages_received += c.messages_received
            total.bytes_received += c.bytes_received
            total.messages_dropped += c.messages_dropped
            total.bytes_dropped += c.bytes_dropped
        return NetworkStatistics(
            total.messages_sent,
            total.bytes_sent,
            total.messages_received,
            total.bytes_received,
            total.messages_dropped,
            total.bytes_dropped,
            self._links_opened,
            len(self._connections),
            self._links_broken,
            peers,
        )
