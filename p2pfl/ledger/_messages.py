"""Wire and disk forms of the ledger (tags 0x0600–0x06FF) and their hashes.

=========  ======================  ==========================================================
tag        message                 purpose
=========  ======================  ==========================================================
(0x050C)   GroupHeader             = :class:`~p2pfl.federation.messages.ResultHeader`
0x0602     GroupSlot               one group's outcome in a record (accepted/aborted/missing)
0x0603     RecordBody              the hashed, chained content of one round record
0x0604     GroupWitness            signatures backing one slot
0x0605     Record                  body + witnesses: what is gossiped, stored and synced
0x0606     SignedHeader            one endorsement of one header (equivocation proofs)
0x0607     EquivocationProof       conflicting headers endorsed by one key
0x0608     LedgerFileHeader        first frame of a ledger file
0x0610     LedgerRequest           "send me records from height h"
0x0611     LedgerResponse          a page of records (at most ``PAGE_MAX_BYTES`` encoded)
=========  ======================  ==========================================================

Tag 0x0601 (the ledger's own header, with witness sums) is retired: do not reuse it.

Hashes
------
* ``record_hash(body) = H("p2pfl/ledger/record/1", encode(body))``: the chain link
  and the ledger *head* that feeds the next beacon.  It covers the body only, never
  the witnesses: peers that accepted the same group results but collected different
  endorsements (results with equal bodies merge their endorsements) hold the same
  head, hence the same beacon.
* ``genesis_hash(fid)`` is the ``prev`` of the record of round 0.
* A :class:`GroupHeader` is the federation's
  :class:`~p2pfl.federation.messages.ResultHeader`: a result body with the
  ``update_sum`` replaced by ``sum_hash`` (:func:`sum_hash`, BLAKE2b-256 of the
  float64 sum).  Result endorsements sign exactly its digest
  (``digest_of(header) == digest_of(body)``, :mod:`p2pfl.federation.messages`), so
  a record's witnesses are endorsements only and a record never carries a
  model-sized vector: its size depends on the groups and their members, not on the
  model.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

from p2pfl.federation.messages import (
    ANSWER_MAX,
    Endorsement,
    ResultHeader,
    result_header,
    sum_hash,
)
from p2pfl.federation.schedule import hash_parts
from p2pfl.wire import MaxLen, PeerId, Range, encode, message

__all__ = [
    "PAGE_MAX_BYTES",
    "EquivocationProof",
    "GroupHeader",
    "GroupSlot",
    "GroupStatus",
    "GroupWitness",
    "LedgerFileHeader",
    "LedgerRequest",
    "LedgerResponse",
    "Record",
    "RecordBody",
    "SignedHeader",
    "genesis_hash",
    "header_of",
    "record_hash",
    "sum_hash",
]

MAX_GROUP: Final = 1 << 14
MAX_COHORT: Final = 1 << 16
MAX_GROUPS: Final = 1 << 12
MAX_EVIDENCE: Final = 256
MAX_PAGE: Final = 256
#: The most bytes an encoded :class:`LedgerResponse` may take: what one direct
#: message carries (:data:`p2pfl.federation.messages.ANSWER_MAX`).
PAGE_MAX_BYTES: Final = ANSWER_MAX

B32 = Annotated[bytes, MaxLen(32, exact=True)]
Round = Annotated[int, Range(0, 2**62)]
GroupIx = Annotated[int, Range(0, 1 << 16)]
Peers = Annotated[tuple[PeerId, ...], MaxLen(MAX_GROUP)]
Reason = Annotated[str, MaxLen(256)]
Endorsements = Annotated[tuple[Endorsement, ...], MaxLen(MAX_GROUP)]


#: The ledger's name for the federation's result header (module docstring).
GroupHeader = ResultHeader
#: The header of a result body: :func:`p2pfl.federation.messages.result_header`.
header_of = result_header


class GroupStatus(enum.IntEnum):
    ACCEPTED = 1  # a result, signed by an aggregator and a quorum of members
    ABORTED = 2  # signed aborts by (some of) its aggregators
    MISSING = 3  # nothing before the round deadline


@message(0x0602)
class GroupSlot:
    """Group ``index``: its header when accepted, else ``(aggregator, reason)`` aborts."""

    index: GroupIx
    status: GroupStatus
    header: GroupHeader | None = None
    aborts: Annotated[tuple[tuple[PeerId, Reason], ...], MaxLen(64)] = ()


@message(0x0606)
class SignedHeader:
    """One endorsement of ``header`` (over ``digest_of(header)``)."""

    header: GroupHeader
    endorsement: Endorsement


@message(0x0607)
class EquivocationProof:
    """Two or more different headers of one (federation, round, group), each endorsed
    by the same key (see :func:`p2pfl.ledger.check_proof` for when that is an offence)."""

    items: Annotated[tuple[SignedHeader, ...], MaxLen(16)]


@message(0x0603)
class RecordBody:
    """The content of the record of round ``round`` (hashed and chained).

    ``cohort`` (sorted) determines the groups (recomputed from it and the beacon);
    ``groups`` holds one slot per group in index order; ``model_hash`` and
    ``strategy_hash`` describe the global state the round produced; ``evidence`` the
    equivocation proofs this record charges.
    """

    federation: B32
    round: Round
    prev: B32
    beacon: B32
    schedule: B32
    base_state: B32
    cohort: Annotated[tuple[PeerId, ...], MaxLen(MAX_COHORT)]
    groups: Annotated[tuple[GroupSlot, ...], MaxLen(MAX_GROUPS)]
    model_hash: B32
    strategy_hash: B32
    updated: bool
    evidence: Annotated[tuple[EquivocationProof, ...], MaxLen(MAX_EVIDENCE)] = ()


@message(0x0604)
class GroupWitness:
    """Signatures backing slot ``index``: endorsements of its header, or the aborts'
    endorsements in the slot's order."""

    index: GroupIx
    endorsements: Endorsements = ()
    abort_endorsements: Annotated[tuple[Endorsement, ...], MaxLen(64)] = ()


