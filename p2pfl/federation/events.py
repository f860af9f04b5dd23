"""Events and outputs of the round machine (see :mod:`p2pfl.federation.round`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from p2pfl.learning.strategy import StrategyState
from p2pfl.wire import PeerId

from .messages import SignedGroupResult
from .schedule import NO_LEDGER
from .state import GlobalState

__all__ = [
    "BROADCAST",
    "GroupOutcome",
    "GroupResolved",
    "Misbehaviour",
    "Outgoing",
    "RoundCompleted",
    "RoundEvent",
    "RoundFailed",
    "RoundRecord",
    "TrainRequested",
    "clip_update",
]


class _Broadcast:
    __slots__ = ()

    def __repr__(self) -> str:
        return "BROADCAST"


BROADCAST: Final = _Broadcast()


@dataclass(frozen=True)
class Outgoing:
    """A message to send: to one peer, or to everyone (``recipient is BROADCAST``)."""

    recipient: PeerId | _Broadcast
    message: object


@dataclass(frozen=True, eq=False)
class TrainRequested:
    """Train from ``global_vector`` (read-only float32) and call ``training_done``.

    ``seed`` is this peer's deterministic training seed for the round; ``prox_mu``
    the strategy's FedProx coefficient.
    """

    round: int
    global_vector: np.ndarray
    seed: int
    prox_mu: float


@dataclass(frozen=True)
class GroupResolved:
    """Group ``group`` is settled for this peer: ``accepted`` result or abort."""

    round: int
    group: int
    accepted: bool
    reason: str


@dataclass(frozen=True)
class Misbehaviour:
    """Evidence against ``peer`` found while the round went on (nothing was accepted
    from it); the driver may lower its score or record it in the ledger."""

    peer: PeerId
    reason: str


@dataclass(frozen=True)
class GroupOutcome:
    """How one group ended, for the round record."""

    index: int
    status: str  # "accepted" | "aborted" | "missing"
    digest: bytes | None = None
    included: tuple[PeerId, ...] = ()
    dropped: tuple[PeerId, ...] = ()
    total_weight: float = 0.0
    total_samples: int = 0
    signers: tuple[PeerId, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class RoundRecord:
    """What happened in the round (the ledger turns it into a signed record)."""

    round: int
    beacon: bytes
    schedule: bytes
    base_state: bytes
    groups: tuple[GroupOutcome, ...]
    model_hash: bytes  # of the new global model
    updated: bool  # False when no group result was accepted


@dataclass(frozen=True, eq=False)
class RoundCompleted:
    """The global step is done: ``model`` and ``strategy_state`` start the next round."""

    record: RoundRecord
    model: np.ndarray
    strategy_state: StrategyState
    results: tuple[SignedGroupResult, ...]
    base: GlobalState

    def next_state(self, ledger_head: bytes = NO_LEDGER) -> GlobalState:
        """The :class:`GlobalState` of the next round."""
        return self.base.advance(self.model, self.strategy_state, ledger_head)


@dataclass(frozen=True)
class RoundFailed:
    """The round ended without a usable global step on this peer (see ``reason``)."""

    round: int
    reason: str


RoundEvent = TrainRequested | GroupResolved | Misbehaviour | RoundCompleted | RoundFailed


def clip_update(update: np.ndarray, bound: float) -> np.ndarray:
    """``update`` scaled to L2 norm at most ``bound`` (float64 maths), as float32."""
    x = np.asarray(update, dtype=np.float64)
    if math.isfinite(bound):
        norm = math.sqrt(float(np.dot(x, x)))
        if norm > bound:
            x = x * (bound / norm)
    return x.astype(np.float32)
