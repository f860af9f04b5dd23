"""The ledger: a verified chain of round records, its standing, fork choice, storage.

Theory of operation
-------------------
A :class:`Ledger` holds one chain (record i is the record of round i), the
:class:`~p2pfl.ledger.Standing` after it, and optionally a
:class:`~p2pfl.ledger._store.LedgerStore` it writes through.  It is synchronous and
does no networking: the federation driver gossips records and calls :meth:`append`;
a late joiner calls :meth:`adopt` with pages from :class:`~p2pfl.ledger.LedgerSync`.

``append(record)``:

* the next round, linking to the head: verified (:func:`verify_record`), stored
  (fsync), ``APPENDED``;
* a body already in the chain: the endorsements the record adds are verified and
  merged (``MERGED``), raising the record's fork-choice weight;
* another body for a round already in the chain: a fork, resolved by
  :meth:`adopt`;
* a round beyond the head: :class:`~p2pfl.federation.OutOfSync` (sync first);
* anything invalid: :class:`~p2pfl.errors.RemoteProtocolError` naming the rule.

**Fork choice** (:meth:`adopt`): two chains that diverge at height d are compared by
the number of valid distinct signatures in their records from d on; the heavier wins;
on a tie the longer (its extra records attest the model of the records before them),
then the one whose record d has the lower hash.  An extension of our chain (nothing of
ours after d) is simply adopted.  A candidate is verified completely before anything
is committed, and one whose first record does not link to our record d-1 raises
:class:`OutOfSync` (we lack its chain: sync from an earlier height).  A peer never
gives up the record it built itself (:meth:`build`) for one with the same group
results but another model hash: the global step is deterministic, so that record is
forged (a relay can rewrite those unsigned fields; only round r+1 attests them).  Conflicting records of one round are
also searched for equivocation (:func:`find_equivocations`); proofs found go to
:attr:`Ledger.pending_evidence`, for the driver to put into its next record.  Forks
deeper than ``evidence_window`` records are ignored (``STALE``).

The standing before any height is rebuilt from a checkpoint kept every
``_CHECKPOINT_EVERY`` records by replaying bodies (no signature checks).

Building, verifying and applying a record, and the cohort weights, go through the
process-wide :data:`p2pfl.ledger._memo.memo`: pure functions of their full inputs,
computed once however many ledgers of the process (a simulation's peers) ask.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import (
    Federation,
    OutOfSync,
    RoundCompleted,
    RoundSchedule,
    SignedGroupAbort,
    initial_beacon,
    next_beacon,
)
from p2pfl.wire import PeerId, encode

from ._build import build_record, proof_id, state_digest
from ._memo import Verified, memo
from ._messages import (
    MAX_PAGE,
    PAGE_MAX_BYTES,
    EquivocationProof,
    GroupWitness,
    LedgerRequest,
    LedgerResponse,
    Record,
    genesis_hash,
    record_hash,
)
from ._params import LedgerParams
from ._reputation import Standing
from ._store import LedgerError, LedgerStore
from ._verify import check_proof, find_equivocations, verify_record, verify_witnesses

__all__ = ["AppendResult", "AppendStatus", "Ledger", "answer_ledger_request"]

_CHECKPOINT_EVERY: Final = 32
_MAX_PENDING: Final = 256


class AppendStatus(enum.Enum):
    APPENDED = "appended"  # the chain grew
    MERGED = "merged"  # a record we hold gained endorsements (or nothing new)
    SWITCHED = "switched"  # a heavier fork replaced the tail of our chain
    STALE = "stale"  # a valid but lighter fork, ignored


@dataclass(frozen=True)
class AppendResult:
    """What :meth:`Ledger.append` / :meth:`Ledger.adopt` did; ``evidence``: new
    equivocation proofs found while comparing forks."""

    status: AppendStatus
    height: int
    head: bytes
    evidence: tuple[EquivocationProof, ...] = ()


def _merge_witnesses(ours: Sequence[GroupWitness], theirs: Sequence[GroupWitness]) -> tuple[GroupWitness, ...]:
    """Union of endorsements per slot; of two abort signature lists, the longer."""
    a = {w.index: w for w in ours}
    for w in theirs:
        o = a.get(w.index)
        if o is None:
            a[w.index] = w
            continue
        ends = {e.public_key: e for e in (*o.endorsements, *w.endorsements)}
        aborts = o.abort_endorsements if len(o.abort_endorsements) >= len(
            w.abort_endorsements) else w.abort_endorsements
        a[w.index] = GroupWitness(o.index, tuple(ends[k] for k in sorted(ends)), aborts)
    return tuple(a[i] for i in sorted(a))


class Ledger:
    """A verified chain with its standing (see the module docstring)."""

    def __init__(self, federation: Federation, params: LedgerParams | None = None) -> None:
        """An empty, in-memory ledger (:meth:`open` gives one backed by a file)."""
        self.federation = federation
        self.params = params or federation.ledger
        self._store: LedgerStore | None = None
        self._records: list[Record] = []
        self._hashes: list[bytes] = []
        self._weights: list[int] = []
        self._schedules: list[RoundSchedule] = []
        self._standing = memo.initial_standing(federation, self.params)
        self._weights_of: tuple[Standing | None, dict[PeerId, float]] = (None, {})
        self._checkpoints: dict[int, Standing] = {0: self._standing}
        self._pending: dict[bytes, tuple[EquivocationProof, int]] = {}  # id -> (proof, noted at height)
        self._own: dict[int, bytes] = {}  # round -> hash of the record this peer built

    @classmethod
    def open(cls, path: str | os.PathLike[str], federation: Federation,
             params: LedgerParams | None = None) -> Ledger:
        """Open the ledger file at ``path`` (created when missing), cut a torn tail,
        and verify every record from genesis.

        Raises :class:`LedgerError` for a corrupt file, one of another federation, or
        a record that does not verify.
        """
        store, records = LedgerStore.open(path, federation.id)
        led = cls(federation, params)
        try:
            for rec in records:
                led._load(rec)
        except RemoteProtocolError as e:
            store.close()
            raise LedgerError(f"ledger {path}: {e}") from e
        led._store = store
        return led

    def _load(self, rec: Record) -> None:
        r = rec.body.round
        if r < len(self._records) and record_hash(rec.body) == self._hashes[r]:
            self._merge(r, rec, None)
        elif r == len(self._records):
            self._extend(rec, None)
        else:
            raise RemoteProtocolError(f"record of round {r} out of order in the file")

    # -- introspection ------------------------------------------------------

    @property
    def height(self) -> int:
        """Number of records (= the round the next record is for)."""
        return len(self._records)

    @property
    def head(self) -> bytes:
        """Hash of the last record (the genesis hash when empty): ``ledger_head`` for
        ``RoundCompleted.next_state`` and ``prev`` for the next record."""
        return self._hashes[-1] if self._hashes else genesis_hash(self.federation.id)

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(self._records)

    @property
    def standing(self) -> Standing:
        """Reputation and credits after the whole chain."""
        return self._standing

    @property
    def pending_evidence(self) -> tuple[EquivocationProof, ...]:
        """Equivocation proofs found and not yet charged by the chain."""
        return tuple(self._pending[k][0] for k in sorted(self._pending))

    def next_beacon(self) -> bytes:
        """The beacon of round :attr:`height` (what ``RoundCompleted.next_state(head)``
        computes from the last record)."""
        if not self._records:
            return initial_beacon(self.federation.id)
        last = self._records[-1].body
        return next_beacon(last.beacon, last.model_hash, self.head)

    def state_digest(self) -> bytes | None:
        """The :attr:`GlobalState.digest` of the state round :attr:`height` starts from
        (None for an empty chain: it depends on the initial model).  A late joiner
        accepts a fetched snapshot only when its round is :attr:`height` and its digest
        is this one."""
        if not self._records:
            return None
        last = self._records[-1].body
        return state_digest(self.federation.id, self.height, self.next_beacon(),
                            last.model_hash, last.strategy_hash)

    def signatures(self, height: int) -> int:
        """Valid distinct signatures of record ``height`` (its fork-choice weight)."""
        return self._weights[height]

    def weight(self, peer: PeerId) -> float:
        """Cohort selection weight: ``schedule_round(..., weight=ledger.weight)``."""
        st, table = self._weights_of
        if st is not self._standing:  # the chain moved: the (shared) table of the new one
            st, table = self._weights_of = (self._standing, memo.weights(self._standing))
        w = table.get(peer)
        if w is None:
            w = table[peer] = st.weight(peer)
        return w

    def weight_factor(self, peer: PeerId) -> float:
        """Aggregation weight factor: ``RoundMachine(..., weight_factor=...)``."""
        return self._standing.weight_factor(peer)

    def records_from(self, start: int, limit: int = MAX_PAGE, max_bytes: int = 8 << 20) -> tuple[Record, ...]:
        """Records ``start, start + 1, ...``: at most ``limit``, and no more than
        ``max_bytes`` encoded (but at least one)."""
        out: list[Record] = []
        size = 0
        for rec in self._records[start:start + max(0, limit)]:
            size += len(encode(rec))
            if out and size > max_bytes:
                break
            out.append(rec)
        return tuple(out)

    # -- building -----------------------------------------------------------

    def build(self, completed: RoundCompleted, schedule: RoundSchedule,
              aborts: Iterable[SignedGroupAbort] = ()) -> Record:
        """The record of a completed round on top of this chain (see
        :func:`build_record`).

        It charges the pending evidence noted before round r started (while the ledger
        was below height r) and still within the window: proofs are gossiped at once, so
        by then every honest peer holds them too and builds the same body.
        """
        r = completed.record.round
        window = self.params.evidence_window
        evidence = [p for k, (p, noted) in sorted(self._pending.items())
                    if noted < r and r - window < p.items[0].header.round <= r
                    and not self._standing.charged(p.items[0].header.round,
                                                   p.items[0].header.group,
                                                   p.items[0].endorsement.signer)]
        aborts = tuple(aborts)
        prev = self.head
        key = memo.build_key(completed, schedule, prev, aborts, evidence, self.params)
        rec = memo.built(key, lambda: build_record(completed, schedule, prev=prev, aborts=aborts,
                                                   evidence=evidence))
        self._own[r] = memo.record_hash(rec)
        for k in [k for k in self._own if k <= r - window]:
            del self._own[k]
        return rec

    # -- appending ----------------------------------------------------------

    def _standing_at(self, height: int) -> Standing:
        base = max(k for k in self._checkpoints if k <= height)
        st = self._checkpoints[base]
        for i in range(base, height):
            st = st.apply(self._records[i].body, self._schedules[i])
        return st

    def _extend(self, rec: Record, sender: PeerId | None) -> None:
        prev = self._records[-1].body if self._records else None
        standing = self._standing

        def verify() -> Verified:
            v = verify_record(rec, self.federation, standing, prev, sender)
            after = memo.standing_after(self.federation.id, self.params, v.hash,
                                        lambda: standing.apply(rec.body, v.schedule))
            return Verified(rec, v.hash, v.signatures, v.schedule, after)

        v = memo.verified(self.federation.id, self.params, self.head, rec, verify)
        self._records.append(rec)
        self._hashes.append(v.hash)
        self._weights.append(v.signatures)
        self._schedules.append(v.schedule)
        self._standing = v.standing
        if self.height % _CHECKPOINT_EVERY == 0:
            self._checkpoints[self.height] = self._standing
        self._drop_charged()

    def _merge(self, height: int, rec: Record, sender: PeerId | None) -> bool:
        ours = self._records[height]
        merged = _merge_witnesses(ours.witnesses, rec.witnesses)
        if merged == ours.witnesses:
            return False
        st = self._standing_at(height)
        n = verify_witnesses(ours.body, merged, self.federation, self._schedules[height], st, sender)
        if n <= self._weights[height]:
            return False
        self._records[height] = Record(ours.body, merged)
        self._weights[height] = n
        return True

    def _drop_charged(self) -> None:
        st = self._standing
        for k in [k for k, (p, _) in self._pending.items()
                  if st.charged(p.items[0].header.round, p.items[0].header.group,
                                p.items[0].endorsement.signer)
                  or p.items[0].header.round <= st.height - self.params.evidence_window]:
            del self._pending[k]

    def _note(self, proofs: Iterable[EquivocationProof]) -> tuple[EquivocationProof, ...]:
        new = []
        for p in proofs:
            k = proof_id(p)
            h = p.items[0]
            if k in self._pending or self._standing.charged(h.header.round, h.header.group,
                                                            h.endorsement.signer):
                continue
            if len(self._pending) < _MAX_PENDING:
                self._pending[k] = (p, self.height)
                new.append(p)
        return tuple(new)

    def add_evidence(self, proofs: Iterable[EquivocationProof]) -> tuple[EquivocationProof, ...]:
        """Queue proofs heard elsewhere (verified here); returns the new ones.

        Raises :class:`RemoteProtocolError` for an invalid proof.
        """
        ok = []
        for p in proofs:
            check_proof(p, self.federation)
            ok.append(p)
        return self._note(ok)

    def append(self, record: Record, sender: PeerId | None = None) -> AppendResult:
        """Add a record heard from ``sender`` (or built here); see the module docstring.

        Raises :class:`OutOfSync` for a round beyond the head and
        :class:`RemoteProtocolError` for an invalid record.
        """
        r = record.body.round
        if r > self.height:
            raise OutOfSync(f"ledger record of round {r}, ledger at height {self.height}",
                            peer=sender)
        return self.adopt(r, [record], sender)

    def adopt(self, start: int, records: Sequence[Record], sender: PeerId | None = None) -> AppendResult:
        """Fork choice between our chain and ``records`` (rounds ``start``, ``start + 1``,
        ... of another chain that agrees with ours before ``start``).

        Raises :class:`RemoteProtocolError` when ``records`` do not verify (``peer``
        is ``sender``) and :class:`OutOfSync` when ``start`` is beyond our head.
        """
        if not 0 <= start <= self.height:
            raise OutOfSync(f"records from height {start}, ledger at height {self.height}",
                            peer=sender)
        for i, rec in enumerate(records):
            if rec.body.round != start + i:
                raise RemoteProtocolError("ledger records must be consecutive rounds", peer=sender)
        d = start
        merged: list[int] = []
        for rec in records:
            if d >= self.height or record_hash(rec.body) != self._hashes[d]:
                break
            if self._merge(d, rec, sender):
                merged.append(d)
            d += 1
        if self._store is not None:
            for i in merged:
                self._store.append(self._records[i])
        rest = list(records[d - start:])
        if not rest:
            return AppendResult(AppendStatus.MERGED, self.height, self.head)
        link = self._hashes[d - 1] if d else genesis_hash(self.federation.id)
        if rest[0].body.prev != link:
            if d == 0:
                raise RemoteProtocolError("record of round 0 does not start from the genesis hash",
                                          peer=sender)
            raise OutOfSync(f"record of round {d} links to a chain this ledger does not hold",
                            peer=sender)
        evidence: tuple[EquivocationProof, ...] = ()
        if d < self.height:
            self._guard_own(d, rest[0], sender)
            ours = self._records[d:]
            evidence = self._note(find_equivocations([*ours[:len(rest)], *rest[:len(ours)]],
                                                     self.federation))
            if self.height - d > self.params.evidence_window:
                return AppendResult(AppendStatus.STALE, self.height, self.head, evidence)
        cand = Ledger(self.federation, self.params)
        cand._adopt_prefix(self, d)
        for rec in rest:  # everything is verified before anything is committed
            cand._extend(rec, sender)
        status = AppendStatus.APPENDED
        if d < self.height:
            mine = (sum(self._weights[d:]), self.height - d)
            theirs = (sum(cand._weights[d:]), len(rest))
            if theirs < mine or (theirs == mine and cand._hashes[d] >= self._hashes[d]):
                return AppendResult(AppendStatus.STALE, self.height, self.head, evidence)
            status = AppendStatus.SWITCHED
        self._records, self._hashes = cand._records, cand._hashes
        self._weights, self._schedules = cand._weights, cand._schedules
        self._standing, self._checkpoints = cand._standing, cand._checkpoints
        self._drop_charged()
        if self._store is not None:
            if status is AppendStatus.APPENDED:
                for rec in self._records[d:]:
                    self._store.append(rec)
            else:
                self._store.rewrite(self.federation.id, self._records)
        return AppendResult(status, self.height, self.head, evidence)

    def _guard_own(self, d: int, cand: Record, sender: PeerId | None) -> None:
        """A peer that combined round d itself never adopts another model for the same
        group results (the global step is deterministic: that record is forged)."""
        ours = self._records[d].body
        if self._own.get(d) == self._hashes[d] and cand.body.groups == ours.groups and (
            (cand.body.model_hash, cand.body.strategy_hash) != (ours.model_hash, ours.strategy_hash)
        ):
            raise RemoteProtocolError(f"record of round {d} claims another global model for "
                                      "the group results this peer combined", peer=sender)

    def _adopt_prefix(self, other: Ledger, d: int) -> None:
        self._records = other._records[:d]
        self._hashes = other._hashes[:d]
        self._weights = other._weights[:d]
        self._schedules = other._schedules[:d]
        self._checkpoints = {k: v for k, v in other._checkpoints.items() if k <= d}
        self._standing = other._standing if d == other.height else other._standing_at(d)
        if d % _CHECKPOINT_EVERY == 0:
            self._checkpoints[d] = self._standing
        self._own = dict(other._own)

    def compact(self) -> None:
        """Rewrite the file with one frame per record (merged witnesses)."""
        if self._store is not None:
            self._store.rewrite(self.federation.id, self._records)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __repr__(self) -> str:
        return f"Ledger(height={self.height}, head={self.head.hex()[:16]})"


def answer_ledger_request(ledger: Ledger, request: LedgerRequest,
                          max_bytes: int = PAGE_MAX_BYTES) -> LedgerResponse:
    """The reply to a :class:`LedgerRequest`: records from its start, at most its
    ``limit``, taken in order while the encoded response stays within ``max_bytes``
    (default :data:`PAGE_MAX_BYTES`, what one direct message may carry).  When not
    even the first record fits, the page is empty (the requester sees ``height >
    start`` and no records, and asks someone else).

    Raises :class:`RemoteProtocolError` for a request of another federation.
    """
    if request.federation != ledger.federation.id:
        raise RemoteProtocolError("ledger request for another federation")
    fid = ledger.federation.id
    base = len(encode(LedgerResponse(fid, request.nonce, request.start, ledger.height))) - 1
    recs: list[Record] = []
    size = base  # the response without its records array's head (one byte when empty)
    for rec in ledger._records[request.start:request.start + request.limit]:
        size += len(encode(rec))
        if size + _array_head(len(recs) + 1) > max_bytes:
            break
        recs.append(rec)
    return LedgerResponse(fid, request.nonce, request.start, ledger.height, tuple(recs))


def _array_head(n: int) -> int:
    """Bytes of the CBOR head of an array of ``n`` items."""
    return 1 if n < 24 else 2 if n < 1 << 8 else 3 if n < 1 << 16 else 5
