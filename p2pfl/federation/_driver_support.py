"""Events, statistics, the wire message and small helpers of :mod:`p2pfl.federation.driver`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from p2pfl._lru import BoundedLru
from p2pfl.errors import LocalProtocolError
from p2pfl.wire import MaxLen, PeerId, Range, decode, encode, message

from .aggregation import AggregationContext, AggregationEvent, Contribution, GroupSumReady
from .config import Federation
from .events import GroupResolved, Misbehaviour, Outgoing, RoundCompleted, RoundFailed
from .messages import ANSWER_MAX, SignedGroupAbort, SignedGroupResult, StateRequest
from .schedule import RoundSchedule
from .state import GlobalState
from .sync import answer_state_request

Item = tuple[PeerId, object]

__all__ = [
    "Buffer",
    "DecodeMemo",
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
    "bounded_answer",
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


class DecodeMemo:
    """Decoded broadcast payloads by a hash of their bytes: a bounded, thread-safe memo.

    Every peer that receives a broadcast decodes the same bytes into the same value; in
    a simulation of N peers in one process, N times.  :meth:`decode` decodes each
    distinct payload once and hands every caller the same object.  That is sound only
    for immutable values, so only the classes in ``shared`` are remembered: frozen
    dataclasses of bytes, ints, tuples, peer ids and numpy arrays that the codec builds
    read-only over immutable ``bytes`` (they cannot be made writeable).  The key is
    BLAKE2b-256 of the whole payload, so a changed byte is a different entry; a payload
    that does not decode raises every time and is never remembered.  The payload object
    itself is held too, so the very same ``bytes`` object (the overlay hands every peer
    of a process the same one) is found by identity, without hashing it again.
    """

    def __init__(self, shared: tuple[type, ...], *, max_items: int = 4096,
                 max_bytes: int = 64 << 20) -> None:
        self._shared = shared
        self._ids: dict[int, tuple[bytes, object]] = {}  # id(payload) -> (payload, msg)
        self._items: BoundedLru[bytes, tuple[object, bytes]] = BoundedLru(
            max_items, max_weight=max_bytes, weigh=lambda e: len(e[1]), on_evict=self._forget)

    @property
    def hits(self) -> int:
        return self._items.hits

    @property
    def misses(self) -> int:
        return self._items.misses

    def _forget(self, key: bytes, entry: tuple[object, bytes]) -> None:
        old = entry[1]
        if (o := self._ids.get(id(old))) is not None and o[0] is old:
            self._ids.pop(id(old), None)

    def decode(self, payload: bytes) -> object:
        """:func:`p2pfl.wire.decode` of ``payload`` (the remembered object when the
        same bytes were decoded before). Raises :class:`RemoteProtocolError`."""
        e = self._ids.get(id(payload))  # the very payload object seen before: no hashing
        if e is not None and e[0] is payload:
            self._items.hits += 1
            return e[1]
        key = hashlib.blake2b(payload, digest_size=32, person=b"p2pfl/decodememo").digest()
        hit = self._items.get(key)
        if hit is not None:
            return hit[0]
        msg = decode(payload)
        if isinstance(msg, self._shared):
            self._ids[id(payload)] = (payload, msg)
            self._items.put(key, (msg, payload))
        return msg

    def clear(self) -> None:
        self._items.clear()
        self._ids.clear()


def result_size_bound(msg: SignedGroupResult) -> int:
    """An upper bound of ``len(encode(msg))`` that costs no encoding."""
    b = msg.body
    peers = len(b.included) + len(b.dropped) + len(b.excluded)
    reasons = sum(4 * len(r) + 8 for _, r in b.excluded)  # UTF-8: at most 4 bytes a char
    return 512 + b.update_sum.nbytes + 48 * peers + reasons + 128 * len(msg.endorsements)


def bounded_answer(federation: Federation, request: StateRequest, state: GlobalState | None,
                   results: Sequence[SignedGroupResult], aborts: Sequence[SignedGroupAbort],
                   max_bytes: int = ANSWER_MAX) -> bytes:
    """The encoded :func:`~p2pfl.federation.sync.answer_state_request`, at most
    ``max_bytes`` long: when the snapshot, the aborts and every result do not fit, the
    results that fit, taken in group order from a point the request's (random) nonce
    picks -- so a requester that pulls again, from another peer, gets other ones.
    (With a full cohort of 1000 peers a round has 100 results of ~40 kB each: 4 MB,
    which no direct message carries.)

    Raises :class:`LocalProtocolError` when not even the snapshot and aborts fit, and
    :class:`RemoteProtocolError` for a request of another federation.
    """
    head = encode(answer_state_request(federation, request, state, (), aborts))
    if state is None or not results:
        return head
    sizes = [result_size_bound(m) for m in results]
    room = max_bytes - len(head)
    if sum(sizes) <= room:
        picked = list(results)
    else:
        start = int.from_bytes(request.nonce[:4].ljust(4, b"\0"), "little") % len(results)
        order = [*range(start, len(results)), *range(start)]
        chosen = []
        for i in order:
            if sizes[i] <= room:
                chosen.append(i)
                room -= sizes[i]
        picked = [results[i] for i in sorted(chosen)]
    data = encode(answer_state_request(federation, request, state, picked, aborts))
    if len(data) > max_bytes:  # a bound was wrong: never send what cannot be sent
        raise LocalProtocolError(f"state answer of {len(data)} bytes exceeds {max_bytes}")
    return data


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
