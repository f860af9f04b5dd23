"""Events, statistics, the wire message and small helpers of :mod:`p2pfl.federation.driver`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from p2pfl.wire import MaxLen, PeerId, Range, message

from .aggregation import AggregationContext, AggregationEvent, Contribution, GroupSumReady
from .config import Federation
from .events import GroupResolved, Misbehaviour, Outgoing, RoundCompleted, RoundFailed
from .messages import SignedGroupAbort, SignedGroupResult
from .schedule import RoundSchedule
from .state import GlobalState

Item = tuple[PeerId, object]

__all__ = [
    "Buffer",
    "DriverEvent",
    "DriverStatistics",
    "Item",
    "LedgerHooks",
    "Observer",
    "Out",
    "Presence",
    "RoundStarted",
    "SyncStarted",
    "Synced",
    "TrainingFinished",
    "federation_topic",
    "signer_of",
]


@message(0x0510)
class Presence:
    """'I take part in this federation' (published; carries our address)."""

    federation: Annotated[bytes, MaxLen(32, exact=True)]
    round: Annotated[int, Range(0, 2**62)]


def federation_topic(federation: Federation) -> str:
    """The overlay topic of a federation's broadcasts."""
    return f"p2pfl/fed/{federation.id_hex[:32]}"


@dataclass(frozen=True, eq=False)
class RoundStarted:
    """This peer started round ``state.round`` from ``state`` (the state it holds)."""

    state: GlobalState
    schedule: RoundSchedule
    in_cohort: bool

    @property
    def round(self) -> int:
        return self.state.round


@dataclass(frozen=True)
class TrainingFinished:
    """Local training of ``round`` took ``seconds`` (wall); not ``accepted`` when it came
    too late or failed (``error``)."""

    round: int
    num_samples: int
    seconds: float
    accepted: bool
    error: str = ""


@dataclass(frozen=True)
class SyncStarted:
    """This peer is behind (or out of sync) and fetches the current state."""

    round: int
    reason: str


@dataclass(frozen=True, eq=False)
class Synced:
    """Caught up: round ``state.round`` starts from the fetched, attested ``state``."""

    state: GlobalState


DriverEvent = (RoundStarted | TrainingFinished | SyncStarted | Synced | GroupResolved
               | Misbehaviour | RoundCompleted | RoundFailed)


@dataclass
class DriverStatistics:
    """Counters of one driver (:meth:`FederationDriver.statistics`)."""

    rounds_completed: int = 0
    rounds_failed: int = 0
    corrections: int = 0  # rounds re-evaluated with a late result
    syncs: int = 0
    pulls: int = 0
    trainings: int = 0
    training_errors: int = 0
    train_seconds: float = 0.0
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    offences: int = 0
    misbehaviour: int = 0
    buffered: int = 0
    dropped: int = 0
    send_failures: int = 0
    events_dropped: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Out:
    to: PeerId | None  # None: broadcast on the topic
    data: bytes
    round: int  # -1: not tied to a round
    marker: str = ""  # a fault-hook stage to run when the sender gets here


class Buffer:
    """Messages for rounds not started yet: bounded, replayed in arrival order."""

    def __init__(self, limit: int) -> None:
        self.limit, self.n = limit, 0
        self.by_round: dict[int, list[Item]] = {}

    def add(self, r: int, item: Item) -> bool:
        if self.n >= self.limit:
            return False
        self.by_round.setdefault(r, []).append(item)
        self.n += 1
        return True

    def take(self, r: int) -> list[Item]:
        """The messages of round ``r``; earlier rounds' are dropped."""
        out: list[Item] = []
        for k in [k for k in self.by_round if k <= r]:
            items = self.by_round.pop(k)
            self.n -= len(items)
            out += items if k == r else []
        return out


def signer_of(msg: object) -> PeerId | None:
    if isinstance(msg, SignedGroupResult):
        return msg.endorsements[0].signer if msg.endorsements else None
    if isinstance(msg, SignedGroupAbort):
        return msg.endorsement.signer
    return None


class Observer:
    """A group-aggregation backend that takes no part: for re-evaluating a finished
    round from its results (it never aggregates, aborts, signs or sends)."""

    def __init__(self, ctx: AggregationContext) -> None:
        self.ctx = ctx

    def submit(self, contribution: Contribution, now: float) -> None:
        pass

    def receive(self, sender: PeerId, payload: bytes, now: float) -> None:
        pass

    def handle_timer(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def messages_to_send(self) -> list[tuple[PeerId, bytes]]:
        return []

    def next_event(self) -> AggregationEvent | None:
        return None

    def check_result(self, result: GroupSumReady) -> str | None:
        return "an observer signs nothing"

    def send_failed(self, recipient: PeerId, now: float) -> None:
        pass


class LedgerHooks(Protocol):
    """What the driver needs from the ledger (:class:`p2pfl.ledger.RoundLedger`; the
    federation layer cannot import the ledger layer)."""

    @property
    def head(self) -> bytes: ...

    def weight(self, peer: PeerId) -> float: ...

    def weight_factor(self, peer: PeerId) -> float: ...

    def record_round(self, completed: RoundCompleted, schedule: RoundSchedule,
                     aborts: Iterable[SignedGroupAbort], now: float) -> None: ...

    def behind(self, now: float) -> None: ...

    def handles(self, msg: object) -> bool: ...

    def receive(self, sender: PeerId, msg: object, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def messages_to_send(self) -> list[Outgoing]: ...
