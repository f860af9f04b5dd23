"""Wire messages of the federation layer (tags 0x0500–0x05FF).

=========  =====================  =========  ==========================================
tag        message                delivery   purpose
=========  =====================  =========  ==========================================
0x0501     GroupPayload           direct     carries a group-aggregation backend payload
0x0502     ResultBody             (nested)   what a group result asserts; signed
0x0503     SignRequest            direct     aggregator → members: "sign this result"
0x0504     SignatureReply         direct     member → aggregator: endorsement of a body
0x0505     SignedGroupResult      broadcast  body + endorsements (aggregator + members)
0x0506     AbortBody              (nested)   "group g of round r produced nothing"
0x0507     SignedGroupAbort       broadcast  abort body + the aggregator's endorsement
0x0508     StateRequest           direct     late joiner → neighbour: state of round r
0x0509     StateResponse          direct     neighbour → late joiner: the snapshot
0x050A     MemberScores           (nested)   one member's opened sketch scores and bound
0x050B     DetectionScores        (nested)   a group's opened scores, in its result body
0x050C     ResultHeader           (nested)   a result body with the sum's hash: what is signed
0x0520     PlainContribution      payload    (plaintext backend) a member's input
0x0530/31  Strategy/StateSnapshot (nested)   global state (also in checkpoints)
0x0540     CheckpointFile         disk       a checkpoint
=========  =====================  =========  ==========================================

Every message names the federation id and the round, so a driver can route or drop
it before any protocol code runs (:func:`message_round`).  Endorsements are Ed25519
signatures by a peer's identity key over a 32-byte digest (:func:`digest_of`), under
the domains :data:`RESULT_DOMAIN` / :data:`ABORT_DOMAIN`, and carry the signer's
public key (a peer id is only a hash of it).

What a result endorsement signs
-------------------------------
Not the full :class:`ResultBody` but its :class:`ResultHeader`: every field except
``update_sum``, which is replaced by ``sum_hash`` = :func:`sum_hash` (BLAKE2b-256 of
the little-endian float64 sum and its length).  ``digest_of(body)`` is
``digest_of(result_header(body))`` -- BLAKE2b-256 of the header's canonical encoding.
The signature still binds the sum (through its hash) and every other field, but a
third party can check it from the header alone: the ledger records headers and
endorsements, never model-sized vectors (``docs/ledger.md``).  Abort bodies are
small and signed as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Final

import numpy as np

from p2pfl.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from p2pfl.wire import ArraySpec, MaxLen, PeerId, Range, encode, message

from .schedule import hash_parts
from .state import StateSnapshot

__all__ = [
    "ABORT_DOMAIN",
    "RESULT_DOMAIN",
    "AbortBody",
    "DetectionScores",
    "Endorsement",
    "GroupPayload",
    "MemberScores",
    "ResultBody",
    "ResultHeader",
    "SignRequest",
    "SignatureReply",
    "SignedGroupAbort",
    "SignedGroupResult",
    "StateRequest",
    "StateResponse",
    "digest_of",
    "endorse",
    "int_from_wire",
    "int_to_wire",
    "message_round",
    "result_header",
    "sum_hash",
]

# /2: result endorsements sign the header digest (the sum by its hash), not the body
RESULT_DOMAIN: Final = b"p2pfl/group-result/2"
ABORT_DOMAIN: Final = b"p2pfl/group-abort/1"
MAX_GROUP: Final = 1 << 14
#: The most bytes an encoded answer to a direct request (a state snapshot with results,
#: a page of ledger records) may take: the overlay refuses direct payloads above
#: ``OverlayConfig.max_payload`` (1 MiB); 16 KiB are left for the envelope around it.
ANSWER_MAX: Final = (1 << 20) - (16 << 10)

B32 = Annotated[bytes, MaxLen(32, exact=True)]
Round = Annotated[int, Range(0, 2**62)]
GroupIx = Annotated[int, Range(0, 1 << 16)]
Peers = Annotated[tuple[PeerId, ...], MaxLen(MAX_GROUP)]


@dataclass(frozen=True, slots=True)
class Endorsement:
    """An identity key's signature over a body digest."""

    public_key: Annotated[bytes, MaxLen(PUBLIC_KEY_BYTES, exact=True)]
    signature: Annotated[bytes, MaxLen(SIGNATURE_BYTES, exact=True)]

    @property
    def signer(self) -> PeerId:
        return PeerId.from_public_key(self.public_key)

    def valid(self, domain: bytes, digest: bytes) -> bool:
        return verify_signature(self.public_key, domain, digest, self.signature)


