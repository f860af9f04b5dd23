"""Split a labelled data set among peers: IID, Dirichlet label skew, quantity skew.

Every partitioner takes the label array (length N), the number of peers and a numpy
``Generator`` (or an int seed) and returns one sorted ``int64`` index array per peer.
The arrays are disjoint and cover ``range(N)``; the result depends only on the
inputs, so every process of a simulation computes the same split from the seed.

* :func:`iid`: a random permutation cut into near-equal pieces.
* :func:`dirichlet`: label skew as in Hsu et al. 2019 ("Measuring the effects of
  non-identical data distribution"): for each class, the peers' shares of that class
  are drawn from Dirichlet(alpha · 1). Small alpha → each peer sees few classes;
  large alpha → close to IID.
* :func:`quantity_skew`: peer *sizes* drawn from Dirichlet(alpha · 1), labels IID.

Both skewed partitioners guarantee ``min_size`` samples per peer. The Dirichlet draw
is done once; peers left below ``min_size`` then receive random samples taken from
the currently largest peer, one at a time (deterministic, always terminates, and
disturbs the skew only for the few starved peers). NIID-Bench's alternative, redrawing
until every peer is large enough, may loop for a very long time at small alpha.
By default ``min_size = min(10, N // n_peers)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from p2pfl.errors import ConfigError

__all__ = [
    "PartitionSpec",
    "dirichlet",
    "iid",
    "label_skew",
    "parse_partition",
    "quantity_skew",
]

RngLike = np.random.Generator | int


def _rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _check(labels: np.ndarray, n_peers: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not isinstance(n_peers, (int, np.integer)) or n_peers < 1:
        raise ConfigError(f"number of peers must be >= 1, got {n_peers!r}")
    if labels.shape[0] < n_peers:
        raise ConfigError(
            f"cannot give each of {n_peers} peers a sample: only {labels.shape[0]} samples"
        )
    return labels


def _min_size(n: int, n_peers: int, min_size: int | None) -> int:
    if min_size is None:
        return max(1, min(10, n // n_peers))
    if min_size < 0 or min_size * n_peers > n:
        raise ConfigError(
            f"min_size={min_size} for {n_peers} peers needs {min_size * n_peers} samples, "
            f"only {n} available"
        )
    return min_size


def _check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def _from_owner(owner: np.ndarray, n_peers: int) -> list[np.ndarray]:
    order = np.argsort(owner, kind="stable")  # indices grouped by peer, ascending inside
    counts = np.bincount(owner, minlength=n_peers)
    return [a.astype(np.int64) for a in np.split(order, np.cumsum(counts)[:-1])]


def _repair(owner: np.ndarray, n_peers: int, min_size: int, rng: np.random.Generator) -> None:
    """Move random samples from the largest peer to starved peers, in place."""
    sizes = np.bincount(owner, minlength=n_peers)
    while sizes.min() < min_size:
        needy = int(np.argmin(sizes))
        donor = int(np.argmax(sizes))
        pool = np.flatnonzero(owner == donor)
        i = pool[rng.integers(pool.shape[0])]
        owner[i] = needy
        sizes[donor] -= 1
        sizes[needy] += 1


def iid(labels: np.ndarray, n_peers: int, rng: RngLike) -> list[np.ndarray]:
    """Shuffle and cut into ``n_peers`` pieces whose sizes differ by at most one."""
    labels = _check(labels, n_peers)
    perm = _rng(rng).permutation(labels.shape[0])
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, n_peers)]


def dirichlet(
    labels: np.ndarray,
    n_peers: int,
    alpha: float,
    rng: RngLike,
    *,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Label skew: each class is split among peers with Dirichlet(alpha) shares.

    Raises :class:`~p2pfl.errors.ConfigError` for alpha <= 0 or an infeasible
    ``min_size``.
    """
    labels = _check(labels, n_peers)
    alpha = _check_alpha(alpha)
    n = labels.shape[0]
    floor = _min_size(n, n_peers, min_size)
    gen = _rng(rng)
    owner = np.empty(n, dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        gen.shuffle(idx)
        shares = gen.dirichlet(np.full(n_peers, alpha))  # (P,)
        cuts = (np.cumsum(shares)[:-1] * idx.shape[0]).astype(np.int64)
        for peer, chunk in enumerate(np.split(idx, cuts)):
            owner[chunk] = peer
    _repair(owner, n_peers, floor, gen)
    return _from_owner(owner, n_peers)


def quantity_skew(
    labels: np.ndarray,
    n_peers: int,
    alpha: float,
    rng: RngLike,
    *,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Size skew: peer sizes are ``min_size`` plus a Dirichlet(alpha)-multinomial
    share of the rest; which samples go where is uniform (labels stay IID).
    """
    labels = _check(labels, n_peers)
    alpha = _check_alpha(alpha)
    n = labels.shape[0]
    floor = _min_size(n, n_peers, min_size)
    gen = _rng(rng)
    shares = gen.dirichlet(np.full(n_peers, alpha))  # (P,)
    sizes = floor + gen.multinomial(n - floor * n_peers, shares)  # (P,), sums to N
    perm = gen.permutation(n)
    return [np.sort(p).astype(np.int64) for p in np.split(perm, np.cumsum(sizes)[:-1])]


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each peer's label distribution and the
    global one: 0 for perfectly IID, close to 1 when peers hold disjoint classes.
    Peers without samples are ignored."""
    labels = np.asarray(labels)
    classes, inv = np.unique(labels, return_inverse=True)
    k = classes.shape[0]
    global_dist = np.bincount(inv, minlength=k) / labels.shape[0]
    dists = [
        0.5 * np.abs(np.bincount(inv[p], minlength=k) / p.shape[0] - global_dist).sum()
        for p in parts
        if p.shape[0] > 0
    ]
    return float(np.mean(dists)) if dists else 0.0


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition option; call it like the partitioner functions."""

    kind: Literal["iid", "dirichlet", "quantity"]
    alpha: float | None = None

    def __call__(
        self, labels: np.ndarray, n_peers: int, rng: RngLike, *, min_size: int | None = None
    ) -> list[np.ndarray]:
        if self.kind == "iid":
            return iid(labels, n_peers, rng)
        assert self.alpha is not None
        if self.kind == "dirichlet":
            return dirichlet(labels, n_peers, self.alpha, rng, min_size=min_size)
        return quantity_skew(labels, n_peers, self.alpha, rng, min_size=min_size)

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha!r}"


_USAGE = (
    "expected 'iid', 'dirichlet:ALPHA' or 'quantity:ALPHA' with ALPHA > 0 (e.g. 'dirichlet:0.5')"
)


def parse_partition(spec: str | PartitionSpec) -> PartitionSpec:
    """Parse ``'iid' | 'dirichlet:A' | 'quantity:A'``.

    Raises :class:`~p2pfl.errors.ConfigError` naming the bad input otherwise.
    """
    if isinstance(spec, PartitionSpec):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"partition must be a string, got {spec!r}; {_USAGE}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "iid":
        if sep:
            raise ConfigError(f"partition {spec!r}: 'iid' takes no parameter")
        return PartitionSpec("iid")
    if kind not in ("dirichlet", "quantity"):
        raise ConfigError(f"unknown partition {spec!r}; {_USAGE}")
    if not sep or not arg.strip():
        raise ConfigError(f"partition {spec!r} needs a parameter; {_USAGE}")
    try:
        alpha = float(arg)
    except ValueError:
        raise ConfigError(
            f"partition {spec!r}: {arg.strip()!r} is not a number; {_USAGE}"
        ) from None
    if not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"partition {spec!r}: alpha must be finite and > 0; {_USAGE}")
    return PartitionSpec(kind, alpha)  # type: ignore[arg-type]
