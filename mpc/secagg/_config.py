"""Group configuration, the stage enum, the deadline schedule and the neighbour plan.

Everything here is agreed by every party of a group before the protocol starts
(it follows from the federation file and the round beacon), so two honest machines
built from equal configurations compute equal plans.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property

from mpc import graph
from mpc.field import PRIMES_31

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

    ``rows``: length r of each member's integer sketch z_u (int64 entries with
    ``|z_i| < 2**62``). ``threshold``: shares needed to open a linear score; the
    degree-2 scores (||z_u||^2, <z_u, z_v>) need ``2 * threshold - 1`` validators.
    ``with_reference``: validators also open <z_u, z_ref> for a public reference
    sketch given to every member (a fixed vector or a function of the sketch seed).
    ``primes``: the scores are computed modulo each of the first ``primes`` primes of
    :data:`mpc.field.PRIMES_31` (independent sharings) and recombined by the Chinese
    remainder theorem, so every opened value is the exact integer as long as its
    magnitude is at most :attr:`capacity` (beyond, it silently wraps modulo
    :attr:`modulus`). ``pairwise``: validators also open <z_u, z_v> for every pair of
    survivors (clone / Sybil similarity).

    Choosing ``primes``: take a bound ``B`` on every |z_i| the protocol must score
    exactly and use ``primes_for(max(rows * B**2, rows * B * R, n * B))`` (``R`` bounds
    the reference's entries, ``n`` the group size; the last term covers the binding
    sum). For ``z = S x`` with a :class:`mpc.sketch.SketchMap` ``S``, ``S.norm_bound(q)``
    is a tighter exact bound on ||z||^2 and on |<z_u, z_v>| for ``|x_i| <= q``, and
    ``S.max_abs(q)`` a bound on each |z_i|. A member's quantized input is not
    range-checked, so use the worst case of the encoding (``q = 2**31`` for signed
    uint32 inputs) unless scores of malicious inputs may wrap: e.g. ``dim = 10**6``,
    ``rows = 1024``, ``nnz = 1`` gives ``norm_bound(2**31) < 2**92``: 3 primes (4 for
    margin), and ``with_reference`` needs its own term.
    """

    rows: int
    threshold: int
    with_reference: bool = False
    primes: int = 1
    pairwise: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.rows <= 1 << 16:
            raise ValueError("sketch rows must be in [1, 65536]")
        if self.threshold < 1:
            raise ValueError("sketch threshold must be >= 1")
        if isinstance(self.primes, bool) or not 1 <= self.primes <= len(PRIMES_31):
            raise ValueError(f"sketch primes must be in [1, {len(PRIMES_31)}]")

    @property
    def moduli(self) -> tuple[int, ...]:
        """The primes the sketches are shared modulo (the first ``primes`` of PRIMES_31)."""
        return PRIMES_31[: self.primes]

    @property
    def modulus(self) -> int:
        """M: the product of :attr:`moduli`."""
        return math.prod(self.moduli)

    @property
    def capacity(self) -> int:
        """(M - 1) // 2: the largest magnitude an opened value can have and be exact."""
        return (self.modulus - 1) // 2

    @staticmethod
    def primes_for(bound: int) -> int:
        """The fewest primes whose capacity is at least ``bound`` (see the class doc).

        Raises ``ValueError`` if even all of :data:`mpc.field.PRIMES_31` fall short.
        """
        for k in range(1, len(PRIMES_31) + 1):
            if (math.prod(PRIMES_31[:k]) - 1) // 2 >= bound:
                return k
        raise ValueError(f"no supported number of primes holds values up to {bound}")

    @property
    def n_scores(self) -> int:
        """Score shares per owner in a ``ScoreShares``: ||z||^2 modulo each prime, then
        <z, ref> modulo each prime when enabled."""
        return self.primes * (2 if self.with_reference else 1)

    def zero_count(self, survivors: int) -> int:
        """Zero-sharings an owner deals per prime when ``survivors`` members share
        sketches: one for its norm, plus one per other survivor when pairwise."""
        return 1 + (survivors - 1 if self.pairwise else 0)


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
