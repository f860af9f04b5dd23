"""Embed peers in a program that is not trio: each runs in a background thread.

Theory of operation
-------------------
:func:`start_peer` starts a thread that runs ``trio.run``; inside it, the peer runs in
``async with open_peer(config, task, **kwargs)`` exactly as in a trio program.  The
caller gets a :class:`PeerHandle` whose methods are plain blocking functions:

* *reads* (:attr:`~PeerHandle.state`, :meth:`~PeerHandle.global_model`,
  :meth:`~PeerHandle.statistics`) run inside the trio thread through the run's
  :class:`trio.lowlevel.TrioToken` (:func:`trio.from_thread.run_sync`), so they see
  the peer as a trio task would;
* *waits* (:meth:`~PeerHandle.wait_round`, :class:`EventStream`) block on a
  :class:`threading.Condition` that the trio side notifies: one task in the trio
  thread follows the peer's rounds (``Peer.wait_round``) and publishes each new state,
  one task per event stream copies the peer's events.  A waiting caller is therefore
  woken at once when the peer fails or is closed, and a timeout is a plain
  ``Condition.wait`` timeout;
* :meth:`~PeerHandle.close` cancels the peer's block (it leaves the overlay and closes
  its links, as leaving ``async with`` does), waits for it, and joins the thread.

Errors: an exception that ends the peer's block after it started is kept; every later
call of the handle raises :class:`PeerFailedError` from it, and :meth:`close` raises
it when no call has yet.  Errors before the peer runs (:class:`~p2pfl.errors.ConfigError`,
a bad key file, a port in use) are raised by :func:`start_peer` itself.  Callbacks
passed through to :func:`open_peer` (``trainer``, ``fault``, ...) run in the trio
thread.

Several peers in one thread: :func:`start_peers`.  A
:class:`~p2pfl.transport.MemoryNetwork` lives in one trio run, so peers sharing one
must share the thread; over TCP they could each have their own, but one thread for a
whole demo federation is cheaper.  Each handle still closes its own peer; the thread
ends with the last one.

Threads are daemons (a forgotten handle never keeps the interpreter alive), and an
:mod:`atexit` hook closes the peers still running when the interpreter exits.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import trio

from p2pfl.errors import ClosedResourceError, P2PFLError

if TYPE_CHECKING:
    from p2pfl.federation import Federation, GlobalState
    from p2pfl.federation.driver import DriverEvent, DriverStatistics
    from p2pfl.identity import Identity
    from p2pfl.learning.task import Task
    from p2pfl.peer import GlobalModel, Peer, PeerConfig
    from p2pfl.transport import MemoryNetwork
    from p2pfl.wire import PeerId

__all__ = ["EventStream", "PeerFailedError", "PeerHandle", "start_peer", "start_peers"]

T = TypeVar("T")

_CLOSE_TIMEOUT = 30.0  # seconds close() waits for the peer to leave
_ATEXIT_TIMEOUT = 5.0


class PeerFailedError(P2PFLError):
    """The peer behind a :class:`PeerHandle` stopped with an error (its ``__cause__``)."""


def _leaf(e: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio wraps nursery errors)."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


class EventStream(Iterator["DriverEvent"]):
    """A thread-safe, bounded queue of one peer's :data:`~p2pfl.federation.driver.DriverEvent`
    s from the moment :meth:`PeerHandle.events` made it.

    When ``buffer`` events are waiting, a new one **drops the oldest** (counted in
    :attr:`dropped`): the peer never waits for a slow reader, since blocking its
    thread would stall its networking.  Iterating blocks for the next event and stops
    when the handle is closed; it raises :class:`PeerFailedError` when the peer failed.
    """

    def __init__(self, buffer: int) -> None:
        if buffer < 1:
            raise ValueError("buffer must be >= 1")
        self._items: collections.deque[DriverEvent] = collections.deque(maxlen=buffer)
        self._cond = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._cancel: Callable[[], None] | None = None
        self.dropped = 0
        """Events dropped because the queue was full."""

    # -- trio side ---------------------------------------------------------------------

    def _put(self, ev: DriverEvent) -> None:
        with self._cond:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(ev)
            self._cond.notify_all()

    def _end(self, error: BaseException | None) -> None:
        with self._cond:
            self._ended = True
            self._error = error
            self._cond.notify_all()

    # -- caller side -------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> DriverEvent:
        """The next event, waiting up to ``timeout`` seconds (None: forever).

        Raises :class:`TimeoutError` when none came in time,
        :class:`~p2pfl.errors.ClosedResourceError` when the stream or its handle was
        closed and no events are left, :class:`PeerFailedError` when the peer failed.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._ended, timeout):
                raise TimeoutError(f"no event within {timeout} s")
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                raise PeerFailedError(f"the peer failed: {self._error!r}") from self._error
            raise ClosedResourceError("the event stream is closed")

    def get_nowait(self) -> DriverEvent | None:
        """The next event if one is waiting, else None (never blocks, never raises)."""
        with self._cond:
            return self._items.popleft() if self._items else None

    def __next__(self) -> DriverEvent:
        try:
            return self.get()
        except ClosedResourceError:
            raise StopIteration from None

    def close(self) -> None:
        """Stop receiving events (idempotent); events already queued can still be read."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()
        self._end(None)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Runner:
    """One background thread running trio, hosting the peers of one or more handles."""

    _live: ClassVar[weakref.WeakSet[_Runner]] = weakref.WeakSet()

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._peers = 0  # trio thread only
        self._error: BaseException | None = None
        self.handles: list[PeerHandle] = []
        self.thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()
        if self._token is None:
            raise RuntimeError("the peer thread did not start") from self._error
        _Runner._live.add(self)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:  # the run itself broke: no peer can go on
            self._error = _leaf(e)
            for h in self.handles:
                h._finished(self._error)
        finally:
            self._ready.set()
            _Runner._live.discard(self)

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the trio thread; raises trio.RunFinishedError when it ended."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def start(self, handle: PeerHandle) -> None:
        """Start ``handle``'s peer; raises what its startup raised."""
        async def start() -> None:
            assert self._nursery is not None
            self._peers += 1
            try:
                await self._nursery.start(handle._serve)
            except BaseException:
                self._peer_done()
                raise

        self.handles.append(handle)
        try:
            trio.from_thread.run(start, trio_token=self._token)
        except BaseException:
            self.handles.remove(handle)
            raise

    def _peer_done(self) -> None:  # trio thread
        self._peers -= 1
        if self._peers == 0 and self._stop is not None:
            self._stop.set()

    def stop(self) -> None:
        """End the thread when no peer runs (after a failed start)."""
        def stop() -> None:
            if self._peers == 0 and self._stop is not None:
                self._stop.set()

        with contextlib.suppress(trio.RunFinishedError):
            self.call(stop)
        self.thread.join()


