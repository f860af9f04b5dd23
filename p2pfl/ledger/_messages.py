"""Wire and disk forms of the ledger (tags 0x0600–0x06FF) and their hashes.

=========  ======================  ==========================================================
tag        message                 purpose
=========  ======================  ==========================================================
0x0601     GroupHeader             a group result without its sum: the sum's hash instead
0x0602     GroupSlot               one group's outcome in a record (accepted/aborted/missing)
0x0603     RecordBody              the hashed, chained content of one round record
0x0604     GroupWitness            signatures (and, today, the sum) backing one slot
0x0605     Record                  body + witnesses: what is gossiped, stored and synced
0x0606     SignedHeader            one endorsement of one header (equivocation proofs)
0x0607     EquivocationProof       conflicting headers endorsed by one key
0x0608     LedgerFileHeader        first frame of a ledger file
0x0610     LedgerRequest           "send me records from height h"
0x0611     LedgerResponse          a page of records
=========  ======================  ==========================================================

Hashes
------
* ``record_hash(body) = H("p2pfl/ledger/record/1", encode(body))``: the chain link
  and the ledger *head* that feeds the next beacon.  It covers the body only, never
  the witnesses: peers that accepted the same group results but collected different
  endorsements (results with equal bodies merge their endorsements) hold the same
  head, hence the same beacon.
* ``genesis_hash(fid)`` is the ``prev`` of the record of round 0.
* A :class:`GroupHeader` is a :class:`~p2pfl.federation.ResultBody` with the
  ``update_sum`` replaced by ``sum_hash`` (BLAKE2b-256 of the float64 sum): a record
  never carries model-sized vectors.  Its endorsements are checked against
  :func:`signed_digest`: the header digest ``digest_of(header)`` when the federation
  signs headers, otherwise (the federation of today signs the full body) the digest
  of the body rebuilt from the header and the sum carried in the witness, after
  checking the sum against ``sum_hash``.  Both bind every header field.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Annotated, Final

import numpy as np

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.federation.messages import DetectionScores, Endorsement, ResultBody, digest_of
from p2pfl.federation.schedule import hash_parts
from p2pfl.wire import ArraySpec, MaxLen, PeerId, Range, encode, message

__all__ = [
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
    "body_of",
    "genesis_hash",
    "header_of",
    "record_hash",
    "signed_digest",
    "sum_hash",
]

MAX_GROUP: Final = 1 << 14
MAX_COHORT: Final = 1 << 16
MAX_GROUPS: Final = 1 << 12
MAX_EVIDENCE: Final = 256
MAX_PAGE: Final = 256

B32 = Annotated[bytes, MaxLen(32, exact=True)]
Round = Annotated[int, Range(0, 2**62)]
GroupIx = Annotated[int, Range(0, 1 << 16)]
Peers = Annotated[tuple[PeerId, ...], MaxLen(MAX_GROUP)]
Reason = Annotated[str, MaxLen(256)]
F8Vec = Annotated[np.ndarray, ArraySpec(dtypes=("f8",), ndim=1)]
Endorsements = Annotated[tuple[Endorsement, ...], MaxLen(MAX_GROUP)]


@message(0x0601)
class GroupHeader:
    """A :class:`~p2pfl.federation.ResultBody` with ``sum_hash`` for ``update_sum``.

    ``aggregator`` names the aggregator that proposed the body when the federation
    puts it in the signed body (None otherwise); it makes equivocation by one
    signature pair provable (see :mod:`p2pfl.ledger._verify`).
    """

    federation: B32
    round: Round
    group: GroupIx
    schedule: B32
    base_state: B32
    included: Peers
    dropped: Peers
    excluded: Annotated[tuple[tuple[PeerId, Reason], ...], MaxLen(MAX_GROUP)]
    sum_hash: B32
    total_weight: Annotated[float, Range(0.0, float(MAX_GROUP))]
    total_samples: Annotated[int, Range(0, 2**62)]
    aggregator: PeerId | None = None
    detection: DetectionScores | None = None


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
    """One endorsement of ``header`` (``update_sum``: the witness sum, when the
    endorsement signs the full result body)."""

    header: GroupHeader
    endorsement: Endorsement
    update_sum: F8Vec | None = None


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
    """Signatures backing slot ``index``: endorsements of its header (with the sum when
    they sign the full body), or the aborts' endorsements in the slot's order."""

    index: GroupIx
    endorsements: Endorsements = ()
    update_sum: F8Vec | None = None
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
    """Records ``start, start + 1, ...`` of the neighbour's chain (of ``height``)."""

    federation: B32
    nonce: Annotated[bytes, MaxLen(32)]
    start: Round
    height: Round
    records: Annotated[tuple[Record, ...], MaxLen(MAX_PAGE)] = ()


