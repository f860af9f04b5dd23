"""WebRTC transport (aiortc data channels) for peers that cannot accept connections.

Import it explicitly (``from p2pfl.transport.webrtc import WebRtcTransport``):
aiortc is the optional extra ``p2pfl-mpc[webrtc]``.

Theory of operation
-------------------
A peer behind a NAT or a firewall has no address others can connect to, but it
can keep an outbound link to some peer that both sides reach (the overlay's
"mutually reachable peer").  Two such peers open a link to each other in three
steps:

1. **Signaling.**  The initiator (``connect("webrtc:<peer id>")``) creates a
   peer connection with one data channel, gathers its ICE candidates and sends
   a :class:`SignalOffer` (SDP with the candidates inside: aiortc gathers before
   it describes, so no trickle is needed) through a :class:`Signaling` object;
   the responder (:meth:`WebRtcTransport.serve`) answers with a
   :class:`SignalAnswer` or refuses with a :class:`SignalReject`.  Signaling
   messages are :class:`~p2pfl.identity.Signed` envelopes (wire tags 0x08xx)
   over the domain ``p2pfl/webrtc-signal/1/`` + the hex 16-byte network tag
   (the tag the handshake uses), and every message names its network, a random
   16-byte session id, the recipient and the sender's clock.  A receiver drops,
   and counts, anything that does not verify, is not addressed to it, is more
   than ``max_clock_skew`` away from its clock, or replays a seen (signer,
   session); it answers an offer for another network with a signed reject, so
   the initiator fails at once with the same error a TCP handshake would give
   (:class:`~._handshake.HandshakeError`, ``REFUSED``/``NETWORK``).  Because
   the SDP is signed, the DTLS certificate fingerprints in it are bound to the
   peer identities.  Signaling carriers are untrusted and only move bytes: an
   in-process hub for tests (:class:`MemorySignalingHub`) and a relay through a
   third peer over any :class:`~p2pfl.transport.Link` (:class:`RelaySignaling`
   on each side, :class:`SignalingRelay` on the relay; see below).
2. **ICE, DTLS, SCTP.**  aiortc connects the candidates (host candidates; STUN
   and TURN servers when configured, for real NATs), runs DTLS and opens the
   data channel (negotiated, id 0).  All of aiortc runs in one asyncio thread;
   the channel reaches trio as a flow-controlled byte stream
   (:class:`~._webrtc_bridge.ChannelStream`: credits for the receiver's memory,
   ``bufferedAmount`` for the sender's; messages of at most 64 KiB).
3. **The p2pfl handshake and frames.**  The data channel is not trusted by
   itself: over that byte stream the two peers run exactly the TCP transport's
   sans-I/O :class:`~._handshake.Handshake` (mutual authentication, forward
   secrecy, network id binding; the initiator expects the peer id it asked
   for, the responder checks it is the offer's signer) and then its AEAD
   frames (:mod:`._framing`).  :class:`WebRtcLink` has the same semantics as
   :class:`~p2pfl.transport.tcp.TcpLink`: clean close through the
   authenticated CLOSE frame (then a graceful data-channel close, which
   delivers everything queued first), a channel that ends without one is a
   broken link, invalid frames cut the peer off, idle links are pinged and
   timed out.

Signaling is read by whichever task needs it (``serve`` waiting for offers, a
``connect`` waiting for its answer): the first becomes the reader and routes
every message to its mailbox, the others wait; so ``connect`` works without
``serve`` and nothing runs in the background.  Signaling implementations must
have a cancel-safe ``receive``.

Relay protocol (tags 0x0810-0x0812), over a link from each peer to the relay:
the peer sends ``RelayForward(recipient, envelope)``; the relay, knowing the
authenticated id of the link it came from, sends ``RelayDeliver(sender,
envelope)`` on its link to ``recipient``, or answers
``RelayUnreachable(recipient, reason)``, which makes a pending ``connect`` to
that peer fail at once with :class:`ConnectionRefusedError`.  The relay never
reads envelopes; it bounds their size, rate-limits each source (token bucket)
and gives up on a destination that does not accept within ``send_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import trio

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity, Signed, seal, verify_signature
from p2pfl.wire import PeerId, decode, decode_as, encode

from ._base import DEFAULT_MAX_MESSAGE, Link, LinkHandler, LinkStatistics, Transport
from ._framing import DEFAULT_MAX_FRAME, FRAME_OVERHEAD, CipherSuite, FrameDecoder, FrameEncoder
from ._handshake import FailureReason, Handshake, HandshakeComplete, HandshakeError, Role
from ._handshake import network_tag as _network_tag
from ._signaling import (
    _SEEN_SESSIONS,
    DEFAULT_IDLE_TIMEOUT,
    MAX_ENVELOPE,
    MemorySignaling,
    MemorySignalingHub,
    RejectReason,
    RelayDeliver,
    RelayForward,
    RelaySignaling,
    RelayUnreachable,
    SignalAnswer,
    Signaling,
    SignalingRelay,
    SignalOffer,
    SignalReject,
    Undeliverable,
    _check_sdp,
    _domain,
    _SignalMessage,
    format_webrtc_address,
    parse_webrtc_address,
)
from ._webrtc_bridge import ChannelStream, IceServer, RtcOptions

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "IceServer",
    "MemorySignaling",
    "MemorySignalingHub",
    "RejectReason",
    "RelayDeliver",
    "RelayForward",
    "RelaySignaling",
    "RelayUnreachable",
    "SignalAnswer",
    "SignalOffer",
    "SignalReject",
    "Signaling",
    "SignalingRelay",
    "Undeliverable",
    "WebRtcLink",
    "WebRtcTransport",
    "WebRtcTransportStatistics",
    "format_webrtc_address",
    "parse_webrtc_address",
]


log = logging.getLogger(__name__)


class WebRtcLink(Link):
    """An authenticated, encrypted message link over one WebRTC data channel.

    Made by :class:`WebRtcTransport`; same semantics as
    :class:`~p2pfl.transport.tcp.TcpLink` (see the module docstrings).
    """

    def __init__(
        self,
        stream: ChannelStream,
        local_peer: PeerId,
        session: HandshakeComplete,
        *,
        initial_data: bytes,
        max_message: int,
        max_frame: int,
        idle_timeout: float | None,
        close_timeout: float,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._stream = stream
        self._local = local_peer
        self._remote = session.remote_peer
        self.remote_public_key = session.remote_public_key
        #: BLAKE2b-512 of the handshake transcript, equal on both ends.
        self.channel_binding = session.transcript_hash
        self.remote_address = format_webrtc_address(session.remote_peer)
        self._max_message = max_message
        #: The frame AEAD the handshake negotiated.
        self.cipher_suite = session.suite
        self._encoder = FrameEncoder(session.send_key, suite=session.suite, max_frame=max_frame)
        self._decoder = FrameDecoder(session.receive_key, suite=session.suite,
                                     max_frame=max_frame, max_message=max_message)
        self._initial = initial_data
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._on_close = on_close
        self._send_lock = trio.Lock()
        self._pending: deque[bytes] = deque()
        self._receiving = False
        self._closed = False
        self._remote_closed = False
        self._broken: BaseException | None = None
        self._last_rx = self._last_tx = trio.current_time()
        self._messages_sent = self._messages_received = 0
        self._bytes_sent = self._bytes_received = 0

    @property
    def local_peer(self) -> PeerId:
        return self._local

    @property
    def remote_peer(self) -> PeerId:
        return self._remote

    @property
    def max_message(self) -> int:
        return self._max_message

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(self._messages_sent, self._messages_received,
                              self._bytes_sent, self._bytes_received)

    def __repr__(self) -> str:
        return f"<WebRtcLink {self._local.short()} -> {self._remote.short()}>"

    # -- state ------------------------------------------------------------------------

    def _broken_error(self, what: str) -> trio.BrokenResourceError:
        return trio.BrokenResourceError(f"link to {self._remote.short()} is broken: {what}")

    def _break(self, cause: BaseException) -> None:
        """Mark the link broken and drop the peer connection (no close frame)."""
        if self._broken is None:
            self._broken = cause
        self._abort_channel()

    def _abort_channel(self) -> None:
        assert self._stream.channel is not None
        self._stream.channel.abort()
        self._stream.notify()

    def _protocol_failure(self, e: RemoteProtocolError) -> None:
        e.peer = self._remote
        log.info("cutting off %s: %s", self._remote, e)
        self._break(e)
        raise self._broken_error(f"invalid data from the remote: {e}") from e

    def _raise_if_unusable(self, sending: bool) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if self._broken is not None:
            raise self._broken_error(str(self._broken)) from self._broken
        if self._stream.error is not None:
            self._protocol_failure(self._stream.error)
        if sending and self._remote_closed:
            raise trio.BrokenResourceError(f"{self._remote.short()} closed the link")
        if sending and self._stream.eof is not None:
            raise self._broken_error(f"the data channel ended ({self._stream.eof})")

    # -- send ---------------------------------------------------------------------------

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        """Send one message (any bytes-like object up to ``max_message`` bytes).

        Waits while the link is back-pressured (the remote's receive window is
        full, or our send buffer is).  Raises :class:`ValueError` for an
        oversized message (nothing is sent), :class:`trio.ClosedResourceError`
        after ``aclose`` and :class:`trio.BrokenResourceError` when the remote
        closed the link or the connection broke.  A send cancelled part way
        through a message breaks the link.
        """
        size = memoryview(value).nbytes
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if size > self._max_message:
            raise ValueError(f"message of {size} bytes exceeds max_message={self._max_message}")
        await trio.lowlevel.checkpoint()
        async with self._send_lock:
            await self._wait_budget()  # cancelling here is harmless: nothing sent yet
            try:
                await self._write_frames(value)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise
            except BaseException as e:
                self._break(e)
                raise
            self._last_tx = trio.current_time()
            self._messages_sent += 1
            self._bytes_sent += size

    async def _wait_budget(self) -> int:
        stream = self._stream
        while True:
            self._raise_if_unusable(sending=True)
            budget = stream.send_budget()
            if budget > 0:
                return budget
            await stream.wait_changed()

    async def _write_frames(self, value: bytes | bytearray | memoryview) -> None:
        stream = self._stream
        for frame in self._encoder.frames(value):
            with memoryview(frame) as view:
                pos, n = 0, len(view)
                while pos < n:
                    budget = stream.send_budget()
                    if budget <= 0 or self._closed:
                        budget = await self._wait_budget()
                    take = min(budget, n - pos)
                    stream.write_nowait(view[pos : pos + take])
                    pos += take

    # -- receive ---------------------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next whole message.

        Raises :class:`trio.EndOfChannel` once the remote closed cleanly (after
        every earlier message), :class:`trio.BrokenResourceError` when the
        channel ended without a close frame, timed out or carried invalid
        frames, :class:`trio.ClosedResourceError` after ``aclose`` and
        :class:`trio.BusyResourceError` when another task is receiving.
        """
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if not self._pending:
            if self._remote_closed:
                await trio.lowlevel.checkpoint()
                raise trio.EndOfChannel(f"{self._remote.short()} closed the link")
            self._raise_if_unusable(sending=False)
            if self._receiving:
                raise trio.BusyResourceError("another task is already receiving on this link")
            self._receiving = True
            try:
                await self._fill()
            finally:
                self._receiving = False
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if not self._pending:
            raise trio.EndOfChannel(f"{self._remote.short()} closed the link")
        msg = self._pending.popleft()
        self._messages_received += 1
        self._bytes_received += len(msg)
        return msg

    def _feed(self, data: bytes) -> None:
        try:
            self._pending.extend(self._decoder.feed(data))
        except RemoteProtocolError as e:
            self._protocol_failure(e)
        if self._decoder.closed:
            self._remote_closed = True

    async def _fill(self) -> None:
        """Decode until at least one message is pending or the remote closed."""
        if self._initial:
            data, self._initial = self._initial, b""
            self._feed(data)
            if self._pending or self._remote_closed:
                return
        stream = self._stream
        while True:
            chunk = stream.read_nowait()
            if chunk is not None:
                self._last_rx = trio.current_time()
                self._feed(chunk)
                if self._pending or self._remote_closed:
                    return
                continue
            self._raise_if_unusable(sending=False)
            if stream.eof is not None:
                self._on_eof(stream.eof)
                return
            idle = self._idle_timeout
            deadline = math.inf if idle is None else min(self._last_rx + idle,
                                                         self._last_tx + idle / 3)
            with trio.move_on_at(deadline) as scope:
                await stream.wait_changed()
            if scope.cancelled_caught:
                await self._on_idle()

    def _on_eof(self, reason: str) -> None:
        try:
            clean = self._decoder.feed_eof()
        except RemoteProtocolError as e:
            self._protocol_failure(e)
        if clean:
            self._remote_closed = True
            return
        err = trio.BrokenResourceError(
            f"{self._remote.short()}'s data channel ended without a close frame "
            f"(crash or network failure: {reason})"
        )
        self._break(err)
        raise self._broken_error("channel ended without a close frame") from err

    async def _on_idle(self) -> None:
        """A receive deadline passed: time out the link or send a keepalive."""
        assert self._idle_timeout is not None
        now = trio.current_time()
        if now >= self._last_rx + self._idle_timeout:
            err = trio.BrokenResourceError(f"idle timeout: nothing received for "
                                           f"{self._idle_timeout} s")
            self._break(err)
            raise self._broken_error(str(err)) from err
        if self._send_lock.locked() or self._stream.send_budget() < FRAME_OVERHEAD:
            self._last_tx = now  # a send is under way (or blocked): no ping needed
            return
        async with self._send_lock:
            self._raise_if_unusable(sending=True)
            self._stream.write_nowait(self._encoder.ping())
            self._last_tx = trio.current_time()

    # -- close ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the link: send the authenticated CLOSE frame and close the data
        channel gracefully (everything queued is delivered first, bounded by
        ``close_timeout``), then the peer connection.  Idempotent; never raises
        for a broken connection."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        stream = self._stream
        assert stream.channel is not None
        stream.notify()  # wake blocked senders and receivers: ClosedResourceError
        try:
            if (self._broken is None and not self._remote_closed and stream.eof is None
                    and stream.error is None and not self._send_lock.locked()):
                stream.write_nowait(self._encoder.close(), metered=False)
                stream.channel.close_channel()
                with trio.move_on_after(self._close_timeout):
                    while stream.eof is None:
                        await stream.wait_changed()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
                await stream.channel.aclose()
            if self._on_close is not None:
                self._on_close()
                self._on_close = None

    def abort(self) -> None:
        """Drop the peer connection at once, without a close frame.

        For cutting off a misbehaving peer, and for tests that simulate a
        crash: the remote sees :class:`trio.BrokenResourceError`.  The link
        counts as closed here.
        """
        self._closed = True
        self._abort_channel()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


