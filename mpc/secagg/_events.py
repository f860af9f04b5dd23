"""Events the machines hand to their driver, and the evidence they record."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ._config import Stage

__all__ = [
    "Aborted",
    "Completed",
    "Event",
    "Evidence",
    "EvidenceFound",
    "EvidenceKind",
    "OutputReady",
    "ProtocolError",
    "SketchScore",
    "StageReached",
]


class EvidenceKind(enum.Enum):
    """What a party did wrong (or may have: see each kind)."""

    MALFORMED = "malformed"  # a message failed its field checks
    UNEXPECTED = "unexpected"  # a message its sender may not send (now or ever)
    BAD_SIGNATURE = "bad_signature"  # a signature that does not verify
    EQUIVOCATION = "equivocation"  # two different statements, both signed by the accused
    DISAGREEMENT = "disagreement"  # aggregators announced different sets (one of them lies)
    INCONSISTENT_SHARE = "inconsistent_share"  # a revealed share off the others' polynomial
    DECRYPTION_FAILED = "decryption_failed"  # a relayed ciphertext did not open
    WRONG_KEY = "wrong_key"  # a reconstructed secret key does not match its public key
    SILENT = "silent"  # an aggregator sent nothing before the deadline


@dataclass(frozen=True)
class Evidence:
    """A reason to suspect party ``accused`` (a member or aggregator party index).

    ``proof`` holds the messages that show it where one exists (two signed
    announcements for EQUIVOCATION), else it is empty and the evidence is only the
    recorder's testimony.
    """

    accused: int
    kind: EvidenceKind
    stage: Stage
    detail: str
    proof: tuple[object, ...] = ()


@dataclass(frozen=True)
class SketchScore:
    """Opened scalar scores of one member's sketch (signed integers)."""

    norm2: int
    dot_ref: int | None = None


class Event:
    """Base of all events."""

    __slots__ = ()


@dataclass(frozen=True)
class StageReached(Event):
    """The machine entered ``stage``."""

    stage: Stage


@dataclass(frozen=True)
class EvidenceFound(Event):
    """Something wrong that the machine survived (the message was ignored)."""

    evidence: Evidence


@dataclass(frozen=True)
class Aborted(Event):
    """The round ended without output; nothing more will be revealed by this machine."""

    reason: str
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True)
class ProtocolError(Event):
    """A local invariant failed (a bug, h11's LocalProtocolError): machine stopped."""

    report: str


@dataclass(frozen=True)
class Completed(Event):
    """Member: unmask shares were sent for the announced sets."""

    survivors: frozenset[int]
    excluded: frozenset[int]


@dataclass(frozen=True, eq=False)
class OutputReady(Event):
    """Aggregator: the group sum over ``included`` (uint32, wraps mod 2^32).

    ``dropped`` are members of U1 whose masked input did not arrive; ``excluded`` were
    excluded by the policy hook; ``scores`` are the opened sketch scores (None where a
    member's could not be opened); ``sketch_sum`` is the opened sum of the included
    members' sketches (for the binding check S @ total == sketch_sum), when enabled.
    ``commitments`` maps each survivor to H(y_u).
    """

    total: NDArray[np.uint32]
    included: frozenset[int]
    survivors: frozenset[int]
    dropped: frozenset[int]
    excluded: frozenset[int]
    commitments: Mapping[int, bytes] = field(default_factory=dict)
    scores: Mapping[int, SketchScore | None] = field(default_factory=dict)
    sketch_sum: NDArray[np.int64] | None = None
