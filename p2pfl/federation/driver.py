"""The federation driver: runs the sans-I/O round machines over an overlay, in trio.

Theory of operation
-------------------
Everything that decides lives in sans-I/O objects (:class:`RoundMachine`,
:class:`CatchUp`); a :class:`FederationDriver` moves bytes, time and training between
them and the network.  It is a synchronous *core* fed by trio tasks owned by
:meth:`FederationDriver.run`: readers for the federation's topic (results, aborts,
:class:`Presence`), the overlay's direct channel (group payloads, sign requests and
replies, state sync) and overlay events (``DirectFailed`` → ``send_failed``); a timer
sleeping until the earliest deadline; a sender draining the core's outbox in order
(``BROADCAST`` → ``publish``, else ``send_direct``, retrying an unreachable peer a few
times since its address may be on its way); training off the event loop
(``trio.to_thread.run_sync`` behind a :class:`trio.CapacityLimiter`) or inline.

Payloads are decoded with the wire codec and routed by :func:`message_round` (current
round, a bounded buffer for later rounds, or the floor).  A decode error, a message on
the wrong channel or a :class:`RemoteProtocolError` from a machine is an *offence* (the
sender is penalized); :class:`OutOfSync` is not: either side may be behind.

``RoundCompleted`` → ``next_state(ledger_head)``, a checkpoint, the next round at once.
Agreement is repaired in three ways, cheapest first (:mod:`._driver_repair`):

1. *Pull*: a peer that (re)starts, whose round is still open ``timeouts.sign`` after it
   heard of a later round, or ``timeouts.sign`` before its deadline asks two neighbours
   for the round's results and aborts (``StateRequest`` for its own round); a response
   for the same base state goes to the machine, which verifies every signature.  This
   repairs broadcasts that went out before the peer came back, or were lost.  An answer
   carries what fits one direct message (1 MiB): with more results, a subset that the
   request's nonce picks, so the next pull, to other peers, brings others.
2. *Late result*: a valid result of the previous round that this peer did not use (its
   group missing or aborted at the deadline, or a better-ranked aggregator's) arriving
   before the current round's inputs are due re-evaluates that round as of its deadline;
   if the model changes, the current round restarts from the corrected state.  A result
   beats "nothing by the deadline", so peers that straddled a deadline converge.
3. *Catch-up*: ``RoundFailed`` (out of sync), or an attested result (a quorum of member
   signatures, :func:`attested_state`) of a round two ahead -- one ahead, after a grace
   of ``timeouts.sign`` -- runs :class:`CatchUp`; ``CaughtUp`` starts the fetched round
   with its known results.  Finding nothing within ``timeouts.round``, it resumes from
   its own state.  (The ledger's fork choice, when wired in, comes on top.)

Cohort candidates must be identical on every honest peer: ``candidates`` (e.g. a
simulation's peer list), else the permissioned member list, else -- an open federation,
until the ledger records membership -- the local view of live peers plus ourselves:
best effort (views differ → ``OutOfSync`` → catch-up; logged once).  Dead candidates
just contribute nothing, down to the group threshold.

Virtual time: under :class:`trio.testing.MockClock` with autojump, a task waiting on a
worker thread counts as blocked, so the clock would jump to the next deadline *while*
a peer trains.  With ``train_inline=True`` training (and checkpointing) runs on the
event loop: **virtual time stands still while a peer trains**, so simulated round times
count latency and timeouts, not compute.  Never in production (it blocks networking).

Fault injection (simulations, tests): ``fault(stage, round) -> bool`` is called at
``"round_start"`` (cohort members, before training) and ``"submitted"`` (after our update
went to the overlay); True *halts* the driver: no input, nothing issued any more (what
was issued before still leaves).  :class:`Presence` (tag 0x0510) lets peers learn each
other's addresses (and, in an open federation, keys).  Open federation: published once we
have a neighbour and every ``presence_interval`` s (the live view is the cohort's
candidate list).  Permissioned (keys from the member list): published only at the start
of a round in which we are an *aggregator* of our group, at most once per
``presence_interval`` -- N peers announcing to N peers is O(N^2) messages (with a full
cohort of 1000 peers, 2.2 million deliveries: most of round 0), and only aggregators
must be reachable by address: group traffic is a star (a member writes to its
aggregators first -- keys, inputs, signatures -- and an aggregator writes to a member
only after hearing from it, over the link the member opened).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import trio

from mpc.rand import Rng, SystemRng
from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.overlay import DirectFailed, PeerUnreachable
from p2pfl.wire import PeerId, decode, encode

from ._driver_repair import DriverRepair
from ._driver_support import (
    Buffer,
    DecodeMemo,
    DriverEvent,
    DriverStatistics,
    Item,
    LedgerHooks,
    Out,
    Presence,
    RoundStarted,
    Synced,
    SyncStarted,
    TrainingFinished,
    federation_topic,
    signer_of,
)
from .adversary import Adversary
from .aggregation import AggregationFactory
from .checkpoint import save_checkpoint
from .config import Federation
from .events import (
    BROADCAST,
    GroupResolved,
    Misbehaviour,
    RoundCompleted,
    RoundFailed,
    TrainRequested,
)
from .messages import (
    SignedGroupAbort,
    SignedGroupResult,
    StateRequest,
    StateResponse,
    message_round,
)
from .plaintext import PlaintextAggregation
from .results import OutOfSync
from .round import RoundMachine, RoundState
from .schedule import NO_LEDGER, RoundSchedule, schedule_round
from .state import GlobalState
from .sync import CatchUp, attested_state

if TYPE_CHECKING:
    from p2pfl.overlay import Overlay

__all__ = ["DriverEvent", "DriverStatistics", "FaultHook", "FederationDriver", "Presence",
           "RoundStarted", "SyncStarted", "Synced", "Trainer", "TrainingFinished",
           "federation_topic"]

log = logging.getLogger(__name__)

_BUFFER_MAX: Final = 4096  # messages kept for rounds we have not started
_RECENT_MAX: Final = 256  # broadcasts kept per recent round (replay after a correction)
_HISTORY: Final = 4  # rounds whose base state we can serve to joiners
_RETRIES: Final = (0.25, 0.5, 1.0, 2.0, 4.0)  # waits before re-sending to an unreachable peer
# broadcasts are decoded once per process (immutable values; see DecodeMemo)
_BROADCASTS: Final = DecodeMemo((SignedGroupResult, SignedGroupAbort, Presence))

Trainer = Callable[[TrainRequested], tuple[np.ndarray, int]]  # → (w_local − w_global, n)
FaultHook = Callable[[str, int], bool]  # fault(stage, round); True halts the driver


class FederationDriver(DriverRepair):
    """Runs the rounds of ``federation`` for ``identity`` over ``overlay`` (see the
    module docstring).  Start it with ``await nursery.start(driver.run)``.

    ``trainer`` answers ``TrainRequested``; ``state`` is where to start; ``aggregation``
    the backend factory; ``candidates`` the agreed cohort candidates; ``rng`` the protocol
    randomness (default: the OS CSPRNG); ``checkpoint`` the file to checkpoint the state
    of every round start to; ``limiter`` bounds training threads; ``ledger`` the
    peer's ledger (:class:`LedgerHooks`: head, weights, records, sync) -- without one,
    ``ledger_head`` and ``weight_factor`` (default: zero head, weight 1);
    ``adversary`` makes this a simulated attacker (simulations only);
    ``penalize(peer, reason)`` lowers a peer's score (None: offences are only logged);
    ``warmup``: delay before the first round; ``presence_interval``: seconds between
    :class:`Presence` announcements (0: once).
    """

    def __init__(
        self, federation: Federation, identity: Identity, overlay: Overlay, trainer: Trainer,
        state: GlobalState, *, aggregation: AggregationFactory = PlaintextAggregation,
        candidates: Iterable[PeerId] | None = None, rng: Rng | None = None,
        checkpoint: str | Path | None = None, train_inline: bool = False,
        limiter: trio.CapacityLimiter | None = None,
        ledger_head: Callable[[], bytes] = lambda: NO_LEDGER,
        weight_factor: Callable[[int], float] = lambda r: 1.0,
        penalize: Callable[[PeerId, str], None] | None = None, fault: FaultHook | None = None,
        warmup: float = 0.0, presence_interval: float = 60.0,
        public_key: Callable[[PeerId], bytes | None] | None = None,
        ledger: LedgerHooks | None = None, adversary: Adversary | None = None,
    ) -> None:
        if state.federation_id != federation.id:
            raise LocalProtocolError("state belongs to another federation")
        if identity.peer_id != overlay.local_peer:
            raise LocalProtocolError("identity does not match the overlay's peer")
        self.federation = federation
        self.identity = identity
        self.me = identity.peer_id
        self.topic = federation_topic(federation)
        self._overlay = overlay
        self._trainer = trainer
        self._state = state
        self._factory = aggregation
        self._candidates = tuple(candidates) if candidates is not None else None
        self._warned_open = False
        self._rng = rng if rng is not None else SystemRng()
        self._ckpt = Path(checkpoint) if checkpoint is not None else None
        self._inline = train_inline
        self._limiter = limiter
        self._ledger = ledger
        self._adversary = adversary
        if ledger is not None:
            ledger_head = lambda: ledger.head  # noqa: E731
            weight_factor = lambda r: ledger.weight_factor(self.me)  # noqa: E731
        self._ledger_head = ledger_head
        self._weight_factor = weight_factor
        self._penalize = penalize
        self._fault = fault
        self._warmup = warmup
        self._presence_interval = presence_interval
        # permissioned: keys come from the member list, so only addresses are learned
        # from Presence -- and only cohort members need theirs known (see _start_round)
        self._lazy_presence = federation.membership.policy == "permissioned"
        self._announced_at = -math.inf
        self._public_key = public_key
        self._rm: RoundMachine | None = None
        self._started_at = 0.0
        self._catchup: CatchUp | None = None
        self._sync_deadline: float | None = None
        self._next_start: float | None = None  # start self._state's round then
        self._behind_at: float | None = None  # catch up then, unless the round ends
        self._pull_at: float | None = None
        self._pulled: dict[int, tuple[float, set[PeerId]]] = {}  # round -> (last, asked)
        self._informants: OrderedDict[PeerId, None] = OrderedDict()  # spoke of later rounds
        self._pulls: dict[bytes, tuple[PeerId, int]] = {}  # nonce -> (asked peer, round)
        self._ahead = -1  # the latest round any message named
        self._history: OrderedDict[int, tuple[GlobalState, RoundMachine]] = OrderedDict()
        self._models: dict[int, np.ndarray] = {}  # round -> the model it started from
        self._buffer = Buffer(_BUFFER_MAX)
        self._recent: dict[int, list[Item]] = {}  # broadcasts of recent rounds
        self._served: dict[PeerId, float] = {}
        self._reachable: dict[PeerId, trio.Event] = {}  # set by the peer's Presence
        self._halted = False
        self._queued = self._taken = self._halt_mark = 0
        self._out_send, self._out_recv = trio.open_memory_channel[Out](math.inf)
        self._subscribers: list[trio.MemorySendChannel[DriverEvent]] = []
        self._changed = trio.Event()
        self._timer_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._train_lock = trio.Lock()
        self._ckpt_pending: GlobalState | None = None
        self._ckpt_wakeup = trio.Event()
        self._stats = DriverStatistics()

    # -- public API ------------------------------------------------------------------

    @property
    def state(self) -> GlobalState:
        """The global state the current (or next) round starts from."""
        return self._state

    @property
    def round(self) -> int:  # the round running (= rounds completed)
        return self._state.round

    @property
    def round_machine(self) -> RoundMachine | None:
        return self._rm

    def statistics(self) -> DriverStatistics:
        return DriverStatistics(**{**self._stats.__dict__, "by_type": dict(self._stats.by_type)})

    def subscribe(self, *, buffer: int = 1024) -> trio.MemoryReceiveChannel[DriverEvent]:
        """A channel of every :data:`DriverEvent` from now on (dropped when full)."""
        send, recv = trio.open_memory_channel[DriverEvent](buffer)
        self._subscribers.append(send)
        return recv

    async def wait_round(self, r: int | None = None) -> GlobalState:
        """Wait until this peer holds the state round ``r + 1`` (or a later one) starts
        from (default ``r``: the current round); return it."""
        target = self._state.round if r is None else r
        while self._state.round <= target:
            await self._changed.wait()
        return self._state

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; reports started once it listens on the overlay."""
        bcast = self._overlay.subscribe(self.topic, buffer=4096)
        watch = self._overlay.watch_events(buffer=1024)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._read_broadcasts, bcast)
            nursery.start_soon(self._read_direct)
            nursery.start_soon(self._read_watch, watch)
            nursery.start_soon(self._send_loop)
            nursery.start_soon(self._checkpoint_loop)
            if not self._lazy_presence:
                nursery.start_soon(self._announce)
            self._next_start = trio.current_time() + self._warmup
            nursery.start_soon(self._timer_loop)
            task_status.started()

    # -- I/O tasks -------------------------------------------------------------------

    async def _announce(self) -> None:
        """:class:`Presence` once we have a neighbour (before, it reaches nobody) and
        the peers starting with us joined, then every ``presence_interval``."""
        with trio.move_on_after(max(self._warmup, 5.0)):
            await self._overlay.wait_neighbors(1)
        await trio.sleep(self._warmup / 2)
        while True:
            self._put(Out(None, encode(Presence(self.federation.id, self._state.round)), -1))
            if self._presence_interval <= 0:
                return
            await trio.sleep(self._presence_interval)

    async def _read_broadcasts(self, ch: trio.MemoryReceiveChannel[tuple[PeerId, bytes]]) -> None:
        async for origin, payload in ch:
            if origin != self.me:
                self._on_payload(origin, payload, broadcast=True)

    async def _read_direct(self) -> None:
        async for origin, payload in self._overlay.direct:
            self._on_payload(origin, payload, broadcast=False)

    async def _read_watch(self, ch: trio.MemoryReceiveChannel[object]) -> None:
        async for ev in ch:
            if isinstance(ev, DirectFailed):
                self._send_failed(ev.peer, None)

    async def _timer_loop(self) -> None:
        last = -math.inf
        while True:
            dl = self._deadline()
            if dl <= last:  # a deadline that did not move: never spin
                dl = last + 1e-3
            with trio.CancelScope(deadline=dl) as cs:
                self._timer_scope = cs
                await trio.sleep_forever()
            self._timer_scope = None
            last = trio.current_time()
            self._on_timer()

    async def _send_loop(self) -> None:
        async for item in self._out_recv:
            self._taken += 1
            if self._halted and self._taken > self._halt_mark:
                continue  # issued after the halt: never happened
            if item.marker:
                self._run_fault(item.marker, item.round)
            elif item.to is None:
                try:
                    await self._overlay.publish(self.topic, item.data)
                    self._count_sent(item)
                except LocalProtocolError as e:
                    log.error("%s: cannot broadcast %d bytes: %s", self.me.short(), len(item.data), e)
            elif not await self._send_direct(item):
                assert self._nursery is not None
                self._nursery.start_soon(self._retry, item)

    def _count_sent(self, item: Out) -> None:
        self._stats.messages_sent += 1
        self._stats.bytes_sent += len(item.data)

    async def _send_direct(self, item: Out) -> bool:
        """False when the peer is unreachable (retry later)."""
        assert item.to is not None
        try:
            await self._overlay.send_direct(item.to, item.data)
            self._count_sent(item)
        except PeerUnreachable:
            return False
        except LocalProtocolError as e:  # oversized: our bug or a model too large
            log.error("%s: cannot send %d bytes to %s: %s", self.me.short(), len(item.data),
                      item.to.short(), e)
            self._send_failed(item.to, item.round)
        return True

    async def _retry(self, item: Out) -> None:
        """Send again after each wait of :data:`_RETRIES` -- or as soon as the peer's
        :class:`Presence` (its address) arrives -- then give up (``send_failed``)."""
        assert item.to is not None
        for wait in _RETRIES:
            heard = self._reachable.setdefault(item.to, trio.Event())
            with trio.move_on_after(wait):
                await heard.wait()
            if (not heard.statistics().tasks_waiting
                    and self._reachable.get(item.to) is heard):  # nobody else waits on it
                del self._reachable[item.to]
            stale = item.round >= 0 and self._rm is not None and self._rm.round != item.round
            if self._halted or stale or await self._send_direct(item):
                return
        self._send_failed(item.to, item.round)

    async def _checkpoint_loop(self) -> None:
        while True:
            await self._ckpt_wakeup.wait()
            self._ckpt_wakeup = trio.Event()
            state, self._ckpt_pending = self._ckpt_pending, None
            if state is None or self._ckpt is None:
                continue
            try:
                if self._inline:
                    save_checkpoint(self._ckpt, state)
                else:
                    await trio.to_thread.run_sync(save_checkpoint, self._ckpt, state)
            except OSError as e:
                log.error("%s: checkpoint %s failed: %s", self.me.short(), self._ckpt, e)

    async def _train_thread(self, rm: RoundMachine, ev: TrainRequested) -> None:
        async with self._train_lock:  # one training at a time (a late one may still run)
            if rm is not self._rm or rm.state is not RoundState.TRAINING or self._halted:
                return
            t0 = time.perf_counter()
            try:
                update, n = await trio.to_thread.run_sync(
                    self._trainer, ev, limiter=self._limiter)  # shutdown waits for it
            except Exception as e:  # a user task's bug must not kill the peer
                self._training_failed(ev.round, time.perf_counter() - t0, e)
                return
            self._training_done(rm, ev.round, update, n, time.perf_counter() - t0)

    # -- the synchronous core: inputs --------------------------------------------------

    def _put(self, item: Out) -> None:
        self._queued += 1
        self._out_send.send_nowait(item)

    def _emit(self, ev: DriverEvent) -> None:
        for ch in list(self._subscribers):
            try:
                ch.send_nowait(ev)
            except trio.WouldBlock:
                self._stats.events_dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(ch)

    def _offence(self, peer: object, reason: str) -> None:
        self._stats.offences += 1
        if not isinstance(peer, PeerId) or peer == self.me:
            log.warning("%s: protocol error: %s", self.me.short(), reason)
            return
        log.info("%s: offence by %s: %s", self.me.short(), peer.short(), reason)
        if self._penalize is not None:
            self._penalize(peer, reason)

    def _run_fault(self, stage: str, r: int) -> None:
        if self._fault is not None and not self._halted and self._fault(stage, r):
            self._halted = True
            self._halt_mark = self._queued  # what was issued before still leaves
            log.info("%s: halted by fault injection at %s of round %d", self.me.short(), stage, r)

    def _on_payload(self, origin: PeerId, payload: bytes, *, broadcast: bool) -> None:
        if self._halted:
            return
        self._stats.messages_received += 1
        self._stats.bytes_received += len(payload)
        try:
            msg = _BROADCASTS.decode(payload) if broadcast else decode(payload)
        except RemoteProtocolError as e:
            self._offence(origin, f"undecodable federation message: {e}")
            return
        name = type(msg).__name__
        self._stats.by_type[name] = self._stats.by_type.get(name, 0) + 1
        try:
            self._dispatch(origin, msg, broadcast)
        except OutOfSync as e:
            log.debug("%s: out of sync with %s: %s", self.me.short(), origin.short(), e)
            self._maybe_behind(msg)
        except RemoteProtocolError as e:
            self._offence(e.peer if e.peer is not None else origin, str(e))
        self._flush()

    def _dispatch(self, origin: PeerId, msg: object, broadcast: bool) -> None:
        now = trio.current_time()
        is_outcome = isinstance(msg, SignedGroupResult | SignedGroupAbort)
        if broadcast and isinstance(msg, Presence):  # the overlay learned the origin's address
            if (heard := self._reachable.pop(origin, None)) is not None:
                heard.set()  # what waits to be sent to it goes now
            return
        if self._ledger is not None and not broadcast and self._ledger.handles(msg):
            self._ledger.receive(origin, msg, now)
            return
        if broadcast != is_outcome:
            how = "broadcast" if broadcast else "sent directly"
            raise RemoteProtocolError(f"{type(msg).__name__} {how}", peer=origin)
        if isinstance(msg, StateRequest):
            self._answer(origin, msg, now)
            return
        if isinstance(msg, StateResponse):
            if msg.nonce in self._pulls:
                self._on_pulled(origin, msg, now)
            elif self._catchup is not None:
                self._catchup.receive(origin, msg, now)
            return
        r = message_round(msg)
        if r is None:
            raise RemoteProtocolError(f"unexpected {type(msg).__name__}", peer=origin)
        current = self._state.round
        if is_outcome and r >= current - 1:
            recent = self._recent.setdefault(r, [])
            if len(recent) < _RECENT_MAX:
                recent.append((origin, msg))
        if self._catchup is not None:
            if is_outcome:
                self._catchup.receive(origin, msg, now)
                if isinstance(msg, SignedGroupResult):
                    self._catchup.add_neighbour(origin, now)
            self._keep(r, origin, msg)
            return
        if r < current:
            if r == current - 1 and isinstance(msg, SignedGroupResult):
                self._late_result(origin, msg, now)
            return
        if r == current and self._rm is not None:
            self._rm.receive(origin, msg, now)
            return
        self._keep(r, origin, msg)
        if r > current:
            self._ahead = max(self._ahead, r)
            self._informants[origin] = None
            self._informants.move_to_end(origin)
            if len(self._informants) > 16:
                self._informants.popitem(last=False)
            self._pull_soon(now)
            if isinstance(msg, SignedGroupResult) and attested_state(self.federation, msg):
                if r >= current + 2:
                    self._begin_sync(f"heard an attested result of round {r}")
                elif self._behind_at is None:
                    self._behind_at = now + self.federation.timeouts.sign

    def _keep(self, r: int, origin: PeerId, msg: object) -> None:
        ok = (r <= self._state.round + 2 or self._catchup is not None) and self._buffer.add(
            r, (origin, msg))
        self._stats.buffered += ok
        self._stats.dropped += not ok

    def _on_timer(self) -> None:
        if self._halted:
            return
        now = trio.current_time()
        if self._next_start is not None and now >= self._next_start:
            self._start_round(self._state)
        if self._pull_at is not None and now >= self._pull_at:
            t, self._pull_at = self.federation.timeouts, None
            if self._rm is not None:  # again at the last call before the deadline
                last_call = self._started_at + t.round - t.sign
                self._pull_at = last_call if now < last_call else None
                self._maybe_pull(self._rm.round, now)
        if self._behind_at is not None and now >= self._behind_at:
            self._behind_at = None
            if self._catchup is None:
                self._begin_sync(f"others finished round {self._state.round}")
        if self._sync_deadline is not None and now >= self._sync_deadline:
            log.warning("%s: nothing to catch up to; resuming from round %d", self.me.short(),
                        self._state.round)
            self._start_round(self._state)
        if self._rm is not None:
            self._rm.handle_timer(now)
        if self._catchup is not None:
            self._catchup.handle_timer(now)
        if self._ledger is not None:
            self._ledger.handle_timer(now)
        self._flush()

    def _deadline(self) -> float:
        times = [self._next_start, self._behind_at, self._pull_at, self._sync_deadline]
        if self._ledger is not None:
            times.append(self._ledger.next_deadline())
        if self._rm is not None:
            times.append(self._rm.next_deadline())
        if self._catchup is not None:
            times.append(self._catchup.next_deadline())
        return min((t for t in times if t is not None), default=math.inf)

    def _send_failed(self, peer: PeerId, r: int | None) -> None:
        self._stats.send_failures += 1
        rm = self._rm
        if rm is not None and not self._halted and (r is None or r == rm.round):
            rm.send_failed(peer, trio.current_time())
            self._flush()

    # -- the synchronous core: rounds --------------------------------------------------

    def _candidates_for(self) -> Iterable[PeerId]:
        if self._candidates is not None:
            return self._candidates
        if self.federation.membership.policy == "permissioned":
            return self.federation.membership.member_ids
        if not self._warned_open:
            self._warned_open = True
            log.warning("%s: open federation without an agreed candidate list: using the "
                        "local view of live peers (best effort until the ledger exists)",
                        self.me.short())
        return [*self._overlay.live_peers(), self.me]

    def _machine(self, state: GlobalState, schedule: RoundSchedule,
                 factory: AggregationFactory | None = None) -> RoundMachine:
        led = self._ledger
        return RoundMachine(self.federation, self.identity, state, schedule,
                            aggregation=factory or self._factory, rng=self._rng,
                            weight_factor=self._weight_factor(state.round),
                            public_key=self._public_key, reference=self._reference(state),
                            weight_of=led.weight_factor if led is not None else None,
                            adversary=self._adversary)

    def _reference(self, state: GlobalState) -> np.ndarray | None:
        """The sketch stage's public reference: the global model's displacement over the
        last ``k = min(detection.reference_rounds, round)`` rounds, ``w_r - w_{r-k}``
        (None in round 0, or when this peer does not hold ``w_{r-k}``, e.g. right after
        a catch-up).  Several rounds smooth out single noisy or poisoned steps."""
        k = min(self.federation.detection.reference_rounds, state.round)
        old = self._models.get(state.round - k) if k > 0 else None
        if old is None or old.shape != state.model.shape:
            return None
        diff = np.asarray(state.model, dtype=np.float64) - np.asarray(old, dtype=np.float64)
        return diff.astype(np.float32)

    def _start_round(self, state: GlobalState, preload: Sequence[object] = ()) -> None:
        now = trio.current_time()
        first = not self._history
        self._state = state
        self._models[state.round] = state.model
        for k in [k for k in self._models if k < state.round - self.federation.detection.reference_rounds]:
            del self._models[k]
        self._catchup = self._sync_deadline = self._behind_at = self._next_start = None
        weight = self._ledger.weight if self._ledger is not None else None
        sched = schedule_round(self.federation, state.round, state.beacon, self._candidates_for(),
                               weight)
        rm = self._rm = self._machine(state, sched)
        self._started_at = now
        self._history[state.round] = (state, rm)
        while len(self._history) > _HISTORY:
            self._history.popitem(last=False)
        for old in [k for k in self._recent if k < state.round - 1]:
            del self._recent[old]
        if self._ckpt is not None:
            self._ckpt_pending = state
            self._ckpt_wakeup.set()
        replay = [(s, m) for m in preload if (s := signer_of(m)) is not None]
        replay += self._recent.get(state.round, []) + self._buffer.take(state.round)
        for sender, msg in replay:  # the machine buffers them until start
            rm.receive(sender, msg, now)
            if isinstance(msg, SignedGroupResult) and msg.body.base_state != state.digest:
                self._maybe_behind(msg)
        t = self.federation.timeouts
        behind = first or self._ahead > state.round
        self._pull_at = now + (t.sign if behind else max(t.round - t.sign, t.round / 2))
        group = sched.group_of(self.me)
        in_cohort = group is not None
        aggregator = group is not None and group.rank(self.me) is not None
        if aggregator and self._lazy_presence and (
                now - self._announced_at >= self._presence_interval
                if self._presence_interval > 0 else self._announced_at == -math.inf):
            self._announced_at = now  # before our first direct message of the round
            self._put(Out(None, encode(Presence(self.federation.id, state.round)), -1))
        log.debug("%s: round %d starts from %s", self.me.short(), state.round, state.digest.hex()[:8])
        self._emit(RoundStarted(state, sched, in_cohort))
        self._changed.set()
        self._changed = trio.Event()
        if in_cohort:
            self._run_fault("round_start", state.round)
            if self._halted:
                return
        rm.start(now)
        # (re)started or late: fetch what was published before we came; what comes
        # later arrives by gossip, so the next pull is the last call -- unless nobody
        # could be asked yet (a restarted peer without neighbours): then soon again
        if behind and self._maybe_pull(state.round, now):
            self._pull_at = now + max(t.round - t.sign, t.round / 2)
        self._flush()

    def _flush(self) -> None:
        """Drain the machines' outputs; act on their events; move the timer."""
        while not self._halted:
            progressed = False
            for side in (self._ledger, self._catchup):  # direct messages, no round
                for o in side.messages_to_send() if side is not None else ():
                    progressed = True
                    self._put(Out(o.recipient, encode(o.message), -1))  # type: ignore[arg-type]
            if self._catchup is not None and (caught := self._catchup.next_event()) is not None:
                self._on_caught_up(caught)
                continue
            if (rm := self._rm) is not None:
                for o in rm.messages_to_send():
                    progressed = True
                    to = None if o.recipient is BROADCAST else o.recipient
                    self._put(Out(to, encode(o.message), rm.round))  # type: ignore[arg-type]
                if (ev := rm.next_event()) is not None:
                    progressed = True
                    self._on_round_event(rm, ev)
            if not progressed:
                break
        if (scope := self._timer_scope) is not None and scope.deadline != (dl := self._deadline()):
            scope.deadline = dl

    def _on_round_event(self, rm: RoundMachine, ev: object) -> None:
        if isinstance(ev, TrainRequested):
            if rm.state is not RoundState.TRAINING:
                return  # the group finished without us (e.g. a caught-up round)
            if self._inline:
                self._train_inline(rm, ev)
            else:
                assert self._nursery is not None
                self._nursery.start_soon(self._train_thread, rm, ev)
        elif isinstance(ev, RoundCompleted):
            log.debug("%s: round %d -> model %s, groups %s", self.me.short(), ev.record.round,
                      ev.record.model_hash.hex()[:8], [g.status for g in ev.record.groups])
            self._stats.rounds_completed += 1
            self._emit(ev)
            if rm is self._rm:
                if self._ledger is not None:
                    self._ledger.record_round(ev, rm.schedule, rm.outcomes()[1],
                                              trio.current_time())
                nxt = ev.next_state(self._ledger_head())
                self._rm = None
                if rm.schedule.groups:
                    self._start_round(nxt)
                else:  # nothing to do this round: do not spin, wait out its length
                    self._state = nxt
                    self._next_start = self._started_at + self.federation.timeouts.round
                    self._changed.set()
                    self._changed = trio.Event()
        elif isinstance(ev, RoundFailed):
            self._stats.rounds_failed += 1
            self._emit(ev)
            if rm is self._rm and (not ev.reason.startswith("out of sync") or any(
                    isinstance(m, SignedGroupResult) and m.body.base_state != rm.base.digest
                    and attested_state(self.federation, m) for _, m in self._recent.get(rm.round, ()))):
                self._begin_sync(f"round {ev.round} failed: {ev.reason}")
            elif rm is self._rm:  # only unattested evidence (aborts) of another state:
                base = rm.base  # the round produced nothing here, as it would have done
                model, sstate = self.federation.strategy.apply(base.model, [], base.strategy_state)
                self._start_round(base.advance(model, sstate, self._ledger_head()))
        elif isinstance(ev, Misbehaviour):
            self._stats.misbehaviour += 1
            log.info("%s: misbehaviour of %s: %s", self.me.short(), ev.peer.short(), ev.reason)
            self._emit(ev)
        elif isinstance(ev, GroupResolved):
            self._emit(ev)

    # -- training ----------------------------------------------------------------------

    def _train_inline(self, rm: RoundMachine, ev: TrainRequested) -> None:
        t0 = time.perf_counter()
        try:
            update, n = self._trainer(ev)
        except Exception as e:  # a user task's bug must not kill the peer
            self._training_failed(ev.round, time.perf_counter() - t0, e)
            return
        self._training_done(rm, ev.round, update, n, time.perf_counter() - t0)

    def _training_failed(self, r: int, seconds: float, e: Exception) -> None:
        log.error("%s: local training of round %d failed", self.me.short(), r, exc_info=e)
        self._stats.training_errors += 1
        self._emit(TrainingFinished(r, 0, seconds, False, f"{type(e).__name__}: {e}"))

    def _training_done(self, rm: RoundMachine, r: int, update: np.ndarray, n: int,
                       seconds: float) -> None:
        self._stats.trainings += 1
        self._stats.train_seconds += seconds
        if rm is not self._rm or self._halted:
            self._emit(TrainingFinished(r, n, seconds, False, "the round moved on"))
            return
        try:
            accepted = rm.training_done(update, n, trio.current_time())
        except LocalProtocolError as e:  # NaN, wrong shape: the task's bug
            self._training_failed(r, seconds, e)
            return
        self._emit(TrainingFinished(r, n, seconds, accepted))
        self._flush()
        if accepted and self._fault is not None:
            self._put(Out(None, b"", r, marker="submitted"))
