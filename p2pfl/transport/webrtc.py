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
   in-process hub for tests (:class:`MemorySignalingHub`), a relay through a
   third peer over any :class:`~p2pfl.transport.Link` (:class:`RelaySignaling`
   on each side, :class:`SignalingRelay` on the relay; see below), and the
   overlay's direct messages (:class:`OverlaySignaling`, used by
   :class:`~p2pfl.transport.hybrid.HybridTransport`).
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
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity, Signed, seal, verify_signature
from p2pfl.wire import PeerId, decode, decode_as, encode

from ._base import DEFAULT_MAX_MESSAGE, LinkHandler
from ._framing import DEFAULT_MAX_FRAME, FRAME_OVERHEAD, CipherSuite
from ._handshake import FailureReason, Handshake, HandshakeComplete, HandshakeError, Role
from ._handshake import network_tag as _network_tag
from ._secure_link import SecureLink, SecureTransport
from ._signaling import (
    _SEEN_SESSIONS,
    DEFAULT_IDLE_TIMEOUT,
    MAX_ENVELOPE,
    DirectCarrier,
    IceServer,
    MemorySignaling,
    MemorySignalingHub,
    OverlaySignal,
    OverlaySignaling,
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
from ._webrtc_bridge import ChannelStream, RtcOptions

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DirectCarrier",
    "IceServer",
    "MemorySignaling",
    "MemorySignalingHub",
    "OverlaySignal",
    "OverlaySignaling",
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


class WebRtcLink(SecureLink[ChannelStream]):
    """An authenticated, encrypted message link over one WebRTC data channel.

    Made by :class:`WebRtcTransport`; same semantics as
    :class:`~p2pfl.transport.tcp.TcpLink` (see the module docstrings; the
    shared part is :mod:`._secure_link`).
    """

    def __repr__(self) -> str:
        return f"<WebRtcLink {self._local.short()} -> {self._remote.short()}>"

    # -- the carrier: one data channel (a flow-controlled ChannelStream) -----------------

    def _abort_carrier(self) -> None:
        assert self._stream.channel is not None
        self._stream.channel.abort()
        self._stream.notify()

    def _check_carrier(self, sending: bool) -> None:
        stream = self._stream
        if stream.error is not None:
            self._protocol_failure(stream.error)
        if sending and not self._remote_closed and stream.eof is not None:
            raise self._broken_error(f"the data channel ended ({stream.eof})")

    async def _write_message(self, value: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        await self._wait_budget()  # cancelling here is harmless: nothing sent yet
        stream = self._stream
        try:
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
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise
        except BaseException as e:
            self._break(e)
            raise

    async def _wait_budget(self) -> int:
        stream = self._stream
        while True:
            self._raise_if_unusable(sending=True)
            budget = stream.send_budget()
            if budget > 0:
                return budget
            await stream.wait_changed()

    async def _fill(self) -> None:
        """Decode until at least one message is pending or the remote closed."""
        if self._feed_initial():
            return
        stream = self._stream
        while True:
            chunk = stream.read_nowait()
            if chunk is not None:
                self._last_rx = trio.current_time()
                if self._feed(chunk):
                    return
                continue
            self._raise_if_unusable(sending=False)
            if stream.eof is not None:
                self._on_eof(
                    f"{self._remote.short()}'s data channel ended without a close frame "
                    f"(crash or network failure: {stream.eof})",
                    "channel ended without a close frame",
                )
                return
            with trio.move_on_at(self._next_deadline()) as scope:
                await stream.wait_changed()
            if scope.cancelled_caught:
                await self._on_idle()

    async def _settle(self) -> None:
        # read_nowait may have handed over data without a cancel point.
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("link was closed")

    def _can_ping(self) -> bool:
        return self._stream.send_budget() >= FRAME_OVERHEAD

    async def _write_ping(self) -> None:
        self._raise_if_unusable(sending=True)
        self._stream.write_nowait(self._encoder.ping())

    async def aclose(self) -> None:
        """Close the link: send the authenticated CLOSE frame and close the data
        channel gracefully (everything queued is delivered first, bounded by
        ``close_timeout``), then the peer connection.  Idempotent; never raises
        for a broken connection."""
        if not self._closed:
            # Wake blocked senders and receivers: they run after aclose's first
            # checkpoint, when the link is marked closed (ClosedResourceError).
            self._stream.notify()
        await super().aclose()

    def _carrier_open(self) -> bool:
        return self._stream.eof is None and self._stream.error is None

    async def _send_close(self) -> None:
        stream = self._stream
        assert stream.channel is not None
        stream.write_nowait(self._encoder.close(), metered=False)
        stream.channel.close_channel()
        with trio.move_on_after(self._close_timeout):
            while stream.eof is None:
                await stream.wait_changed()

    async def _close_carrier(self) -> None:
        assert self._stream.channel is not None
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
            await self._stream.channel.aclose()


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


class WebRtcTransport(SecureTransport):
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
        super().__init__(identity, network_id, max_message=max_message, max_frame=max_frame,
                         handshake_timeout=handshake_timeout, idle_timeout=idle_timeout,
                         close_timeout=close_timeout,
                         max_pending_handshakes=max_pending_handshakes,
                         cipher_suites=cipher_suites, rng=rng)
        servers = tuple(s if isinstance(s, IceServer) else IceServer((s,)) for s in ice_servers)
        self._options = RtcOptions(
            ice_servers=servers,
            host_addresses=None if host_addresses is None else tuple(host_addresses),
            buffered_low=max(send_buffer // 4, 16 * 1024),
        )
        self._tag = _network_tag(self._network_id)
        self._signaling = signaling
        self.connect_timeout = connect_timeout
        self._receive_window = receive_window
        self._send_buffer = send_buffer
        ChannelStream(receive_window=receive_window, send_buffer=send_buffer)  # validate
        self._max_skew = max_clock_skew
        self._clock = clock
        # signaling router (see the module docstring)
        self._reading = False
        self._router_changed = trio.Event()
        self._connects: dict[bytes, _PendingConnect] = {}
        self._offers: deque[tuple[PeerId, SignalOffer]] | None = None
        self._signaling_error: BaseException | None = None
        self._seen: OrderedDict[tuple[PeerId, bytes], None] = OrderedDict()
        self._sig_received = self._sig_dropped = 0
        self.address = format_webrtc_address(identity.peer_id)

    def statistics(self) -> WebRtcTransportStatistics:
        return WebRtcTransportStatistics(*self._link_counts(), signaling_received=self._sig_received,
                                         signaling_dropped=self._sig_dropped)

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
            hs = self._new_handshake(Role.INITIATOR, target)
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
                hs = self._new_handshake(Role.RESPONDER)
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
        await self._serve_link(self._make_link(stream, done, hs.trailing_data), handler)

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
        return WebRtcLink(stream, self.local_peer, session, initial_data=trailing,
                          max_message=self.max_message, max_frame=self._max_frame,
                          idle_timeout=self._idle_timeout, close_timeout=self._close_timeout,
                          remote_address=format_webrtc_address(session.remote_peer),
                          on_close=self._count_open_link())

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