# ----------------------------------------------------------------------------
# hashes and the header <-> body mapping

_RESULT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ResultBody))
_HEADER_FIELDS: Final = tuple(f.name for f in dataclasses.fields(GroupHeader))


def record_hash(body: RecordBody) -> bytes:
    """The chain hash of a record body (see the module docstring)."""
    return hash_parts(b"p2pfl/ledger/record/1", encode(body))


def genesis_hash(federation_id: bytes) -> bytes:
    """The ``prev`` of the record of round 0."""
    return hash_parts(b"p2pfl/ledger/genesis/1", federation_id)


def sum_hash(update_sum: np.ndarray) -> bytes:
    """BLAKE2b-256 of a group sum (float64, little-endian) and its length."""
    a = np.ascontiguousarray(np.asarray(update_sum), dtype="<f8")
    return hash_parts(b"p2pfl/group-sum/1", struct.pack("<Q", a.shape[0]), a.tobytes())


def header_of(body: ResultBody) -> GroupHeader:
    """The header of a federation result body.

    Raises :class:`LocalProtocolError` when ``ResultBody`` has a field the header does
    not mirror (the two must evolve together).
    """
    missing = [n for n in _RESULT_FIELDS if n != "update_sum" and n not in _HEADER_FIELDS]
    if missing:
        raise LocalProtocolError(f"GroupHeader does not mirror ResultBody fields {missing}")
    kw = {n: getattr(body, n) for n in _RESULT_FIELDS if n != "update_sum"}
    return GroupHeader(**kw, sum_hash=sum_hash(body.update_sum))


def body_of(header: GroupHeader, update_sum: np.ndarray, sender: PeerId | None = None) -> ResultBody:
    """The full result body a header stands for, given its sum.

    Raises :class:`RemoteProtocolError` when the sum does not match ``sum_hash`` or
    the header sets a field the body does not carry (it would not be signed).
    """
    if sum_hash(update_sum) != header.sum_hash:
        raise RemoteProtocolError(f"round {header.round} group {header.group}: "
                                  "witness sum does not match the header's sum hash", peer=sender)
    for n in _HEADER_FIELDS:
        if n not in _RESULT_FIELDS and n != "sum_hash" and getattr(header, n) is not None:
            raise RemoteProtocolError(f"header field {n} is not covered by the signed body",
                                      peer=sender)
    kw = {n: getattr(header, n) for n in _RESULT_FIELDS if n != "update_sum"}
    return ResultBody(**kw, update_sum=np.asarray(update_sum, dtype=np.float64))


def signed_digest(header: GroupHeader, update_sum: np.ndarray | None,
                  sender: PeerId | None = None) -> bytes:
    """The digest endorsements of ``header`` sign: of the header itself, or of the full
    body when the witness carries the sum (see the module docstring).

    Raises :class:`RemoteProtocolError` for a sum that does not match the header.
    """
    if update_sum is None:
        return digest_of(header)
    return digest_of(body_of(header, update_sum, sender))