# -- the transport -------------------------------------------------------------------------


@dataclass(frozen=True)
class WebRtcTransportStatistics:
    """Counters of one :class:`WebRtcTransport`.

    ``handshake_failures`` maps a reason (a :class:`~._handshake.FailureReason`
    name, a :class:`RejectReason` name, or ``"ice"`` for connections that did
    not come up, ``"timeout"``) to a count, inbound and outbound together.
    ``signaling_dropped`` counts signaling messages that did not verify, were
    stale, replayed, misaddressed or unexpected.
    """

    links_accepted: int
    links_connected: int
    links_open: int
    handshakes_in_progress: int
    handshake_failures: Mapping[str, int]
    signaling_received: int
    signaling_dropped: int

    @property
    def handshakes_failed(self) -> int:
        return sum(self.handshake_failures.values())


class _PendingConnect:
    __slots__ = ("result", "target")

    def __init__(self, target: PeerId) -> None:
        self.target = target
        self.result: SignalAnswer | SignalReject | Undeliverable | None = None


class WebRtcTransport(Transport):
    """Links over WebRTC data channels for one identity in one network.

    ``signaling`` carries offers and answers (see :class:`Signaling`).
    ``ice_servers``: STUN/TURN servers (:class:`IceServer` or URL strings),
    none by default.  ``host_addresses``: ``None`` gathers every non-loopback
    interface address (aioice's default); a tuple gathers exactly those
    (``("127.0.0.1",)`` on one host).  ``connect_timeout`` bounds signaling
    plus ICE, DTLS and SCTP; ``handshake_timeout`` the p2pfl handshake after
    that; ``receive_window`` is the most bytes a remote may send ahead of our
    reading and ``send_buffer`` the most we queue in aiortc; the other options
    (``cipher_suites`` included) are those of
    :class:`~p2pfl.transport.tcp.TcpTransport`.  ``clock`` (UNIX
    time) stamps signaling messages, which must be within ``max_clock_skew``
    seconds of the receiver's clock.
    """

    def __init__(
        self,
        identity: Identity,
        network_id: bytes | str,
        signaling: Signaling,
        *,
        ice_servers: tuple[IceServer | str, ...] | list[IceServer | str] = (),
        host_addresses: tuple[str, ...] | list[str] | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_frame: int = DEFAULT_MAX_FRAME,
        connect_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        close_timeout: float = 2.0,
        max_pending_handshakes: int = 16,
        receive_window: int = 4 * 1024 * 1024,
        send_buffer: int = 1024 * 1024,
        max_clock_skew: float = 300.0,
        cipher_suites: tuple[CipherSuite, ...] | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if max_message <= 0:
            raise ValueError("max_message must be positive")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        servers = tuple(s if isinstance(s, IceServer) else IceServer((s,)) for s in ice_servers)
        self._options = RtcOptions(
            ice_servers=servers,
            host_addresses=None if host_addresses is None else tuple(host_addresses),
            buffered_low=max(send_buffer // 4, 16 * 1024),
        )
        self._identity = identity
        self._network_id = network_id.encode() if isinstance(network_id, str) else network_id
        self._tag = _network_tag(self._network_id)
        self._signaling = signaling
        self.max_message = max_message
        self._max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._max_pending = max_pending_handshakes
        self._receive_window = receive_window
        self._send_buffer = send_buffer
        ChannelStream(receive_window=receive_window, send_buffer=send_buffer)  # validate
        self._max_skew = max_clock_skew
        self._suites = cipher_suites
        self._clock = clock
        self._rng = rng
        # signaling router (see the module docstring)
        self._reading = False
        self._router_changed = trio.Event()
        self._connects: dict[bytes, _PendingConnect] = {}
        self._offers: deque[tuple[PeerId, SignalOffer]] | None = None
        self._signaling_error: BaseException | None = None
        self._seen: OrderedDict[tuple[PeerId, bytes], None] = OrderedDict()
        # counters
        self._accepted = self._connected = self._open = self._pending = 0
        self._sig_received = self._sig_dropped = 0
        self._failures: Counter[str] = Counter()
        self.address = format_webrtc_address(identity.peer_id)

    @property
    def local_peer(self) -> PeerId:
        return self._identity.peer_id

    def statistics(self) -> WebRtcTransportStatistics:
        return WebRtcTransportStatistics(
            links_accepted=self._accepted,
            links_connected=self._connected,
            links_open=self._open,
            handshakes_in_progress=self._pending,
            handshake_failures=MappingProxyType(dict(self._failures)),
            signaling_received=self._sig_received,
            signaling_dropped=self._sig_dropped,
        )

    # -- signaling ----------------------------------------------------------------------

    def _router_notify(self) -> None:
        self._router_changed.set()
        self._router_changed = trio.Event()

    async def _pump_until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()``, reading signaling if nobody else is.

        Raises :class:`ConnectionError` once the signaling carrier is gone.
        """
        while not ready():
            if self._signaling_error is not None:
                raise ConnectionError(
                    f"signaling ended: {self._signaling_error!r}"
                ) from self._signaling_error
            if self._reading:
                await self._router_changed.wait()
                continue
            self._reading = True
            try:
                item = await self._signaling.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._signaling_error = e
                continue
            finally:
                self._reading = False
                self._router_notify()
            self._sig_received += 1
            await self._route(item)
            self._router_notify()

    async def _send_signal(self, recipient: PeerId, msg: _SignalMessage) -> None:
        envelope = encode(seal(self._identity, msg, domain=_domain(msg.network)))
        await self._signaling.send(recipient, envelope)

    def _open_envelope(self, data: bytes) -> tuple[PeerId, _SignalMessage]:
        """Verify and check one envelope; :class:`RemoteProtocolError` if unusable.

        The body is decoded (strictly, size-bounded) before the signature is
        checked, because the signature's domain names the network the body
        claims; nothing is acted upon before the check.
        """
        env = decode_as(data, Signed, max_size=MAX_ENVELOPE)
        msg = decode(env.body, max_size=MAX_ENVELOPE)
        if not isinstance(msg, SignalOffer | SignalAnswer | SignalReject):
            raise RemoteProtocolError(f"not a signaling message: {type(msg).__name__}")
        if not verify_signature(env.signer, _domain(msg.network), env.body, env.signature):
            raise RemoteProtocolError(f"bad signature on a signaling message from "
                                      f"{env.peer_id.short()}")
        signer = env.peer_id
        if msg.recipient != self.local_peer:
            raise RemoteProtocolError(f"signaling message for {msg.recipient.short()}, not us")
        if signer == self.local_peer:
            raise RemoteProtocolError("signaling message signed by ourselves")
        if abs(self._clock() - msg.sent_at) > self._max_skew:
            raise RemoteProtocolError(
                f"signaling message from {signer.short()} is stale or from the future "
                f"({msg.sent_at - self._clock():+.0f} s)"
            )
        return signer, msg

    async def _route(self, item: bytes | Undeliverable) -> None:
        if isinstance(item, Undeliverable):
            for pending in self._connects.values():
                if pending.target == item.recipient and pending.result is None:
                    pending.result = item
            return
        try:
            signer, msg = self._open_envelope(item)
        except RemoteProtocolError as e:
            self._sig_dropped += 1
            log.info("dropping a signaling message: %s", e)
            return
        if isinstance(msg, SignalOffer):
            await self._on_offer(signer, msg)
            return
        found = self._connects.get(msg.session)
        if (found is None or found.target != signer or found.result is not None
                or msg.network != self._tag):
            self._sig_dropped += 1
            log.info("dropping an unexpected %s from %s", type(msg).__name__, signer.short())
            return
        found.result = msg

    async def _on_offer(self, signer: PeerId, offer: SignalOffer) -> None:
        key = (signer, offer.session)
        if key in self._seen:
            self._sig_dropped += 1
            log.info("dropping a replayed offer from %s", signer.short())
            return
        self._seen[key] = None
        while len(self._seen) > _SEEN_SESSIONS:
            self._seen.popitem(last=False)
        if offer.network != self._tag:
            self._failures["network"] += 1
            await self._reject(signer, offer, RejectReason.NETWORK,
                               f"this peer is on network {self._tag.hex()}")
        elif self._offers is None:
            self._failures["not_serving"] += 1
            await self._reject(signer, offer, RejectReason.NOT_SERVING,
                               "not accepting WebRTC links")
        elif self._pending + len(self._offers) >= self._max_pending:
            self._failures["busy"] += 1
            await self._reject(signer, offer, RejectReason.BUSY, "too many pending connections")
        else:
            self._offers.append((signer, offer))

    async def _reject(self, peer: PeerId, offer: SignalOffer, reason: RejectReason,
                      detail: str) -> None:
        log.info("refusing an offer from %s: %s (%s)", peer.short(), reason.name.lower(), detail)
        reject = SignalReject(offer.network, offer.session, peer, self._clock(), reason,
                              detail[:200])
        with trio.move_on_after(self._close_timeout), contextlib.suppress(OSError):
            await self._send_signal(peer, reject)

    # -- connect ------------------------------------------------------------------------------

    async def connect(self, address: str) -> WebRtcLink:
        """Open a link to ``webrtc:PEERID`` through signaling.

        Raises :class:`ValueError` for a malformed address (or our own),
        :class:`OSError` when no connection comes up
        (:class:`ConnectionRefusedError` when the signaling carrier or the
        peer refuses, :class:`TimeoutError` after ``connect_timeout``,
        :class:`ConnectionError` when ICE/DTLS fail or signaling is gone) and
        :class:`~._handshake.HandshakeError` (a
        :class:`~p2pfl.errors.RemoteProtocolError`) when the handshake fails,
        including a peer on another network (``REFUSED``/``NETWORK``).
        """
        target = parse_webrtc_address(address)
        if target == self.local_peer:
            raise ValueError("cannot open a WebRTC link to ourselves")
        session = self._rng(16)
        pending = _PendingConnect(target)
        self._connects[session] = pending
        stream: ChannelStream | None = None
        try:
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await self._new_stream()
                    assert stream.channel is not None
                    sdp = await stream.channel.make_offer()
                    await self._send_signal(
                        target, SignalOffer(self._tag, session, target, self._clock(), sdp))
                    await self._pump_until(lambda: pending.result is not None)
                    answer = self._check_answer(target, pending.result)
                    await stream.channel.accept_answer(answer.sdp)
                    await stream.wait_open()
            except trio.TooSlowError as e:
                self._failures["timeout"] += 1
                raise TimeoutError(
                    f"no WebRTC connection to {target.short()} within {self.connect_timeout} s"
                ) from e
            except ConnectionError as e:
                if not isinstance(e, ConnectionRefusedError):
                    self._failures["ice"] += 1
                raise
            finally:
                del self._connects[session]
            hs = Handshake(Role.INITIATOR, self._identity, self._network_id,
                           now=trio.current_time(), timeout=self.handshake_timeout,
                           expected_peer=target, suites=self._suites, rng=self._rng)
            done = await self._run_handshake(stream, hs)
        except HandshakeError as e:
            reason = e.remote_reason if e.remote_reason is not None else e.reason
            self._failures[reason.name.lower()] += 1
            await self._discard(stream)
            raise
        except BaseException:
            await self._discard(stream)
            raise
        self._connected += 1
        return self._make_link(stream, done, hs.trailing_data)

    def _check_answer(
        self, target: PeerId, result: SignalAnswer | SignalReject | Undeliverable | None
    ) -> SignalAnswer:
        if isinstance(result, Undeliverable):
            raise ConnectionRefusedError(
                f"{target.short()} is unreachable through signaling: {result.reason}")
        if isinstance(result, SignalReject):
            if result.reason is RejectReason.NETWORK:
                raise HandshakeError(
                    f"handshake with {target} failed: the remote refused the handshake: "
                    f"network: {result.detail!r}",
                    FailureReason.REFUSED, peer=target, remote_reason=FailureReason.NETWORK)
            self._failures[result.reason.name.lower()] += 1
            raise ConnectionRefusedError(
                f"{target.short()} refused the WebRTC offer: "
                f"{result.reason.name.lower()}: {result.detail}")
        assert isinstance(result, SignalAnswer)
        try:
            _check_sdp(result.sdp)
        except RemoteProtocolError as e:
            raise HandshakeError(f"bad answer from {target}: {e}", FailureReason.MALFORMED,
                                 peer=target) from e
        return result

    # -- serve -----------------------------------------------------------------------------------

    async def serve(
        self,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer offers forever (see :meth:`Transport.serve`).

        The started value is ``webrtc:PEERID``.  When the signaling carrier
        ends, no more offers are answered; ``serve`` then waits for the links
        it accepted to end and raises :class:`ConnectionError`.
        """
        if self._offers is not None:
            raise RuntimeError("this transport is already serving")
        self._offers = deque()
        ended: ConnectionError | None = None
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(self.address)
                while True:
                    try:
                        await self._pump_until(lambda: bool(self._offers))
                    except ConnectionError as e:
                        ended = e
                        log.warning("%s: signaling ended, no longer accepting WebRTC links",
                                    self.local_peer.short())
                        break
                    signer, offer = self._offers.popleft()
                    self._pending += 1
                    nursery.start_soon(self._accept, signer, offer, handler)
        finally:
            self._offers = None
        assert ended is not None  # the loop only ends by the break above
        raise ended

    async def _accept(self, signer: PeerId, offer: SignalOffer, handler: LinkHandler) -> None:
        stream: ChannelStream | None = None
        try:
            try:
                with trio.fail_after(self.connect_timeout):
                    stream = await self._new_stream()
                    assert stream.channel is not None
                    try:
                        _check_sdp(offer.sdp)
                        sdp = await stream.channel.make_answer(offer.sdp)
                    except (ValueError, RemoteProtocolError) as e:
                        await self._reject(signer, offer, RejectReason.MALFORMED, str(e))
                        raise RemoteProtocolError(str(e)) from e
                    await self._send_signal(
                        signer, SignalAnswer(self._tag, offer.session, signer, self._clock(), sdp))
                    await stream.wait_open()
                hs = Handshake(Role.RESPONDER, self._identity, self._network_id,
                               now=trio.current_time(), timeout=self.handshake_timeout,
                               suites=self._suites, rng=self._rng)
                done = await self._run_handshake(stream, hs)
                if done.remote_peer != signer:
                    raise HandshakeError(
                        f"the offer was signed by {signer} but the handshake authenticated "
                        f"{done.remote_peer}", FailureReason.UNEXPECTED_PEER,
                        peer=done.remote_peer)
            except (HandshakeError, RemoteProtocolError, OSError, trio.TooSlowError) as e:
                kind = (e.reason.name.lower() if isinstance(e, HandshakeError)
                        else "malformed" if isinstance(e, RemoteProtocolError)
                        else "timeout" if isinstance(e, trio.TooSlowError) else "ice")
                self._failures[kind] += 1
                log.info("WebRTC link from %s failed (%s): %r", signer.short(), kind, e)
                await self._discard(stream)
                return
            except BaseException:
                await self._discard(stream)
                raise
        finally:
            self._pending -= 1
        self._accepted += 1
        link = self._make_link(stream, done, hs.trailing_data)
        try:
            await handler(link)
        except (trio.BrokenResourceError, trio.EndOfChannel, RemoteProtocolError) as e:
            log.info("link %r ended: %r", link, e)
        finally:
            await link.aclose()

    # -- shared ------------------------------------------------------------------------------------

    async def _new_stream(self) -> ChannelStream:
        return await ChannelStream.create(self._options, receive_window=self._receive_window,
                                          send_buffer=self._send_buffer)

    async def _discard(self, stream: ChannelStream | None) -> None:
        """Close a stream that never became a link (shielded, bounded)."""
        if stream is None or stream.channel is None:
            return
        channel = stream.channel
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
            if stream.opened and stream.eof is None:
                channel.close_channel()  # lets a handshake reject arrive first
                with trio.move_on_after(0.5):
                    while stream.eof is None:
                        await stream.wait_changed()
            await channel.aclose()

    def _make_link(self, stream: ChannelStream, session: HandshakeComplete,
                   trailing: bytes) -> WebRtcLink:
        self._open += 1

        def on_close() -> None:
            self._open -= 1

        return WebRtcLink(stream, self.local_peer, session, initial_data=trailing,
                          max_message=self.max_message, max_frame=self._max_frame,
                          idle_timeout=self._idle_timeout, close_timeout=self._close_timeout,
                          on_close=on_close)

    async def _run_handshake(self, stream: ChannelStream, hs: Handshake) -> HandshakeComplete:
        """Drive ``hs`` over ``stream`` until it completes, fails or times out.

        Raises :class:`HandshakeError`; on failure the reject message (if any)
        is queued before returning.
        """
        deadline = hs.next_deadline()
        try:
            with trio.move_on_at(math.inf if deadline is None else deadline):
                out = hs.data_to_send()
                if out:
                    stream.write_nowait(out, metered=False)  # within the initial window
                while not hs.established:
                    chunk = stream.read_nowait()
                    if chunk is None:
                        if stream.error is not None:
                            raise HandshakeError(f"flow-control violation: {stream.error}",
                                                 FailureReason.MALFORMED) from stream.error
                        if stream.eof is not None:
                            hs.receive_eof()
                        await stream.wait_changed()
                        continue
                    hs.receive_data(chunk)
                    out = hs.data_to_send()
                    if out:
                        stream.write_nowait(out, metered=False)
            if not hs.established:
                hs.handle_timer(math.inf)  # raises HandshakeError(TIMEOUT)
        except HandshakeError:
            reject = hs.data_to_send()
            if reject and stream.eof is None and stream.error is None:
                stream.write_nowait(reject, metered=False)
            raise
        event = hs.next_event()
        assert event is not None
        return event
