"""WebRTC signaling: the signed offer/answer messages and the carriers that move them.

No asyncio here: this module is plain trio and wire code, split out of
:mod:`p2pfl.transport.webrtc` (the only module that drives aiortc, through
:mod:`p2pfl.transport._webrtc_bridge`). See ``docs/webrtc.md``.

Signaling messages (tags 0x0800-0x0802) are signed envelopes naming the network
tag, a session id, the recipient and the sender's time; carriers move them between
peers: :class:`MemorySignaling` (in-process hub, tests), :class:`RelaySignaling`
over any :class:`~p2pfl.transport.Link` to a third peer that runs
:class:`SignalingRelay` (relay messages 0x0810-0x0812), and
:class:`OverlaySignaling`, which rides on the overlay's direct messages (each
envelope wrapped in an :class:`OverlaySignal`, 0x0813): over a link when there is
one, else through a relay that both peers reach -- never by dialing the
recipient, since that dial is what the signaling is for.  This module does not
import the overlay (a lower layer); the overlay satisfies :class:`DirectCarrier`.
"""

from __future__ import annotations

import abc
import enum
import logging
from dataclasses import dataclass
from typing import Annotated, Final, Protocol

import trio

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.wire import MaxLen, PeerId, decode, decode_as, encode, message

from ._base import Link

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 60.0
#: Longest SDP accepted (a data-channel offer with a few candidates is ~1 KB).
MAX_SDP: Final = 8192
#: Most ICE candidates accepted in one SDP.
MAX_CANDIDATES: Final = 32
#: Longest signaling envelope (the signed, encoded message).
MAX_ENVELOPE: Final = MAX_SDP + 1024
_RELAY_MAX: Final = MAX_ENVELOPE + 256
_SIGNAL_DOMAIN: Final = b"p2pfl/webrtc-signal/1/"
_SEEN_SESSIONS: Final = 4096


# -- signaling messages (tags 0x0800-0x08FF) -------------------------------------------

_Tag16 = Annotated[bytes, MaxLen(16, exact=True)]
_Sdp = Annotated[str, MaxLen(MAX_SDP)]


class RejectReason(enum.IntEnum):
    """Why a responder refused an offer."""

    NETWORK = 1  # the offer is for another network (federation)
    BUSY = 2  # too many connections being set up
    NOT_SERVING = 3  # the peer does not accept WebRTC links
    MALFORMED = 4  # unusable SDP


@message(0x0800)
class SignalOffer:
    network: _Tag16
    session: _Tag16
    recipient: PeerId
    sent_at: float  # the sender's UNIX time
    sdp: _Sdp


@message(0x0801)
class SignalAnswer:
    network: _Tag16
    session: _Tag16
    recipient: PeerId
    sent_at: float
    sdp: _Sdp


@message(0x0802)
class SignalReject:
    network: _Tag16
    session: _Tag16
    recipient: PeerId
    sent_at: float
    reason: RejectReason
    detail: Annotated[str, MaxLen(200)]


@message(0x0810)
class RelayForward:
    """Peer → relay: please pass ``envelope`` to ``recipient``."""

    recipient: PeerId
    envelope: Annotated[bytes, MaxLen(MAX_ENVELOPE)]


@message(0x0811)
class RelayDeliver:
    """Relay → peer: ``sender`` (the authenticated peer of the relay's link) sent this."""

    sender: PeerId
    envelope: Annotated[bytes, MaxLen(MAX_ENVELOPE)]


@message(0x0812)
class RelayUnreachable:
    """Relay → peer: ``recipient`` is not linked to the relay (or not accepting)."""

    recipient: PeerId
    reason: Annotated[str, MaxLen(200)]


@message(0x0813)
class OverlaySignal:
    """A signaling envelope carried as an overlay direct message."""

    envelope: Annotated[bytes, MaxLen(MAX_ENVELOPE)]


_SignalMessage = SignalOffer | SignalAnswer | SignalReject

#: Every encoded :class:`OverlaySignal` starts with these bytes (version, tag and
#: the one-field array of the canonical CBOR): the overlay routes on them.
OVERLAY_SIGNAL_PREFIX: Final = encode(OverlaySignal(b""))[:-1]


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server (``urls`` like ``stun:host:3478`` or
    ``turn:host:3478?transport=udp``; TURN needs ``username`` and ``credential``).

    aiortc uses the first STUN and the first TURN server it is given.
    Raises :class:`ValueError` for a URL of another scheme.
    """

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        if not self.urls:
            raise ValueError("an ICE server needs at least one url")
        for url in self.urls:
            if not isinstance(url, str) or not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"not a STUN/TURN url: {url!r}")


def _domain(tag: bytes) -> bytes:
    """The signature domain of signaling messages of the network tagged ``tag``
    (hex: a signature domain may not contain NUL)."""
    return _SIGNAL_DOMAIN + tag.hex().encode()


def _check_sdp(sdp: str) -> None:
    """Refuse SDP that is not one data-channel section with few candidates."""
    lines = sdp.splitlines()
    media = [line for line in lines if line.startswith("m=")]
    if len(media) != 1 or not media[0].startswith("m=application "):
        raise RemoteProtocolError("the SDP must hold exactly one data channel (m=application)")
    if sum(line.startswith("a=candidate:") for line in lines) > MAX_CANDIDATES:
        raise RemoteProtocolError(f"more than {MAX_CANDIDATES} ICE candidates in the SDP")


# -- addresses -------------------------------------------------------------------------


def parse_webrtc_address(address: str) -> PeerId:
    """The peer id of ``webrtc:<peer id>``; :class:`ValueError` for anything else."""
    if not isinstance(address, str) or not address.startswith("webrtc:"):
        raise ValueError(f"not a webrtc address (expected 'webrtc:PEERID'): {address!r}")
    return PeerId.parse(address[len("webrtc:"):])


def format_webrtc_address(peer: PeerId) -> str:
    return f"webrtc:{peer}"


# -- signaling carriers -----------------------------------------------------------------


@dataclass(frozen=True)
class Undeliverable:
    """A signaling carrier's notice that a message to ``recipient`` was not delivered."""

    recipient: PeerId
    reason: str


