"""The asyncio side of the WebRTC transport: aiortc in one dedicated thread.

Theory of operation
-------------------
aiortc is written for asyncio; the rest of p2pfl runs on trio.  Rather than
running aiortc under trio-asyncio (about half the throughput here), every aiortc
object lives in **one** asyncio event loop running forever in a daemon thread
(:func:`loop_thread`, started on first use and shared by every transport of the
process).  This module and :mod:`p2pfl.transport.webrtc` are the only modules
of the project that import asyncio or aiortc.

The two threads never share mutable state; they pass messages:

* **trio → asyncio**: fire-and-forget calls queued with
  ``loop.call_soon_threadsafe`` (writes, control messages, close, abort), and
  :meth:`LoopThread.call`, which runs a coroutine in the loop and waits for its
  result on a trio :class:`trio.Event` (no worker thread is held while waiting;
  a trio cancellation cancels the asyncio task).
* **asyncio → trio**: every aiortc event of a channel becomes one call of a
  :class:`ChannelEvents` method, run *in the trio thread* with
  ``TrioToken.run_sync_soon``.  Those calls are FIFO, so the trio side sees data,
  drain reports and the close of a channel in the order aiortc produced them.
  Once the trio run has ended (a finished test), events are dropped.

:class:`RtcChannel` is one ``RTCPeerConnection`` carrying one *negotiated*
data channel (``id=0`` on both ends: no in-band DCEP round trip, no
``datachannel`` event): reliable, ordered, binary messages (the byte stream of
the link) and text messages (flow-control credits, see
:mod:`p2pfl.transport.webrtc`).

Writes are queued in the loop thread and sent once per loop iteration, small
consecutive pieces coalesced into one data-channel message of at most 64 KiB
(the channel carries a byte stream, and aiortc's cost is mostly per message).

Send-side back-pressure uses aiortc's ``bufferedAmount``: the asyncio side
counts the bytes it was asked to send (``submitted``) and reports
``(submitted, bufferedAmount + still queued)`` to trio after sending that
leaves the buffer at or below ``bufferedAmountLowThreshold``, and on every
``bufferedamountlow`` event (fired when the buffer drains below that
threshold).  Each write
therefore ends either with a report or with an event still to come, so the trio
side's estimate ``written - submitted + buffered`` is never below the truth and
always catches up: a sender waiting for it never waits forever.

Host candidates: aioice gathers one candidate per address of every interface
but skips ``127.0.0.1``.  With ``host_addresses`` set, :class:`RtcChannel`
gathers exactly those addresses instead, through aioice's
``Connection.get_component_candidates`` (which also derives server-reflexive
and relayed candidates when STUN/TURN servers are configured), before aiortc's
own gathering runs; aiortc then finds gathering done and puts these candidates
in the SDP.  That touches three private attributes of ``aioice.Connection``
(checked at run time, with a clear error if a future aioice renames them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from p2pfl.errors import RemoteProtocolError

from ._signaling import IceServer

__all__ = [
    "MAX_PIECE",
    "ChannelEvents",
    "ChannelStream",
    "IceServer",
    "LoopThread",
    "RtcChannel",
    "RtcOptions",
    "live_peer_connections",
    "loop_thread",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Label of the one negotiated data channel of every p2pfl peer connection.
CHANNEL_LABEL = "p2pfl/1"
#: The stream id both ends use for that channel.
CHANNEL_ID = 0
#: The largest data-channel message we send (the SDP's max-message-size).
MAX_PIECE = 64 * 1024
#: What a receiver may send before the first credit arrives (covers the handshake).
INITIAL_WINDOW = 256 * 1024
#: Bytes a sender may exceed the window by: the authenticated CLOSE frame only.
CLOSE_SLACK = 64
_CREDIT = "credit "
_MAX_OFFSET = 2**62


# -- the loop thread -------------------------------------------------------------


class LoopThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_log_loop_exception)
        self._thread = threading.Thread(
            target=self._run, name="p2pfl-webrtc-asyncio", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` in the loop thread soon (FIFO); never blocks."""
        self._loop.call_soon_threadsafe(fn, *args)

    async def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run the coroutine ``fn(*args)`` in the loop; return or raise its outcome.

        Waits on a trio event (no thread is blocked).  When the calling trio task
        is cancelled, the asyncio task is cancelled too and ``trio.Cancelled``
        propagates.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await done.wait()
            raise
        return future.result()


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # aiortc leaves some background tasks' failures unretrieved (ICE checks of a
    # closed connection, DTLS over a failed ICE transport): they are expected
    # whenever a connection fails, and the trio side reports the failure.
    exc = context.get("exception")
    log.debug("asyncio (aiortc): %s %r", context.get("message"), exc)


