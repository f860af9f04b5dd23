"""The trio driver: runs one :class:`OverlayProtocol` over a :class:`Transport`'s links.

Theory of operation
-------------------
The driver owns no protocol logic.  It does four things:

* **links** -- it serves inbound links and dials outbound ones when the protocol
  asks (``Send`` to a peer without a link but with an address, or ``Connect``
  to a bootstrap address).  Each link gets a reader (decode → ``receive``,
  undecodable → ``receive_malformed``) and a writer draining a bounded queue,
  so the protocol never waits on a slow peer; a full queue drops the message
  (gossip repairs itself; direct messages are best effort).  Several links to
  one peer may coexist (simultaneous dials); the newest carries our sends.
* **commands** -- after every input it drains ``messages_to_send()`` (encoding
  each message once however many peers it goes to) and ``next_event()``
  (routing deliveries to topic subscribers and direct messages to their
  channel).
* **time** -- one task sleeps until ``next_deadline()`` in a cancel scope whose
  deadline is moved whenever the protocol's next deadline moves.
* **housekeeping** -- links the protocol does not want (not an active neighbour,
  no request pending) are closed after ``idle_timeout`` without traffic, and
  the total number of links is capped.

Everything runs in one nursery owned by :func:`open_overlay`; leaving the
``async with`` block says DISCONNECT to every neighbour, closes every link and
cancels the tasks.

**Gossip frames** (the bulk of the traffic) go through a process-wide memo,
:data:`_FRAMES`: ``GOSSIP(envelope, hops)`` is encoded once per (envelope object,
hops) -- the envelope objects are shared by the peers of a process (see
:mod:`p2pfl.overlay._plumtree`), so N simulated peers forwarding one publication encode
it once per hop count, not N times, and the frames in flight are one object instead of
N copies -- and a frame that *is* such an encoded object (same ``bytes`` object: the
memory transport hands the sender's object to the receiver) decodes to the message it
was encoded from, without parsing it again.  Both are exact: envelopes and ``bytes``
are immutable and held by the memo, so an identity names one content; anything else
(frames from a socket, other messages) is encoded and decoded as always.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from trio.lowlevel import ParkingLot

from p2pfl._lru import BoundedLru
from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.transport import Link, Transport
from p2pfl.wire import PeerId, decode, encode

from ._config import OverlayConfig
from ._events import DirectReceived, OverlayStatistics
from ._messages import Gossip
from ._plumtree import Delivered
from ._protocol import OverlayProtocol
from ._util import Close, Connect, Send

__all__ = ["Overlay", "open_overlay"]


class _Frames:
    """Encoded gossip frames by (envelope identity, hops), and the message of each such
    frame by the frame's identity (see the module docstring).  Bounded, thread-safe."""

    def __init__(self, max_items: int = 8192, max_bytes: int = 128 << 20) -> None:
        self._by_frame: dict[int, tuple[bytes, Gossip]] = {}
        self._by_msg: BoundedLru[tuple[int, int], tuple[object, bytes]] = BoundedLru(
            max_items, max_weight=max_bytes, weigh=lambda e: len(e[1]), on_evict=self._forget)

    def _forget(self, key: tuple[int, int], entry: tuple[object, bytes]) -> None:
        self._by_frame.pop(id(entry[1]), None)

    def encode(self, msg: object) -> bytes:
        if type(msg) is not Gossip:
            return encode(msg)
        key = (id(msg.envelope), msg.hops)
        e = self._by_msg.get(key)
        if e is not None and e[0] is msg.envelope:
            return e[1]
        data = encode(msg)
        self._by_frame[id(data)] = (data, msg)
        self._by_msg.put(key, (msg.envelope, data))
        return data

    def decode(self, data: bytes, max_size: int) -> object:
        """``decode(data, max_size=max_size)``. Raises :class:`RemoteProtocolError`."""
        if len(data) <= max_size:
            e = self._by_frame.get(id(data))
            if e is not None and e[0] is data:
                return e[1]
        return decode(data, max_size=max_size)

    def clear(self) -> None:
        self._by_msg.clear()
        self._by_frame.clear()


_FRAMES = _Frames()