class Signaling(abc.ABC):
    """Moves opaque signaling envelopes between peers (untrusted: the transport
    signs and verifies every envelope).  Delivery is best effort."""

    @abc.abstractmethod
    async def send(self, recipient: PeerId, envelope: bytes) -> None:
        """Hand ``envelope`` over for delivery to ``recipient``.

        Raises :class:`OSError` (e.g. :class:`ConnectionRefusedError`) when it
        is known at once that it cannot be delivered.
        """

    @abc.abstractmethod
    async def receive(self) -> bytes | Undeliverable:
        """The next envelope addressed to us, or a non-delivery notice.

        Raises :class:`trio.EndOfChannel` or :class:`trio.BrokenResourceError`
        once the carrier is gone.  Must be cancel-safe (a cancelled call loses
        nothing).
        """


class MemorySignalingHub:
    """An in-process signaling relay (tests, single-process simulations).

    Each peer gets its endpoint with :meth:`signaling`; an envelope for a peer
    without an endpoint raises :class:`ConnectionRefusedError`, and one for a
    peer whose inbox (``capacity`` envelopes) is full is dropped.
    """

    def __init__(self, *, capacity: int = 64) -> None:
        self._capacity = capacity
        self._inboxes: dict[PeerId, trio.MemorySendChannel[bytes | Undeliverable]] = {}
        self.dropped = 0

    def signaling(self, peer: PeerId) -> MemorySignaling:
        """The endpoint of ``peer`` (replacing an earlier one)."""
        send, receive = trio.open_memory_channel[bytes | Undeliverable](self._capacity)
        self._inboxes[peer] = send
        return MemorySignaling(self, peer, receive)

    def _deliver(self, sender: PeerId, recipient: PeerId, envelope: bytes) -> None:
        inbox = self._inboxes.get(recipient)
        if inbox is None:
            raise ConnectionRefusedError(f"{recipient.short()} has no signaling endpoint")
        try:
            inbox.send_nowait(envelope)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1

    def _leave(self, peer: PeerId, inbox: trio.MemoryReceiveChannel[bytes | Undeliverable]) -> None:
        send = self._inboxes.get(peer)
        if send is not None:
            send.close()
            del self._inboxes[peer]