class PeerHandle:
    """A peer running in a background thread (made by :func:`start_peer` or
    :func:`start_peers`); every method may be called from any thread but the peer's.

    Also a context manager: leaving the ``with`` block closes the peer.
    """

    def __init__(self, runner: _Runner, config: PeerConfig, task: Task,
                 kwargs: dict[str, Any]) -> None:
        self._runner = runner
        self._config = config
        self._task = task
        self._kwargs = kwargs
        self._cond = threading.Condition()
        self._latest: GlobalState | None = None  # mirrored from the trio thread
        self._done = False  # the peer's block has exited
        self._closing = False
        self._error: BaseException | None = None
        self._error_reported = False
        self._peer: Peer | None = None  # trio thread only
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._streams: set[EventStream] = set()
        self._peer_id: PeerId | None = None
        self._address: str | None = None

    # -- trio side ---------------------------------------------------------------------

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from p2pfl.peer import open_peer

        started = False
        error: BaseException | None = None
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with open_peer(self._config, self._task, **self._kwargs) as peer, \
                        trio.open_nursery() as nursery:
                    self._peer, self._nursery = peer, nursery
                    self._peer_id, self._address = peer.peer_id, peer.address
                    self._publish(peer.state)
                    started = True
                    task_status.started()
                    while True:
                        self._publish(await peer.wait_round(peer.state.round))
        except Exception as e:
            if not started:
                raise
            error = _leaf(e)
        finally:
            self._peer = self._nursery = None
            if started:
                self._finished(error)
                self._runner._peer_done()

    def _publish(self, state: GlobalState) -> None:
        with self._cond:
            self._latest = state
            self._cond.notify_all()

    def _finished(self, error: BaseException | None) -> None:  # any thread
        with self._cond:
            if self._done:
                return
            self._done = True
            if error is not None and not self._closing:
                self._error = error
            streams, self._streams = self._streams, set()
            self._cond.notify_all()
        for s in streams:
            s._end(self._error)

    async def _pump(self, events: trio.MemoryReceiveChannel[DriverEvent], stream: EventStream,
                    task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        with trio.CancelScope() as scope, events:
            task_status.started(scope)
            async for ev in events:
                stream._put(ev)

    # -- caller side -------------------------------------------------------------------

    def _check(self) -> None:
        """Raise the peer's error, or ClosedResourceError when it no longer runs."""
        with self._cond:
            if self._error is not None:
                self._error_reported = True
                raise PeerFailedError(f"the peer failed: {self._error!r}") from self._error
            if self._done or self._closing:
                raise ClosedResourceError("the peer handle is closed")

    def _read(self, fn: Callable[[Peer], T]) -> T:
        self._check()

        def read() -> T:
            if self._peer is None:
                raise ClosedResourceError("the peer handle is closed")
            return fn(self._peer)

        try:
            return self._runner.call(read)
        except (trio.RunFinishedError, ClosedResourceError):
            self._check()
            raise ClosedResourceError("the peer handle is closed") from None

    @property
    def peer_id(self) -> PeerId:
        """This peer's id (known from the start; readable after close)."""
        assert self._peer_id is not None
        return self._peer_id

    @property
    def address(self) -> str | None:
        """The address other peers dial (None when not listening)."""
        return self._address

    @property
    def round(self) -> int:
        """The round this peer is running (= rounds completed so far)."""
        return self._read(lambda p: p.round)

    @property
    def state(self) -> GlobalState:
        """The global state the current round starts from (see :attr:`Peer.state`)."""
        return self._read(lambda p: p.state)

    def global_model(self) -> GlobalModel:
        """The global model this peer holds now (see :meth:`Peer.global_model`)."""
        return self._read(lambda p: p.global_model())

    def statistics(self) -> DriverStatistics:
        """A snapshot of the peer's counters (see :meth:`Peer.statistics`)."""
        return self._read(lambda p: p.statistics())

    def call(self, fn: Callable[[Peer], T]) -> T:
        """``fn(peer)`` run in the peer's thread, for what the handle does not wrap
        (e.g. ``handle.call(lambda p: p.overlay.statistics())``).  ``fn`` must be quick
        and must not block: the peer's networking waits for it.

        Raises what ``fn`` raises, :class:`PeerFailedError`, or
        :class:`~p2pfl.errors.ClosedResourceError`.
        """
        return self._read(fn)

    def wait_round(self, r: int | None = None, timeout: float | None = None) -> GlobalState:
        """Block until round ``r`` (default: the current one) is done here; return the
        state the next round starts from (as :meth:`Peer.wait_round`: a later one when
        the peer has moved on meanwhile).

        Raises :class:`TimeoutError` after ``timeout`` seconds (None: no limit),
        :class:`PeerFailedError` when the peer failed,
        :class:`~p2pfl.errors.ClosedResourceError` when the handle is (being) closed.
        """
        self._check()
        with self._cond:
            assert self._latest is not None
            target = self._latest.round if r is None else r

            def ready() -> bool:
                assert self._latest is not None
                return self._latest.round > target or self._done or self._closing

            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(f"round {target} not done within {timeout} s")
            latest = self._latest
        if latest.round > target:
            return latest
        self._check()  # failed or closed: raises
        raise ClosedResourceError("the peer handle is closed")

    def events(self, *, buffer: int = 1024) -> EventStream:
        """A new :class:`EventStream` of this peer's events from now on, keeping at most
        ``buffer`` unread ones (the oldest are dropped)."""
        self._check()
        stream = EventStream(buffer)

        async def subscribe() -> trio.CancelScope:
            if self._peer is None or self._nursery is None:
                raise ClosedResourceError("the peer handle is closed")
            scope: trio.CancelScope = await self._nursery.start(
                self._pump, self._peer.events(buffer=buffer), stream)
            return scope

        try:
            scope = trio.from_thread.run(subscribe, trio_token=self._runner._token)
        except (trio.RunFinishedError, ClosedResourceError):
            self._check()
            raise ClosedResourceError("the peer handle is closed") from None

        def cancel() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                self._runner.call(scope.cancel)

        stream._cancel = cancel
        with self._cond:
            if self._done:  # the peer ended meanwhile
                stream._end(self._error)
            else:
                self._streams.add(stream)
        return stream

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Stop the peer (it leaves the overlay and closes its links), wait for it, and
        join the thread when it was the thread's last peer.  Idempotent.

        Raises :class:`PeerFailedError` when the peer had failed and no call reported it
        yet; :class:`TimeoutError` when the peer did not stop within ``timeout`` s.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            done = self._done
        if not done:
            scope = self._scope
            if scope is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    self._runner.call(scope.cancel)
            with self._cond:
                if not self._cond.wait_for(lambda: self._done, timeout):
                    raise TimeoutError(f"the peer did not stop within {timeout} s")
        runner = self._runner
        if all(h._done for h in runner.handles) and runner.thread is not threading.current_thread():
            runner.thread.join(timeout)
        with self._cond:
            if self._error is not None and not self._error_reported:
                self._error_reported = True
                raise PeerFailedError(f"the peer failed: {self._error!r}") from self._error

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the peer stopped."""
        return self._closing or self._done

    def __enter__(self) -> PeerHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        try:  # do not hide the block's own exception behind the peer's
            self.close()
        except Exception as e:
            exc.add_note(f"while closing the peer: {e!r}")

    def __repr__(self) -> str:
        who = self._peer_id.short() if self._peer_id is not None else "?"
        what = "failed" if self._error is not None else "closed" if self.closed else "running"
        return f"PeerHandle({who}, {what})"


def start_peer(config: PeerConfig, task: Task, **kwargs: Any) -> PeerHandle:
    """Start a peer in a background thread: ``async with open_peer(config, task,
    **kwargs)`` run by ``trio.run`` there.  Returns once the peer runs (listens and
    has joined through ``config.bootstrap``).

    ``kwargs`` are :func:`~p2pfl.peer.open_peer`'s keyword arguments; objects among
    them must not belong to another trio run (a ``transport`` from a
    :class:`~p2pfl.transport.MemoryNetwork` that other threads' peers use does not
    work: use :func:`start_peers`).

    Raises what :func:`~p2pfl.peer.open_peer` raises before the peer runs
    (:class:`~p2pfl.errors.ConfigError`, a bad key file, an address in use, ...).
    """
    return start_peers([config], [task], bootstrap_each_other=False, per_peer=[kwargs])[0]


def start_peers(
    configs: Sequence[PeerConfig],
    tasks: Sequence[Task],
    *,
    network: MemoryNetwork | None = None,
    bootstrap_each_other: bool = True,
    per_peer: Sequence[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> list[PeerHandle]:
    """Start several peers in **one** background thread; one handle each, in order.

    ``network``: run them over this in-memory network instead of TCP; a peer is
    reachable at ``mem:NAME`` where its ``config.listen`` is ``mem:NAME`` (else
    ``mem:p<i>``).  ``bootstrap_each_other``: a peer whose ``config.bootstrap`` is
    empty joins through the first peer and the (up to) two started before it, in
    the order given.  ``kwargs`` go to every :func:`~p2pfl.peer.open_peer` call
    (e.g. a shared ``limiter``), ``per_peer[i]`` to peer ``i`` only.

    Raises what a peer's startup raises (the peers already started are closed first),
    ValueError when the lists differ in length.
    """
    import dataclasses

    if len(configs) != len(tasks) or (per_peer is not None and len(per_peer) != len(configs)):
        raise ValueError("configs, tasks (and per_peer) must have the same length")
    if not configs:
        return []
    fed_id = None
    if network is not None:
        fed_id = _load_federation(configs[0].federation).id
    runner = _Runner(f"p2pfl-peers-{len(configs)}" if len(configs) > 1 else "p2pfl-peer")
    handles: list[PeerHandle] = []
    try:
        for i, (config, task) in enumerate(zip(configs, tasks, strict=True)):
            extra = {**kwargs, **(per_peer[i] if per_peer is not None else {})}
            if bootstrap_each_other and not config.bootstrap and handles:
                boot = [handles[0].address, *(h.address for h in handles[-2:])]
                config = dataclasses.replace(
                    config, bootstrap=tuple(dict.fromkeys(a for a in boot if a)))
            if network is not None:
                ident = _load_identity(config.identity)
                config = dataclasses.replace(config, identity=ident)
                name = config.listen[4:] if config.listen.startswith("mem:") else f"p{i}"
                assert fed_id is not None
                extra.setdefault("transport", network.transport(ident, fed_id, name=name))
            handle = PeerHandle(runner, config, task, extra)
            runner.start(handle)
            handles.append(handle)
    except BaseException:
        for h in handles:
            with contextlib.suppress(Exception):  # the startup error is the one to report
                h.close()
        runner.stop()
        raise
    return handles


def _load_identity(spec: Identity | str | Path) -> Identity:
    from p2pfl.identity import Identity

    return spec if isinstance(spec, Identity) else Identity.load(Path(spec))


def _load_federation(spec: Federation | str | Path) -> Federation:
    from p2pfl.federation import Federation, load_federation

    return spec if isinstance(spec, Federation) else load_federation(spec)


@atexit.register
def _close_all() -> None:
    for runner in list(_Runner._live):
        for h in runner.handles:
            with contextlib.suppress(Exception):  # exiting anyway
                h.close(timeout=_ATEXIT_TIMEOUT)