_thread: LoopThread | None = None
_thread_lock = threading.Lock()
_live_connections = 0  # touched in the loop thread only


def live_peer_connections() -> int:
    """Peer connections created and not yet closed, in this process (leak checks)."""
    return _live_connections


def loop_thread() -> LoopThread:
    """The process-wide asyncio thread, started on first use."""
    global _thread
    with _thread_lock:
        if _thread is None:
            _thread = LoopThread()
        return _thread


# -- configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class RtcOptions:
    """How peer connections are made.

    ``host_addresses``: ``None`` lets aioice gather every interface address
    (but not loopback); a tuple gathers exactly those local addresses
    (``("127.0.0.1",)`` for tests on one host).  ``buffered_low`` is the
    data channel's ``bufferedAmountLowThreshold``.
    """

    ice_servers: tuple[IceServer, ...] = ()
    host_addresses: tuple[str, ...] | None = None
    buffered_low: int = 256 * 1024


class ChannelEvents(Protocol):
    """What the trio side is told about one channel (called in the trio thread)."""

    def on_open(self) -> None: ...

    def on_data(self, data: bytes) -> None: ...

    def on_control(self, text: str) -> None: ...

    def on_drained(self, submitted: int, buffered: int) -> None: ...

    def on_closed(self, reason: str) -> None: ...


# -- one peer connection ----------------------------------------------------------------


