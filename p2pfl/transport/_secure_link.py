"""What :class:`~.tcp.TcpLink` and :class:`~.webrtc.WebRtcLink` share: an
authenticated, framed message link over a byte carrier.

Theory of operation
-------------------
After the handshake (:mod:`._handshake`) both ends hold a session: the remote
peer id and key, the transcript hash, two traffic keys and the negotiated
AEAD.  :class:`SecureLink` drives the frame machines of :mod:`._framing`
(:class:`~._framing.FrameEncoder` out, :class:`~._framing.FrameDecoder` in)
over a *carrier* that only moves bytes (a TCP socket, a WebRTC data channel),
and keeps everything that does not depend on the carrier:

* state: ``_closed`` (we closed: :class:`trio.ClosedResourceError`),
  ``_broken`` (the first cause of a broken link: every later call raises
  :class:`trio.BrokenResourceError` chained from it), ``_remote_closed`` (the
  remote's authenticated ``CLOSE`` arrived: ``receive`` gives
  :class:`trio.EndOfChannel` after the earlier messages, ``send`` breaks);
* ``send``: size check, one send lock (concurrent sends never interleave
  frames), the idle clock and the counters; the carrier writes the frames;
* ``receive``: one receiver at a time, messages decoded ahead are queued, the
  bytes that came with the handshake are decoded first; the carrier reads;
* invalid frames cut the peer off (:meth:`_protocol_failure`), an end of the
  carrier without ``CLOSE`` breaks the link (:meth:`_on_eof`);
* idle links (``idle_timeout``): a pending ``receive`` breaks the link when
  nothing arrived for that long and sends a ``PING`` after ``idle_timeout / 3``
  without sending (:meth:`_next_deadline`, :meth:`_on_idle`);
* ``aclose``: the authenticated ``CLOSE`` when it can be sent at once, then the
  carrier is closed; ``abort``: the carrier is cut, no ``CLOSE``.

A carrier subclass supplies only its I/O: :meth:`_abort_carrier`,
:meth:`_write_message`, :meth:`_fill`, :meth:`_write_ping`,
:meth:`_carrier_open`, :meth:`_send_close` and :meth:`_close_carrier`, and
optionally :meth:`_check_carrier`, :meth:`_can_ping` and :meth:`_settle`.

:class:`SecureTransport` is the matching part of the two transports: the
identity, network id and link options, the handshake factory, the counters
behind ``statistics()`` and the life of an accepted link in ``serve``.
"""

from __future__ import annotations

import abc
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Generic, NoReturn, TypeVar

import trio

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.wire import PeerId

from ._base import Link, LinkHandler, Transport, _PeerLink
from ._framing import CipherSuite, FrameDecoder, FrameEncoder
from ._handshake import Handshake, HandshakeComplete, Role

__all__ = ["SecureLink", "SecureTransport"]

#: The carrier type: what moves the bytes (a socket stream, a data channel).
CarrierT = TypeVar("CarrierT")


