"""TCP transport (trio): a thin driver of the handshake and frame state machines.

Theory of operation
-------------------
Addresses are ``tcp:HOST:PORT`` (``tcp:[::1]:PORT`` for IPv6), optionally
followed by ``#PEERID``: then the connection is refused unless the listener
authenticates as that peer.  :meth:`TcpTransport.serve` announces its bound
address *with* its peer id, so whoever learns an address from it also learns
whom to expect there.

A connection first runs :class:`~._handshake.Handshake` (4 messages, mutual
authentication, forward secrecy; see that module) under ``handshake_timeout``,
then carries frames of :mod:`._framing` (AES-256-GCM or ChaCha20-Poly1305 as
negotiated, counter nonces, chunking, authenticated close).  The server handshakes each inbound
connection in its own task; a failure (bad key, foreign network, garbage,
slowloris, ...) is logged, counted by reason in :meth:`TcpTransport.statistics`
and closes that connection only.  At most ``max_pending_handshakes`` inbound
handshakes run at once; connections beyond that are closed at once and
counted as ``busy``.

:class:`TcpLink` implements :class:`~p2pfl.transport.Link` exactly:

* ``send`` chunks the message into frames and writes them under a lock, so
  concurrent sends never interleave; it waits while the kernel's socket buffer
  is full (TCP back-pressure).  A ``send`` *cancelled* after it got the lock
  may have written part of a message (and frame counters advanced), so the
  link is then broken, as a cancelled ``SSLStream.send_all`` breaks its stream.
* ``receive`` reads with ``recv_into`` straight into the frame decoder's buffer
  and returns one whole message.  A ``CLOSE`` frame from the remote gives
  :class:`trio.EndOfChannel` (after all earlier messages); an end of stream
  without ``CLOSE`` (crash, reset, or an attacker cutting the stream) gives
  :class:`trio.BrokenResourceError`, chained from a
  :class:`~p2pfl.errors.RemoteProtocolError` when the remote sent invalid or
  truncated frames (the connection is then cut at once).
* ``aclose`` sends the authenticated ``CLOSE`` frame when it can do so at once
  (no send in progress; at most ``close_timeout`` waiting for buffer space) and
  closes the socket; blocked ``send``/``receive`` calls get
  :class:`trio.ClosedResourceError`.
* Memory per link: a receive buffer of up to one frame (``max_frame``), a
  send scratch buffer of one frame once a message over 64 KiB was sent, and a
  reassembly buffer for chunked messages, kept up to 8 MiB.
* Idle links: with ``idle_timeout`` set, a pending ``receive`` breaks the link
  when nothing arrived for that long, and keeps the link alive by sending a
  ``PING`` frame after ``idle_timeout / 3`` without sending anything.  Pings
  are sent only from inside a pending ``receive`` (no background task per
  link), which is where every protocol driver spends its idle time; a link
  nobody receives on is neither pinged nor timed out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio

from p2pfl.identity import Identity
from p2pfl.wire import PeerId

from ._base import DEFAULT_MAX_MESSAGE, LinkHandler
from ._framing import DEFAULT_MAX_FRAME, CipherSuite
from ._handshake import FailureReason, Handshake, HandshakeComplete, HandshakeError, Role
from ._secure_link import SecureLink, SecureTransport

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "TcpLink",
    "TcpTransport",
    "TcpTransportStatistics",
    "format_tcp_address",
    "parse_tcp_address",
]

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 60.0
_READ_SIZE = 256 * 1024
_HANDSHAKE_READ = 4096


# -- addresses -------------------------------------------------------------------


def parse_tcp_address(address: str) -> tuple[str, int, PeerId | None]:
    """Split ``tcp:HOST:PORT[#PEERID]`` into (host, port, expected peer or None).

    Raises :class:`ValueError` for anything else.
    """
    if not isinstance(address, str) or not address.startswith("tcp:"):
        raise ValueError(f"not a tcp address (expected 'tcp:HOST:PORT'): {address!r}")
    rest = address[4:]
    peer: PeerId | None = None
    if "#" in rest:
        rest, _, peer_text = rest.partition("#")
        peer = PeerId.parse(peer_text)
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad IPv6 tcp address: {address!r}")
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"bad tcp address (IPv6 hosts need brackets): {address!r}")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad host or port in tcp address: {address!r}")
    return host, int(port_text), peer


def format_tcp_address(host: str, port: int, peer: PeerId | None = None) -> str:
    """The inverse of :func:`parse_tcp_address`."""
    h = f"[{host}]" if ":" in host else host
    return f"tcp:{h}:{port}" + (f"#{peer}" if peer is not None else "")


# -- statistics ------------------------------------------------------------------


@dataclass(frozen=True)
class TcpTransportStatistics:
    """Counters of one :class:`TcpTransport`.

    ``handshake_failures`` maps a :class:`~._handshake.FailureReason` name
    (``"network"``, ``"authentication"``, ``"timeout"``, ...; ``"busy"`` for
    connections refused over ``max_pending_handshakes``) to a count, inbound
    and outbound together.
    """

    links_accepted: int
    links_connected: int
    links_open: int
    handshakes_in_progress: int
    handshake_failures: Mapping[str, int]

    @property
    def handshakes_failed(self) -> int:
        return sum(self.handshake_failures.values())


# -- the link ---------------------------------------------------------------------


class TcpLink(SecureLink[trio.SocketStream]):
    """An authenticated, encrypted message link over one TCP connection.

    Made by :class:`TcpTransport`; see the module docstring for its semantics
    (and :mod:`._secure_link` for the part shared with the WebRTC link).
    """

    def __repr__(self) -> str:
        return f"<TcpLink {self._local.short()} -> {self._remote.short()} {self.remote_address}>"

    # -- the carrier: one TCP socket ---------------------------------------------------

    def _abort_carrier(self) -> None:
        sock = self._stream.socket
        if sock.fileno() != -1:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # wakes blocked tasks with ClosedResourceError

    async def _write_message(self, value: bytes | bytearray | memoryview) -> None:
        self._raise_if_unusable(sending=True)
        stream = self._stream
        try:
            for frame in self._encoder.frames(value):
                await stream.send_all(frame)
        except trio.ClosedResourceError:
            if self._closed:
                raise trio.ClosedResourceError("link was closed during send") from None
            self._raise_if_unusable(sending=True)
            raise  # pragma: no cover
        except trio.BrokenResourceError as e:
            self._break(e)
            raise self._broken_error(f"connection lost while sending: {e.__cause__ or e}") from e
        except BaseException as e:
            # Cancelled (or worse) part way: frame counters and the byte stream
            # are out of step with the remote; nothing sensible can follow.
            cause = trio.BrokenResourceError(f"a send was interrupted part way ({e!r})")
            cause.__cause__ = e
            self._break(cause)
            raise

    async def _fill(self) -> None:
        """Read with ``recv_into`` into the decoder's buffer until at least one
        message is pending or the remote closed."""
        if self._feed_initial():
            await trio.lowlevel.checkpoint()
            return
        sock = self._stream.socket
        decoder = self._decoder
        while True:
            deadline = self._next_deadline()
            n = -1
            with decoder.get_buffer(_READ_SIZE) as buf:
                try:
                    if deadline == math.inf:
                        n = await sock.recv_into(buf)
                    else:
                        with trio.move_on_at(deadline):
                            n = await sock.recv_into(buf)
                except trio.ClosedResourceError:
                    if self._closed:
                        raise trio.ClosedResourceError("link was closed") from None
                    self._raise_if_unusable(sending=False)
                    raise  # pragma: no cover
                except OSError as e:
                    self._break(e)
                    raise self._broken_error(f"connection lost: {e}") from e
            if n < 0:  # a receive deadline passed
                await self._on_idle()
                continue
            if n == 0:
                self._on_eof(
                    f"{self._remote.short()} ended the connection without a close frame "
                    "(crash, reset, or a cut stream)",
                    "connection ended without a close frame",
                )
            self._last_rx = trio.current_time()
            if self._feed_buffer(n):
                return

    async def _settle(self) -> None:
        # A socket read woken by readiness returns without a schedule point;
        # take one, so that the task whose write we just read resumes (and,
        # say, counts its send) before we hand the data on.
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_ping(self) -> None:
        # Shielded: a ping abandoned half way would leave the frame stream out
        # of step.  Bounded by the idle deadline all the same.
        assert self._idle_timeout is not None
        with trio.CancelScope(shield=True, deadline=self._last_rx + self._idle_timeout) as cs:
            try:
                await self._stream.send_all(self._encoder.ping())
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._break(e)
        if cs.cancelled_caught:
            self._break(trio.BrokenResourceError("idle timeout while sending a keepalive"))
        if self._broken is not None:
            raise self._broken_error(str(self._broken)) from self._broken

    def _carrier_open(self) -> bool:
        return self._stream.socket.fileno() != -1

    async def _send_close(self) -> None:
        with trio.move_on_after(self._close_timeout):
            async with self._send_lock:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._stream.send_all(self._encoder.close())

    async def _close_carrier(self) -> None:
        await self._stream.aclose()


# -- the transport -------------------------------------------------------------------


class TcpTransport(SecureTransport):
    """Links over TCP for one identity in one network (federation).

    ``listen`` is the address :meth:`serve` binds (port 0: any free port);
    ``max_message`` the largest message (both ends should agree);
    ``max_frame`` the largest frame (both ends must agree);
    ``handshake_timeout`` bounds each handshake, inbound and outbound;
    ``idle_timeout`` (``None``: never) breaks links silent for that long;
    ``close_timeout`` bounds the wait to send the CLOSE frame in ``aclose``;
    ``cipher_suites`` the frame AEADs accepted, best first (default:
    :func:`~._framing.default_suites`, AES-256-GCM first where the CPU has AES);
    ``rng`` supplies handshake ephemeral secrets (default :func:`os.urandom`).
    """

    def __init__(
        self,
        identity: Identity,
        network_id: bytes | str,
        *,
        listen: str = "tcp:127.0.0.1:0",
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_frame: int = DEFAULT_MAX_FRAME,
        handshake_timeout: float = 10.0,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        close_timeout: float = 1.0,
        max_pending_handshakes: int = 64,
        cipher_suites: tuple[CipherSuite, ...] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        parse_tcp_address(listen)  # validate early
        super().__init__(
            identity,
            network_id,
            max_message=max_message,
            max_frame=max_frame,
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            close_timeout=close_timeout,
            max_pending_handshakes=max_pending_handshakes,
            cipher_suites=cipher_suites,
            rng=rng,
        )
        self._listen = listen
        #: The address :meth:`serve` announced, once it is serving.
        self.address: str | None = None

    def statistics(self) -> TcpTransportStatistics:
        return TcpTransportStatistics(*self._link_counts())

    # -- connect ---------------------------------------------------------------------

    async def connect(self, address: str) -> TcpLink:
        """Open a link to ``tcp:HOST:PORT[#PEERID]``.

        Raises :class:`ValueError` for a malformed address, :class:`OSError`
        when the connection cannot be made, and
        :class:`~._handshake.HandshakeError` (a
        :class:`~p2pfl.errors.RemoteProtocolError`) when the handshake fails,
        times out, or the listener is not ``PEERID``.
        """
        host, port, expected = parse_tcp_address(address)
        stream = await trio.open_tcp_stream(host, port)
        try:
            hs = self._new_handshake(Role.INITIATOR, expected)
            session = await self._run_handshake(stream, hs)
        except HandshakeError as e:
            self._failures[e.reason.name.lower()] += 1
            await trio.aclose_forcefully(stream)
            raise
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        self._connected += 1
        return self._make_link(stream, session, hs.trailing_data, address)

    # -- serve -------------------------------------------------------------------------

    async def serve(
        self,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept links forever (see :meth:`Transport.serve`).

        The started value is ``tcp:HOST:PORT#PEERID`` with the bound port.
        Handler exceptions caused by the remote (:class:`trio.BrokenResourceError`,
        :class:`trio.EndOfChannel`, :class:`RemoteProtocolError`) are logged
        and end only that link; any other exception propagates.
        """
        host, port, _ = parse_tcp_address(self._listen)
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        self.address = format_tcp_address(sockname[0], sockname[1], self.local_peer)
        log.info("%s listening on %s", self.local_peer.short(), self.address)
        task_status.started(self.address)

        async def on_connection(stream: trio.SocketStream) -> None:
            await self._accept(stream, handler)

        await trio.serve_listeners(on_connection, listeners)

    async def _accept(self, stream: trio.SocketStream, handler: LinkHandler) -> None:
        try:
            peer_addr = format_tcp_address(*stream.socket.getpeername()[:2])
        except OSError:
            peer_addr = "tcp:?:0"
        if self._pending >= self._max_pending:
            self._failures["busy"] += 1
            log.info("refusing %s: %d handshakes already pending", peer_addr, self._pending)
            await trio.aclose_forcefully(stream)
            return
        self._pending += 1
        try:
            hs = self._new_handshake(Role.RESPONDER)
            try:
                session = await self._run_handshake(stream, hs)
            except HandshakeError as e:
                self._failures[e.reason.name.lower()] += 1
                log.info("handshake from %s failed (%s): %s", peer_addr, e.reason.name.lower(), e)
                await trio.aclose_forcefully(stream)
                return
        finally:
            self._pending -= 1
        await self._serve_link(self._make_link(stream, session, hs.trailing_data, peer_addr),
                               handler)

    # -- shared ---------------------------------------------------------------------------

    def _make_link(
        self, stream: trio.SocketStream, session: HandshakeComplete, trailing: bytes, address: str
    ) -> TcpLink:
        return TcpLink(
            stream,
            self.local_peer,
            session,
            initial_data=trailing,
            max_message=self.max_message,
            max_frame=self._max_frame,
            idle_timeout=self._idle_timeout,
            close_timeout=self._close_timeout,
            remote_address=address,
            on_close=self._count_open_link(),
        )

    async def _run_handshake(self, stream: trio.SocketStream, hs: Handshake) -> HandshakeComplete:
        """Drive ``hs`` over ``stream`` until it completes, fails or times out.

        Raises :class:`HandshakeError`; on failure the reject message (if any)
        is written best-effort before returning.
        """
        deadline = hs.next_deadline()
        try:
            with trio.move_on_at(math.inf if deadline is None else deadline):
                try:
                    out = hs.data_to_send()
                    if out:
                        await stream.send_all(out)
                    while not hs.established:
                        data = await stream.receive_some(_HANDSHAKE_READ)
                        if not data:
                            hs.receive_eof()
                        hs.receive_data(data)
                        out = hs.data_to_send()
                        if out:
                            await stream.send_all(out)
                except (trio.BrokenResourceError, OSError) as e:
                    if hs.error is None:
                        raise HandshakeError(
                            f"connection lost during the handshake: {e}", FailureReason.CLOSED
                        ) from e
                    raise hs.error from e
            if not hs.established:
                hs.handle_timer(math.inf)  # raises HandshakeError(TIMEOUT)
        except HandshakeError:
            reject = hs.data_to_send()
            if reject:
                with (
                    trio.move_on_after(0.5),
                    contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, OSError
                    ),
                ):
                    await stream.send_all(reject)
            raise
        event = hs.next_event()
        assert event is not None
        return event
