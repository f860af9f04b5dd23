"""Polynomial machinery behind :mod:`mpc.shamir` (private).

Theory of operation
-------------------
Shamir shares of a secret under a degree ``< k`` polynomial, evaluated at ``m``
distinct points, form a Reed–Solomon codeword of length ``m`` and dimension ``k``.

* Interpolation uses Lagrange weights ``λ_i(a) = Π_{j≠i} (a - x_j) / (x_i - x_j)``
  so that ``f(a) = Σ_i λ_i(a) f(x_i)``.  Weights depend only on the point set and the
  target, are computed with one modular inversion (batch inversion) and cached.
* Decoding (finding wrong shares) is Berlekamp–Welch: with ``e = (m - k) // 2`` it
  solves ``Q(x_i) = y_i E(x_i)`` for a monic error locator ``E`` of degree ``e`` and
  ``Q`` of degree ``< k + e`` by Gaussian elimination; any solution gives ``Q / E``
  equal to the unique polynomial within distance ``e`` when one exists, because two
  solutions satisfy ``Q1 E2 = Q2 E1`` (a polynomial of degree ``< m`` with ``m`` roots).
  Cost ``O(m^3)`` field operations: a failure path only.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray


@lru_cache(maxsize=1024)
def barycentric_weights(xs: tuple[int, ...], p: int) -> tuple[int, ...]:
    """``w_i = 1 / Π_{j≠i} (x_i - x_j) mod p`` for distinct points (``O(k^2)``, cached)."""
    dens = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if j != i:
                den = den * (xi - xj) % p
        dens.append(den)
    return tuple(batch_inverse(dens, p))


@lru_cache(maxsize=8192)
def lagrange_weights(xs: tuple[int, ...], at: int, p: int) -> tuple[int, ...]:
    """Weights ``λ_i(at)`` for the distinct points ``xs`` modulo the prime ``p``.

    ``λ_i(at) = w_i Π_j (at - x_j) / (at - x_i)`` with the barycentric weights ``w``:
    ``O(k)`` per target once ``w`` is cached.
    """
    diffs = [(at - x) % p for x in xs]
    if 0 in diffs:  # the target is one of the points: a unit vector
        return tuple(1 if d == 0 else 0 for d in diffs)
    full = 1
    for d in diffs:
        full = full * d % p
    w = barycentric_weights(xs, p)
    invs = batch_inverse(diffs, p)
    return tuple(full * wi % p * inv % p for wi, inv in zip(w, invs, strict=True))


def batch_inverse(values: Sequence[int], p: int) -> list[int]:
    """Inverses of non-zero ``values`` modulo ``p`` with one modular inversion."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % p
    inv = pow(prefix[-1], -1, p)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % p
        inv = inv * values[i] % p
    return out


@lru_cache(maxsize=1024)
def interp_matrix(base: tuple[int, ...], targets: tuple[int, ...], p: int) -> NDArray[np.int64]:
    """Read-only ``(len(targets), len(base))`` matrix of Lagrange weights (``p < 2**31``)."""
    rows = [lagrange_weights(base, a, p) for a in targets]
    mat = np.array(rows, dtype=np.int64).reshape(len(targets), len(base))
    mat.setflags(write=False)
    return mat


@lru_cache(maxsize=256)
def vandermonde(xs: tuple[int, ...], k: int, p: int) -> NDArray[np.int64]:
    """Read-only ``(len(xs), k)`` matrix ``x_i**j mod p`` (``p < 2**31``)."""
    mat = np.empty((len(xs), k), dtype=np.int64)
    for i, x in enumerate(xs):
        v = 1
        for j in range(k):
            mat[i, j] = v
            v = v * x % p
    mat.setflags(write=False)
    return mat


def poly_eval(coeffs: Sequence[int], x: int, p: int) -> int:
    """Horner evaluation of ``Σ coeffs[j] x**j`` modulo ``p``."""
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % p
    return acc


def _solve(rows: list[list[int]], p: int) -> list[int] | None:
    """One solution of the augmented system ``rows`` (last column = rhs) mod ``p``.

    Free variables are set to 0; ``None`` when the system is inconsistent.
    """
    if not rows:
        return []
    n_unknowns = len(rows[0]) - 1
    pivots: list[int] = []
    r = 0
    for c in range(n_unknowns):
        piv = next((i for i in range(r, len(rows)) if rows[i][c] % p), None)
        if piv is None:
            continue
        rows[r], rows[piv] = rows[piv], rows[r]
        inv = pow(rows[r][c], -1, p)
        rows[r] = [v * inv % p for v in rows[r]]
        pivot_row = rows[r]
        for i in range(len(rows)):
            if i != r and rows[i][c]:
                f = rows[i][c]
                rows[i] = [(a - f * b) % p for a, b in zip(rows[i], pivot_row, strict=True)]
        pivots.append(c)
        r += 1
        if r == len(rows):
            break
    if any(row[-1] % p for row in rows[r:]):
        return None
    sol = [0] * n_unknowns
    for i, c in enumerate(pivots):
        sol[c] = rows[i][-1]
    return sol


def _poly_divmod(num: list[int], den: list[int], p: int) -> tuple[list[int], list[int]]:
    """Quotient and remainder of polynomials (lowest degree first); ``den`` monic-able."""
    num = num[:]
    while len(den) > 1 and den[-1] == 0:
        den = den[:-1]
    inv_lead = pow(den[-1], -1, p)
    dd = len(den) - 1
    if len(num) - 1 < dd:
        return [0], num
    quot = [0] * (len(num) - dd)
    for i in range(len(num) - 1 - dd, -1, -1):
        coef = num[i + dd] * inv_lead % p
        quot[i] = coef
        if coef:
            for j, dcoef in enumerate(den):
                num[i + j] = (num[i + j] - coef * dcoef) % p
    return quot, num[:dd] if dd else [0]


def berlekamp_welch(xs: Sequence[int], ys: Sequence[int], k: int, p: int) -> list[int] | None:
    """Coefficients (``k`` of them) of the unique polynomial of degree ``< k`` that agrees
    with all but at most ``(m - k) // 2`` of the points, or ``None`` if there is none.
    """
    m = len(xs)
    if m < k:
        return None
    e = (m - k) // 2
    n_q = k + e
    rows: list[list[int]] = []
    for x, y in zip(xs, ys, strict=True):
        powers = [1] * (n_q + 1)
        for j in range(1, n_q + 1):
            powers[j] = powers[j - 1] * x % p
        row = powers[:n_q] + [(-y * powers[j]) % p for j in range(e)]
        row.append(y * powers[e] % p)
        rows.append(row)
    sol = _solve(rows, p)
    if sol is None:
        return None
    q = sol[:n_q]
    err = [*sol[n_q:], 1]
    quot, rem = _poly_divmod(q, err, p)
    if any(rem):
        return None
    quot = (quot + [0] * k)[:k] if len(quot) <= k else quot
    if any(quot[k:]):
        return None
    coeffs = quot[:k]
    wrong = sum(1 for x, y in zip(xs, ys, strict=True) if poly_eval(coeffs, x, p) != y % p)
    if wrong > e:
        return None
    return coeffs