class RtcChannel:
    """One ``RTCPeerConnection`` with one negotiated, ordered, reliable data channel.

    Create it from trio with :meth:`create`; methods without an ``_a_`` prefix
    are called from the trio thread, those with it run in the loop thread.
    """

    def __init__(
        self, thread: LoopThread, options: RtcOptions, events: ChannelEvents,
        token: trio.lowlevel.TrioToken,
    ) -> None:
        self._thread = thread
        self._options = options
        self._events = events
        self._token = token
        self._pc: RTCPeerConnection | None = None
        self._dc: Any = None
        self._submitted = 0
        self._outq: deque[bytes] = deque()
        self._queued = 0
        self._pump_scheduled = False
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None

    @classmethod
    async def create(cls, options: RtcOptions, events: ChannelEvents) -> RtcChannel:
        """A new, unconnected peer connection whose events go to ``events``."""
        thread = loop_thread()
        channel = cls(thread, options, events, trio.lowlevel.current_trio_token())
        await thread.call(channel._a_create)
        return channel

    # -- trio-side API ---------------------------------------------------------------

    async def make_offer(self) -> str:
        """Gather candidates and return the offer SDP (candidates included)."""
        return await self._thread.call(self._a_make_offer)

    async def make_answer(self, offer_sdp: str) -> str:
        """Apply the remote offer; gather; return the answer SDP.

        Raises :class:`ValueError` when aiortc refuses the offer.
        """
        return await self._thread.call(self._a_make_answer, offer_sdp)

    async def accept_answer(self, answer_sdp: str) -> None:
        """Apply the remote answer; ICE, DTLS and SCTP then start in the background.

        Raises :class:`ValueError` when aiortc refuses the answer.
        """
        await self._thread.call(self._a_accept_answer, answer_sdp)

    def write(self, pieces: list[bytes]) -> None:
        """Queue binary messages (each at most 64 KiB) in order; never blocks."""
        self._thread.submit(self._a_write, pieces)

    def write_control(self, text: str) -> None:
        """Queue one text message; never blocks."""
        self._thread.submit(self._a_write_control, text)

    def close_channel(self) -> None:
        """Close the data channel gracefully: queued messages are delivered first,
        then both directions are reset; ``on_closed`` follows."""
        self._thread.submit(self._a_close_channel)

    def abort(self) -> None:
        """Close the peer connection at once (the remote sees an SCTP abort)."""
        self._thread.submit(self._a_abort)

    async def aclose(self) -> None:
        """Close the peer connection and wait until its sockets are released."""
        await self._thread.call(self._a_close)

    # -- loop-thread side -------------------------------------------------------------

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    async def _a_create(self) -> None:
        servers = [
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self._options.ice_servers
        ]
        global _live_connections
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._pc = pc
        _live_connections += 1

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state in ("failed", "closed"):
                self._a_report_closed(f"peer connection {state}")

    def _a_make_channel(self) -> None:
        assert self._pc is not None
        dc = self._pc.createDataChannel(
            CHANNEL_LABEL, ordered=True, negotiated=True, id=CHANNEL_ID
        )
        dc.bufferedAmountLowThreshold = self._options.buffered_low
        self._dc = dc
        events = self._events

        @dc.on("open")
        def on_open() -> None:
            self._post(events.on_open)

        @dc.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, bytes):
                self._post(events.on_data, message)
            else:
                self._post(events.on_control, message)

        @dc.on("bufferedamountlow")
        def on_low() -> None:
            self._a_report_drained()

        @dc.on("close")
        def on_close() -> None:
            self._a_report_closed("data channel closed")
            # Release the sockets once the channel is gone both ways.
            self._a_spawn_close()

        if dc.readyState == "open":  # pragma: no cover - association already up
            self._post(events.on_open)

    async def _a_gather(self) -> None:
        """Gather exactly ``host_addresses`` when set (see the module docstring)."""
        addresses = self._options.host_addresses
        if addresses is None:
            return
        assert self._pc is not None and self._pc.sctp is not None
        gatherer = self._pc.sctp.transport.transport.iceGatherer
        connection = getattr(gatherer, "_connection", None)
        needed = ("_local_candidates", "_local_candidates_start", "_local_candidates_end")
        if connection is None or not all(hasattr(connection, a) for a in needed):
            raise RuntimeError(
                "this aioice version does not allow choosing host addresses; "
                "use host_addresses=None"
            )
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        candidates = await connection.get_component_candidates(
            component=1, addresses=list(addresses)
        )
        connection._local_candidates += candidates
        connection._local_candidates_end = True
        if not candidates:
            raise OSError(f"could not bind any of the host addresses {list(addresses)}")

    async def _a_make_offer(self) -> str:
        pc = self._pc
        assert pc is not None
        self._a_make_channel()
        await self._a_gather()
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def _a_make_answer(self, offer_sdp: str) -> str:
        pc = self._pc
        assert pc is not None
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as e:
            raise ValueError(f"unusable offer: {e!r}") from e
        if pc.sctp is None:
            raise ValueError("the offer has no data channel (m=application) section")
        self._a_make_channel()
        await self._a_gather()
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def _a_accept_answer(self, answer_sdp: str) -> None:
        pc = self._pc
        assert pc is not None
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except Exception as e:
            raise ValueError(f"unusable answer: {e!r}") from e

    def _a_write(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._submitted += len(piece)
            self._queued += len(piece)
        self._outq.extend(pieces)
        if not self._pump_scheduled:
            # Runs after every write already queued in this loop iteration.
            self._pump_scheduled = True
            self._thread.loop.call_soon(self._a_pump)

    def _a_pump(self) -> None:
        """Send the queued pieces, coalescing small ones (the channel carries a
        byte stream: message boundaries mean nothing, and aiortc's cost is per
        message: 64-byte messages go ~10x slower than 1 KiB ones)."""
        self._pump_scheduled = False
        dc, queue = self._dc, self._outq
        if dc is None or dc.readyState != "open":
            queue.clear()  # closed: on_closed is (or will be) reported
            self._queued = 0
            return
        while queue:
            piece = queue.popleft()
            if queue and len(piece) + len(queue[0]) <= MAX_PIECE:
                merged = bytearray(piece)
                while queue and len(merged) + len(queue[0]) <= MAX_PIECE:
                    merged += queue.popleft()
                piece = bytes(merged)
            self._queued -= len(piece)
            dc.send(piece)
        if dc.bufferedAmount <= dc.bufferedAmountLowThreshold:
            self._a_report_drained()
        # else: a bufferedamountlow event will report it

    def _a_write_control(self, text: str) -> None:
        dc = self._dc
        if dc is not None and dc.readyState == "open":
            dc.send(text)

    def _a_report_drained(self) -> None:
        dc = self._dc
        if dc is not None:
            # Bytes still in our queue count as buffered.
            self._post(self._events.on_drained, self._submitted,
                       dc.bufferedAmount + self._queued)

    def _a_report_closed(self, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._post(self._events.on_closed, reason)

    def _a_close_channel(self) -> None:
        dc = self._dc
        if dc is not None and dc.readyState in ("connecting", "open"):
            self._a_pump()  # what was written goes out before the close
            dc.close()
        elif dc is None:
            self._a_spawn_close()

    def _a_abort(self) -> None:
        self._a_spawn_close()

    def _a_spawn_close(self) -> asyncio.Future[None]:
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._a_do_close())
        return self._close_task

    async def _a_close(self) -> None:
        # Shielded: a caller that stops waiting does not stop the close half way.
        await asyncio.shield(self._a_spawn_close())

    async def _a_do_close(self) -> None:
        global _live_connections
        pc = self._pc
        if pc is not None:
            with contextlib.suppress(Exception):
                await pc.close()
            _live_connections -= 1
        self._a_report_closed("peer connection closed")


# -- the trio end: a flow-controlled byte stream --------------------------------------------


class ChannelStream:
    """The trio end of one :class:`RtcChannel`: a reliable, ordered,
    flow-controlled byte stream (not authenticated by itself: the link runs the
    p2pfl handshake and AEAD frames on top).

    Flow control, per direction:

    * **Receive window (credits).**  aiortc hands every message to the
      application as soon as SCTP reassembles it and has no receive-side
      back-pressure, so without credits a peer that never reads would buffer
      without bound.  The receiver allows the sender up to a cumulative stream
      offset (``INITIAL_WINDOW`` until told otherwise); as the reader consumes
      bytes it grants ``consumed + receive_window`` in a text message
      ``"credit <offset>"`` once a quarter window has been consumed.  Grants are
      cumulative, so a lost or duplicated one cannot desynchronize anything.
      Data beyond the granted offset (plus :data:`CLOSE_SLACK`, which lets the
      CLOSE frame out of a full window) is a protocol violation: the stream
      fails with :class:`~p2pfl.errors.RemoteProtocolError`.  Credits are
      carried by the DTLS-protected channel, not the AEAD frames; forging one
      would take breaking DTLS, and could only make the peer overrun the
      window, which the receiver detects.
    * **Send buffer.**  At most ``send_buffer`` bytes wait in aiortc's
      ``bufferedAmount`` (see the module docstring), whatever credit the remote
      grants, which bounds our memory against a remote that grants much and
      acknowledges little.

    :meth:`send_budget` is how many bytes may be written now.  All state
    changes wake :meth:`wait_changed`.
    """

    def __init__(self, *, receive_window: int, send_buffer: int) -> None:
        if receive_window < INITIAL_WINDOW:
            raise ValueError(f"receive_window must be at least {INITIAL_WINDOW}")
        if send_buffer < MAX_PIECE:
            raise ValueError(f"send_buffer must be at least {MAX_PIECE}")
        self._window = receive_window
        self._send_buffer = send_buffer
        self.channel: RtcChannel | None = None
        # receive side
        self._rx: deque[bytes] = deque()
        self._rx_total = 0
        self._consumed = 0
        self._granted = INITIAL_WINDOW
        # send side
        self._tx_total = 0
        self._tx_limit = INITIAL_WINDOW
        self._snap_submitted = 0
        self._snap_buffered = 0
        #: True once the data channel is open.
        self.opened = False
        #: Why the channel ended (None while it is up).
        self.eof: str | None = None
        #: The remote's flow-control violation, if any (the channel is then aborted).
        self.error: RemoteProtocolError | None = None
        self._changed = trio.Event()

    @classmethod
    async def create(
        cls, options: RtcOptions, *, receive_window: int, send_buffer: int
    ) -> ChannelStream:
        """A stream over a new, unconnected peer connection."""
        stream = cls(receive_window=receive_window, send_buffer=send_buffer)
        stream.channel = await RtcChannel.create(options, stream)
        return stream

    def _ch(self) -> RtcChannel:
        assert self.channel is not None
        return self.channel

    # -- ChannelEvents (run in the trio thread) --------------------------------------

    def on_open(self) -> None:
        self.opened = True
        if self._window > INITIAL_WINDOW:
            self._granted = self._consumed + self._window
            self._ch().write_control(f"{_CREDIT}{self._granted}")
        self.notify()

    def on_data(self, data: bytes) -> None:
        if self.eof is not None or self.error is not None:
            return
        self._rx_total += len(data)
        if self._rx_total > self._granted + CLOSE_SLACK:
            self._violation(
                f"the remote sent past its flow-control window "
                f"({self._rx_total} > {self._granted} bytes)"
            )
            return
        self._rx.append(data)
        self.notify()

    def on_control(self, text: str) -> None:
        if self.eof is not None or self.error is not None:
            return
        offset = -1
        if text.startswith(_CREDIT) and len(text) <= 32:
            digits = text[len(_CREDIT):]
            if digits.isascii() and digits.isdigit():
                offset = int(digits)
        if not 0 <= offset <= _MAX_OFFSET:
            self._violation(f"invalid control message {text[:40]!r}")
            return
        if offset > self._tx_limit:
            self._tx_limit = offset
            self.notify()

    def on_drained(self, submitted: int, buffered: int) -> None:
        if submitted >= self._snap_submitted:
            self._snap_submitted, self._snap_buffered = submitted, buffered
            self.notify()

    def on_closed(self, reason: str) -> None:
        if self.eof is None:
            self.eof = reason
            self.notify()

    def _violation(self, what: str) -> None:
        self.error = RemoteProtocolError(what)
        self._rx.clear()
        self._ch().abort()
        self.notify()

    # -- trio API ------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake every task in :meth:`wait_changed`."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Wait for the next state change (data, credit, drain, close, notify)."""
        await self._changed.wait()

    def send_budget(self) -> int:
        """Bytes that may be written now (0: wait for credit or for the buffer)."""
        queued = self._tx_total - self._snap_submitted + self._snap_buffered
        return max(0, min(self._send_buffer - queued, self._tx_limit - self._tx_total))

    @property
    def bytes_written(self) -> int:
        return self._tx_total

    def write_nowait(self, data: bytes | bytearray | memoryview, *, metered: bool = True) -> None:
        """Queue ``data`` (copied) for sending, as messages of at most 64 KiB.

        With ``metered`` (the default) ``len(data)`` must not exceed
        :meth:`send_budget`; unmetered writes are for the CLOSE frame only.
        """
        view = memoryview(data).cast("B")
        n = len(view)
        if metered and n > self.send_budget():
            raise AssertionError("write_nowait beyond the send budget")
        if n == 0:
            return
        pieces = [bytes(view[i : i + MAX_PIECE]) for i in range(0, n, MAX_PIECE)]
        self._tx_total += n
        self._ch().write(pieces)

    def read_nowait(self) -> bytes | None:
        """The next received chunk, or None when none is buffered.  Consuming
        bytes returns credit to the remote."""
        if not self._rx:
            return None
        chunk = self._rx.popleft()
        self._consumed += len(chunk)
        limit = self._consumed + self._window
        if limit - self._granted >= self._window // 4 and self.eof is None:
            self._granted = limit
            self._ch().write_control(f"{_CREDIT}{limit}")
        return chunk

    @property
    def buffered_received(self) -> int:
        """Bytes received and not yet read."""
        return self._rx_total - self._consumed if self.error is None else 0

    async def wait_open(self) -> None:
        """Wait until the channel is open.  Raises :class:`ConnectionError` when
        it ended first (ICE, DTLS or SCTP failed, or the remote closed)."""
        while not self.opened:
            if self.eof is not None:
                raise ConnectionError(f"WebRTC connection failed: {self.eof}")
            if self.error is not None:
                raise ConnectionError(f"WebRTC connection failed: {self.error}")
            await self.wait_changed()
