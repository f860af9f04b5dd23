"""Opening secret-shared values: 32-byte seeds over BIG_PRIME and P31 vectors.

Each function reconstructs from exactly the threshold number of shares, checks every
extra share, and when some are off the polynomial decodes around them (Reed-Solomon,
:mod:`mpc.shamir`) and returns the evaluation points of the bad ones so the caller can
name their senders. Nothing here raises for bad remote data: failures are results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mpc import field, shamir
from mpc.errors import InconsistentShares, NotEnoughShares

__all__ = ["open_seed", "open_vector"]


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


def open_vector(
    points: Sequence[tuple[int, Sequence[int]]], threshold: int
) -> tuple[NDArray[np.int64] | None, frozenset[int]]:
    """(signed values or None, bad points) of a vector shared over P31."""
    if len(points) < threshold:
        return None, frozenset()
    xs = [x for x, _ in points]
    ys = np.array([list(y) for _, y in points], dtype=np.int64)
    try:
        value, bad = shamir.decode_vector(xs, ys, threshold)
    except (NotEnoughShares, InconsistentShares, ValueError):
        return None, frozenset()
    return field.from_field(value), bad
