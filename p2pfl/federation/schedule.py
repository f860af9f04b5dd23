"""The round schedule: beacon, cohort, groups and aggregators, as pure functions.

Theory of operation
-------------------
There is no coordinator: every peer computes the schedule of round r itself, from
inputs all honest peers share, and gets the same answer bit for bit.

* **Beacon.** ``b_0 = H("beacon/0" ‖ federation id)`` and
  ``b_r = H(b_{r-1} ‖ model_hash_{r-1} ‖ ledger_head)`` where ``model_hash_{r-1}`` is
  the hash of the global model that round r starts from and ``ledger_head`` the head
  of the round-record chain (32 zero bytes until the ledger exists).  H is BLAKE2b-256
  over length-prefixed parts, so no two part lists collide.
* **Cohort.** From the candidate set (the live peers, which the caller must take from
  agreed data such as the previous round record, never from a local view alone), the
  cohort is drawn from the beacon.  Uniform: peers sorted by ``H(b_r ‖ "cohort" ‖ id)``,
  the first ``size`` taken.  Weighted (reputation): successive sampling without
  replacement, each draw ``H(b_r ‖ "cohort-w" ‖ i) mod W`` over the remaining
  integer weights in peer-id order.  That is the distribution Efraimidis–Spirakis keys
  ``u^(1/w)`` give, but in exact integer arithmetic: E–S needs ``pow``/``log``, whose
  last bit differs between libms, and one flipped comparison would split the network.
  Weights are floats, converted exactly to integers in units of 2^-32.
* **Groups.** The cohort is permuted by ``H(b_r ‖ "group" ‖ id)`` and cut into groups
  of ``group_size``; a trailing group smaller than ``min_group_size`` is merged into
  the previous one; a cohort smaller than ``group_size`` is one group; a cohort
  smaller than ``min_group_size`` forms no group at all (the round is skipped rather
  than aggregating too few updates).
* **Aggregators.** In group i, members are ranked by ``H(b_r ‖ "agg" ‖ i ‖ id)``; the
  first ``aggregators`` are the group's aggregators in failover order (rank 0 is the
  primary; rank j takes over when ranks < j are silent past their deadlines).
* A group's ``members`` are kept sorted by peer id: that is the fixed order in which
  aggregators sum.  :attr:`RoundSchedule.digest` commits to the whole schedule; group
  results carry it, so peers with diverging inputs notice instead of forking silently.

:func:`schedule_round` is a pure function of (federation, round, beacon, the set of
candidates, their weights), and every peer of a round computes it (the ledger again
when it verifies a record): a small process-wide memo keyed by a hash of exactly those
inputs returns the same immutable :class:`RoundSchedule` to every caller, so N peers
simulated in one process compute it once.  Keying on the inputs' content (the weights
bit for bit, not the weight function) keeps it exact: differing inputs never share a
schedule.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Final

from p2pfl._lru import BoundedLru, IdentityMemo
from p2pfl.wire import PeerId

if TYPE_CHECKING:
    from .config import Federation

__all__ = [
    "NO_LEDGER",
    "Group",
    "RoundSchedule",
    "WeightFn",
    "aggregator_order",
    "initial_beacon",
    "next_beacon",
    "schedule_round",
    "select_cohort",
    "split_groups",
]

NO_LEDGER: Final = bytes(32)
BEACON_BYTES: Final = 32
_WEIGHT_UNIT: Final = 2**32
_MEMO_MAX: Final = 64  # schedules remembered (a few rounds x a few candidate sets)

WeightFn = Callable[[PeerId], float]


def hash_parts(*parts: bytes) -> bytes:
    """BLAKE2b-256 of length-prefixed parts (unambiguous concatenation).

    The one hash for beacons, contexts and record ids across the federation and
    ledger layers."""
    h = hashlib.blake2b(digest_size=32)
    for p in parts:
        h.update(struct.pack("<Q", len(p)))
        h.update(p)
    return h.digest()


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def initial_beacon(federation_id: bytes) -> bytes:
    """``b_0``, derived from the federation id."""
    return hash_parts(b"p2pfl/beacon/0", federation_id)


def next_beacon(prev: bytes, model_hash: bytes, ledger_head: bytes = NO_LEDGER) -> bytes:
    """``b_r = H(b_{r-1} ‖ model_hash_{r-1} ‖ ledger_head)``.

    Raises ``ValueError`` unless every input is 32 bytes.
    """
    for name, v in (("beacon", prev), ("model hash", model_hash), ("ledger head", ledger_head)):
        if len(v) != 32:
            raise ValueError(f"{name} must be 32 bytes, got {len(v)}")
    return hash_parts(b"p2pfl/beacon", prev, model_hash, ledger_head)


def _key(beacon: bytes, tag: bytes, peer: PeerId, extra: bytes = b"") -> bytes:
    return hash_parts(beacon, tag, extra, peer.raw)


def _distinct(candidates: Iterable[PeerId]) -> list[PeerId]:
    return sorted(set(candidates))


def select_cohort(
    beacon: bytes,
    candidates: Iterable[PeerId],
    size: int,
    weight: WeightFn | None = None,
) -> tuple[PeerId, ...]:
    """Draw up to ``size`` distinct peers from ``candidates`` (order and duplicates
    of the input do not matter).

    With ``weight`` (a float >= 0 per peer; 0 = never selected), the draw is weighted
    sampling without replacement. Returns the peers in selection order. Raises
    ``ValueError`` for a negative ``size`` or a negative or non-finite weight.
    """
    if size < 0:
        raise ValueError(f"cohort size must be >= 0, got {size}")
    peers = _distinct(candidates)
    if weight is None:
        peers.sort(key=lambda p: _key(beacon, b"cohort", p))
        return tuple(peers[:size])
    weights: list[int] = []
    for p in peers:
        w = weight(p)
        if not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of {p.short()} must be a finite number >= 0, got {w!r}")
        weights.append(int(w * _WEIGHT_UNIT))  # exact for floats: a power-of-two scale
    pool = [(p, w) for p, w in zip(peers, weights, strict=True) if w > 0]
    total = sum(w for _, w in pool)
    chosen: list[PeerId] = []
    for i in range(min(size, len(pool))):
        r = int.from_bytes(hash_parts(beacon, b"cohort-w", _u64(i)), "little") % total
        acc = 0
        for j, (p, w) in enumerate(pool):
            acc += w
            if r < acc:
                chosen.append(p)
                total -= w
                del pool[j]
                break
    return tuple(chosen)


def split_groups(
    members: Sequence[PeerId], group_size: int, min_group_size: int
) -> tuple[tuple[PeerId, ...], ...]:
    """Cut ``members`` (in the given order) into groups; see the module docstring.

    Raises ``ValueError`` unless ``1 <= min_group_size <= group_size``.
    """
    if not 1 <= min_group_size <= group_size:
        raise ValueError(f"need 1 <= min_group_size <= group_size, got {min_group_size}, {group_size}")
    n = len(members)
    if n < min_group_size:
        return ()
    chunks = [tuple(members[i : i + group_size]) for i in range(0, n, group_size)]
    if len(chunks) > 1 and len(chunks[-1]) < min_group_size:
        tail = chunks.pop()
        chunks[-1] = chunks[-1] + tail
    return tuple(chunks)


def aggregator_order(beacon: bytes, group_index: int, members: Iterable[PeerId], count: int) -> tuple[PeerId, ...]:
    """The first ``count`` members of group ``group_index`` in aggregator rank order."""
    ranked = sorted(set(members), key=lambda p: _key(beacon, b"agg", p, _u64(group_index)))
    return tuple(ranked[:count])


@dataclass(frozen=True)
class Group:
    """One group: ``members`` sorted by peer id, ``aggregators`` in failover order."""

    index: int
    members: tuple[PeerId, ...]
    aggregators: tuple[PeerId, ...]
    _member_set: frozenset[PeerId] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_member_set", frozenset(self.members))

    def __contains__(self, peer: object) -> bool:
        return peer in self._member_set

    def __len__(self) -> int:
        return len(self.members)

    def rank(self, peer: PeerId) -> int | None:
        """The aggregator rank of ``peer`` (0 = primary), or None."""
        try:
            return self.aggregators.index(peer)
        except ValueError:
            return None


@dataclass(frozen=True)
class RoundSchedule:
    """Who does what in round ``round``; equal inputs give equal schedules."""

    round: int
    beacon: bytes
    cohort: tuple[PeerId, ...]  # selection order
    groups: tuple[Group, ...]

    @cached_property
    def digest(self) -> bytes:
        """BLAKE2b-256 commitment to the round, beacon and every group."""
        parts = [b"p2pfl/schedule/1", _u64(self.round), self.beacon, _u64(len(self.groups))]
        for g in self.groups:
            parts += [_u64(g.index), b"".join(p.raw for p in g.members),
                      b"".join(p.raw for p in g.aggregators)]
        return hash_parts(*parts)

    @cached_property
    def _by_peer(self) -> dict[PeerId, Group]:
        return {p: g for g in self.groups for p in g.members}

    def group_of(self, peer: PeerId) -> Group | None:
        """The group ``peer`` belongs to this round, or None (not in the cohort)."""
        return self._by_peer.get(peer)


_memo: BoundedLru[bytes, RoundSchedule] = BoundedLru(_MEMO_MAX)


def _memo_key(federation_id: bytes, round: int, beacon: bytes, raws: bytes, n: int,
              weights: Sequence[float] | None) -> bytes:
    """BLAKE2b-256 of every input the schedule depends on; ``raws``: the admitted
    candidates' ids, sorted and concatenated."""
    h = hashlib.blake2b(digest_size=32, person=b"p2pfl/sched-memo")
    h.update(federation_id)
    h.update(struct.pack("<QQ", round, n))
    h.update(beacon)
    h.update(raws)
    if weights is None:
        h.update(b"uniform")
    else:
        h.update(b"weighted")
        h.update(struct.pack(f"<{len(weights)}d", *weights))
    return h.digest()


