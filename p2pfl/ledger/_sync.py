"""Late joiners and lagging peers: pull the chain from neighbours, verify, adopt.

Theory of operation
-------------------
:class:`LedgerSync` is a sans-I/O machine over a :class:`~p2pfl.ledger.Ledger`.  It
asks one neighbour at a time for the records from ``height - overlap`` on (the overlap
lets a fork near our tip show up, and a page longer than the overlap outweighs a
forged tip), a page at a time (:class:`LedgerRequest`, fresh
nonce, ``timeout`` per request).  A page holds at most ``page`` records and at most
:data:`~p2pfl.ledger._messages.PAGE_MAX_BYTES` encoded, so it may stop short of the
neighbour's height; the next page then starts where it ended.  An empty page from a
neighbour ahead of us (its next record alone exceeds the bound) is not an offence:
the next neighbour is asked.  Each page goes through :meth:`Ledger.adopt`, which
verifies every record from genesis rules (link, schedule, signatures, evidence) and
applies fork choice, so a neighbour can only offer a chain, never impose one.  A
neighbour whose page is invalid is reported (:class:`RemoteProtocolError` with
``peer``) and the next one asked; one whose chain is lighter is left; one whose page
does not link to our chain (it forked earlier than the overlap) is asked again from
twice as far back.  When every
neighbour has been asked, :class:`LedgerSynced` reports the height reached; the driver
then fetches the global state for that head (:class:`p2pfl.federation.CatchUp`; the
head record's ``model_hash`` and the next round's base state bind it).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from mpc.rand import Rng
from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import Outgoing, OutOfSync
from p2pfl.wire import PeerId

from ._ledger import AppendStatus, Ledger
from ._messages import MAX_PAGE, LedgerRequest, LedgerResponse

__all__ = ["LedgerSync", "LedgerSynced", "SyncState"]


class SyncState(enum.Enum):
    IDLE = "idle"
    REQUESTING = "requesting"
    DONE = "done"


@dataclass(frozen=True)
class LedgerSynced:
    """Every neighbour was asked; the ledger is at ``height`` with head ``head``."""

    height: int
    head: bytes


class LedgerSync:
    """Pull-based chain sync (see the module docstring)."""

    def __init__(self, ledger: Ledger, neighbours: Sequence[PeerId], *, rng: Rng,
                 timeout: float = 10.0, page: int = 64, overlap: int = 4) -> None:
        if not 0 <= overlap < page <= MAX_PAGE:
            raise ValueError(f"need 0 <= overlap < page <= {MAX_PAGE}")
        self.ledger = ledger
        self._todo = list(dict.fromkeys(neighbours))
        self._rng = rng
        self._timeout = timeout
        self._page = page
        self._overlap = overlap
        self._state = SyncState.IDLE
        self._pending: tuple[PeerId, bytes, int, float] | None = None  # peer, nonce, start, deadline
        self._outbox: list[Outgoing] = []
        self._events: list[LedgerSynced] = []
        self._back = max(1, overlap)  # how far back the next retry after OutOfSync starts

    @property
    def state(self) -> SyncState:
        return self._state

    def start(self, now: float) -> None:
        """Ask the first neighbour."""
        if self._state is SyncState.IDLE:
            self._next(now)

    def add_neighbour(self, peer: PeerId, now: float) -> None:
        if peer not in self._todo and self._state is not SyncState.DONE:
            self._todo.append(peer)
            if self._state is SyncState.IDLE:
                self._next(now)

    def _ask(self, peer: PeerId, start: int, now: float) -> None:
        nonce = self._rng.random_bytes(16)
        self._pending = (peer, nonce, start, now + self._timeout)
        self._state = SyncState.REQUESTING
        self._outbox.append(Outgoing(peer, LedgerRequest(self.ledger.federation.id, start,
                                                         self._page, nonce)))

    def _next(self, now: float) -> None:
        self._pending = None
        if not self._todo:
            self._state = SyncState.DONE
            self._events.append(LedgerSynced(self.ledger.height, self.ledger.head))
            return
        peer = self._todo.pop(0)
        self._back = max(1, self._overlap)
        self._ask(peer, max(0, self.ledger.height - self._overlap), now)

    def receive(self, sender: PeerId, msg: object, now: float) -> None:
        """Feed a :class:`LedgerResponse`.  Raises :class:`RemoteProtocolError` for an
        unsolicited or invalid one (the sync moves on to the next neighbour)."""
        pending = self._pending
        if not isinstance(msg, LedgerResponse) or pending is None or sender != pending[0] or (
            msg.nonce != pending[1]
        ):
            raise RemoteProtocolError("unsolicited ledger response", peer=sender)
        if msg.federation != self.ledger.federation.id or msg.start != pending[2]:
            self._next(now)
            raise RemoteProtocolError("ledger response for another request", peer=sender)
        if not msg.records:
            self._next(now)
            return
        try:
            res = self.ledger.adopt(msg.start, msg.records, sender)
        except OutOfSync:
            # its chain forks from ours before ``start``: ask the same peer from further back
            self._back = max(1, 2 * self._back)
            self._ask(sender, max(0, msg.start - self._back), now)
            return
        except RemoteProtocolError:
            self._next(now)
            raise
        end = msg.start + len(msg.records)
        if res.status is not AppendStatus.STALE and msg.height > end and self.ledger.height >= end:
            # more pages from the same neighbour (also when a short, byte-bounded page
            # only covered records we hold: each page moves ``start`` forward)
            self._ask(sender, end, now)
        else:
            self._next(now)

    def handle_timer(self, now: float) -> None:
        if self._pending is not None and now >= self._pending[3]:
            self._next(now)

    def next_deadline(self) -> float | None:
        return self._pending[3] if self._pending is not None else None

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> LedgerSynced | None:
        return self._events.pop(0) if self._events else None
