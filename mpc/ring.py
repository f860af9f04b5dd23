"""The ring Z_2^32 as numpy ``uint32`` vectors with wrapping arithmetic.

Theory of operation
-------------------
Masked inputs of secure aggregation live in Z_2^32: numpy's ``uint32`` addition and
subtraction wrap modulo 2^32 without warnings, which is exactly ring arithmetic.  A
signed integer ``v`` with ``|v| < 2**31`` is stored as its two's complement
``v mod 2**32``; :func:`centered` maps a ring element back to the representative in
``[-2**31, 2**31)``.  The hot paths (:func:`add_into`, :func:`sub_into`) work in place
on a caller-owned accumulator so that no tens-of-MiB temporaries are allocated
(page faults on fresh buffers cost as much as the additions themselves).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["add_into", "centered", "neg", "sub_into", "zeros"]

U32 = NDArray[np.uint32]


def _check_pair(acc: U32, x: U32) -> None:
    if acc.dtype != np.uint32 or x.dtype != np.uint32:
        raise TypeError(f"ring vectors must be uint32, got {acc.dtype} and {x.dtype}")
    if acc.shape != x.shape:
        raise ValueError(f"shape mismatch: {acc.shape} vs {x.shape}")


def zeros(n: int) -> U32:
    """Return the zero vector of length ``n``; ``ValueError`` if ``n < 0``."""
    if n < 0:
        raise ValueError(f"negative length {n}")
    return np.zeros(n, dtype=np.uint32)


def add_into(acc: U32, x: U32) -> U32:
    """``acc += x (mod 2**32)`` in place; returns ``acc``.

    Raises ``TypeError`` unless both are uint32 and ``ValueError`` on a shape mismatch.
    """
    _check_pair(acc, x)
    np.add(acc, x, out=acc)
    return acc


def sub_into(acc: U32, x: U32) -> U32:
    """``acc -= x (mod 2**32)`` in place; returns ``acc``.

    Raises ``TypeError`` unless both are uint32 and ``ValueError`` on a shape mismatch.
    """
    _check_pair(acc, x)
    np.subtract(acc, x, out=acc)
    return acc


def neg(x: U32, out: U32 | None = None) -> U32:
    """Return ``-x (mod 2**32)``, written into ``out`` when given (may be ``x`` itself).

    Raises ``TypeError`` unless the arrays are uint32, ``ValueError`` on a shape mismatch.
    """
    if out is None:
        out = np.empty_like(x)
    _check_pair(out, x)
    np.negative(x, out=out)
    return out


def centered(x: U32) -> NDArray[np.int64]:
    """Return the representatives of ``x`` in ``[-2**31, 2**31)`` as int64 (a new array).

    Raises ``TypeError`` unless ``x`` is uint32.
    """
    if x.dtype != np.uint32:
        raise TypeError(f"ring vectors must be uint32, got {x.dtype}")
    return x.view(np.int32).astype(np.int64)
