"""Building a round record from the outputs of a federation round.

Theory of operation
-------------------
At :class:`~p2pfl.federation.RoundCompleted` a peer holds everything record r needs:
the round record of the federation (round, beacon, schedule and base-state digests,
per-group outcomes, new model hash), the accepted :class:`SignedGroupResult` s, the
signed aborts it saw (``RoundMachine.outcomes()``), the round's schedule and the new
strategy state.  :func:`build_record` maps them to a :class:`Record`:

* the cohort is the schedule's (sorted); groups are not stored, they are recomputed
  from the cohort and the beacon when the record is verified;
* an accepted group becomes its :class:`GroupHeader` (the sum replaced by its hash)
  plus a witness with the endorsements, which sign exactly that header's digest
  (:mod:`p2pfl.federation.messages`): no model-sized vector enters a record;
* an aborted group keeps one ``(aggregator, reason)`` per aggregator that signed an
  abort, with the signatures in the witness; a group without result or abort is
  ``MISSING``.

The body is a deterministic function of what the peer accepted, so peers that accepted
the same results build the same body and hold the same head.

``state_digest`` and ``strategy_hash`` restate :attr:`GlobalState.digest` from its parts
(a test pins the two together): record r+1 names the base state of round r+1, which
commits to record r's ``model_hash`` and ``strategy_hash``, so round r+1's signers attest
round r's model.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from p2pfl.federation import RoundCompleted, RoundSchedule, SignedGroupAbort, SignedGroupResult
from p2pfl.federation.state import StrategySnapshot
from p2pfl.learning.strategy import StrategyState
from p2pfl.wire import PeerId, encode

from ._messages import (
    EquivocationProof,
    GroupSlot,
    GroupStatus,
    GroupWitness,
    Record,
    RecordBody,
    header_of,
)

__all__ = ["build_record", "proof_id", "state_digest", "strategy_hash"]


def strategy_hash(state: StrategyState) -> bytes:
    """BLAKE2b-256 of the strategy state's wire form (as in :attr:`GlobalState.digest`)."""
    snap = StrategySnapshot(int(state.step), state.m, state.v)
    return hashlib.blake2b(encode(snap), digest_size=32).digest()


def state_digest(federation_id: bytes, round: int, beacon: bytes, model_hash: bytes,
                 strategy: bytes) -> bytes:
    """:attr:`GlobalState.digest` from its parts."""
    h = hashlib.blake2b(digest_size=32)
    for part in (b"p2pfl/state/1", federation_id, struct.pack("<Q", round), beacon, model_hash,
                 strategy):
        h.update(part)
    return h.digest()


def proof_id(proof: EquivocationProof) -> bytes:
    """A canonical id of a proof (order of its items does not matter)."""
    parts = sorted(hashlib.blake2b(encode(i), digest_size=32).digest() for i in proof.items)
    return hashlib.blake2b(b"p2pfl/ledger/proof/1" + b"".join(parts), digest_size=32).digest()


def _result_slot(index: int, msg: SignedGroupResult) -> tuple[GroupSlot, GroupWitness]:
    ends = tuple(sorted(msg.endorsements, key=lambda e: e.public_key))
    return (GroupSlot(index, GroupStatus.ACCEPTED, header_of(msg.body)),
            GroupWitness(index, ends))


def _abort_slot(index: int, aborts: list[SignedGroupAbort]) -> tuple[GroupSlot, GroupWitness]:
    first: dict[PeerId, SignedGroupAbort] = {}
    for a in aborts:
        first.setdefault(a.endorsement.signer, a)
    order = sorted(first)
    slot = GroupSlot(index, GroupStatus.ABORTED, None,
                     tuple((p, first[p].body.reason) for p in order))
    return slot, GroupWitness(index, abort_endorsements=tuple(first[p].endorsement for p in order))


def build_record(
    completed: RoundCompleted,
    schedule: RoundSchedule,
    *,
    prev: bytes,
    aborts: Iterable[SignedGroupAbort] = (),
    evidence: Iterable[EquivocationProof] = (),
) -> Record:
    """The record of a completed round (see the module docstring).

    ``prev`` is the ledger head before this round (:attr:`Ledger.head`); ``aborts``
    the signed aborts the round machine accepted (``rm.outcomes()[1]``); ``evidence``
    equivocation proofs to charge (duplicates are dropped, order is canonical).
    Nothing is verified here: :meth:`Ledger.append` does that.
    """
    rec = completed.record
    results = {m.body.group: m for m in completed.results}
    by_group: dict[int, list[SignedGroupAbort]] = {}
    for a in aborts:
        if a.body.round == rec.round and a.body.schedule == schedule.digest:
            by_group.setdefault(a.body.group, []).append(a)
    slots: list[GroupSlot] = []
    witnesses: list[GroupWitness] = []
    for g in schedule.groups:
        i = g.index
        if i in results:
            slot, wit = _result_slot(i, results[i])
        elif by_group.get(i):
            slot, wit = _abort_slot(i, by_group[i])
        else:
            slots.append(GroupSlot(i, GroupStatus.MISSING))
            continue
        slots.append(slot)
        witnesses.append(wit)
    proofs = {proof_id(p): p for p in evidence}
    body = RecordBody(
        federation=completed.base.federation_id, round=rec.round, prev=prev, beacon=rec.beacon,
        schedule=rec.schedule, base_state=rec.base_state, cohort=tuple(sorted(schedule.cohort)),
        groups=tuple(slots), model_hash=rec.model_hash,
        strategy_hash=strategy_hash(completed.strategy_state), updated=bool(results),
        evidence=tuple(proofs[k] for k in sorted(proofs)),
    )
    return Record(body, tuple(witnesses))
