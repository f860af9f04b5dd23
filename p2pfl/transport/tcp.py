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
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import trio

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.wire import PeerId

from ._base import DEFAULT_MAX_MESSAGE, Link, LinkHandler, LinkStatistics, Transport
from ._framing import DEFAULT_MAX_FRAME, CipherSuite, FrameDecoder, FrameEncoder
from ._handshake import FailureReason, Handshake, HandshakeComplete, HandshakeError, Role

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


class TcpLink(Link):
    """An authenticated, encrypted message link over one TCP connection.

    Made by :class:`TcpTransport`; see the module docstring for its semantics.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        local_peer: PeerId,
        session: HandshakeComplete,
        *,
        initial_data: bytes,
        max_message: int,
        max_frame: int,
        idle_timeout: float | None,
        close_timeout: float,
        remote_address: str,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._stream = stream
        self._local = local_peer
        self._remote = session.remote_peer
        self.remote_public_key = session.remote_public_key
        #: BLAKE2b-512 of the handshake transcript, equal on both ends.
        self.channel_binding = session.transcript_hash
        self.remote_address = remote_address
        self._max_message = max_message
        self.cipher_suite = session.suite
        self._encoder = FrameEncoder(session.send_key, suite=session.suite, max_frame=max_frame)
        self._decoder = FrameDecoder(
            session.receive_key,
            suite=session.suite,
            max_frame=max_frame,
            max_message=max_message,
        )
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
        now = trio.current_time()
        self._last_rx = now
        self._last_tx = now
        self._messages_sent = self._messages_received = 0
        self._bytes_sent = self._bytes_received = 0

    # -- Link properties ----------------------------------------------------------

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
        return LinkStatistics(
            messages_sent=self._messages_sent,
            messages_received=self._messages_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
        )

    def __repr__(self) -> str:
        return f"<TcpLink {self._local.short()} -> {self._remote.short()} {self.remote_address}>"

    # -- state helpers --------------------------------------------------------------

    def _broken_error(self, what: str) -> trio.BrokenResourceError:
        return trio.BrokenResourceError(f"link to {self._remote.short()} is broken: {what}")

    def _break(self, cause: BaseException) -> None:
        """Mark the link broken and cut the connection (no close frame)."""
        if self._broken is None:
            self._broken = cause
        self._abort_socket()

    def _abort_socket(self) -> None:
        sock = self._stream.socket
        if sock.fileno() != -1:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # wakes blocked tasks with ClosedResourceError

    def _raise_if_unusable(self, sending: bool) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if self._broken is not None:
            raise self._broken_error(str(self._broken)) from self._broken
        if sending and self._remote_closed:
            raise trio.BrokenResourceError(f"{self._remote.short()} closed the link")

    # -- send -------------------------------------------------------------------------

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        """Send one message (any bytes-like object up to ``max_message`` bytes).

        Waits while the link is back-pressured.  Raises :class:`ValueError` for
        an oversized message (nothing is sent), :class:`trio.ClosedResourceError`
        after ``aclose`` and :class:`trio.BrokenResourceError` when the remote
        closed the link or the connection broke.
        """
        size = memoryview(value).nbytes
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if size > self._max_message:
            raise ValueError(f"message of {size} bytes exceeds max_message={self._max_message}")
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # the write below is the checkpoint
        try:
            self._raise_if_unusable(sending=True)
            await self._write_frames(value)
            self._messages_sent += 1
            self._bytes_sent += size
        finally:
            lock.release()

    async def _write_frames(self, value: bytes | bytearray | memoryview) -> None:
        """Write all frames of one message (lock held)."""
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
        self._last_tx = trio.current_time()

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next whole message.

        Raises :class:`trio.EndOfChannel` once the remote closed cleanly (after
        every earlier message), :class:`trio.BrokenResourceError` when the
        connection broke, timed out or the remote sent invalid frames,
        :class:`trio.ClosedResourceError` after ``aclose`` and
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
                # A socket read woken by readiness returns without a schedule
                # point; take one, so that the task whose write we just read
                # resumes (and, say, counts its send) before we hand the data on.
                await trio.lowlevel.cancel_shielded_checkpoint()
            finally:
                self._receiving = False
        else:
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

    def _protocol_failure(self, e: RemoteProtocolError) -> None:
        e.peer = self._remote
        log.info("cutting off %s (%s): %s", self._remote, self.remote_address, e)
        self._break(e)
        raise self._broken_error(f"invalid data from the remote: {e}") from e

    async def _fill(self) -> None:
        """Read until at least one message is pending or the remote closed."""
        if self._initial:
            data, self._initial = self._initial, b""
            self._feed(data)
            if self._pending or self._remote_closed:
                await trio.lowlevel.checkpoint()
                return
        sock = self._stream.socket
        decoder = self._decoder
        idle = self._idle_timeout
        while True:
            if idle is None:
                deadline = math.inf
            else:
                deadline = min(self._last_rx + idle, self._last_tx + idle / 3)
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
                self._on_eof()
            self._last_rx = trio.current_time()
            try:
                msgs = decoder.buffer_updated(n)
            except RemoteProtocolError as e:
                self._protocol_failure(e)
            if decoder.closed:
                self._remote_closed = True
            if msgs:
                self._pending.extend(msgs)
                return
            if self._remote_closed:
                return

    def _on_eof(self) -> None:
        try:
            self._decoder.feed_eof()
        except RemoteProtocolError as e:
            self._protocol_failure(e)
        err = trio.BrokenResourceError(
            f"{self._remote.short()} ended the connection without a close frame "
            "(crash, reset, or a cut stream)"
        )
        self._break(err)
        raise self._broken_error("connection ended without a close frame") from err

    async def _on_idle(self) -> None:
        """A receive deadline passed: time out the link or send a keepalive."""
        assert self._idle_timeout is not None
        now = trio.current_time()
        if now >= self._last_rx + self._idle_timeout:
            err = trio.BrokenResourceError(
                f"idle timeout: nothing received for {self._idle_timeout} s"
            )
            self._break(err)
            raise self._broken_error(str(err)) from err
        if self._send_lock.locked():
            self._last_tx = now  # a send is under way: that keeps the link alive
            return
        async with self._send_lock:
            # Shielded: a ping abandoned half way would leave the frame stream
            # out of step.  Bounded by the idle deadline all the same.
            with trio.CancelScope(shield=True, deadline=self._last_rx + self._idle_timeout) as cs:
                try:
                    await self._stream.send_all(self._encoder.ping())
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self._break(e)
            if cs.cancelled_caught:
                self._break(trio.BrokenResourceError("idle timeout while sending a keepalive"))
            if self._broken is not None:
                raise self._broken_error(str(self._broken)) from self._broken
            self._last_tx = trio.current_time()

    # -- close ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the link: send the authenticated CLOSE frame if possible, close
        the socket.  Idempotent; never raises for a broken connection."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if (
                self._broken is None
                and not self._remote_closed
                and not self._send_lock.locked()
                and self._stream.socket.fileno() != -1
            ):
                with trio.move_on_after(self._close_timeout):
                    async with self._send_lock:
                        with contextlib.suppress(
                            trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            await self._stream.send_all(self._encoder.close())
        finally:
            try:
                await self._stream.aclose()
            finally:
                if self._on_close is not None:
                    self._on_close()
                    self._on_close = None

    def abort(self) -> None:
        """Cut the connection at once, without a close frame (TCP reset).

        For cutting off a misbehaving peer, and for tests that simulate a
        crash: the remote sees :class:`trio.BrokenResourceError`.  The link
        counts as closed here.
        """
        self._closed = True
        self._abort_socket()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


# -- the transport -------------------------------------------------------------------


class TcpTransport(Transport):
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
        if max_message <= 0:
            raise ValueError("max_message must be positive")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        self._identity = identity
        self._network_id = network_id.encode() if isinstance(network_id, str) else network_id
        self._listen = listen
        self.max_message = max_message
        self._max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._max_pending = max_pending_handshakes
        self._rng = rng
        self._suites = cipher_suites
        self._accepted = 0
        self._connected = 0
        self._open = 0
        self._pending = 0
        self._failures: Counter[str] = Counter()
        #: The address :meth:`serve` announced, once it is serving.
        self.address: str | None = None

    @property
    def local_peer(self) -> PeerId:
        return self._identity.peer_id

    def statistics(self) -> TcpTransportStatistics:
        return TcpTransportStatistics(
            links_accepted=self._accepted,
            links_connected=self._connected,
            links_open=self._open,
            handshakes_in_progress=self._pending,
            handshake_failures=MappingProxyType(dict(self._failures)),
        )

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
            hs = Handshake(
                Role.INITIATOR,
                self._identity,
                self._network_id,
                now=trio.current_time(),
                timeout=self.handshake_timeout,
                expected_peer=expected,
                suites=self._suites,
                rng=self._rng,
            )
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
            hs = Handshake(
                Role.RESPONDER,
                self._identity,
                self._network_id,
                now=trio.current_time(),
                timeout=self.handshake_timeout,
                suites=self._suites,
                rng=self._rng,
            )
            try:
                session = await self._run_handshake(stream, hs)
            except HandshakeError as e:
                self._failures[e.reason.name.lower()] += 1
                log.info("handshake from %s failed (%s): %s", peer_addr, e.reason.name.lower(), e)
                await trio.aclose_forcefully(stream)
                return
        finally:
            self._pending -= 1
        self._accepted += 1
        link = self._make_link(stream, session, hs.trailing_data, peer_addr)
        try:
            await handler(link)
        except (trio.BrokenResourceError, trio.EndOfChannel, RemoteProtocolError) as e:
            log.info("link %r ended: %r", link, e)
        finally:
            await link.aclose()

    # -- shared ---------------------------------------------------------------------------

    def _make_link(
        self, stream: trio.SocketStream, session: HandshakeComplete, trailing: bytes, address: str
    ) -> TcpLink:
        self._open += 1

        def on_close() -> None:
            self._open -= 1

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
            on_close=on_close,
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