@message(0x0605)
class Record:
    """A round record as gossiped, stored and synced: the body and its witnesses
    (sorted by index, at most one per slot)."""

    body: RecordBody
    witnesses: Annotated[tuple[GroupWitness, ...], MaxLen(MAX_GROUPS)] = ()

    @property
    def round(self) -> int:
        return self.body.round

    @property
    def hash(self) -> bytes:
        return record_hash(self.body)


@message(0x0608)
class LedgerFileHeader:
    """First frame of a ledger file."""

    version: Annotated[int, Range(1, 1 << 16)]
    federation: B32


@message(0x0610)
class LedgerRequest:
    """Ask a neighbour for up to ``limit`` records from height ``start`` on."""

    federation: B32
    start: Round
    limit: Annotated[int, Range(1, MAX_PAGE)]
    nonce: Annotated[bytes, MaxLen(32)]


@message(0x0611)
class LedgerResponse:
    """Records ``start, start + 1, ...`` of the neighbour's chain (of ``height``): as
    many as fit in ``PAGE_MAX_BYTES`` encoded, possibly none (see
    :func:`~p2pfl.ledger.answer_ledger_request`)."""

    federation: B32
    nonce: Annotated[bytes, MaxLen(32)]
    start: Round
    height: Round
    records: Annotated[tuple[Record, ...], MaxLen(MAX_PAGE)] = ()


# ----------------------------------------------------------------------------
# hashes


def record_hash(body: RecordBody) -> bytes:
    """The chain hash of a record body (see the module docstring)."""
    return hash_parts(b"p2pfl/ledger/record/1", encode(body))


def genesis_hash(federation_id: bytes) -> bytes:
    """The ``prev`` of the record of round 0."""
    return hash_parts(b"p2pfl/ledger/genesis/1", federation_id)