def endorse(identity: Identity, domain: bytes, digest: bytes) -> Endorsement:
    """Sign ``digest`` for ``domain`` with ``identity``."""
    return Endorsement(identity.public_key, identity.sign(domain, digest))


def digest_of(body: object) -> bytes:
    """What endorsements sign: BLAKE2b-256 of a message's canonical encoding; for a
    :class:`ResultBody`, of its :class:`ResultHeader` (the module docstring), so a
    body and its header have one digest."""
    if isinstance(body, ResultBody):
        body = result_header(body)
    return hashlib.blake2b(encode(body), digest_size=32).digest()


def sum_hash(update_sum: np.ndarray) -> bytes:
    """BLAKE2b-256 of a group sum (float64, little-endian) and its length: the
    ``sum_hash`` of its :class:`ResultHeader`."""
    a = np.ascontiguousarray(np.asarray(update_sum), dtype="<f8")
    return hash_parts(b"p2pfl/group-sum/1", struct.pack("<Q", a.shape[0]), a.tobytes())


@message(0x0501)
class GroupPayload:
    """A group-aggregation backend's opaque payload for round ``round``, group ``group``."""

    federation: B32
    round: Round
    group: GroupIx
    payload: bytes


SCORE_BYTES: Final = 20  # opened scores are exact integers below 2**159 in magnitude
SInt = Annotated[bytes, MaxLen(SCORE_BYTES)]
Party = Annotated[int, Range(0, MAX_GROUP - 1)]


def int_to_wire(v: int) -> bytes:
    """A signed integer as minimal big-endian two's complement (CBOR's own big integers
    are semantic tags, which the codec refuses).

    Raises :class:`OverflowError` beyond ``SCORE_BYTES`` bytes.
    """
    n = ((v if v >= 0 else ~v).bit_length() + 8) // 8  # magnitude bits + a sign bit
    if n > SCORE_BYTES:
        raise OverflowError(f"score of {v.bit_length()} bits does not fit the wire")
    return v.to_bytes(n, "big", signed=True)


def int_from_wire(b: bytes) -> int:
    """The inverse of :func:`int_to_wire` (the empty string is refused by the caller)."""
    return int.from_bytes(b, "big", signed=True)


@message(0x050A)
class MemberScores:
    """Group member ``party``'s opened sketch scores (:class:`mpc.secagg.SketchScore`):
    ``norm`` = ||z||^2 (None: its scores could not be opened), ``dot`` = <z, z_ref>
    (None without a reference), and ``bound2``, the largest ||z||^2 the federation
    allowed it (from its public weight factor)."""

    party: Party
    bound2: Annotated[float, Range(0.0, 1e300)]
    norm: SInt | None = None
    dot: SInt | None = None


@message(0x050B)
class DetectionScores:
    """The scores a group's validators opened in its sketch stage: what the exclusion
    policy (:func:`p2pfl.federation.policy.decide_exclusions`) saw.  ``members`` lists
    every survivor (sorted by party); ``pairs`` the opened ``(u, v, <z_u, z_v>)``,
    ``u < v``; ``ref_norm2`` = ||z_ref||^2 (None without a reference).  Carried in the
    signed result body, so anyone can re-run the policy (:mod:`p2pfl.federation.audit`).
    """

    members: Annotated[tuple[MemberScores, ...], MaxLen(MAX_GROUP)]
    pairs: Annotated[tuple[tuple[Party, Party, SInt], ...], MaxLen(1 << 16)] = ()
    ref_norm2: SInt | None = None


@message(0x0502)
class ResultBody:
    """What a group result asserts.

    ``schedule`` and ``base_state`` are the digests of the round schedule and of the
    global state the round started from; ``included`` (sorted) are the members whose
    updates are in ``update_sum`` (float64, Σ w_u x_u); ``dropped`` (sorted) gave no
    input; ``excluded`` were left out by policy, with reasons; ``detection`` the
    scores behind the exclusions (groups with a sketch stage).
    """

    federation: B32
    round: Round
    group: GroupIx
    schedule: B32
    base_state: B32
    included: Peers
    dropped: Peers
    excluded: Annotated[tuple[tuple[PeerId, Annotated[str, MaxLen(256)]], ...], MaxLen(MAX_GROUP)]
    update_sum: Annotated[np.ndarray, ArraySpec(dtypes=("f8",), ndim=1)]
    total_weight: Annotated[float, Range(0.0, float(MAX_GROUP))]
    total_samples: Annotated[int, Range(0, 2**62)]
    detection: DetectionScores | None = None


