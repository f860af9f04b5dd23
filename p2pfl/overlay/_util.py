"""Small bounded data structures shared by the overlay protocol objects.

Everything here is pure and takes ``now`` as an argument.  Iteration order is
insertion order (dicts, never sets), so a seeded simulation replays exactly
whatever ``PYTHONHASHSEED`` is.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from p2pfl.wire import PeerId

__all__ = [
    "Close",
    "Command",
    "Connect",
    "ExpiringSet",
    "Outbox",
    "Send",
    "TokenBucket",
    "sample",
]

K = TypeVar("K")
T = TypeVar("T")


# -- commands for the driver ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to ``peer``; if no link is open, dial ``address`` (when given)."""

    peer: PeerId
    msg: object
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a link to ``address`` whose peer id is not known yet (bootstrap)."""

    address: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close every link to ``peer`` once what was queued for it has been sent."""

    peer: PeerId


Command = Send | Connect | Close


@dataclass
class Outbox:
    """Commands and events shared by the protocol objects of one peer (in order)."""

    commands: list[Command] = field(default_factory=list)
    events: deque[object] = field(default_factory=deque)
    sent: dict[str, int] = field(default_factory=dict)

    def send(self, peer: PeerId, msg: object, address: str | None = None) -> None:
        self.commands.append(Send(peer, msg, address))
        name = type(msg).__name__
        self.sent[name] = self.sent.get(name, 0) + 1


# -- rate limiting -------------------------------------------------------------------


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` banked."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if available (True) or leave the bucket as is (False)."""
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


# -- caches --------------------------------------------------------------------------


class ExpiringSet(Generic[K]):
    """Keys remembered for ``ttl`` seconds, at most ``maxlen`` of them (oldest go first).

    ``now`` must not decrease between calls to :meth:`add` (it does not in a
    protocol object), so insertion order is expiry order and expiry is O(1)
    amortized.
    """

    __slots__ = ("_d", "maxlen", "ttl")

    def __init__(self, ttl: float, maxlen: int) -> None:
        self.ttl = ttl
        self.maxlen = maxlen
        self._d: OrderedDict[K, float] = OrderedDict()

    def add(self, key: K, now: float) -> None:
        self._d[key] = now + self.ttl
        self._d.move_to_end(key)
        while len(self._d) > self.maxlen:
            self._d.popitem(last=False)

    def expire(self, now: float) -> None:
        d = self._d
        while d:
            k, exp = next(iter(d.items()))
            if exp > now:
                break
            del d[k]

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[K]:
        return iter(self._d)

    def discard(self, key: K) -> None:
        self._d.pop(key, None)

    def next_expiry(self) -> float | None:
        return next(iter(self._d.values())) if self._d else None


def sample(rng: random.Random, items: Sequence[T] | Iterable[T], k: int) -> list[T]:
    """Up to ``k`` distinct items drawn with ``rng`` (all of them, shuffled, if fewer)."""
    seq = items if isinstance(items, Sequence) else list(items)
    if k <= 0 or not seq:
        return []
    if k >= len(seq):
        out = list(seq)
        rng.shuffle(out)
        return out
    return rng.sample(seq, k)
