"""Events the machines hand to their driver, and the evidence they record."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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


def _no_pairs() -> Mapping[int, int]:
    return MappingProxyType({})


@dataclass(frozen=True)
class SketchScore:
    """Opened scores of one member u's sketch, as exact signed integers.

    ``norm``: ||z_u||^2. ``dot``: <z_u, z_ref> (None without a reference). ``pairs``:
    other member v -> <z_u, z_v> for each pair that was opened (empty unless the
    sketch stage is pairwise; both members of a pair list it). Exact while each value
    is within ``SketchConfig.capacity`` in magnitude, else reduced modulo
    ``SketchConfig.modulus`` into that range. Immutable (``pairs`` is a read-only
    mapping in increasing member order) and hashable.
    """

    norm: int
    dot: int | None = None
    pairs: Mapping[int, int] = field(default_factory=_no_pairs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", MappingProxyType(dict(sorted(self.pairs.items()))))

    def __hash__(self) -> int:
        return hash((self.norm, self.dot, tuple(self.pairs.items())))


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
    member's could not be opened); ``commitments`` maps each survivor to H(y_u).

    With a sketch stage, ``sketch_seed`` is the public seed of the sketch map and
    ``sketch_sum`` the exact signed sum of the included members' sketches
    (recombined across the primes), for the binding check
    ``S @ signed(total) == sketch_sum``: an int64 array of shape ``(rows,)``, or an
    object array of Python ints in the (only theoretical: |z_i| < 2**62 and
    n <= 2**16) case that an entry does not fit int64. It is exact when every entry
    of the true sum is within ``SketchConfig.capacity`` in magnitude (else reduced
    modulo ``SketchConfig.modulus``); None when it could not be opened (an included
    member shared no sketch, or too few consistent shares).
    """

    total: NDArray[np.uint32]
    included: frozenset[int]
    survivors: frozenset[int]
    dropped: frozenset[int]
    excluded: frozenset[int]
    commitments: Mapping[int, bytes] = field(default_factory=dict)
    scores: Mapping[int, SketchScore | None] = field(default_factory=dict)
    sketch_sum: NDArray[np.int64] | NDArray[np.object_] | None = None
    sketch_seed: bytes | None = None