class SecureLink(_PeerLink, Generic[CarrierT]):
    """An authenticated, encrypted message link over one carrier (abstract).

    Made by a transport after a successful handshake over ``stream`` (the
    carrier); see the module docstring for what is shared and what a carrier
    subclass supplies.
    """

    def __init__(
        self,
        stream: CarrierT,
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
        super().__init__(local_peer, session.remote_peer)
        self._stream = stream
        self.remote_public_key = session.remote_public_key
        #: BLAKE2b-512 of the handshake transcript, equal on both ends.
        self.channel_binding = session.transcript_hash
        self.remote_address = remote_address
        #: The frame AEAD the handshake negotiated.
        self.cipher_suite = session.suite
        self._max_message = max_message
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
        self._last_rx = self._last_tx = trio.current_time()

    @property
    def max_message(self) -> int:
        return self._max_message

    # -- what a carrier supplies ---------------------------------------------------

    @abc.abstractmethod
    def _abort_carrier(self) -> None:
        """Cut the carrier at once (no ``CLOSE``), waking blocked tasks."""

    @abc.abstractmethod
    async def _write_message(self, value: bytes | bytearray | memoryview) -> None:
        """Write every frame of one message (send lock held); a checkpoint.

        Raises :class:`trio.ClosedResourceError` / :class:`trio.BrokenResourceError`
        as the link's state says; a write interrupted part way breaks the link.
        """

    @abc.abstractmethod
    async def _fill(self) -> None:
        """Read (start with :meth:`_feed_initial`) until a message is pending or
        the remote closed; a checkpoint.  Calls :meth:`_on_idle` when
        :meth:`_next_deadline` passes and :meth:`_on_eof` when the carrier ends."""

    @abc.abstractmethod
    async def _write_ping(self) -> None:
        """Write a keepalive ``PING`` frame (send lock held); raise if that failed."""

    @abc.abstractmethod
    def _carrier_open(self) -> bool:
        """Whether the carrier can still take the ``CLOSE`` frame."""

    @abc.abstractmethod
    async def _send_close(self) -> None:
        """Write the ``CLOSE`` frame, best effort and bounded by ``close_timeout``."""

    @abc.abstractmethod
    async def _close_carrier(self) -> None:
        """Close the carrier (after :meth:`_send_close`, or instead of it)."""

    def _check_carrier(self, sending: bool) -> None:
        """Raise if the carrier itself says the link is unusable (default: never)."""

    def _can_ping(self) -> bool:
        """Whether a ``PING`` can be written now without waiting (default: yes)."""
        return True

    async def _settle(self) -> None:
        """After :meth:`_fill` (receive still held): the default is a schedule
        point that cannot lose the message, for carriers whose ``_fill`` always
        passed a cancel point."""
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- state helpers ------------------------------------------------------------

    def _broken_error(self, what: str) -> trio.BrokenResourceError:
        return trio.BrokenResourceError(f"link to {self._remote.short()} is broken: {what}")

    def _break(self, cause: BaseException) -> None:
        """Mark the link broken and cut the carrier (no close frame)."""
        if self._broken is None:
            self._broken = cause
        self._abort_carrier()

    def _protocol_failure(self, e: RemoteProtocolError) -> NoReturn:
        """The remote sent invalid data: cut it off and raise."""
        e.peer = self._remote
        logging.getLogger(type(self).__module__).info(
            "cutting off %s (%s): %s", self._remote, self.remote_address, e
        )
        self._break(e)
        raise self._broken_error(f"invalid data from the remote: {e}") from e

    def _raise_if_unusable(self, sending: bool) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link was closed")
        if self._broken is not None:
            raise self._broken_error(str(self._broken)) from self._broken
        self._check_carrier(sending)
        if sending and self._remote_closed:
            raise trio.BrokenResourceError(f"{self._remote.short()} closed the link")

    def _run_on_close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    # -- send ---------------------------------------------------------------------

    async def send(self, value: bytes | bytearray | memoryview) -> None:
        """Send one message (any bytes-like object up to ``max_message`` bytes).

        Waits while the link is back-pressured.  Raises :class:`ValueError` for
        an oversized message (nothing is sent), :class:`trio.ClosedResourceError`
        after ``aclose`` and :class:`trio.BrokenResourceError` when the remote
        closed the link or the connection broke.  A send cancelled part way
        through a message breaks the link.
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
            lock.acquire_nowait()  # the carrier's write is the checkpoint
        try:
            await self._write_message(value)
            self._last_tx = trio.current_time()
            self._stats.sent(size)
        finally:
            lock.release()

    # -- receive ------------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next whole message.

        Raises :class:`trio.EndOfChannel` once the remote closed cleanly (after
        every earlier message), :class:`trio.BrokenResourceError` when the
        carrier broke or ended without a close frame, timed out or carried
        invalid frames, :class:`trio.ClosedResourceError` after ``aclose`` and
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
                await self._settle()
            finally:
                self._receiving = False
        else:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("link was closed")
        if not self._pending:
            raise trio.EndOfChannel(f"{self._remote.short()} closed the link")
        msg = self._pending.popleft()
        self._stats.received(len(msg))
        return msg

    def _decoded(self, msgs: list[bytes]) -> bool:
        self._pending.extend(msgs)
        if self._decoder.closed:
            self._remote_closed = True
        return bool(self._pending) or self._remote_closed

    def _feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Decode ``data``; True when a message is pending or the remote closed."""
        try:
            msgs = self._decoder.feed(data)
        except RemoteProtocolError as e:
            self._protocol_failure(e)
        return self._decoded(msgs)

    def _feed_buffer(self, nbytes: int) -> bool:
        """As :meth:`_feed`, for ``nbytes`` read into the decoder's ``get_buffer()``."""
        try:
            msgs = self._decoder.buffer_updated(nbytes)
        except RemoteProtocolError as e:
            self._protocol_failure(e)
        return self._decoded(msgs)

    def _feed_initial(self) -> bool:
        """Decode the bytes that came with the handshake, once; True when they
        gave a message or the remote's close."""
        if not self._initial:
            return False
        data, self._initial = self._initial, b""
        return self._feed(data)

    def _on_eof(self, cause: str, what: str) -> None:
        """The carrier ended: clean after ``CLOSE``, else the link breaks with
        ``cause`` (raising ``what``)."""
        try:
            clean = self._decoder.feed_eof()
        except RemoteProtocolError as e:
            self._protocol_failure(e)
        if clean:
            self._remote_closed = True
            return
        err = trio.BrokenResourceError(cause)
        self._break(err)
        raise self._broken_error(what) from err

    # -- idle ---------------------------------------------------------------------

    def _next_deadline(self) -> float:
        """When a pending receive must time out or ping (``inf``: never)."""
        idle = self._idle_timeout
        if idle is None:
            return math.inf
        return min(self._last_rx + idle, self._last_tx + idle / 3)

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
        if self._send_lock.locked() or not self._can_ping():
            self._last_tx = now  # a send is under way (or blocked): no ping needed
            return
        async with self._send_lock:
            await self._write_ping()
            self._last_tx = trio.current_time()

    # -- close --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the link: send the authenticated CLOSE frame when that can be
        done at once, then close the carrier.  Idempotent; never raises for a
        broken connection."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if (
                self._broken is None
                and not self._remote_closed
                and not self._send_lock.locked()
                and self._carrier_open()
            ):
                await self._send_close()
        finally:
            try:
                await self._close_carrier()
            finally:
                self._run_on_close()

    def abort(self) -> None:
        """Cut the carrier at once, without a close frame.

        For cutting off a misbehaving peer, and for tests that simulate a
        crash: the remote sees :class:`trio.BrokenResourceError`.  The link
        counts as closed here.
        """
        self._closed = True
        self._abort_carrier()
        self._run_on_close()


