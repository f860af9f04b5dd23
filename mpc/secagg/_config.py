"""Group configuration, the stage enum, the deadline schedule and the neighbour plan.

Everything here is agreed by every party of a group before the protocol starts
(it follows from the federation file and the round beacon), so two honest machines
built from equal configurations compute equal plans.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from mpc import graph

__all__ = [
    "GroupConfig",
    "Phase",
    "Plan",
    "SketchConfig",
    "Stage",
    "Timeouts",
]

MAX_CONTEXT_BYTES = 1024
MAX_PARTIES = 1 << 16


class Stage(enum.IntEnum):
    """The protocol stages of DESIGN.md ("Secure aggregation")."""

    KEYS = 0
    SHARES = 1
    MASKED = 2
    SKETCH = 3
    CONSISTENCY = 4
    UNMASK = 5
    OUTPUT = 6


class Phase(enum.Enum):
    """Points of the absolute schedule; each closes one collection window."""

    KEYS = "keys"  # aggregators stop accepting round keys
    SHARES = "shares"  # ... encrypted key shares
    MASKED = "masked"  # ... masked inputs (the commitment deadline)
    SKETCH_SHARES = "sketch_shares"  # ... encrypted sketch shares
    SCORES = "scores"  # ... score shares from the validators
    CONSISTENCY = "consistency"  # ... consistency signatures
    UNMASK = "unmask"  # ... unmask shares


@dataclass(frozen=True)
class Timeouts:
    """Length in seconds of each collection window, and the grace members allow.

    Deadlines are absolute: window ``i`` closes at ``start + sum(windows[:i+1])``
    (aggregators close a window earlier when everything expected has arrived). A
    member waiting for the output of window ``i`` gives up at its close plus
    ``grace``. ``consistency`` must exceed ``grace``: members sign only after the
    last announcement, which they may wait for until the previous close plus grace.
    """

    keys: float = 10.0
    shares: float = 10.0
    masked: float = 60.0
    sketch_shares: float = 10.0
    scores: float = 10.0
    consistency: float = 20.0
    unmask: float = 20.0
    grace: float = 5.0

    def __post_init__(self) -> None:
        for name in ("keys", "shares", "masked", "sketch_shares", "scores", "unmask"):
            if not getattr(self, name) > 0:
                raise ValueError(f"timeout {name} must be positive")
        if not self.grace >= 0:
            raise ValueError("grace must be >= 0")
        if not self.consistency > self.grace:
            raise ValueError("consistency window must exceed the grace")


@dataclass(frozen=True)
class SketchConfig:
    """The optional sketch stage (DESIGN.md, "Detection without seeing updates").

    ``rows``: length r of each member's integer sketch z_u (entries must satisfy
    ``|z| <= (P31 - 1) / 2``). ``threshold``: shares needed to open a linear score;
    the degree-2 score (||z_u||^2) needs ``2 * threshold - 1`` validators.
    ``with_reference``: validators also return shares of <z_u, ref> for a public
    reference vector given to every member.
    """

    rows: int
    threshold: int
    with_reference: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.rows <= 1 << 16:
            raise ValueError("sketch rows must be in [1, 65536]")
        if self.threshold < 1:
            raise ValueError("sketch threshold must be >= 1")

    @property
    def n_scores(self) -> int:
        """Scalars opened per member: ||z||^2, then <z, ref> when enabled."""
        return 2 if self.with_reference else 1


@dataclass(frozen=True)
class GroupConfig:
    """What every party of one group agrees on before stage 0.

    ``context`` binds keys, shares and masks to (federation id, round, group id); it is
    opaque bytes here. Members are indices ``0..n-1``; aggregators are *party* indices:
    ``i < n`` is a member that also aggregates, ``i >= n`` an outside party. The first
    aggregator is the primary (it relays and decides the sets), the others replicas.
    ``k``: neighbours per member in the SecAgg+ graph (``None``: all pairs).
    ``threshold``: Shamir shares needed to reconstruct a member's seeds; must not
    exceed the smallest holder set (``k + 1`` or ``n``). ``min_included``: the
    smallest number of included members whose sum may be output (defaults to
    ``threshold``). ``quorum``: announcements (and signature bundles) a member needs
    before revealing anything (defaults to all aggregators).
    """

    context: bytes
    n: int
    threshold: int
    dim: int
    aggregators: tuple[int, ...] = (0, 1)
    k: int | None = None
    min_included: int | None = None
    quorum: int | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    sketch: SketchConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.context, bytes) or len(self.context) > MAX_CONTEXT_BYTES:
            raise ValueError("context must be bytes of at most 1024 bytes")
        if not 1 <= self.n <= MAX_PARTIES:
            raise ValueError("group size out of range")
        if self.dim < 1:
            raise ValueError("dim must be >= 1")
        aggs = self.aggregators
        if not aggs or len(set(aggs)) != len(aggs):
            raise ValueError("aggregators must be distinct and at least one")
        if any(not 0 <= a < MAX_PARTIES for a in aggs):
            raise ValueError("aggregator party index out of range")
        if self.k is not None and self.k < 1:
            raise ValueError("k must be >= 1 (or None for all pairs)")
        holders = min(len(h) for h in self.plan.holders)
        if not 1 <= self.threshold <= holders:
            raise ValueError(f"threshold must be in [1, {holders}] (smallest holder set)")
        if self.min_included is not None and not 1 <= self.min_included <= self.n:
            raise ValueError("min_included must be in [1, n]")
        if self.quorum is not None and not 1 <= self.quorum <= len(aggs):
            raise ValueError("quorum must be in [1, number of aggregators]")
        if self.sketch is not None and 2 * self.sketch.threshold - 1 > self.n:
            raise ValueError("sketch needs 2 * threshold - 1 <= n validators")

    @property
    def primary(self) -> int:
        """Party index of the primary aggregator."""
        return self.aggregators[0]

    @property
    def min_sum(self) -> int:
        """Smallest included set whose sum may be output."""
        return self.threshold if self.min_included is None else self.min_included

    @property
    def needed_announcements(self) -> int:
        """Announcements (and signature bundles) a member waits for."""
        return len(self.aggregators) if self.quorum is None else self.quorum

    def deadline(self, start: float, phase: Phase) -> float:
        """Absolute close of ``phase`` for a round that started at ``start``."""
        t = self.timeouts
        windows = [(Phase.KEYS, t.keys), (Phase.SHARES, t.shares), (Phase.MASKED, t.masked)]
        if self.sketch is not None:
            windows += [(Phase.SKETCH_SHARES, t.sketch_shares), (Phase.SCORES, t.scores)]
        windows += [(Phase.CONSISTENCY, t.consistency), (Phase.UNMASK, t.unmask)]
        total = start
        for ph, length in windows:
            total += length
            if ph is phase:
                return total
        raise ValueError(f"phase {phase} is not used by this configuration")

    @property
    def announce_phase(self) -> Phase:
        """The window after which the aggregators announce the sets."""
        return Phase.SCORES if self.sketch is not None else Phase.MASKED

    @cached_property
    def plan(self) -> Plan:
        """The neighbour graph and holder sets (computed once)."""
        return Plan.build(self.n, self.k, self.context)


@dataclass(frozen=True)
class Plan:
    """SecAgg+ neighbour graph: ``neighbours[u]`` excludes u, ``holders[u]`` includes it.

    A member's seeds are Shamir-shared among its holders; its pairwise masks are with
    its neighbours. The graph is symmetric and derived from the context, so every
    party computes the same one.
    """

    neighbours: tuple[frozenset[int], ...]
    holders: tuple[frozenset[int], ...]

    @staticmethod
    def build(n: int, k: int | None, context: bytes) -> Plan:
        """Build the plan; all pairs when ``k`` is None or ``k >= n - 1``."""
        if k is None or k >= n - 1:
            everyone = frozenset(range(n))
            nb = tuple(everyone - {u} for u in range(n))
        else:
            seed = hashlib.sha256(b"p2pfl/secagg/graph\x00" + context).digest()
            nb = tuple(frozenset(s) - {u} for u, s in enumerate(graph.neighbours(n, k, seed)))
            for u in range(n):
                for v in nb[u]:
                    if u not in nb[v] or not 0 <= v < n:
                        raise ValueError("neighbour graph is not symmetric")
        return Plan(neighbours=nb, holders=tuple(nb[u] | {u} for u in range(n)))
