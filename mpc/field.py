"""Prime fields: GF(2^31 - 1) (and other primes below 2^31) as int64 vectors, and
a 257-bit prime for single secrets held in Python ints.

Theory of operation
-------------------
Vectors (secret-shared sketches) live in GF(p) for a prime ``p < 2**31``, by default
the Mersenne prime ``P31 = 2**31 - 1``.  Elements are *canonical* int64 values in
``[0, p)``.  A product of two canonical elements is below ``2**62`` and fits int64;
:func:`reduce` brings any non-negative int64 back to ``[0, p)`` — for ``P31`` with two
Mersenne folds ``x = (x & p) + (x >> 31)`` and one conditional subtraction (bit
operations, no division), for other primes with ``%``.

Matrix products (:func:`matmul`) never let a partial sum overflow: operands are split
into 16-bit limbs and multiplied in float64 by BLAS, where every partial sum is an
integer below ``2**53`` and therefore exact, whatever the order of summation, so the
result is deterministic.  (This relies on BLAS doing ordinary float64 products and
sums, as every mainstream BLAS does; the tests check it against big ints.)  When the
inner dimension ``k <= 64`` only the right operand is split
(``(p-1) * (2**16-1) * 64 < 2**53``: two products); otherwise both are split (limb
products below ``2**32``, summed over blocks of at most ``2**21`` terms: four products
per block).  The limb results are reduced and recombined in int64.  Products are
issued to BLAS in blocks small enough to run single-threaded: multithreaded BLAS on
small products is slower, and pathologically so (tens of ms) when the cores are busy.

Signed integers are encoded with the centered representation: :func:`to_field` maps
``v`` with ``|v| <= (p-1)/2`` to ``v mod p``, :func:`from_field` maps ``y`` back to
``y`` if ``y <= (p-1)/2`` else ``y - p``.  Arithmetic on encodings is arithmetic on the
integers as long as the true result stays within ``±(p-1)/2``; beyond that it wraps.
Results that may be larger can be computed modulo several primes (``PRIMES_31``) and
recombined exactly with :func:`crt_centered` (Chinese remainder theorem).

Preconditions: the element-wise helpers (:func:`add`, :func:`sub`, :func:`neg`,
:func:`mul`, :func:`matmul`) trust their inputs to be canonical and do not check them
(they are hot paths); :func:`check_canonical` is the validator used at API
boundaries (for example by :mod:`mpc.shamir` on shares received from peers).

``BIG_PRIME = 2**256 + 297`` is the smallest prime above ``2**256``, so any 32-byte
seed or key is a field element; arithmetic on it uses Python ints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BIG_PRIME",
    "P31",
    "PRIMES_31",
    "add",
    "check_canonical",
    "check_prime",
    "crt_centered",
    "crt_centered_array",
    "from_field",
    "inv",
    "matmul",
    "mul",
    "neg",
    "reduce",
    "sub",
    "to_field",
]

P31 = 2**31 - 1
"""The Mersenne prime 2^31 - 1, default modulus for vectors."""

BIG_PRIME = 2**256 + 297
"""The smallest prime above 2^256: the field for 32-byte secrets."""

PRIMES_31 = (2**31 - 1, 2**31 - 19, 2**31 - 61, 2**31 - 69)
"""The largest primes below 2^31, for computing the same scores modulo several primes
and combining them with :func:`crt_centered` when they may exceed ``±(P31 - 1)/2``."""

I64 = NDArray[np.int64]

_EXACT_K = 64  # inner dimension for the one-sided limb split
_BLOCK_K = 1 << 21  # block of the inner dimension for the two-sided split
_GEMM_BUDGET = 1 << 18  # m*n*k per BLAS call
_GEMV_BUDGET = 9216  # m*n per BLAS call with a single row


def check_prime(p: int) -> None:
    """Raise ``ValueError`` unless ``3 <= p < 2**31`` (the vector moduli supported).

    Primality itself is the caller's promise (``P31`` and other constants are
    verified by the tests).
    """
    if not 3 <= p < 1 << 31:
        raise ValueError(f"vector modulus must be in [3, 2**31), got {p}")


def check_canonical(a: NDArray[np.integer], p: int = P31, what: str = "value") -> I64:
    """Return ``a`` as int64 after checking every entry is in ``[0, p)``.

    Raises ``TypeError`` for a non-integer dtype and ``ValueError`` for an entry
    outside the range (the message names ``what``).
    """
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= p):
        raise ValueError(f"{what} has entries outside [0, {p})")
    return a.astype(np.int64, copy=False)


def reduce(x: I64, p: int = P31, out: I64 | None = None) -> I64:
    """Return ``x mod p`` for int64 ``x`` with ``0 <= x < 2**63`` (into ``out`` if given).

    ``out`` may be ``x`` itself.  Negative inputs give unspecified results.
    """
    if out is None:
        out = np.empty_like(x)
    if p == P31:
        t = x >> 31
        np.bitwise_and(x, P31, out=out)
        out += t
        np.right_shift(out, 31, out=t)
        out &= P31
        out += t
        np.subtract(out, P31, out=out, where=out >= P31)
    else:
        np.remainder(x, p, out=out)
    return out


def add(a: I64, b: I64, p: int = P31) -> I64:
    """Return ``(a + b) mod p`` (broadcasting; canonical inputs)."""
    s = np.add(a, b)
    np.subtract(s, p, out=s, where=s >= p)
    return s


def sub(a: I64, b: I64, p: int = P31) -> I64:
    """Return ``(a - b) mod p`` (broadcasting; canonical inputs)."""
    s = np.subtract(a, b)
    np.add(s, p, out=s, where=s < 0)
    return s


def neg(a: I64, p: int = P31) -> I64:
    """Return ``-a mod p`` (canonical input)."""
    s = np.subtract(p, a)
    s[s == p] = 0
    return s


def mul(a: I64, b: I64, p: int = P31) -> I64:
    """Return ``a * b mod p`` element-wise (broadcasting; canonical inputs)."""
    prod = np.multiply(a, b)
    return reduce(prod, p, out=prod)


def _limb_products(a: I64, b: I64, p: int) -> I64:
    """``a @ b mod p`` for canonical 2-D operands, by exact float64 limb products."""
    m, k = a.shape
    n = b.shape[1]
    out = np.empty((m, n), dtype=np.int64)
    # Column blocks keep every BLAS call small: multithreaded BLAS on tiny products is
    # pathological when the cores are busy (OpenBLAS runs GEMM single-threaded below
    # m*n*k = 2**18 and GEMV below m*n = 9216).
    budget = _GEMV_BUDGET if m == 1 else _GEMM_BUDGET
    if k <= _EXACT_K:
        af = a.astype(np.float64)
        width = max(1, budget // (m * k))
        for c in range(0, n, width):
            bb = b[:, c : c + width]
            lo = (af @ (bb & 0xFFFF).astype(np.float64)).astype(np.int64)
            hi = (af @ (bb >> 16).astype(np.float64)).astype(np.int64)
            reduce(hi, p, out=hi)
            hi <<= 16
            hi += lo
            reduce(hi, p, out=out[:, c : c + width])
        return out
    out[...] = 0
    two16 = (1 << 16) % p
    two32 = (1 << 32) % p
    for start in range(0, k, _BLOCK_K):
        ab = a[:, start : start + _BLOCK_K]
        a0 = (ab & 0xFFFF).astype(np.float64)
        a1 = (ab >> 16).astype(np.float64)
        width = max(1, budget // (m * ab.shape[1]))
        for c in range(0, n, width):
            bb = b[start : start + _BLOCK_K, c : c + width]
            b0 = (bb & 0xFFFF).astype(np.float64)
            b1 = (bb >> 16).astype(np.float64)
            r00 = reduce((a0 @ b0).astype(np.int64), p)
            mid = reduce((a0 @ b1).astype(np.int64), p)
            mid += reduce((a1 @ b0).astype(np.int64), p)
            r11 = reduce((a1 @ b1).astype(np.int64), p)
            # mid < 2p < 2**32, times 2**16 mod p (< 2**31): below 2**63
            mid *= two16
            reduce(mid, p, out=mid)
            r11 *= two32
            reduce(r11, p, out=r11)
            blk = out[:, c : c + width]
            blk += r00
            blk += mid
            blk += r11
            reduce(blk, p, out=blk)
    return out


def matmul(a: I64, b: I64, p: int = P31) -> I64:
    """Return ``a @ b mod p`` for canonical int64 matrices, exactly, without overflow.

    Shapes follow ``numpy.matmul`` for 1-D and 2-D operands (a 1-D left operand is a
    row, a 1-D right operand a column, and the added axis is removed again).
    Raises ``ValueError`` on incompatible shapes or operands with more than 2 axes,
    and as :func:`check_prime` for a bad ``p``.
    """
    check_prime(p)
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise ValueError(f"matmul takes 1-D or 2-D operands, got {a.shape} and {b.shape}")
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    if a2.shape[1] != b2.shape[0]:
        raise ValueError(f"shape mismatch: {a.shape} @ {b.shape}")
    if a2.shape[1] == 0:
        r = np.zeros((a2.shape[0], b2.shape[1]), dtype=np.int64)
    elif b2.shape[1] == 1 and a2.shape[0] * a2.shape[1] > _GEMV_BUDGET:
        h = max(1, _GEMV_BUDGET // a2.shape[1])  # row blocks keep GEMV single-threaded
        r = np.concatenate([_limb_products(a2[i : i + h], b2, p) for i in range(0, a2.shape[0], h)])
    else:
        r = _limb_products(a2, b2, p)
    if a.ndim == 1:
        r = r[0]
    if b.ndim == 1:
        r = r[..., 0]
    return r


def inv(a: int, p: int) -> int:
    """Return the inverse of ``a`` modulo the prime ``p``.

    Raises ``ZeroDivisionError`` if ``a`` is ``0 mod p``.
    """
    a %= p
    if a == 0:
        raise ZeroDivisionError("0 has no inverse modulo p")
    return pow(a, -1, p)


def to_field(x: NDArray[np.integer], p: int = P31) -> I64:
    """Encode signed integers ``x`` (``|x| <= (p-1)/2``) as canonical elements ``x mod p``.

    Raises ``TypeError`` for a non-integer dtype and ``ValueError`` when an entry is
    out of range (the encoding would not be invertible) or ``p`` is not supported.
    """
    check_prime(p)
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iu":
        raise TypeError("to_field takes an integer array")
    half = (p - 1) // 2
    if x.size and (int(x.min()) < -half or int(x.max()) > half):
        raise ValueError(f"entries outside [-{half}, {half}] cannot be encoded mod {p}")
    y = x.astype(np.int64)
    np.add(y, p, out=y, where=y < 0)
    return y


def from_field(y: I64, p: int = P31) -> I64:
    """Decode canonical elements to signed integers in ``[-(p-1)/2, (p-1)/2]``.

    Raises as :func:`check_canonical` when an entry is not canonical.
    """
    check_prime(p)
    y = check_canonical(y, p)
    out = y.copy()
    np.subtract(out, p, out=out, where=out > (p - 1) // 2)
    return out


def crt_centered(residues: Sequence[int], primes: Sequence[int]) -> int:
    """The integer ``v`` with ``|v| <= (M - 1) / 2`` (``M`` the product of the distinct
    primes) and ``v ≡ residues[i] (mod primes[i])``: exact scores from scores opened
    modulo several primes.

    Raises ``ValueError`` for mismatched lengths, no primes, or repeated primes.
    """
    if len(residues) != len(primes) or not primes:
        raise ValueError("need one residue per prime, and at least one prime")
    if len(set(primes)) != len(primes):
        raise ValueError("primes must be distinct")
    modulus = 1
    value = 0
    for r, q in zip(residues, primes, strict=True):
        # value ≡ residues so far (mod modulus); lift it to also match r (mod q)
        step = (r - value) * pow(modulus, -1, q) % q
        value += modulus * step
        modulus *= q
    return value - modulus if value > (modulus - 1) // 2 else value


def crt_centered_array(
    residues: Sequence[NDArray[np.integer]], primes: Sequence[int]
) -> NDArray[np.object_]:
    """Element-wise :func:`crt_centered`: ``residues[i]`` holds values modulo
    ``primes[i]`` (any integer arrays of one shape, reduced with ``%``); returns an
    object array of Python ints ``v`` with ``|v| <= (M - 1) / 2``.

    Raises ``ValueError`` as :func:`crt_centered` and for arrays of different shapes.
    """
    if len(residues) != len(primes) or not primes:
        raise ValueError("need one residue array per prime, and at least one prime")
    if len(set(primes)) != len(primes):
        raise ValueError("primes must be distinct")
    shape = np.shape(residues[0])
    if any(np.shape(r) != shape for r in residues):
        raise ValueError("residue arrays must have one shape")
    modulus = 1
    for q in primes:
        modulus *= q
    acc = np.zeros(shape, dtype=object)
    for r, q in zip(residues, primes, strict=True):
        rest = modulus // q
        coeff = rest * pow(rest, -1, q)  # ≡ 1 (mod q), ≡ 0 (mod the other primes)
        acc = acc + (np.asarray(r).astype(object) % q) * coeff
    acc = acc % modulus
    half = (modulus - 1) // 2
    out: NDArray[np.object_] = np.where(acc > half, acc - modulus, acc)
    return out