class SecureTransport(Transport):
    """What the transports of :class:`SecureLink`\\ s share (abstract).

    Validates and keeps the options every such transport has, and counts
    links: ``_accepted``/``_connected`` (handshakes that succeeded), ``_open``,
    ``_pending`` (inbound handshakes under way) and ``_failures`` (by reason).
    """

    def __init__(
        self,
        identity: Identity,
        network_id: bytes | str,
        *,
        max_message: int,
        max_frame: int,
        handshake_timeout: float,
        idle_timeout: float | None,
        close_timeout: float,
        max_pending_handshakes: int,
        cipher_suites: tuple[CipherSuite, ...] | None,
        rng: Callable[[int], bytes],
    ) -> None:
        if max_message <= 0:
            raise ValueError("max_message must be positive")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        self._identity = identity
        self._network_id = network_id.encode() if isinstance(network_id, str) else network_id
        self.max_message = max_message
        self._max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._max_pending = max_pending_handshakes
        self._suites = cipher_suites
        self._rng = rng
        self._accepted = self._connected = self._open = self._pending = 0
        self._failures: Counter[str] = Counter()

    @property
    def local_peer(self) -> PeerId:
        return self._identity.peer_id

    def _link_counts(self) -> tuple[int, int, int, int, Mapping[str, int]]:
        """The first five fields of the transport's statistics, in order:
        accepted, connected, open, handshakes in progress, failures by reason."""
        failures = MappingProxyType(dict(self._failures))
        return self._accepted, self._connected, self._open, self._pending, failures

    def _new_handshake(self, role: Role, expected_peer: PeerId | None = None) -> Handshake:
        """A handshake machine for one connection, started now."""
        return Handshake(
            role,
            self._identity,
            self._network_id,
            now=trio.current_time(),
            timeout=self.handshake_timeout,
            expected_peer=expected_peer,
            suites=self._suites,
            rng=self._rng,
        )

    def _count_open_link(self) -> Callable[[], None]:
        """Count a link as open; the returned callback (the link's ``on_close``)
        counts it closed."""
        self._open += 1

        def on_close() -> None:
            self._open -= 1

        return on_close

    async def _serve_link(self, link: Link, handler: LinkHandler) -> None:
        """Run ``serve``'s handler on an accepted link, then close the link.

        Exceptions caused by the remote (:class:`trio.BrokenResourceError`,
        :class:`trio.EndOfChannel`, :class:`RemoteProtocolError`) are logged
        and end only that link; any other exception propagates.
        """
        self._accepted += 1
        try:
            await handler(link)
        except (trio.BrokenResourceError, trio.EndOfChannel, RemoteProtocolError) as e:
            logging.getLogger(type(self).__module__).info("link %r ended: %r", link, e)
        finally:
            await link.aclose()