@dataclass(eq=False)
class _LinkState:
    """One link: its send queue (a deque drained by one writer task) and bookkeeping."""

    link: Link
    peer: PeerId
    last_used: float
    limit: int
    queue: deque[bytes] = field(default_factory=deque)
    lot: ParkingLot = field(default_factory=ParkingLot)
    closing: bool = False  # send what is queued, then close
    done: bool = False  # the reader ended: stop now
    scope: trio.CancelScope | None = None

    def push(self, data: bytes) -> bool:
        if self.closing or self.done or len(self.queue) >= self.limit:
            return False
        self.queue.append(data)
        if self.lot.statistics().tasks_waiting:
            self.lot.unpark()
        return True

    def close_soon(self) -> None:
        self.closing = True
        self.lot.unpark_all()


class Overlay:
    """A running overlay peer; made by :func:`open_overlay`, valid inside its block."""

    def __init__(
        self,
        transport: Transport,
        nursery: trio.Nursery,
        *,
        queue_size: int,
        idle_timeout: float,
        max_links: int,
        dial_timeout: float,
        max_frame: int,
    ) -> None:
        self._transport = transport
        self._proto: OverlayProtocol
        self._nursery = nursery
        self._queue_size = queue_size
        self._idle_timeout = idle_timeout
        self._max_links = max_links
        self._dial_timeout = dial_timeout
        self._max_frame = max_frame
        self._leave_timeout = 1.0
        self._links: dict[PeerId, list[_LinkState]] = {}
        self._dialing: dict[PeerId, list[tuple[object, bytes]]] = {}
        self._subs: dict[str, list[tuple[trio.MemorySendChannel[object], bool]]] = {}
        self._ready = trio.Event()
        self._direct_send, self.direct = trio.open_memory_channel[tuple[PeerId, bytes]](4096)
        self._direct_routes: list[tuple[bytes, trio.MemorySendChannel[tuple[PeerId, bytes]]]] = []
        self._watchers: list[trio.MemorySendChannel[object]] = []
        self._timer_scope: trio.CancelScope | None = None
        self._closing = False
        self._no_links = trio.Event()
        self._changed = trio.Event()
        self.address: str | None = None
        self.counters = {
            "bytes_sent": 0,
            "bytes_received": 0,
            "queue_drops": 0,
            "subscriber_drops": 0,
            "dials": 0,
            "dial_failures": 0,
        }

    # -- application API ---------------------------------------------------------------

    @property
    def local_peer(self) -> PeerId:
        return self._proto.local

    @property
    def protocol(self) -> OverlayProtocol:
        """The sans-I/O protocol object (read-only use: introspection, tests)."""
        return self._proto

    async def publish(self, topic: str, payload: bytes) -> bytes:
        """Sign and broadcast ``payload`` on ``topic``; returns the message id.

        Our own publications are delivered to our own subscribers too.  Raises
        :class:`LocalProtocolError` for a bad topic or an oversized payload.
        """
        await trio.lowlevel.checkpoint()
        mid = self._proto.publish(topic, payload, trio.current_time())
        self._flush()
        return mid

    def subscribe(
        self, topic: str, *, buffer: int = 1024
    ) -> trio.MemoryReceiveChannel[tuple[PeerId, bytes]]:
        """A channel of ``(origin, payload)`` for every publication on ``topic``.

        When the buffer is full new deliveries are dropped (and counted);
        closing the receive end unsubscribes.
        """
        send, recv = trio.open_memory_channel[tuple[PeerId, bytes]](buffer)
        self._subs.setdefault(topic, []).append((send, False))  # type: ignore[arg-type]
        return recv

    def subscribe_delivered(
        self, topic: str, *, buffer: int = 1024
    ) -> trio.MemoryReceiveChannel[Delivered]:
        """Like :meth:`subscribe` but yields whole :class:`Delivered` events (id, hops, ts)."""
        send, recv = trio.open_memory_channel[Delivered](buffer)
        self._subs.setdefault(topic, []).append((send, True))  # type: ignore[arg-type]
        return recv

    def watch_events(self, *, buffer: int = 256) -> trio.MemoryReceiveChannel[object]:
        """Membership events (NeighborUp/Down, PeerFailed, PeerGraylisted, DirectFailed)."""
        send, recv = trio.open_memory_channel[object](buffer)
        self._watchers.append(send)
        return recv

    async def send_direct(self, peer: PeerId, payload: bytes, *, dial: bool = True) -> None:
        """Send ``payload`` to ``peer``: over a link, by dialing its address, or via a relay.

        Best effort; raises :class:`~p2pfl.overlay.PeerUnreachable` when no
        route is known.  The addressee reads it from :attr:`direct` (or from the
        channel of a :meth:`route_direct` prefix it matches).  ``dial=False``
        never dials ``peer`` (see :meth:`OverlayProtocol.send_direct`): for
        messages that dialing it depends on, such as WebRTC signaling.
        """
        await trio.lowlevel.checkpoint()
        self._proto.send_direct(peer, payload, trio.current_time(), dial=dial)
        self._flush()

    def route_direct(
        self, prefix: bytes, *, buffer: int = 256
    ) -> trio.MemoryReceiveChannel[tuple[PeerId, bytes]]:
        """A channel of ``(origin, payload)`` for the direct messages whose payload
        starts with ``prefix`` (they no longer reach :attr:`direct`).  For services
        that share the overlay with the application, such as WebRTC signaling;
        register before the overlay runs (``open_overlay(on_open=...)``) so that no
        message slips through to :attr:`direct`.  A full channel drops (counted in
        ``subscriber_drops``).
        """
        if not prefix:
            raise ValueError("route_direct needs a non-empty prefix")
        send, recv = trio.open_memory_channel[tuple[PeerId, bytes]](buffer)
        self._direct_routes.append((prefix, send))
        return recv

    def neighbors(self) -> list[PeerId]:
        """The active view."""
        return self._proto.neighbors()

    def public_key(self, peer: PeerId) -> bytes | None:
        """``peer``'s Ed25519 identity key, learned from its verified publications."""
        return self._proto.public_key(peer)

    def live_peers(self, max_age: float = 60.0) -> list[PeerId]:
        """Peers with first-hand evidence of life in the last ``max_age`` seconds."""
        return self._proto.live_peers(trio.current_time(), max_age)

    async def wait_neighbors(self, n: int = 1) -> None:
        """Wait until the active view has at least ``n`` peers."""
        while len(self._proto.membership.active) < n:
            await self._changed.wait()

    def statistics(self) -> OverlayStatistics:
        s = self._proto.statistics()
        return OverlayStatistics(
            **{
                **s.__dict__,
                "links": sum(len(v) for v in self._links.values()),
                "bytes_sent": self.counters["bytes_sent"],
                "bytes_received": self.counters["bytes_received"],
            }
        )

    # -- the machinery -----------------------------------------------------------------

    def _flush(self) -> None:
        if self._closing:
            return
        proto = self._proto
        now = trio.current_time()
        while True:
            cmds = proto.messages_to_send()
            if not cmds:
                break
            cache: dict[int, bytes] = {}
            for c in cmds:
                if type(c) is Send:
                    data = cache.get(id(c.msg))
                    if data is None:
                        data = cache[id(c.msg)] = _FRAMES.encode(c.msg)
                    self._send(c, data, now)
                elif type(c) is Connect:
                    self.counters["dials"] += 1
                    self._nursery.start_soon(self._dial, None, c.address)
                elif type(c) is Close:
                    self._close_peer(c.peer)
        changed = False
        while (ev := proto.next_event()) is not None:
            if type(ev) is Delivered:
                self._deliver(ev)
            elif type(ev) is DirectReceived:
                self._deliver_direct(ev)
            else:
                changed = True
                for w in list(self._watchers):
                    try:
                        w.send_nowait(ev)
                    except trio.WouldBlock:
                        pass
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._watchers.remove(w)
        if changed:
            self._changed.set()
            self._changed = trio.Event()
        scope = self._timer_scope
        if scope is not None:
            dl = proto.next_deadline()
            dl = math.inf if dl is None else dl
            if dl != scope.deadline:
                scope.deadline = dl

    def _deliver_direct(self, ev: DirectReceived) -> None:
        channel = self._direct_send
        for prefix, routed in self._direct_routes:
            if ev.payload.startswith(prefix):
                channel = routed
                break
        try:
            channel.send_nowait((ev.origin, ev.payload))
        except trio.WouldBlock:
            self.counters["subscriber_drops"] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _deliver(self, ev: Delivered) -> None:
        subs = self._subs.get(ev.topic)
        if not subs:
            return
        for entry in list(subs):
            ch, full = entry
            try:
                ch.send_nowait(ev if full else (ev.origin, ev.payload))
            except trio.WouldBlock:
                self.counters["subscriber_drops"] += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                subs.remove(entry)

    def _send(self, c: Send, data: bytes, now: float) -> None:
        states = self._links.get(c.peer)
        st = next((s for s in reversed(states) if not s.closing), None) if states else None
        if st is not None:
            if st.push(data):
                st.last_used = now
            else:
                self.counters["queue_drops"] += 1
            return
        q = self._dialing.get(c.peer)
        if q is not None:
            if len(q) < self._queue_size:
                q.append((c.msg, data))
            else:
                self.counters["queue_drops"] += 1
            return
        if c.address is not None:
            self._dialing[c.peer] = [(c.msg, data)]
            self.counters["dials"] += 1
            self._nursery.start_soon(self._dial, c.peer, c.address)
            return
        self._proto.send_failed(c.peer, now, [c.msg])

    def _close_peer(self, peer: PeerId) -> None:
        for st in self._links.get(peer, []):
            st.close_soon()

    async def _dial(self, peer: PeerId | None, address: str) -> None:
        link: Link | None = None
        try:
            with trio.fail_after(self._dial_timeout):
                link = await self._transport.connect(address)
        except (OSError, RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError,
                trio.EndOfChannel, ValueError):
            link = None
        if link is not None and peer is not None and link.remote_peer != peer:
            await link.aclose()
            link = None
        if link is None:
            self.counters["dial_failures"] += 1
            now = trio.current_time()
            if peer is None:
                self._proto.connect_failed(address, now)
            else:
                unsent = self._dialing.pop(peer, [])
                self._proto.send_failed(peer, now, [m for m, _ in unsent])
            self._flush()
            return
        pending = self._dialing.pop(peer, []) if peer is not None else []
        await self._run_link(link, address, [d for _, d in pending])

    async def _handle_inbound(self, link: Link) -> None:
        await self._ready.wait()
        await self._run_link(link, None, [])

    async def _run_link(self, link: Link, address: str | None, pending: Sequence[bytes]) -> None:
        peer = link.remote_peer
        now = trio.current_time()
        st = _LinkState(link, peer, now, self._queue_size + len(pending))
        st.queue.extend(pending)
        if self._closing or not self._proto.link_up(peer, now, address):
            with trio.CancelScope(shield=True):
                await link.aclose()
            self._flush()
            return
        self._links.setdefault(peer, []).append(st)
        self._no_links = trio.Event() if self._no_links.is_set() else self._no_links
        self._cap_links(now)
        self._flush()
        try:
            # Shielded: a link outlives the cancellation of the overlay's tasks long
            # enough to say DISCONNECT; _leave cancels st.scope when it is done.
            with trio.CancelScope(shield=True) as st.scope:
                async with trio.open_nursery() as n:
                    n.start_soon(self._writer, st)
                    await self._reader(st)
                    st.done = True
                    st.lot.unpark_all()
                    await link.aclose()  # wakes a writer blocked in send
        finally:
            states = self._links.get(peer, [])
            if st in states:
                states.remove(st)
            if not states:
                self._links.pop(peer, None)
            if not self._links:
                self._no_links.set()
            with trio.CancelScope(shield=True):
                await link.aclose()
            if not self._closing:
                self._proto.link_down(peer, trio.current_time())
                self._flush()

    async def _reader(self, st: _LinkState) -> None:
        proto = self._proto
        link = st.link
        peer = st.peer
        while True:
            try:
                data = await link.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            now = trio.current_time()
            st.last_used = now
            self.counters["bytes_received"] += len(data)
            try:
                msg = _FRAMES.decode(data, self._max_frame)
            except RemoteProtocolError as e:
                proto.receive_malformed(peer, e, now)
            else:
                proto.receive(peer, msg, now, len(data))
            self._flush()

    async def _writer(self, st: _LinkState) -> None:
        link = st.link
        queue = st.queue
        while not st.done:
            while queue and not st.done:
                data = queue.popleft()
                try:
                    await link.send(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The remote closed (or the link broke): stop writing, but let the
                    # reader drain what is still in flight to us (a DISCONNECT, say).
                    st.closing = True
                    queue.clear()
                    return
                except ValueError:  # larger than the link allows: our bug, drop it
                    self.counters["queue_drops"] += 1
                    continue
                self.counters["bytes_sent"] += len(data)
            if st.closing:
                break
            await st.lot.park()
        await link.aclose()  # we are done with it: wakes the reader

    async def _timer_loop(self) -> None:
        proto = self._proto
        last = -math.inf
        while True:
            dl = proto.next_deadline()
            dl = math.inf if dl is None else dl
            if dl <= last:  # a deadline that did not move: never spin
                dl = last + 1e-3
            with trio.CancelScope(deadline=dl) as cs:
                self._timer_scope = cs
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            last = now
            proto.handle_timer(now)
            self._flush()

    async def _housekeeping(self) -> None:
        period = max(0.5, self._idle_timeout / 4)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for peer, states in list(self._links.items()):
                wanted = self._proto.wants_link(peer)
                for st in states[:-1]:  # duplicates: keep the newest
                    if now - st.last_used > period:
                        self._close_state(st)
                if not wanted and now - states[-1].last_used > self._idle_timeout:
                    self._close_state(states[-1])

    def _cap_links(self, now: float) -> None:
        total = sum(len(v) for v in self._links.values())
        if total <= self._max_links:
            return
        idle = sorted(
            (st for sts in self._links.values() for st in sts if not self._proto.wants_link(st.peer)),
            key=lambda st: st.last_used,
        )
        for st in idle[: total - self._max_links]:
            self._close_state(st)

    def _close_state(self, st: _LinkState) -> None:
        st.close_soon()

    async def _leave(self) -> None:
        self._proto.leave(trio.current_time())
        self._flush()
        for states in list(self._links.values()):
            for st in states:
                self._close_state(st)
        self._closing = True
        if self._links:
            with trio.move_on_after(self._leave_timeout):
                await self._no_links.wait()
        for states in list(self._links.values()):
            for st in states:
                if st.scope is not None:
                    st.scope.cancel()


@asynccontextmanager
async def open_overlay(
    transport: Transport,
    identity: Identity,
    config: OverlayConfig | None = None,
    *,
    bootstrap: Sequence[str] = (),
    listen: bool = True,
    rng: random.Random | None = None,
    wall_offset: float | None = None,
    queue_size: int = 1024,
    idle_timeout: float = 30.0,
    max_links: int = 128,
    dial_timeout: float = 10.0,
    max_frame: int = 16 * 1024 * 1024,
    on_open: Callable[[Overlay], None] | None = None,
) -> AsyncIterator[Overlay]:
    """Run an overlay peer over ``transport`` for the duration of the block.

    ``bootstrap``: addresses to join through (none for the first peer).
    ``listen=False``: do not accept links (a peer behind NAT; it has no address
    and only connects out).  ``rng``: randomness for the protocols (default: the
    OS CSPRNG; simulations pass a seeded ``random.Random``).  ``wall_offset``:
    added to ``trio.current_time()`` to timestamp publications (default: the
    offset to ``time.time()``; simulations pass 0).  ``on_open(overlay)`` runs
    before the overlay serves or dials anything: the place to register
    :meth:`Overlay.route_direct` channels (a transport whose signaling rides on
    the overlay, such as :class:`~p2pfl.transport.hybrid.HybridTransport`,
    passes its ``attach``).

    Raises :class:`LocalProtocolError` when ``identity`` is not the transport's.
    """
    if identity.peer_id != transport.local_peer:
        raise LocalProtocolError("identity does not match the transport's peer id")
    cfg = config if config is not None else OverlayConfig()
    offset = time.time() - trio.current_time() if wall_offset is None else wall_offset
    async with trio.open_nursery() as nursery:
        ov = Overlay(
            transport, nursery, queue_size=queue_size, idle_timeout=idle_timeout,
            max_links=max_links, dial_timeout=dial_timeout, max_frame=max_frame,
        )
        if on_open is not None:
            on_open(ov)
        address: str | None = None
        if listen:
            address = await nursery.start(transport.serve, ov._handle_inbound)
        ov.address = address
        ov._proto = OverlayProtocol(
            identity, cfg, rng=rng if rng is not None else random.SystemRandom(),
            address=address, bootstrap=bootstrap, wall_offset=offset,
        )
        ov._proto.start(trio.current_time())
        ov._ready.set()
        nursery.start_soon(ov._timer_loop)
        nursery.start_soon(ov._housekeeping)
        ov._flush()
        try:
            yield ov
        finally:
            with trio.CancelScope(shield=True):
                await ov._leave()
            nursery.cancel_scope.cancel()
