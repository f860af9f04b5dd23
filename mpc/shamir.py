"""Shamir secret sharing: scalars over BIG_PRIME, vectors over GF(p < 2^31), and
computation on shares for sketch scores.

Theory of operation
-------------------
**Threshold convention.**  ``threshold`` is the number of shares needed to
reconstruct.  A secret ``s`` is hidden in a random polynomial ``f`` of degree
``threshold - 1`` with ``f(0) = s``; holder ``x`` (a non-zero evaluation point, by
convention the member's index 1..n given by the caller) gets ``f(x)``.  Any
``threshold`` shares determine ``f``; any ``threshold - 1`` shares are uniformly
distributed whatever the secret, so ``threshold - 1`` colluders learn nothing.

**Reconstruction** interpolates ``f(0)`` from exactly ``threshold`` shares (the ones
with the smallest evaluation points) with cached Lagrange weights.  When more shares
arrived, every extra one is checked against the interpolated polynomial.  On a
mismatch the shares are decoded as a Reed–Solomon code (Berlekamp–Welch) to name the
culprits.  With ``m`` shares of a degree ``threshold - 1`` polynomial:

* ``m < threshold``: :class:`NotEnoughShares`.
* ``m == threshold``: nothing can be checked; a wrong share gives a wrong secret.
* detection: if at most ``m - threshold`` shares are wrong (and at least one is),
  :class:`InconsistentShares` is always raised.
* identification: if at most ``(m - threshold) // 2`` shares are wrong, ``bad`` is
  exactly the set of their evaluation points (so one liar is named from
  ``threshold + 2`` shares, two from ``threshold + 4``...), and :func:`decode_int` /
  :func:`decode_vector` return the correct secret together with ``bad``.
  Otherwise ``bad`` is empty (detected, not identified), except when the wrong shares
  were crafted to lie on *another* polynomial closer to the received word: no decoder
  can tell that case apart, which is why the radius is half the redundancy.
* A wrong share means "not on the dealer's polynomial": a holder that lies at
  reconstruction and a dealer that dealt it a bad share look the same here; telling
  them apart needs signed or verifiable shares (the protocol layer's job).

For vectors every coordinate is an independent sharing and a holder's share is a row;
a row is wrong when any coordinate is.  Culprits are located by decoding one random
linear combination of the coordinates (derived by hashing the received shares, so
deterministic), then every remaining row is checked in full; a retry with a fresh
combination covers the (probability ``~ 1/p``) case where an error vector is
orthogonal to the combination.

**Fields.**  Scalars (32-byte seeds and keys) use ``BIG_PRIME = 2**256 + 297`` with
Python ints; a share is an int below ``BIG_PRIME`` (33 bytes on the wire).  Vectors
use ``p = P31 = 2**31 - 1`` (any prime below ``2**31`` via ``p=``) as int64 arrays;
shares of a ``d``-vector for ``n`` holders are an ``(n, d)`` matrix
``V @ C mod p`` (Vandermonde times coefficients, an exact blocked product, see
:mod:`mpc.field`).  Signed integers enter and leave the field with
:func:`mpc.field.to_field` / :func:`mpc.field.from_field` (centered representation).

**Computing on shares** (validators scoring secret-shared sketches ``z_u``).  Shares are
linear: a holder's local combination ``Σ c_u [z_u]`` or ``<[z_u], ref>`` with public
``c`` / ``ref`` is a share of the same combination of secrets on a polynomial of degree
``threshold - 1``; :func:`open_linear` reconstructs it from ``threshold`` shares and
reveals nothing else (colluders already know ``threshold - 1`` points of that
polynomial).  A product of two shares is a share of the product on the product
polynomial, of degree ``2 (threshold - 1)``: :func:`open_degree2` needs
``2 threshold - 1`` shares (so groups need ``2 threshold - 1 <= n``).  Opening a raw
product polynomial leaks: its higher coefficients are bilinear in the secrets and the
dealer's randomness, and ``threshold - 1`` colluders who know their own shares learn
linear functions of the other secret from them.  Hence the ``mask`` argument of the
local product helpers: each holder adds its share of a fresh random sharing of zero of
degree ``2 (threshold - 1)`` (:func:`share_zeros`), dealt by a party whose privacy is
at stake (the owner of ``z_u`` for ``||z_u||^2``; for ``<z_u, z_v>`` the sum of zero
sharings from both ``u`` and ``v``).  The opened polynomial is then uniform apart
from its constant term.  Scores are exact integers only while they stay within
``±(p - 1) / 2``: beyond that they wrap modulo ``p``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from mpc import _rs
from mpc.errors import InconsistentShares, NotEnoughShares
from mpc.field import (
    BIG_PRIME,
    P31,
    check_canonical,
    check_prime,
    from_field,
    matmul,
    reduce,
    to_field,
)
from mpc.rand import Rng, SeededRng, random_below, random_field_vector

__all__ = [
    "INT_SHARE_BYTES",
    "InconsistentShares",
    "NotEnoughShares",
    "decode_int",
    "decode_vector",
    "from_field",
    "local_combination",
    "local_gram",
    "local_inner",
    "local_inner_public",
    "local_sq_norms",
    "open_degree2",
    "open_linear",
    "reconstruct_bytes",
    "reconstruct_int",
    "reconstruct_vector",
    "share_bytes",
    "share_int",
    "share_vector",
    "share_zeros",
    "to_field",
]

INT_SHARE_BYTES = (BIG_PRIME.bit_length() + 7) // 8
"""Bytes needed to carry one scalar share (33)."""

I64 = NDArray[np.int64]
_ATTEMPTS = 4  # random combinations tried when locating bad vector shares


# --------------------------------------------------------------------------- checks


def _check_threshold(threshold: int) -> None:
    if not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be a positive int, got {threshold!r}")


def _check_xs(xs: Iterable[int], p: int) -> tuple[int, ...]:
    out = tuple(xs)
    for x in out:
        if not isinstance(x, int | np.integer) or not 1 <= x < p:
            raise ValueError(f"evaluation point {x!r} outside [1, {p})")
    if len(set(out)) != len(out):
        raise ValueError("evaluation points must be distinct")
    return tuple(int(x) for x in out)


# ------------------------------------------------------------------- scalar secrets


def share_int(secret: int, threshold: int, xs: Sequence[int], rng: Rng) -> list[int]:
    """Share ``secret`` (``0 <= secret < BIG_PRIME``) so any ``threshold`` of the points
    ``xs`` reconstruct it; returns the shares in the order of ``xs``.

    Raises ``ValueError`` for a secret out of range, ``threshold < 1`` or
    ``threshold > len(xs)``, or points that are not distinct ints in
    ``[1, BIG_PRIME)``.
    """
    _check_threshold(threshold)
    pts = _check_xs(xs, BIG_PRIME)
    if not 0 <= secret < BIG_PRIME:
        raise ValueError("secret must be in [0, BIG_PRIME)")
    if threshold > len(pts):
        raise ValueError(f"threshold {threshold} exceeds the {len(pts)} holders")
    coeffs = [secret] + [random_below(rng, BIG_PRIME) for _ in range(threshold - 1)]
    return [_rs.poly_eval(coeffs, x, BIG_PRIME) for x in pts]


def _check_points(points: Sequence[tuple[int, int]], p: int) -> list[tuple[int, int]]:
    out = sorted((int(x), int(y)) for x, y in points)
    _check_xs((x for x, _ in out), p)
    for x, y in out:
        if not 0 <= y < p:
            raise ValueError(f"share at point {x} outside [0, {p})")
    return out


def _interpolate_checked(pts: list[tuple[int, int]], threshold: int, p: int) -> tuple[int, bool]:
    """``f(0)`` from the first ``threshold`` points and whether all others agree."""
    base = tuple(x for x, _ in pts[:threshold])
    ys = [y for _, y in pts[:threshold]]
    lam = _rs.lagrange_weights(base, 0, p)
    value = sum(w * y for w, y in zip(lam, ys, strict=True)) % p
    for x, y in pts[threshold:]:
        w = _rs.lagrange_weights(base, x, p)
        if sum(a * b for a, b in zip(w, ys, strict=True)) % p != y:
            return value, False
    return value, True


def _bad_points(pts: list[tuple[int, int]], coeffs: list[int], p: int) -> frozenset[int]:
    return frozenset(x for x, y in pts if _rs.poly_eval(coeffs, x, p) != y)


def reconstruct_int(points: Sequence[tuple[int, int]], threshold: int) -> int:
    """Return the secret from ``(x, share)`` pairs over ``BIG_PRIME``.

    Interpolates from exactly ``threshold`` shares and checks every extra share.
    Raises :class:`NotEnoughShares` if fewer than ``threshold`` arrived,
    :class:`InconsistentShares` (``bad`` as in the module docstring) if they disagree,
    ``ValueError`` for duplicate or out-of-range points or shares.
    """
    _check_threshold(threshold)
    pts = _check_points(points, BIG_PRIME)
    if len(pts) < threshold:
        raise NotEnoughShares(threshold, len(pts))
    value, ok = _interpolate_checked(pts, threshold, BIG_PRIME)
    if ok:
        return value
    coeffs = _rs.berlekamp_welch([x for x, _ in pts], [y for _, y in pts], threshold, BIG_PRIME)
    raise InconsistentShares(frozenset() if coeffs is None else _bad_points(pts, coeffs, BIG_PRIME))


def decode_int(points: Sequence[tuple[int, int]], threshold: int) -> tuple[int, frozenset[int]]:
    """Like :func:`reconstruct_int` but corrects wrong shares when it can.

    Returns ``(secret, bad)`` where ``bad`` names the points whose shares were wrong
    (empty when all agree).  Correction succeeds when at most
    ``(len(points) - threshold) // 2`` shares are wrong.  Raises
    :class:`NotEnoughShares`, :class:`InconsistentShares` with an empty ``bad`` when
    the shares cannot be corrected, ``ValueError`` as :func:`reconstruct_int`.
    """
    _check_threshold(threshold)
    pts = _check_points(points, BIG_PRIME)
    if len(pts) < threshold:
        raise NotEnoughShares(threshold, len(pts))
    value, ok = _interpolate_checked(pts, threshold, BIG_PRIME)
    if ok:
        return value, frozenset()
    coeffs = _rs.berlekamp_welch([x for x, _ in pts], [y for _, y in pts], threshold, BIG_PRIME)
    if coeffs is None:
        raise InconsistentShares(frozenset())
    return coeffs[0], _bad_points(pts, coeffs, BIG_PRIME)


def share_bytes(secret: bytes, threshold: int, xs: Sequence[int], rng: Rng) -> list[int]:
    """Share a byte string of at most 32 bytes (big-endian integer) as :func:`share_int`.

    Raises ``ValueError`` for a longer secret and as :func:`share_int`.
    """
    if len(secret) > 32:
        raise ValueError(f"secret of {len(secret)} bytes exceeds 32")
    return share_int(int.from_bytes(secret, "big"), threshold, xs, rng)


def reconstruct_bytes(points: Sequence[tuple[int, int]], threshold: int, length: int = 32) -> bytes:
    """Reconstruct a byte string shared with :func:`share_bytes`, ``length`` bytes long.

    Raises as :func:`reconstruct_int`; also :class:`InconsistentShares` (empty
    ``bad``) when the reconstructed value does not fit in ``length`` bytes (a wrong
    share among exactly ``threshold`` ones), ``ValueError`` if ``length`` is not in
    ``[0, 32]``.
    """
    if not 0 <= length <= 32:
        raise ValueError(f"length must be in [0, 32], got {length}")
    value = reconstruct_int(points, threshold)
    if value >> (8 * length):
        raise InconsistentShares(frozenset(), "reconstructed value does not fit the length")
    return value.to_bytes(length, "big")


# ------------------------------------------------------------------- vector secrets


def share_vector(
    v: NDArray[np.int64], threshold: int, xs: Sequence[int], rng: Rng, *, p: int = P31
) -> I64:
    """Share the canonical vector ``v`` (entries in ``[0, p)``, shape ``(d,)``).

    Returns an int64 array of shape ``(len(xs), d)``: row ``i`` is the share of holder
    ``xs[i]``.  Uses ``(threshold - 1) * d`` field elements of randomness from ``rng``.
    Raises ``ValueError`` for a non-canonical or non-1-D ``v``, a bad threshold, bad
    points (not distinct ints in ``[1, p)``) or ``p``; ``TypeError`` for a non-integer
    ``v``.
    """
    check_prime(p)
    _check_threshold(threshold)
    pts = _check_xs(xs, p)
    if threshold > len(pts):
        raise ValueError(f"threshold {threshold} exceeds the {len(pts)} holders")
    v = check_canonical(v, p, "secret vector")
    if v.ndim != 1:
        raise ValueError(f"secret vector must be 1-D, got shape {v.shape}")
    d = v.shape[0]
    coeffs = np.empty((threshold, d), dtype=np.int64)  # (t, d)
    coeffs[0] = v
    if threshold > 1:
        coeffs[1:] = random_field_vector(rng, (threshold - 1) * d, p).reshape(threshold - 1, d)
    return matmul(_rs.vandermonde(pts, threshold, p), coeffs, p)  # (n, t) @ (t, d)


def share_zeros(count: int, threshold: int, xs: Sequence[int], rng: Rng, *, p: int = P31) -> I64:
    """Random sharings of ``count`` zeros on polynomials of degree ``2 (threshold - 1)``.

    Returns shape ``(len(xs), count)``: the masks to pass to the local product helpers
    (one column per scalar to be opened with :func:`open_degree2`).  Raises
    ``ValueError`` if ``2 threshold - 1 > len(xs)`` and as :func:`share_vector`.
    """
    if count < 0:
        raise ValueError(f"negative count {count}")
    _check_threshold(threshold)
    return share_vector(np.zeros(count, dtype=np.int64), 2 * threshold - 1, xs, rng, p=p)


def _prepare_vector_shares(
    xs: Sequence[int], ys: NDArray[np.int64], p: int
) -> tuple[tuple[int, ...], I64, tuple[int, ...]]:
    """Sorted points, shares as ``(m, D)`` rows in that order, and the trailing shape."""
    pts = _check_xs(xs, p)
    arr = check_canonical(ys, p, "shares")
    if arr.ndim < 1 or arr.shape[0] != len(pts):
        raise ValueError(f"shares of shape {arr.shape} for {len(pts)} points")
    rest = tuple(int(s) for s in arr.shape[1:])
    flat = arr.reshape(len(pts), -1)
    order = sorted(range(len(pts)), key=pts.__getitem__)
    if order != list(range(len(pts))):
        flat = flat[order]
        pts = tuple(pts[i] for i in order)
    return pts, flat, rest


def _consistent_rows(pts: tuple[int, ...], flat: I64, threshold: int, p: int) -> NDArray[np.bool_]:
    """Which rows beyond the first ``threshold`` agree with the interpolant of those."""
    base, extra = pts[:threshold], pts[threshold:]
    predicted = matmul(_rs.interp_matrix(base, extra, p), flat[:threshold], p)
    ok: NDArray[np.bool_] = (predicted == flat[threshold:]).all(axis=1)
    return ok


def _interpolate_rows(pts: tuple[int, ...], flat: I64, threshold: int, p: int) -> I64:
    lam = np.array(_rs.lagrange_weights(pts[:threshold], 0, p), dtype=np.int64)
    return matmul(lam, flat[:threshold], p)


def _locate_bad_rows(
    pts: tuple[int, ...], flat: I64, threshold: int, p: int
) -> frozenset[int] | None:
    """Decode: the set of wrong rows within the unique-decoding radius, or ``None``."""
    digest = hashlib.blake2b(flat.tobytes(), digest_size=32, person=b"mpc.rs-locate")
    digest.update(np.array(pts, dtype=np.int64).tobytes())
    m = len(pts)
    for attempt in range(_ATTEMPTS):
        seed = hashlib.blake2b(digest.digest() + bytes([attempt]), digest_size=32).digest()
        r = random_field_vector(SeededRng(seed), flat.shape[1], p)
        combo = matmul(flat, r, p)  # (m,)
        coeffs = _rs.berlekamp_welch(pts, [int(c) for c in combo], threshold, p)
        if coeffs is None:
            return None
        bad = {x for x, c in zip(pts, combo, strict=True) if _rs.poly_eval(coeffs, x, p) != c}
        keep = [i for i in range(m) if pts[i] not in bad]
        good_pts = tuple(pts[i] for i in keep)
        if _consistent_rows(good_pts, flat[keep], threshold, p).all():
            return frozenset(bad)
    return None


def _reconstruct_or_decode(
    xs: Sequence[int], ys: NDArray[np.int64], threshold: int, p: int, correct: bool
) -> tuple[I64, frozenset[int]]:
    check_prime(p)
    _check_threshold(threshold)
    pts, flat, rest = _prepare_vector_shares(xs, ys, p)
    if len(pts) < threshold:
        raise NotEnoughShares(threshold, len(pts))
    if len(pts) == threshold or _consistent_rows(pts, flat, threshold, p).all():
        return _interpolate_rows(pts, flat, threshold, p).reshape(rest), frozenset()
    bad = _locate_bad_rows(pts, flat, threshold, p)
    if bad is None:
        raise InconsistentShares(frozenset())
    if not correct:
        raise InconsistentShares(bad)
    keep = [i for i in range(len(pts)) if pts[i] not in bad]
    good_pts = tuple(pts[i] for i in keep)
    return _interpolate_rows(good_pts, flat[keep], threshold, p).reshape(rest), bad


def reconstruct_vector(
    xs: Sequence[int], ys: NDArray[np.int64], threshold: int, *, p: int = P31
) -> I64:
    """Return the shared vector from the holders' rows ``ys`` (shape ``(m, *shape)``,
    row ``i`` from point ``xs[i]``); the result has shape ``shape``.

    Interpolates from exactly ``threshold`` rows, checks all others in full.  Raises
    :class:`NotEnoughShares`, :class:`InconsistentShares` (``bad`` as in the module
    docstring), ``ValueError`` for bad points, shapes, non-canonical entries or ``p``,
    ``TypeError`` for a non-integer ``ys``.
    """
    return _reconstruct_or_decode(xs, ys, threshold, p, correct=False)[0]


def decode_vector(
    xs: Sequence[int], ys: NDArray[np.int64], threshold: int, *, p: int = P31
) -> tuple[I64, frozenset[int]]:
    """Like :func:`reconstruct_vector` but corrects up to ``(m - threshold) // 2`` wrong
    rows, returning ``(vector, bad)``; raises :class:`InconsistentShares` with an empty
    ``bad`` when it cannot, and otherwise as :func:`reconstruct_vector`.
    """
    return _reconstruct_or_decode(xs, ys, threshold, p, correct=True)


# ---------------------------------------------------------- computing on shares


def _as_rows(z: NDArray[np.int64], what: str) -> I64:
    if z.ndim != 2:
        raise ValueError(f"{what} must be 2-D (vectors, d), got shape {z.shape}")
    return z


def _add_mask(local: I64, mask: NDArray[np.int64] | None, p: int) -> I64:
    if mask is None:
        return local
    m = check_canonical(mask, p, "mask")
    if m.shape != local.shape:
        raise ValueError(f"mask of shape {m.shape} for shares of shape {local.shape}")
    s = local + m
    np.subtract(s, p, out=s, where=s >= p)
    return s


def local_inner(
    a: NDArray[np.int64], b: NDArray[np.int64], *, mask: NDArray[np.int64] | None, p: int = P31
) -> I64:
    """This holder's shares of ``<a_u, b_u>`` for each row ``u`` (degree-2 shares).

    ``a`` and ``b`` are ``(U, d)`` canonical share rows; returns shape ``(U,)``.
    ``mask`` is this holder's ``(U,)`` share of zero-sharings from :func:`share_zeros`
    (``None`` opens the raw product polynomial, which leaks; see the module docstring).
    Open with :func:`open_degree2`.  Raises ``ValueError`` on shape mismatches.
    """
    a = _as_rows(check_canonical(a, p, "shares"), "a")
    b = _as_rows(check_canonical(b, p, "shares"), "b")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    prod = np.multiply(a, b)
    reduce(prod, p, out=prod)  # (U, d), each < p
    d = a.shape[1]
    # sums of up to 2**32 values below 2**31 fit in int64
    acc = np.zeros(a.shape[0], dtype=np.int64)
    step = 1 << 32
    for start in range(0, d, step):
        acc += reduce(prod[:, start : start + step].sum(axis=1), p)
    return _add_mask(reduce(acc, p), mask, p)


def local_sq_norms(z: NDArray[np.int64], *, mask: NDArray[np.int64] | None, p: int = P31) -> I64:
    """This holder's shares of ``||z_u||^2`` for each row of ``z`` (``(U, d)``) as a
    ``(U,)`` array of degree-2 shares; see :func:`local_inner` for ``mask``."""
    return local_inner(z, z, mask=mask, p=p)


def local_gram(z: NDArray[np.int64], *, mask: NDArray[np.int64] | None, p: int = P31) -> I64:
    """This holder's shares of all ``<z_u, z_v>`` as a ``(U, U)`` array (degree 2).

    ``mask`` has shape ``(U, U)`` (zero-sharing shares, typically symmetric: the sum of
    the zero-sharings dealt by ``u`` and ``v``).  Raises ``ValueError`` on shapes.
    """
    z = _as_rows(check_canonical(z, p, "shares"), "z")
    return _add_mask(matmul(z, np.ascontiguousarray(z.T), p), mask, p)


def local_inner_public(z: NDArray[np.int64], ref: NDArray[np.int64], *, p: int = P31) -> I64:
    """This holder's shares of ``<z_u, ref>`` for a public canonical ``ref`` (``(d,)``):
    a ``(U,)`` array of linear shares, opened with :func:`open_linear`."""
    z = _as_rows(check_canonical(z, p, "shares"), "z")
    ref = check_canonical(ref, p, "reference")
    if ref.shape != (z.shape[1],):
        raise ValueError(f"reference of shape {ref.shape} for vectors of length {z.shape[1]}")
    return matmul(z, ref, p)


def local_combination(coeffs: NDArray[np.int64], z: NDArray[np.int64], *, p: int = P31) -> I64:
    """This holder's share of ``Σ_u coeffs[u] z_u`` (a ``(d,)`` linear share) for public
    canonical ``coeffs`` of shape ``(U,)``; open with :func:`open_linear`."""
    z = _as_rows(check_canonical(z, p, "shares"), "z")
    c = check_canonical(coeffs, p, "coefficients")
    if c.shape != (z.shape[0],):
        raise ValueError(f"coefficients of shape {c.shape} for {z.shape[0]} vectors")
    return matmul(c, z, p)


def open_linear(xs: Sequence[int], ys: NDArray[np.int64], threshold: int, *, p: int = P31) -> I64:
    """Open values whose shares lie on degree ``threshold - 1`` polynomials.

    ``ys`` has shape ``(m, *shape)`` (row ``i`` from holder ``xs[i]``); returns the
    canonical values, shape ``shape`` (decode signed results with
    :func:`mpc.field.from_field`).  Raises as :func:`reconstruct_vector`.
    """
    return reconstruct_vector(xs, ys, threshold, p=p)


def open_degree2(xs: Sequence[int], ys: NDArray[np.int64], threshold: int, *, p: int = P31) -> I64:
    """Open values whose shares are local products (degree ``2 (threshold - 1)``):
    needs ``2 threshold - 1`` rows, checks any extra.  Raises as
    :func:`reconstruct_vector` (``NotEnoughShares.needed == 2 threshold - 1``).
    """
    _check_threshold(threshold)
    return reconstruct_vector(xs, ys, 2 * threshold - 1, p=p)