class MemorySignaling(Signaling):
    """One peer's endpoint of a :class:`MemorySignalingHub`."""

    def __init__(
        self, hub: MemorySignalingHub, peer: PeerId,
        inbox: trio.MemoryReceiveChannel[bytes | Undeliverable],
    ) -> None:
        self._hub = hub
        self.peer = peer
        self._inbox = inbox

    async def send(self, recipient: PeerId, envelope: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._hub._deliver(self.peer, recipient, envelope)

    async def receive(self) -> bytes | Undeliverable:
        return await self._inbox.receive()

    def close(self) -> None:
        """Leave the hub: our pending ``receive`` gets :class:`trio.EndOfChannel`."""
        self._hub._leave(self.peer, self._inbox)


class RelaySignaling(Signaling):
    """Signaling through a third peer running :class:`SignalingRelay`, over
    ``link`` (any :class:`~p2pfl.transport.Link` to that peer)."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.malformed = 0

    async def send(self, recipient: PeerId, envelope: bytes) -> None:
        try:
            await self.link.send(encode(RelayForward(recipient, envelope)))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise ConnectionError(f"the signaling relay link is down: {e}") from e

    async def receive(self) -> bytes | Undeliverable:
        while True:
            raw = await self.link.receive()
            try:
                msg = decode(raw, max_size=_RELAY_MAX)
            except RemoteProtocolError as e:
                msg = e
            if isinstance(msg, RelayDeliver):
                return msg.envelope
            if isinstance(msg, RelayUnreachable):
                return Undeliverable(msg.recipient, msg.reason)
            self.malformed += 1
            log.info("ignoring a bad message from signaling relay %s: %r",
                     self.link.remote_peer.short(), msg)


class DirectCarrier(Protocol):
    """What :class:`OverlaySignaling` needs from the overlay
    (:class:`p2pfl.overlay.Overlay` has it)."""

    async def send_direct(self, peer: PeerId, payload: bytes, *, dial: bool = True) -> None: ...

    def route_direct(
        self, prefix: bytes, *, buffer: int = 256
    ) -> trio.MemoryReceiveChannel[tuple[PeerId, bytes]]: ...


class OverlaySignaling(Signaling):
    """Signaling over the overlay's direct messages (see the module docstring).

    Make it first, give it to the :class:`~p2pfl.transport.webrtc.WebRtcTransport`,
    and :meth:`attach` the overlay before the overlay runs
    (``open_overlay(..., on_open=signaling.attach)``; the
    :class:`~p2pfl.transport.hybrid.HybridTransport` does this with its own
    ``attach``).  Until then ``send`` refuses and ``receive`` waits.
    ``malformed`` counts routed payloads that were not an :class:`OverlaySignal`.
    """

    def __init__(self, *, buffer: int = 256) -> None:
        self._buffer = buffer
        self._carrier: DirectCarrier | None = None
        self._inbox: trio.MemoryReceiveChannel[tuple[PeerId, bytes]] | None = None
        self._attached = trio.Event()
        self.malformed = 0

    def attach(self, carrier: DirectCarrier) -> None:
        """Start carrying signaling over ``carrier`` (once)."""
        if self._carrier is not None:
            raise RuntimeError("this OverlaySignaling is already attached")
        self._inbox = carrier.route_direct(OVERLAY_SIGNAL_PREFIX, buffer=self._buffer)
        self._carrier = carrier
        self._attached.set()

    async def send(self, recipient: PeerId, envelope: bytes) -> None:
        """Send over a link to ``recipient`` or through a relay (never dials it).

        Raises :class:`ConnectionRefusedError` when not attached or when the
        overlay knows no way to ``recipient``."""
        if self._carrier is None:
            raise ConnectionRefusedError("signaling is not attached to an overlay yet")
        try:
            await self._carrier.send_direct(recipient, encode(OverlaySignal(envelope)),
                                            dial=False)
        except LocalProtocolError as e:  # PeerUnreachable
            raise ConnectionRefusedError(f"no overlay route to {recipient.short()}: {e}") from e

    async def receive(self) -> bytes | Undeliverable:
        await self._attached.wait()
        assert self._inbox is not None
        while True:
            sender, payload = await self._inbox.receive()
            try:
                return decode_as(payload, OverlaySignal, max_size=_RELAY_MAX).envelope
            except RemoteProtocolError as e:
                self.malformed += 1
                log.info("ignoring a bad signaling payload from %s: %s", sender.short(), e)


@dataclass(frozen=True)
class RelayStatistics:
    peers: int
    forwarded: int
    unreachable: int
    rate_limited: int


class SignalingRelay:
    """The relay side of the signaling relay protocol.

    ``handle`` is a :data:`~p2pfl.transport.LinkHandler`: pass it to any
    ``Transport.serve`` (or call it on links you opened).  Each source may
    forward ``rate`` envelopes per second on average (bursts of ``burst``);
    excess envelopes are dropped.  A destination that does not take an
    envelope within ``send_timeout`` seconds is reported unreachable.  A
    source that sends anything but :class:`RelayForward` is cut off
    (:class:`~p2pfl.errors.RemoteProtocolError`).
    """

    def __init__(self, *, rate: float = 20.0, burst: int = 40, send_timeout: float = 2.0) -> None:
        self._links: dict[PeerId, Link] = {}
        self._rate = rate
        self._burst = burst
        self._send_timeout = send_timeout
        self._forwarded = self._unreachable = self._limited = 0

    def statistics(self) -> RelayStatistics:
        return RelayStatistics(len(self._links), self._forwarded, self._unreachable, self._limited)

    async def handle(self, link: Link) -> None:
        source = link.remote_peer
        self._links[source] = link
        tokens, last = float(self._burst), trio.current_time()
        try:
            while True:
                try:
                    raw = await link.receive()
                except trio.EndOfChannel:
                    return
                msg = decode_as(raw, RelayForward, max_size=_RELAY_MAX)
                now = trio.current_time()
                tokens = min(float(self._burst), tokens + (now - last) * self._rate)
                last = now
                if tokens < 1:
                    self._limited += 1
                    continue
                tokens -= 1
                await self._forward(link, source, msg)
        finally:
            if self._links.get(source) is link:
                del self._links[source]

    async def _forward(self, link: Link, source: PeerId, msg: RelayForward) -> None:
        dest = self._links.get(msg.recipient)
        reason = "not linked to the relay"
        if dest is not None:
            with trio.move_on_after(self._send_timeout):
                try:
                    await dest.send(encode(RelayDeliver(source, msg.envelope)))
                    self._forwarded += 1
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    reason = "its link to the relay is down"
            if reason == "not linked to the relay":
                reason = "not accepting messages"
        self._unreachable += 1
        with trio.move_on_after(self._send_timeout):
            await link.send(encode(RelayUnreachable(msg.recipient, reason)))


# -- the link ---------------------------------------------------------------------------


