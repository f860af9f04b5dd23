"""How a :class:`~p2pfl.federation.driver.FederationDriver` repairs agreement.

The three repairs of the driver's module docstring, cheapest first, as a mixin of the
driver (they read and move its state; split out to keep each file about one idea):

* *pull* -- ``StateRequest`` for our round to two peers not asked yet
  (:meth:`DriverRepair._maybe_pull`), at once when we (re)start behind, again at the
  last call before the deadline, and ``timeouts.sign`` after hearing of a later round
  (:meth:`DriverRepair._pull_soon`); the answer's results go to the round machine,
  which verifies each.  Answers are bounded to what one direct message carries
  (:func:`~p2pfl.federation._driver_support.bounded_answer`);
* *late result* -- a valid result of the previous round that we did not use
  re-evaluates that round (:meth:`DriverRepair._late_result`);
* *catch-up* -- :class:`~p2pfl.federation.sync.CatchUp` when out of sync or behind by
  an attested round (:meth:`DriverRepair._begin_sync`).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import trio

from mpc.rand import Rng
from p2pfl.errors import RemoteProtocolError
from p2pfl.wire import PeerId, encode

from ._driver_support import (
    Buffer,
    DriverEvent,
    DriverStatistics,
    Item,
    LedgerHooks,
    Observer,
    Out,
    Synced,
    SyncStarted,
    bounded_answer,
    signer_of,
)
from .aggregation import AggregationFactory
from .config import Federation
from .messages import SignedGroupAbort, SignedGroupResult, StateRequest, StateResponse, digest_of
from .results import OutOfSync
from .round import RoundMachine
from .schedule import RoundSchedule
from .state import GlobalState
from .sync import CatchUp, CaughtUp, attested_state

if TYPE_CHECKING:
    from p2pfl.overlay import Overlay

__all__ = ["DriverRepair"]

log = logging.getLogger("p2pfl.federation.driver")

_STATE_REQUEST_INTERVAL: Final = 1.0  # at most one answered StateRequest per peer per second


class DriverRepair:
    """Pull, late results and catch-up (see the module docstring); mixed into
    :class:`~p2pfl.federation.driver.FederationDriver`, whose state it shares."""

    federation: Federation
    me: PeerId
    _overlay: Overlay
    _rng: Rng
    _ledger: LedgerHooks | None
    _ledger_head: Callable[[], bytes]
    _state: GlobalState
    _rm: RoundMachine | None
    _started_at: float
    _catchup: CatchUp | None
    _sync_deadline: float | None
    _next_start: float | None
    _behind_at: float | None
    _pull_at: float | None
    _pulled: dict[int, tuple[float, set[PeerId]]]
    _informants: OrderedDict[PeerId, None]
    _pulls: dict[bytes, tuple[PeerId, int]]
    _history: OrderedDict[int, tuple[GlobalState, RoundMachine]]
    _buffer: Buffer
    _recent: dict[int, list[Item]]
    _served: dict[PeerId, float]
    _stats: DriverStatistics

    if TYPE_CHECKING:  # the driver's, used here
        def _put(self, item: Out) -> None: ...
        def _emit(self, ev: DriverEvent) -> None: ...
        def _machine(self, state: GlobalState, schedule: RoundSchedule,
                     factory: AggregationFactory | None = None) -> RoundMachine: ...
        def _start_round(self, state: GlobalState, preload: Sequence[object] = ()) -> None: ...

    def _maybe_behind(self, msg: object) -> None:
        """An attested result of another state for our round: resync unless it ends soon."""
        if (self._behind_at is None and self._catchup is None
                and isinstance(msg, SignedGroupResult)
                and attested_state(self.federation, msg) is not None):
            self._behind_at = trio.current_time() + self.federation.timeouts.sign

    def _pull_soon(self, now: float) -> None:
        """Others are in a later round: pull ``timeouts.sign`` from now unless our round
        ends first.  Not at once: at a round's end peers move on a few latencies apart,
        and the stragglers are about to receive what they lack anyway -- pulling at once
        made every peer of a large federation fetch every result twice (answers of up
        to 1 MiB each)."""
        if self._rm is None or self._rm.finished:
            return
        at = now + self.federation.timeouts.sign
        if self._pull_at is None or at < self._pull_at:
            self._pull_at = at  # the caller's _flush moves the timer

    def _maybe_pull(self, r: int, now: float) -> bool:
        """Ask two peers not asked yet what they know of round ``r`` (at most once per
        ``timeouts.sign``): first those that spoke of later rounds, then neighbours.
        Returns whether a request went out."""
        if self._rm is None or self._rm.round != r or self._rm.finished:
            return False
        last, asked = self._pulled.get(r, (-math.inf, set()))
        if now - last < self.federation.timeouts.sign:
            return False
        self._pulled = {k: v for k, v in self._pulled.items() if k >= r - 1}
        self._stats.pulls += 1
        peers = [*reversed(self._informants), *self._overlay.neighbors(),
                 *self._overlay.live_peers()]
        fresh = [p for p in dict.fromkeys(peers) if p != self.me and p not in asked][:2]
        self._pulled[r] = (now, asked | set(fresh))
        for peer in fresh:
            nonce = self._rng.random_bytes(16)
            self._pulls[nonce] = (peer, r)
            self._put(Out(peer, encode(StateRequest(self.federation.id, r, nonce)), -1))
        while len(self._pulls) > 64:
            self._pulls.pop(next(iter(self._pulls)))
        return bool(fresh)

    def _on_pulled(self, origin: PeerId, msg: StateResponse, now: float) -> None:
        peer, r = self._pulls.pop(msg.nonce)
        if origin != peer:
            raise RemoteProtocolError("state response to a request sent elsewhere", peer=origin)
        rm = self._rm
        if msg.snapshot is None or rm is None or rm.round != r:
            return
        try:
            digest = GlobalState.from_snapshot(msg.snapshot, self.federation.id).digest
        except ValueError as e:
            raise RemoteProtocolError(f"malformed state snapshot: {e}", peer=origin) from e
        if digest != self._state.digest:
            return  # another base state for this round: its results would not verify
        for m in (*msg.results, *msg.aborts):
            signer = signer_of(m)
            if signer is not None and not rm.finished:
                try:
                    rm.receive(signer, m, now)
                except OutOfSync:
                    continue
                except RemoteProtocolError as e:  # served something invalid
                    raise RemoteProtocolError(f"served an invalid outcome: {e}", peer=origin) from e

    def _answer(self, origin: PeerId, req: StateRequest, now: float) -> None:
        if now - self._served.get(origin, -math.inf) < _STATE_REQUEST_INTERVAL:
            return
        if len(self._served) > 4096:
            self._served.clear()
        self._served[origin] = now
        base, rm = self._history.get(req.round, (None, None))
        results, aborts = rm.outcomes() if rm is not None else ((), ())
        self._put(Out(origin, bounded_answer(self.federation, req, base, results, aborts), -1))

    def _late_result(self, origin: PeerId, msg: SignedGroupResult, now: float) -> None:
        """A result of the previous round: if we did not use it, re-evaluate that round
        as of its deadline with everything known; a changed model restarts this round.
        Only until this round's inputs are due (``timeouts.train``): later, switching
        would cost the round, and a result that late is stale or withheld."""
        entry = self._history.get(msg.body.round)
        if entry is None or entry[1].result is None or now - self._started_at > (
                self.federation.timeouts.train):
            return  # too late to switch without losing this round
        base, old = entry
        results, aborts = old.outcomes()
        digest = digest_of(msg.body)
        if any(digest_of(m.body) == digest for m in results):
            return
        rm = self._machine(base, old.schedule, Observer)  # takes no part, says nothing
        for m in (*results, *aborts):
            if (s := signer_of(m)) is not None:
                rm.receive(s, m, now)
        rm.receive(origin, msg, now)
        rm.start(now - self.federation.timeouts.round)  # its deadlines are all past
        rm.handle_timer(now)
        done = rm.result
        if done is None or old.result is None or done.record.model_hash == old.result.record.model_hash:
            return
        log.info("%s: round %d corrected by a late result of group %d", self.me.short(),
                 msg.body.round, msg.body.group)
        self._stats.corrections += 1
        self._history[msg.body.round] = (base, rm)
        if self._ledger is not None:
            self._ledger.record_round(done, old.schedule, rm.outcomes()[1], now)
        self._emit(done)
        self._start_round(done.next_state(self._ledger_head()))

    def _begin_sync(self, reason: str) -> None:
        now = trio.current_time()
        self._stats.syncs += 1
        log.info("%s: catching up (round %d): %s", self.me.short(), self._state.round, reason)
        self._rm = self._behind_at = self._next_start = self._pull_at = None
        self._sync_deadline = now + self.federation.timeouts.round
        peers = [p for p in (*self._overlay.neighbors(), *self._overlay.live_peers()) if p != self.me]
        cu = self._catchup = CatchUp(self.federation, peers, rng=self._rng)
        self._emit(SyncStarted(self._state.round, reason))
        heard = [item for r in sorted(self._recent) for item in self._recent[r]]
        later = [item for r in sorted(self._buffer.by_round) for item in self._buffer.by_round[r]]
        for sender, msg in heard + later:
            if isinstance(msg, SignedGroupResult | SignedGroupAbort):
                cu.receive(sender, msg, now)  # heard broadcasts never raise
                if isinstance(msg, SignedGroupResult):  # aggregators hold the state
                    cu.add_neighbour(sender, now)

    def _on_caught_up(self, caught: CaughtUp) -> None:
        log.info("%s: caught up at round %d", self.me.short(), caught.state.round)
        if self._ledger is not None:
            self._ledger.behind(trio.current_time())
        self._emit(Synced(caught.state))
        self._start_round(caught.state, (*caught.results, *caught.aborts))

