"""The ledger as the federation driver sees it: :class:`RoundLedger`.

Theory of operation
-------------------
The driver (federation layer) may not import the ledger layer, so it talks to a
:class:`RoundLedger` through the small interface
:class:`p2pfl.federation.driver.LedgerHooks`:

* ``head`` -- the hash that goes into the next beacon (``next_state(head)``);
* ``weight(peer)`` / ``weight_factor(peer)`` -- cohort selection and aggregation
  weights from the standing (:class:`~p2pfl.ledger.Standing`);
* ``record_round(completed, schedule, aborts)`` -- at ``RoundCompleted``: build this
  peer's record of the round and append it (verify + fsync).  A round that was
  *corrected* by a late result (the record of the last height again) replaces the
  last record through fork choice (the corrected record carries more signatures);
* ``receive`` / ``messages_to_send`` / ``next_deadline`` / ``handle_timer`` -- a
  :class:`~p2pfl.ledger.LedgerSync` run when the chain is behind the rounds (a peer
  that caught up on the model but missed records): it fetches and verifies the
  missing records from neighbours, who answer ``LedgerRequest`` s here too.

Records are not broadcast: every peer builds the same record from the same
gossiped, signed group results (the body is a deterministic function of them), and
a peer that missed some fetches the records with their witnesses and verifies them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from mpc.rand import Rng
from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import (
    OutOfSync,
    RoundCompleted,
    RoundSchedule,
    SignedGroupAbort,
)
from p2pfl.federation.events import Outgoing
from p2pfl.wire import PeerId

from ._build import build_record
from ._ledger import Ledger, answer_ledger_request
from ._messages import LedgerRequest, LedgerResponse, genesis_hash
from ._sync import LedgerSync, LedgerSynced

__all__ = ["RoundLedger"]

log = logging.getLogger(__name__)


class RoundLedger:
    """A :class:`Ledger` bound to one peer's federation driver (module docstring)."""

    def __init__(self, ledger: Ledger, me: PeerId, *, rng: Rng,
                 neighbours: Callable[[], Sequence[PeerId]] = lambda: ()) -> None:
        self.ledger = ledger
        self.me = me
        self._rng = rng
        self._neighbours = neighbours
        self._sync: LedgerSync | None = None
        self._outbox: list[Outgoing] = []
        self.errors = 0

    # -- what the driver reads ---------------------------------------------------

    @property
    def head(self) -> bytes:
        return self.ledger.head

    def weight(self, peer: PeerId) -> float:
        return self.ledger.weight(peer)

    def weight_factor(self, peer: PeerId) -> float:
        return self.ledger.weight_factor(peer)

    # -- rounds ------------------------------------------------------------------

    def record_round(self, completed: RoundCompleted, schedule: RoundSchedule,
                     aborts: Iterable[SignedGroupAbort], now: float) -> None:
        """Build and append this peer's record of a completed round (module docstring)."""
        led = self.ledger
        r = completed.record.round
        try:
            if r == led.height:
                led.append(led.build(completed, schedule, aborts))
            elif r == led.height - 1:  # a corrected round: replace the last record
                prev = led.records[r - 1].hash if r else genesis_hash(led.federation.id)
                led.adopt(r, [build_record(completed, schedule, prev=prev, aborts=aborts,
                                           evidence=led.records[r].body.evidence)])
            elif r > led.height:
                self.behind(now)
        except (RemoteProtocolError, OutOfSync) as e:
            self.errors += 1
            log.warning("%s: own record of round %d refused by the ledger: %s",
                        self.me.short(), r, e)

    def behind(self, now: float) -> None:
        """Fetch records we lack from neighbours (no-op while a sync runs)."""
        if self._sync is not None:
            return
        peers = [p for p in self._neighbours() if p != self.me]
        if not peers:
            return
        self._sync = LedgerSync(self.ledger, peers, rng=self._rng)
        self._sync.start(now)
        self._drain()

    # -- messages ----------------------------------------------------------------

    def handles(self, msg: object) -> bool:
        return isinstance(msg, LedgerRequest | LedgerResponse)

    def receive(self, sender: PeerId, msg: object, now: float) -> None:
        """A ledger message from ``sender``; raises :class:`RemoteProtocolError` for a
        bad one (the driver penalizes the sender)."""
        if isinstance(msg, LedgerRequest):
            if msg.federation != self.ledger.federation.id:
                raise RemoteProtocolError("ledger request for another federation", peer=sender)
            self._outbox.append(Outgoing(sender, answer_ledger_request(self.ledger, msg)))
        elif isinstance(msg, LedgerResponse) and self._sync is not None:
            self._sync.receive(sender, msg, now)
            self._drain()

    def handle_timer(self, now: float) -> None:
        if self._sync is not None:
            self._sync.handle_timer(now)
            self._drain()

    def next_deadline(self) -> float | None:
        return None if self._sync is None else self._sync.next_deadline()

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def _drain(self) -> None:
        sync = self._sync
        if sync is None:
            return
        self._outbox.extend(sync.messages_to_send())
        ev = sync.next_event()
        if isinstance(ev, LedgerSynced):
            log.info("%s: ledger synced to height %d", self.me.short(), self.ledger.height)
            self._sync = None

