"""One bounded, thread-safe least-recently-used map for the process-wide memos.

Several layers remember the result of a pure, expensive computation per process --
verified signatures (:mod:`p2pfl.identity`), schedules, verified group results
(:mod:`p2pfl.federation`), built and verified records (:mod:`p2pfl.ledger`) -- so
that N peers simulated in one process do the work once, not N times.  Each memo is
keyed on the full input it stands for (a hash of the bytes, or the very objects,
held); this module only supplies the container: a capacity (the oldest entry leaves
first), hit and miss counters, and a lock, since a process may drive peers from
several threads (:mod:`p2pfl.embed`).

It imports nothing from p2pfl, so every layer may use it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["BoundedLru"]


class BoundedLru(Generic[K, V]):
    """At most ``capacity`` entries (0: remembers nothing); the least recently used
    leaves first.  ``get`` counts ``hits`` and ``misses``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def capacity(self) -> int:
        return self._capacity

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
        with self._lock:
            if self._capacity == 0:
                return
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def resize(self, capacity: int) -> None:
        """Keep at most ``capacity`` entries from now on (0: off)."""
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        with self._lock:
            self._capacity = capacity
            while len(self._items) > capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry and reset the counters."""
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)
