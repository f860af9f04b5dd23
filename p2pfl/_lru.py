"""One bounded, thread-safe least-recently-used map for the process-wide memos.

Several layers remember the result of a pure, expensive computation per process --
verified signatures (:mod:`p2pfl.identity`), schedules, verified group results
(:mod:`p2pfl.federation`), built and verified records (:mod:`p2pfl.ledger`) -- so
that N peers simulated in one process do the work once, not N times.  Each memo is
keyed on the full input it stands for (a hash of the bytes, or the very objects,
held); this module only supplies the container: a capacity (the oldest entry leaves
first), hit and miss counters, and a lock, since a process may drive peers from
several threads (:mod:`p2pfl.embed`).

:class:`IdentityMemo` is the common special case: a value computed from one object,
remembered per object *identity* (a decoded message, a standing) because hashing its
content would cost as much as the computation.

It imports nothing from p2pfl, so every layer may use it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")

__all__ = ["BoundedLru", "IdentityMemo"]


class BoundedLru(Generic[K, V]):
    """At most ``capacity`` entries (0: remembers nothing) and, with ``weigh``, at
    most ``max_weight`` in total (e.g. the bytes of the values: a memo of decoded
    messages is bounded by memory, not only by count); the least recently used leaves
    first.  ``on_evict(key, value)`` is called, under the lock, for each value that
    leaves to make room or is replaced by :meth:`put` (not on :meth:`clear`).  ``get`` counts ``hits`` and
    ``misses``."""

    def __init__(self, capacity: int, *, max_weight: int | None = None,
                 weigh: Callable[[V], int] | None = None,
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if (max_weight is None) != (weigh is None):
            raise ValueError("max_weight and weigh go together")
        self._capacity = capacity
        self._max_weight, self._weigh, self._on_evict = max_weight, weigh, on_evict
        self._weight = 0
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def weight(self) -> int:
        """The total weight held (0 without ``weigh``)."""
        return self._weight

    def get(self, key: K) -> V | None:
        with self._lock:
            v = self._items.get(key)
            if v is None:
                self.misses += 1
            else:
                self.hits += 1
                self._items.move_to_end(key)
            return v

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``key`` (replacing an older value), then drop the
        least recently used entries until both bounds hold -- ``value`` itself too,
        when it alone weighs more than ``max_weight``."""
        with self._lock:
            if self._capacity == 0:
                return
            weigh = self._weigh
            old = self._items.pop(key, None)
            if old is not None:
                if weigh is not None:
                    self._weight -= weigh(old)
                if self._on_evict is not None:
                    self._on_evict(key, old)
            self._items[key] = value
            if weigh is not None:
                self._weight += weigh(value)
            self._shrink()

    def _shrink(self) -> None:
        items, weigh, limit = self._items, self._weigh, self._max_weight
        while items and (len(items) > self._capacity
                         or (limit is not None and self._weight > limit)):
            k, v = items.popitem(last=False)
            if weigh is not None:
                self._weight -= weigh(v)
            if self._on_evict is not None:
                self._on_evict(k, v)

    def resize(self, capacity: int) -> None:
        """Keep at most ``capacity`` entries from now on (0: off)."""
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        with self._lock:
            self._capacity = capacity
            self._shrink()

    def clear(self) -> None:
        """Forget every entry and reset the counters."""
        with self._lock:
            self._items.clear()
            self._weight = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


class IdentityMemo(Generic[T, V]):
    """``value`` per object identity, for immutable objects the peers of a process
    share: a :class:`BoundedLru` keyed by ``id(obj)`` whose entries hold ``obj``, so
    that an identity cannot be reused while it is remembered.  ``weigh`` (with
    ``max_weight``) weighs the *object*.  Values must not be None (None means a miss).
    Only put immutable objects (or values that do not depend on what can change)."""

    def __init__(self, capacity: int, *, max_weight: int | None = None,
                 weigh: Callable[[T], int] | None = None) -> None:
        self._lru: BoundedLru[int, tuple[T, V]] = BoundedLru(
            capacity, max_weight=max_weight,
            weigh=None if weigh is None else (lambda e: weigh(e[0])))

    def get(self, obj: T) -> V | None:
        e = self._lru.get(id(obj))
        return e[1] if e is not None and e[0] is obj else None

    def put(self, obj: T, value: V) -> None:
        self._lru.put(id(obj), (obj, value))

    def clear(self) -> None:
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)