@message(0x050C)
class ResultHeader:
    """A :class:`ResultBody` with ``sum_hash`` (:func:`sum_hash`) for ``update_sum``:
    what result endorsements sign (:func:`digest_of`), and what the ledger records
    (as ``p2pfl.ledger.GroupHeader``).

    ``aggregator`` is reserved for the proposing aggregator once the result body names
    it (None today: :func:`result_header` never sets it); a header that sets it is
    signed with it, which makes equivocation by one signature pair provable
    (:mod:`p2pfl.ledger._verify`).
    """

    federation: B32
    round: Round
    group: GroupIx
    schedule: B32
    base_state: B32
    included: Peers
    dropped: Peers
    excluded: Annotated[tuple[tuple[PeerId, Annotated[str, MaxLen(256)]], ...], MaxLen(MAX_GROUP)]
    sum_hash: B32
    total_weight: Annotated[float, Range(0.0, float(MAX_GROUP))]
    total_samples: Annotated[int, Range(0, 2**62)]
    aggregator: PeerId | None = None
    detection: DetectionScores | None = None


def result_header(body: ResultBody) -> ResultHeader:
    """The header of a result body (what its endorsements sign).

    Every body field but ``update_sum`` is copied by name, so a field added to
    :class:`ResultBody` but not to :class:`ResultHeader` raises :class:`TypeError`
    here rather than going unsigned.
    """
    kw: dict[str, Any] = {n: getattr(body, n) for n in _BODY_FIELDS}
    return ResultHeader(**kw, sum_hash=sum_hash(body.update_sum))


_BODY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ResultBody) if f.name != "update_sum")


@message(0x0503)
class SignRequest:
    """An aggregator asks a group member to endorse ``body`` (it has endorsed it)."""

    body: ResultBody
    endorsement: Endorsement


@message(0x0504)
class SignatureReply:
    """A member's endorsement of the body with digest ``digest``."""

    federation: B32
    round: Round
    group: GroupIx
    digest: B32
    endorsement: Endorsement


@message(0x0505)
class SignedGroupResult:
    """A group result as broadcast: the body and its endorsements (distinct signers)."""

    body: ResultBody
    endorsements: Annotated[tuple[Endorsement, ...], MaxLen(MAX_GROUP)]

    @property
    def round(self) -> int:
        return self.body.round


@message(0x0506)
class AbortBody:
    """Group ``group`` of round ``round`` produced no sum, and why."""

    federation: B32
    round: Round
    group: GroupIx
    schedule: B32
    base_state: B32
    reason: Annotated[str, MaxLen(256)]


@message(0x0507)
class SignedGroupAbort:
    """An aggregator's signed abort announcement (broadcast)."""

    body: AbortBody
    endorsement: Endorsement

    @property
    def round(self) -> int:
        return self.body.round


@message(0x0508)
class StateRequest:
    """Ask a neighbour for the global state that round ``round`` started from."""

    federation: B32
    round: Round
    nonce: Annotated[bytes, MaxLen(32)]


@message(0x0509)
class StateResponse:
    """The requested state (``None`` when the neighbour does not hold it) and the
    group results and aborts of that round the neighbour has accepted so far, so
    the joiner can finish the round even if it missed their broadcasts."""

    federation: B32
    nonce: Annotated[bytes, MaxLen(32)]
    snapshot: StateSnapshot | None
    results: Annotated[tuple[SignedGroupResult, ...], MaxLen(MAX_GROUP)] = ()
    aborts: Annotated[tuple[SignedGroupAbort, ...], MaxLen(MAX_GROUP)] = ()


def message_round(msg: object) -> int | None:
    """The round a federation message belongs to (None for state sync / unknown)."""
    if isinstance(msg, GroupPayload | SignatureReply):
        return msg.round
    if isinstance(msg, SignRequest | SignedGroupResult | SignedGroupAbort):
        return msg.body.round
    return None