_ADMITTED: IdentityMemo[Iterable[PeerId], tuple[bytes, tuple[PeerId, ...], bytes]] = IdentityMemo(8)


def _admitted(federation: Federation,
              candidates: Iterable[PeerId]) -> tuple[tuple[PeerId, ...], bytes]:
    """The admitted candidates, sorted, and their ids concatenated.  Remembered for an
    immutable candidate collection (a tuple or frozenset, e.g. the member list every
    peer of a process passes) by its identity."""
    frozen = type(candidates) in (tuple, frozenset)
    if frozen:
        e = _ADMITTED.get(candidates)
        if e is not None and e[0] == federation.id:
            return e[1], e[2]
    admitted = tuple(sorted({p for p in candidates if federation.membership.admits(p)},
                            key=lambda p: p.raw))
    raws = b"".join(p.raw for p in admitted)
    if frozen:
        _ADMITTED.put(candidates, (federation.id, admitted, raws))
    return admitted, raws


def schedule_round(
    federation: Federation,
    round: int,
    beacon: bytes,
    candidates: Iterable[PeerId],
    weight: WeightFn | None = None,
) -> RoundSchedule:
    """The schedule of ``round``: cohort, groups and aggregators.

    ``candidates`` are filtered by the membership policy (a permissioned federation
    never schedules an unlisted peer). Equal inputs return the same (immutable)
    schedule object (see the module docstring). Raises ``ValueError`` for a
    malformed beacon, negative round, or a bad weight.
    """
    if len(beacon) != BEACON_BYTES:
        raise ValueError(f"beacon must be {BEACON_BYTES} bytes")
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    admitted, raws = _admitted(federation, candidates)
    weights: list[float] | None = None
    if weight is not None:
        weights = [weight(p) for p in admitted]
        if not all(type(w) in (int, float) and math.isfinite(w) and w >= 0 for w in weights):
            # select_cohort names the bad weight
            return _schedule(federation, round, beacon, admitted, weight)
    key = _memo_key(federation.id, round, beacon, raws, len(admitted), weights)
    sched = _memo.get(key)
    if sched is None:
        fixed = None if weights is None else dict(zip(admitted, weights, strict=True)).__getitem__
        sched = _schedule(federation, round, beacon, admitted, fixed)
        _memo.put(key, sched)
    return sched


def _schedule(federation: Federation, round: int, beacon: bytes, admitted: Sequence[PeerId],
              weight: WeightFn | None) -> RoundSchedule:
    c = federation.cohort
    cohort = select_cohort(beacon, admitted, c.size, weight)
    order = sorted(cohort, key=lambda p: _key(beacon, b"group", p))
    groups = tuple(
        Group(i, tuple(sorted(members)), aggregator_order(beacon, i, members, c.aggregators))
        for i, members in enumerate(split_groups(order, c.group_size, c.min_group_size))
    )
    members = {p for g in groups for p in g.members}
    in_groups = tuple(p for p in cohort if p in members)
    return RoundSchedule(round, beacon, in_groups, groups)
