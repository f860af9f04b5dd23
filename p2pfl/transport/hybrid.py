"""One transport for TCP and WebRTC: TCP where a peer has an address, WebRTC where not.

Theory of operation
-------------------
A *reachable* peer listens on TCP and announces ``tcp:HOST:PORT#PEERID``; a peer
that is *not reachable* (behind a NAT or a firewall: no listening socket) announces
``webrtc:PEERID``.  :class:`HybridTransport` dials by the address's scheme:

* ``tcp:...`` over TCP -- from any peer, reachable or not (an outbound TCP
  connection passes a NAT, and a TCP link moves bulk data ~100x faster than
  aiortc's data channel here, see ``docs/webrtc.md``);
* ``webrtc:PEERID`` over a WebRTC data channel, whose offer and answer travel
  as overlay direct messages (:class:`~._signaling.OverlaySignaling`): over a
  link to the peer when there is one, else relayed one hop by a peer both
  reach -- one the addressee named in its signed publications, else any of our
  linked neighbours.

It accepts both: TCP links on its listening socket when it has one, and WebRTC
offers (when ``webrtc`` is on) from the overlay.  Two unreachable peers
therefore open a direct WebRTC link to each other, signaled through a reachable
peer they both hold a link to.

The signaling rides on the overlay that runs *over* this transport, so the
overlay must be attached before it starts::

    transport = HybridTransport(identity, fed_id, listen=None)     # not reachable
    async with open_overlay(transport, identity, cfg, bootstrap=[...],
                            on_open=transport.attach) as ov:
        ...

The overlay learns ``webrtc:PEERID`` as the peer's address like any other (it
dials it on demand), and a peer with such an address lists relays in its
publications as an addressless peer does (``OverlayConfig.relayed_schemes``).
aiortc is optional: with ``webrtc=False`` nothing of it is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pfl.identity import Identity
from p2pfl.wire import PeerId

from ._base import Link, LinkHandler, Transport
from ._signaling import DirectCarrier, IceServer, OverlaySignaling, format_webrtc_address
from .tcp import TcpTransport, TcpTransportStatistics

if TYPE_CHECKING:
    from .webrtc import WebRtcTransport, WebRtcTransportStatistics

__all__ = ["HybridTransport", "HybridTransportStatistics"]


@dataclass(frozen=True)
class HybridTransportStatistics:
    """The statistics of both halves (``webrtc`` is None when it is off)."""

    tcp: TcpTransportStatistics
    webrtc: WebRtcTransportStatistics | None


class HybridTransport(Transport):
    """TCP and WebRTC links for one identity (see the module docstring).

    ``listen``: the TCP address to serve (``None``: not reachable, no listening
    socket).  ``webrtc``: accept and dial ``webrtc:`` peers (needs aiortc).
    ``ice_servers`` (STUN/TURN; none by default) and ``host_addresses`` (``None``:
    every non-loopback interface; ``("127.0.0.1",)`` on one host) go to the
    :class:`~p2pfl.transport.webrtc.WebRtcTransport`, with
    ``webrtc_options`` (``connect_timeout`` 10 s by default, ...);
    ``tcp_options`` go to the :class:`~p2pfl.transport.tcp.TcpTransport`.

    Raises :class:`ValueError` for a peer that can neither listen nor use
    WebRTC (use the overlay's ``listen=False`` for such a peer), a bad
    address, or bad options; :class:`ImportError` when ``webrtc`` is on and
    aiortc is missing.
    """

    def __init__(
        self,
        identity: Identity,
        network_id: bytes | str,
        *,
        listen: str | None = "tcp:127.0.0.1:0",
        webrtc: bool = True,
        ice_servers: tuple[IceServer | str, ...] | list[IceServer | str] = (),
        host_addresses: tuple[str, ...] | list[str] | None = None,
        tcp_options: Mapping[str, Any] | None = None,
        webrtc_options: Mapping[str, Any] | None = None,
    ) -> None:
        if listen is None and not webrtc:
            raise ValueError("a peer without a listening address needs webrtc to accept links")
        self._listen = listen
        tcp: dict[str, Any] = {**(tcp_options or {})}
        if listen is not None:
            tcp["listen"] = listen
        self.tcp = TcpTransport(identity, network_id, **tcp)
        self.signaling = OverlaySignaling()
        self.webrtc: WebRtcTransport | None = None
        if webrtc:
            from .webrtc import WebRtcTransport  # aiortc: optional

            options: dict[str, Any] = {"connect_timeout": 10.0, **(webrtc_options or {})}
            self.webrtc = WebRtcTransport(identity, network_id, self.signaling,
                                          ice_servers=ice_servers, host_addresses=host_addresses,
                                          **options)
        #: The address :meth:`serve` announced, once it is serving.
        self.address: str | None = None

    @property
    def local_peer(self) -> PeerId:
        return self.tcp.local_peer

    @property
    def reachable(self) -> bool:
        """Whether this peer listens on TCP."""
        return self._listen is not None

    def attach(self, carrier: DirectCarrier) -> None:
        """Carry WebRTC signaling over ``carrier`` (the overlay; call it before the
        overlay runs: ``open_overlay(..., on_open=transport.attach)``)."""
        self.signaling.attach(carrier)

    def statistics(self) -> HybridTransportStatistics:
        return HybridTransportStatistics(
            self.tcp.statistics(), None if self.webrtc is None else self.webrtc.statistics())

    async def connect(self, address: str) -> Link:
        """Open a link to ``tcp:HOST:PORT[#PEERID]`` (TCP) or ``webrtc:PEERID``
        (WebRTC, signaled over the overlay).

        Raises what the chosen transport raises; :class:`ConnectionRefusedError`
        for a ``webrtc:`` address when WebRTC is off, :class:`ValueError` for an
        address of another scheme.
        """
        if address.startswith("tcp:"):
            return await self.tcp.connect(address)
        if address.startswith("webrtc:"):
            if self.webrtc is None:
                raise ConnectionRefusedError(f"WebRTC is off; cannot dial {address}")
            return await self.webrtc.connect(address)
        raise ValueError(f"unsupported address (expected tcp: or webrtc:): {address!r}")

    async def serve(
        self,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept TCP links (when listening) and WebRTC offers (when on).

        The started value is the TCP address when listening, else
        ``webrtc:PEERID``.  Raises :class:`ConnectionError` when the WebRTC
        signaling ends while serving.
        """
        async with trio.open_nursery() as nursery:
            address: str | None = None
            if self._listen is not None:
                address = await nursery.start(self.tcp.serve, handler)
            if self.webrtc is not None:
                await nursery.start(self.webrtc.serve, handler)
            self.address = address if address is not None else format_webrtc_address(
                self.local_peer)
            task_status.started(self.address)
