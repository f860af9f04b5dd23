"""Opening secret-shared values: 32-byte seeds over BIG_PRIME, vectors and many
scalars modulo small primes, and their exact recombination across primes.

Each function reconstructs from exactly the threshold number of shares, checks every
extra share, and when some are off the polynomial decodes around them (Reed-Solomon,
:mod:`mpc.shamir`) and returns the evaluation points of the bad ones so the caller can
name their senders. Nothing here raises for bad remote data: failures are results.

:func:`open_many` opens many scalars at once (sketch scores: one per owner, or one
per pair of owners): scalars shared by the same holders are decoded as one vector,
so one decode names a lying holder for all of them; a group that cannot be decoded
as a whole (different liars on different scalars) is opened scalar by scalar.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from mpc import field, shamir
from mpc.errors import InconsistentShares, NotEnoughShares

__all__ = ["exact", "exact_array", "open_many", "open_mod", "open_seed"]

K = TypeVar("K", bound=Hashable)


def open_seed(
    points: Sequence[tuple[int, int]], threshold: int
) -> tuple[bytes | None, frozenset[int], str]:
    """(32-byte secret or None, bad points, why it failed)."""
    try:
        value, bad = shamir.decode_int(points, threshold)
    except NotEnoughShares:
        return None, frozenset(), "not enough shares"
    except InconsistentShares:
        return None, frozenset(), "inconsistent shares, culprits unknown"
    except ValueError as e:
        return None, frozenset(), f"bad shares: {e}"
    if value >> 256:
        return None, bad, "the secret does not fit 32 bytes"
    return value.to_bytes(32, "big"), bad, ""


def open_mod(
    xs: Sequence[int], ys: NDArray[np.int64], threshold: int, p: int
) -> tuple[NDArray[np.int64] | None, frozenset[int]]:
    """(canonical values modulo ``p`` or None, bad points) of vectors shared over
    GF(p): row i of ``ys`` (shape ``(m, d)``) is holder ``xs[i]``'s share."""
    if len(xs) < threshold:
        return None, frozenset()
    try:
        value, bad = shamir.decode_vector(xs, ys, threshold, p=p)
    except (NotEnoughShares, InconsistentShares, ValueError):
        return None, frozenset()
    return value, bad


def open_many(
    entries: Mapping[K, Sequence[tuple[int, int]]], threshold: int, p: int
) -> tuple[dict[K, int], frozenset[int]]:
    """Open scalars shared over GF(p): ``entries[key]`` are its ``(x, share)`` points.

    Returns (canonical value of each key that opened, points named as bad). Keys with
    the same holders are decoded together; when that fails they are retried one by
    one (see the module docstring)."""
    groups: dict[tuple[int, ...], list[K]] = {}
    for key, pts in entries.items():
        groups.setdefault(tuple(x for x, _ in pts), []).append(key)
    values: dict[K, int] = {}
    bad: set[int] = set()
    for xs, keys in groups.items():
        if len(xs) < threshold:
            continue
        ys = np.array([[y for _, y in entries[k]] for k in keys], dtype=np.int64).T  # (m, K)
        got, b = open_mod(xs, ys, threshold, p)
        if got is not None:
            bad |= b
            values.update((k, int(v)) for k, v in zip(keys, got.tolist(), strict=True))
            continue
        for i, k in enumerate(keys):
            one, b = open_mod(xs, ys[:, i : i + 1], threshold, p)
            bad |= b
            if one is not None:
                values[k] = int(one[0])
    return values, frozenset(bad)


def exact(residues: Sequence[int], moduli: Sequence[int]) -> int:
    """The centered CRT recombination of one value's residues."""
    return field.crt_centered(residues, moduli)


def exact_array(
    residues: Sequence[NDArray[np.int64]], moduli: Sequence[int]
) -> NDArray[np.int64] | NDArray[np.object_]:
    """Element-wise :func:`exact`: int64 when every value fits, else Python ints."""
    big = field.crt_centered_array(residues, moduli)
    lim = 1 << 63
    if all(-lim <= int(v) < lim for v in big.tolist()):
        return big.astype(np.int64)
    return big
