"""Verification of round records, chains and equivocation proofs.

Theory of operation
-------------------
A record is verified against the chain before it (its last body and the
:class:`~p2pfl.ledger.Standing` after it).  :func:`verify_record` checks, and raises
:class:`~p2pfl.errors.RemoteProtocolError` naming the rule otherwise:

1. **Link.**  The federation id; ``round == height``; ``prev`` is the hash of the
   previous body (the genesis hash for round 0); the beacon is
   ``next_beacon(prev.beacon, prev.model_hash, prev hash)`` (``initial_beacon`` for
   round 0); the base state is the digest of the state record r-1 produced
   (``state_digest``); a round that accepted nothing keeps model and strategy.
2. **Schedule.**  The cohort is sorted, admitted by the membership policy, no larger
   than ``cohort.size``, and (``enforce_floor``) of positive weight under the chain's
   standing; the groups recomputed from the cohort and the beacon
   (:func:`~p2pfl.federation.schedule_round`) keep every cohort member and have the
   recorded schedule digest; there is one slot per group, in index order.
3. **Accepted groups** pass the federation's own checks
   (:func:`~p2pfl.federation.results.check_body`: header, sorted disjoint member sets,
   at least the threshold included, weight bound, and exclusions that follow from the
   scores the header records -- the exclusion policy re-run) and
   (:func:`~p2pfl.federation.results.verify_endorsements`) are endorsed by distinct
   group members, at least one an aggregator, at least the group's quorum, every
   signature valid over the header's digest (``digest_of(header)``: what the
   federation signs, :mod:`p2pfl.federation.messages`).  The sum itself is not in
   the record; its hash is, and the signatures bind it.  With ``enforce_weights``, the total
   weight is at most the sum of the included members' weight factors: peers cannot
   give themselves more influence than the ledger grants.
4. **Aborted groups** carry, per aggregator, a reason and its signature
   (:func:`~p2pfl.federation.verify_abort`).  Missing groups carry nothing.
5. **Evidence.**  Every equivocation proof is valid (:func:`check_proof`), about one of
   the last ``evidence_window`` rounds, not charged before, and listed once, in
   :func:`proof_id` order.

What cannot be checked from the chain: that the cohort was drawn from the right
candidate set (candidates are not recorded), the new model hash before round r+1's
results attest it, and that the recorded scores (and norm bounds) are the members'
true ones -- they are attested by the group's quorum; only their consequences are
re-derived.

**Equivocation.**  An honest peer endorses at most one body per proposing aggregator
of a group, so at most ``aggregators`` different bodies per (round, group).  Proof of
an offence is either two different endorsed headers that name the same proposing
aggregator (``GroupHeader.aggregator``, once the result body names it), or more than
``aggregators`` different endorsed headers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import (
    Federation,
    RoundSchedule,
    RoundView,
    SignedGroupAbort,
    initial_beacon,
    next_beacon,
    verify_abort,
)
from p2pfl.federation.messages import RESULT_DOMAIN, AbortBody, ResultBody, digest_of
from p2pfl.federation.results import check_body, verify_endorsements
from p2pfl.wire import PeerId, encode

from ._build import proof_id, state_digest
from ._messages import (
    EquivocationProof,
    GroupHeader,
    GroupSlot,
    GroupStatus,
    GroupWitness,
    Record,
    RecordBody,
    SignedHeader,
    genesis_hash,
    record_hash,
)
from ._params import LedgerParams
from ._reputation import Standing, schedule_of

__all__ = [
    "VerifiedRecord",
    "check_proof",
    "collect_equivocations",
    "find_equivocations",
    "verify_chain",
    "verify_record",
    "verify_witnesses",
]


@dataclass(frozen=True, eq=False)
class VerifiedRecord:
    """A record that passed :func:`verify_record`: its hash, schedule and the number of
    valid distinct signatures it carries (its fork-choice weight)."""

    record: Record
    hash: bytes
    schedule: RoundSchedule
    signatures: int


def _err(body: RecordBody, what: str, sender: PeerId | None) -> RemoteProtocolError:
    return RemoteProtocolError(f"ledger record of round {body.round}: {what}", peer=sender)


def _check_link(fed: Federation, body: RecordBody, prev: RecordBody | None,
                sender: PeerId | None) -> None:
    fid = fed.id
    if body.federation != fid:
        raise _err(body, "another federation", sender)
    if prev is None:
        if body.round != 0 or body.prev != genesis_hash(fid):
            raise _err(body, "does not start the chain (round 0 after the genesis hash)", sender)
        if body.beacon != initial_beacon(fid):
            raise _err(body, "beacon is not the federation's initial beacon", sender)
        return
    if body.round != prev.round + 1:
        raise _err(body, f"does not follow round {prev.round}", sender)
    h = record_hash(prev)
    if body.prev != h:
        raise _err(body, "prev is not the hash of the previous record", sender)
    if body.beacon != next_beacon(prev.beacon, prev.model_hash, h):
        raise _err(body, "beacon does not follow from the previous record", sender)
    if body.base_state != state_digest(fid, body.round, body.beacon, prev.model_hash,
                                       prev.strategy_hash):
        raise _err(body, "base state is not the state the previous round produced", sender)


def _check_schedule(fed: Federation, body: RecordBody, standing: Standing,
                    sender: PeerId | None) -> RoundSchedule:
    cohort = body.cohort
    if not all(a < b for a, b in itertools.pairwise(cohort)):
        raise _err(body, "cohort must be sorted and distinct", sender)
    if len(cohort) > fed.cohort.size:
        raise _err(body, f"cohort of {len(cohort)} exceeds cohort.size {fed.cohort.size}", sender)
    for p in cohort:
        if not fed.membership.admits(p):
            raise _err(body, f"{p.short()} is not admitted by the membership policy", sender)
        if standing.params.enforce_floor and standing.weight(p) <= 0.0:
            raise _err(body, f"{p.short()} is below the selection floor", sender)
    sched = schedule_of(fed, body)
    if set(sched.cohort) != set(cohort):
        raise _err(body, "cohort does not form the recorded groups", sender)
    if sched.digest != body.schedule:
        raise _err(body, "schedule digest does not match the cohort and beacon", sender)
    if len(body.groups) != len(sched.groups) or any(
        s.index != i for i, s in enumerate(body.groups)
    ):
        raise _err(body, "needs one slot per group, in index order", sender)
    return sched


def _view(fed: Federation, sched: RoundSchedule, body: RecordBody, dim: int) -> RoundView:
    return RoundView(fed, sched, body.base_state, dim)


def _fields(obj: object) -> dict[str, object]:
    return {n: getattr(obj, n) for n in obj.__dataclass_fields__}  # type: ignore[attr-defined]


def _header_as_body(header: GroupHeader) -> ResultBody:
    """A zero-length-sum body with the header's fields, for the federation's checks
    (:func:`check_body`, against a view of dimension 0: the sum is not recorded)."""
    f = _fields(header)
    keep = {n: f[n] for n in ResultBody.__dataclass_fields__ if n != "update_sum"}
    return ResultBody(**keep, update_sum=np.zeros(0, dtype=np.float64))  # type: ignore[arg-type]


def _check_accepted(fed: Federation, body: RecordBody, slot: GroupSlot, wit: GroupWitness | None,
                    sched: RoundSchedule, standing: Standing, sender: PeerId | None) -> int:
    h = slot.header
    if h is None or slot.aborts or wit is None:
        raise _err(body, f"accepted group {slot.index} needs a header and endorsements", sender)
    if h.group != slot.index:
        raise _err(body, f"slot {slot.index} holds the header of group {h.group}", sender)
    check_body(_view(fed, sched, body, 0), _header_as_body(h), sender)
    group = sched.groups[slot.index]
    if h.aggregator is not None and group.rank(h.aggregator) is None:
        raise _err(body, f"group {slot.index}: proposer is not an aggregator", sender)
    signers = verify_endorsements(wit.endorsements, digest_of(h), group, RESULT_DOMAIN, sender)
    if not any(group.rank(p) is not None for p in signers):
        raise _err(body, f"group {slot.index}: not signed by any of its aggregators", sender)
    if h.aggregator is not None and h.aggregator not in signers:
        raise _err(body, f"group {slot.index}: not signed by its proposer", sender)
    quorum = fed.threshold_for(len(group))
    if len(signers) < quorum:
        raise _err(body, f"group {slot.index}: {len(signers)} signatures, quorum {quorum}", sender)
    p = standing.params
    if p.enforce_weights:
        bound = math.fsum(standing.weight_factor(u) for u in h.included)
        if h.total_weight > bound + p.weight_tolerance * len(h.included):
            raise _err(body, f"group {slot.index}: total weight {h.total_weight} exceeds the "
                             f"members' ledger weight {bound}", sender)
    return len(signers)


def _check_aborted(fed: Federation, body: RecordBody, slot: GroupSlot, wit: GroupWitness | None,
                   sched: RoundSchedule, sender: PeerId | None) -> int:
    if slot.header is not None or not slot.aborts or wit is None or wit.endorsements:
        raise _err(body, f"aborted group {slot.index} needs only aborts", sender)
    who = [a for a, _ in slot.aborts]
    if not all(a < b for a, b in itertools.pairwise(who)):
        raise _err(body, f"group {slot.index}: aborts must be sorted by aggregator", sender)
    if len(wit.abort_endorsements) != len(slot.aborts):
        raise _err(body, f"group {slot.index}: one signature per abort", sender)
    view = _view(fed, sched, body, 0)
    for (agg, reason), e in zip(slot.aborts, wit.abort_endorsements, strict=True):
        ab = AbortBody(body.federation, body.round, slot.index, body.schedule, body.base_state,
                       reason)
        _, signer = verify_abort(view, SignedGroupAbort(ab, e), sender)
        if signer != agg:
            raise _err(body, f"group {slot.index}: abort signed by another aggregator", sender)
    return len(slot.aborts)


def verify_witnesses(body: RecordBody, witnesses: Sequence[GroupWitness], federation: Federation,
                     schedule: RoundSchedule, standing: Standing,
                     sender: PeerId | None = None) -> int:
    """Check every slot of ``body`` and its witness; returns the number of valid
    signatures.  ``standing`` is the chain's standing before the record.

    Raises :class:`RemoteProtocolError`.
    """
    idx = [w.index for w in witnesses]
    if not all(a < b for a, b in itertools.pairwise(idx)) or any(
        i >= len(body.groups) for i in idx
    ):
        raise _err(body, "witnesses must be sorted by slot, one per slot", sender)
    wits = {w.index: w for w in witnesses}
    total = 0
    for slot in body.groups:
        wit = wits.get(slot.index)
        if slot.status is GroupStatus.ACCEPTED:
            total += _check_accepted(federation, body, slot, wit, schedule, standing, sender)
        elif slot.status is GroupStatus.ABORTED:
            total += _check_aborted(federation, body, slot, wit, schedule, sender)
        elif slot.header is not None or slot.aborts or wit is not None:
            raise _err(body, f"missing group {slot.index} carries data", sender)
    return total


def _check_evidence(fed: Federation, body: RecordBody, standing: Standing,
                    sender: PeerId | None) -> None:
    ids = [proof_id(p) for p in body.evidence]
    if not all(a < b for a, b in itertools.pairwise(ids)):
        raise _err(body, "evidence must be distinct and in proof-id order", sender)
    window = standing.params.evidence_window
    keys: set[tuple[int, int, PeerId]] = set()
    for proof in body.evidence:
        offender = check_proof(proof, fed, sender)
        h = proof.items[0].header
        if not body.round - window < h.round <= body.round:
            raise _err(body, f"evidence about round {h.round} is outside the window", sender)
        key = (h.round, h.group, offender)
        if key in keys or standing.charged(*key):
            raise _err(body, f"{offender.short()} already charged for round {h.round} "
                             f"group {h.group}", sender)
        keys.add(key)


def verify_record(record: Record, federation: Federation, standing: Standing,
                  prev: RecordBody | None, sender: PeerId | None = None) -> VerifiedRecord:
    """Fully verify ``record`` as the next record after ``prev`` (None: the first),
    where ``standing`` is the chain's standing after ``prev`` (see the module
    docstring for the rules).

    Raises :class:`RemoteProtocolError` (``peer=sender``) naming the broken rule.
    """
    body = record.body
    if body.round != standing.height:
        raise _err(body, f"expected round {standing.height}", sender)
    _check_link(federation, body, prev, sender)
    sched = _check_schedule(federation, body, standing, sender)
    if body.updated != any(s.status is GroupStatus.ACCEPTED for s in body.groups):
        raise _err(body, "updated must say whether a group result was accepted", sender)
    if not body.updated and prev is not None and (
        body.model_hash != prev.model_hash or body.strategy_hash != prev.strategy_hash
    ):
        raise _err(body, "a round without results must keep the model", sender)
    sigs = verify_witnesses(body, record.witnesses, federation, sched, standing, sender)
    _check_evidence(federation, body, standing, sender)
    return VerifiedRecord(record, record_hash(body), sched, sigs)


def verify_chain(records: Iterable[Record], federation: Federation,
                 params: LedgerParams | None = None) -> Standing:
    """Verify a chain from genesis; returns its standing.

    Raises :class:`RemoteProtocolError` at the first invalid record.
    """
    st = Standing.initial(federation, params)
    prev: RecordBody | None = None
    for rec in records:
        v = verify_record(rec, federation, st, prev)
        st = st.apply(rec.body, v.schedule)
        prev = rec.body
    return st


# ----------------------------------------------------------------------------
# equivocation


def check_proof(proof: EquivocationProof, federation: Federation,
                sender: PeerId | None = None) -> PeerId:
    """Verify an equivocation proof; returns the offender.

    Raises :class:`RemoteProtocolError` unless every item is a valid endorsement by
    one key of a different header of one (federation, round, group), and either two
    headers name the same proposing aggregator or there are more than
    ``cohort.aggregators`` of them.
    """
    items = proof.items
    if len(items) < 2:
        raise RemoteProtocolError("equivocation proof needs two endorsed headers", peer=sender)
    h0 = items[0].header
    key = items[0].endorsement.public_key
    seen: set[bytes] = set()
    proposers: set[PeerId] = set()
    same_proposer = False
    for it in items:
        h = it.header
        if (h.federation, h.round, h.group) != (federation.id, h0.round, h0.group):
            raise RemoteProtocolError("equivocation proof mixes groups or rounds", peer=sender)
        if it.endorsement.public_key != key:
            raise RemoteProtocolError("equivocation proof mixes signers", peer=sender)
        enc = encode(h)
        if enc in seen:
            raise RemoteProtocolError("equivocation proof repeats a header", peer=sender)
        seen.add(enc)
        if not it.endorsement.valid(RESULT_DOMAIN, digest_of(h)):
            raise RemoteProtocolError("equivocation proof with a bad signature", peer=sender)
        if h.aggregator is not None:
            same_proposer |= h.aggregator in proposers
            proposers.add(h.aggregator)
    if not same_proposer and len(items) <= federation.cohort.aggregators:
        raise RemoteProtocolError("conflicting headers an honest peer may sign", peer=sender)
    return items[0].endorsement.signer


def collect_equivocations(items: Iterable[SignedHeader],
                          federation: Federation) -> list[EquivocationProof]:
    """Proofs from a pool of endorsed headers (e.g. every result and record heard):
    one per (round, group, signer) whose endorsements break the rule of
    :func:`check_proof`.  Items with invalid signatures are ignored."""
    pool: dict[tuple[int, int, bytes], dict[bytes, SignedHeader]] = {}
    for it in items:
        h = it.header
        if h.federation != federation.id:
            continue
        by = pool.setdefault((h.round, h.group, it.endorsement.public_key), {})
        by.setdefault(encode(h), it)
    proofs: list[EquivocationProof] = []
    for key in sorted(pool):
        cands = [pool[key][k] for k in sorted(pool[key])]
        if len(cands) < 2:
            continue
        cands = [c for c in cands if _valid_item(c)]
        pick = _pick(cands, federation.cohort.aggregators)
        if pick:
            proofs.append(EquivocationProof(tuple(pick)))
    return proofs


def _valid_item(it: SignedHeader) -> bool:
    return it.endorsement.valid(RESULT_DOMAIN, digest_of(it.header))


def _pick(cands: list[SignedHeader], aggregators: int) -> list[SignedHeader] | None:
    by_proposer: dict[PeerId, SignedHeader] = {}
    for c in cands:
        a = c.header.aggregator
        if a is not None:
            if a in by_proposer:
                return [by_proposer[a], c]
            by_proposer[a] = c
    return cands[: aggregators + 1] if len(cands) > aggregators else None


def signed_headers(record: Record) -> list[SignedHeader]:
    """Every endorsement of every accepted header in ``record``, as a
    :class:`SignedHeader` (the raw material of :func:`collect_equivocations`)."""
    wits = {w.index: w for w in record.witnesses}
    out: list[SignedHeader] = []
    for slot in record.body.groups:
        w = wits.get(slot.index)
        if slot.header is None or w is None:
            continue
        out += [SignedHeader(slot.header, e) for e in w.endorsements]
    return out


def find_equivocations(records: Iterable[Record], federation: Federation) -> list[EquivocationProof]:
    """Equivocation proofs from several records (typically two for the same round)."""
    return collect_equivocations(
        (it for r in records for it in signed_headers(r)), federation)
