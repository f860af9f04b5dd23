"""Sparse ±1 sketch maps: exact integer projections ``z = S x`` of quantized updates.

Theory of operation
-------------------
A :class:`SketchMap` is a ``(rows, dim)`` matrix ``S`` with entries in ``{-1, 0, +1}``:
column ``j`` has exactly ``nnz`` non-zeros, at distinct rows, each with a random sign
(a CountSketch when ``nnz == 1``, a sparse Johnson–Lindenstrauss map otherwise).
Members of a secure-aggregation group compute ``z_u = S x_u`` on their quantized
update (signed integers) and secret-share it; validators open ``||z_u||^2``,
``<z_u, z_ref>`` and ``<z_u, z_v>`` (see :mod:`mpc.secagg`).  ``S`` is linear, so after
unmasking ``S (sum of updates) == sum of z_u`` exactly: the binding check.

**Derivation.**  ``S`` is a deterministic function of ``(seed, dim, rows, nnz)``: the
rows come from one ChaCha20 stream and the signs from another
(:class:`mpc.rand.SeededRng`, keyed through BLAKE2b by the seed, the shape and a
purpose tag), never from a non-cryptographic generator.  Rows are exactly uniform
(rejection sampling, :func:`mpc.rand.random_field_vector`); the ``nnz`` rows of one
column are drawn in turn, redrawing any that repeat an earlier row of that column, so
they are a uniformly random ``nnz``-subset.  Two parties with the same arguments build
the same map.

**Exact products.**  :meth:`SketchMap.apply` computes ``S x`` in int64 without any
rounding: the non-zeros are grouped once (at construction) by (row, sign), so a
product is one gather ``x[perm]``, one ``np.add.reduceat`` over the groups and a
signed add of ``2 * rows`` partial sums (≈ a few ms for ``dim = 10**6``).  It refuses
(``OverflowError``) inputs whose worst-case result could exceed int64:
:meth:`SketchMap.max_abs` is that exact bound (``max_r (non-zeros of row r) * bound``
for ``|x_i| <= bound``) and :meth:`SketchMap.norm_bound` the matching bound on
``||S x||^2``; :class:`mpc.secagg.SketchConfig` uses them to choose how many primes the
scores need.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from mpc.rand import SeededRng, random_field_vector

__all__ = ["SketchMap"]

_PERSON = b"mpc.sketch"
_INT64_MAX = (1 << 63) - 1

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]


def _stream(seed: bytes, dim: int, rows: int, nnz: int, purpose: bytes) -> SeededRng:
    h = hashlib.blake2b(digest_size=32, person=_PERSON)
    h.update(len(seed).to_bytes(4, "big") + seed)
    h.update(dim.to_bytes(8, "big") + rows.to_bytes(8, "big") + nnz.to_bytes(8, "big"))
    h.update(purpose)
    return SeededRng(h.digest())


class SketchMap:
    """A sparse ±1 matrix of shape ``(rows, dim)``, ``nnz`` non-zeros per column.

    Build it with :meth:`from_seed`; the constructor takes explicit non-zeros
    (``col_rows`` and ``col_signs``, both of shape ``(dim, nnz)``: the row and the sign
    ±1 of each non-zero of each column, rows distinct within a column) and raises
    ``ValueError`` when they are inconsistent.  Immutable; safe to share.
    """

    __slots__ = (
        "_col_rows",
        "_col_signs",
        "_neg_rows",
        "_neg_seg",
        "_perm",
        "_pos_rows",
        "_pos_seg",
        "_row_counts",
        "_starts",
        "dim",
        "nnz",
        "rows",
    )

    def __init__(self, dim: int, rows: int, col_rows: I64, col_signs: NDArray[np.int8]) -> None:
        if dim < 1 or rows < 1:
            raise ValueError("a sketch map needs dim >= 1 and rows >= 1")
        col_rows = np.asarray(col_rows)
        col_signs = np.asarray(col_signs)
        if col_rows.ndim != 2 or col_rows.shape[0] != dim or col_signs.shape != col_rows.shape:
            raise ValueError("col_rows and col_signs must both have shape (dim, nnz)")
        nnz = col_rows.shape[1]
        if not 1 <= nnz <= rows:
            raise ValueError(f"nnz must be in [1, rows], got {nnz}")
        if col_rows.dtype.kind not in "iu" or int(col_rows.min()) < 0 or int(col_rows.max()) >= rows:
            raise ValueError("col_rows must be integers in [0, rows)")
        if not np.isin(col_signs, (-1, 1)).all():
            raise ValueError("col_signs must be -1 or +1")
        if nnz > 1 and (np.diff(np.sort(col_rows, axis=1), axis=1) == 0).any():
            raise ValueError("the non-zeros of a column must be in distinct rows")
        self.dim = dim
        self.rows = rows
        self.nnz = nnz
        self._col_rows = col_rows.astype(np.int64)
        self._col_rows.flags.writeable = False
        self._col_signs = col_signs.astype(np.int8)
        self._col_signs.flags.writeable = False
        flat_rows = self._col_rows.reshape(-1)  # (dim * nnz,), column-major over non-zeros
        neg = (self._col_signs.reshape(-1) < 0).astype(np.int64)
        key = flat_rows * 2 + neg  # group by (row, sign)
        # numpy sorts 16-bit keys by radix sort: ~6x faster for the usual rows <= 32768
        order = np.argsort(key.astype(np.uint16) if 2 * rows <= 1 << 16 else key, kind="stable")
        self._perm = (order // nnz).astype(np.intp)  # the column of each sorted non-zero
        skey = key[order]
        self._starts = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]]).astype(np.intp)
        seg_key = skey[self._starts]
        seg_rows, seg_neg = seg_key // 2, seg_key % 2
        self._pos_seg = np.flatnonzero(seg_neg == 0)
        self._neg_seg = np.flatnonzero(seg_neg == 1)
        self._pos_rows = seg_rows[self._pos_seg]  # distinct rows within each sign
        self._neg_rows = seg_rows[self._neg_seg]
        self._row_counts = np.bincount(flat_rows, minlength=rows).astype(np.int64)
        self._row_counts.flags.writeable = False

    @classmethod
    def from_seed(cls, seed: bytes, dim: int, rows: int, nnz: int = 1) -> SketchMap:
        """The map of ``seed`` (see the module docstring): deterministic, and independent
        for different seeds or shapes.  Raises ``ValueError`` unless ``dim >= 1``,
        ``rows >= 1`` and ``1 <= nnz <= rows``; ``TypeError`` if ``seed`` is not bytes.
        """
        if not isinstance(seed, bytes):
            raise TypeError("seed must be bytes")
        if dim < 1 or rows < 1 or not 1 <= nnz <= rows:
            raise ValueError("need dim >= 1, rows >= 1 and 1 <= nnz <= rows")
        rng = _stream(seed, dim, rows, nnz, b"rows")
        col_rows = np.empty((dim, nnz), dtype=np.int64)
        for k in range(nnz):
            cand = random_field_vector(rng, dim, rows)
            if k:
                redo = np.flatnonzero((col_rows[:, :k] == cand[:, None]).any(axis=1))
                while redo.size:
                    fresh = random_field_vector(rng, redo.size, rows)
                    cand[redo] = fresh
                    redo = redo[(col_rows[redo, :k] == fresh[:, None]).any(axis=1)]
            col_rows[:, k] = cand
        bits = np.unpackbits(
            np.frombuffer(_stream(seed, dim, rows, nnz, b"signs").random_bytes(-(-dim * nnz // 8)),
                          dtype=np.uint8),
            count=dim * nnz,
        )
        signs = (1 - 2 * bits.astype(np.int8)).reshape(dim, nnz)
        return cls(dim, rows, col_rows, signs)

    # ------------------------------------------------------------ products

    def _check(self, x: NDArray[np.generic], kinds: str) -> None:
        if not isinstance(x, np.ndarray) or x.dtype.kind not in kinds:
            raise TypeError(f"expected an array of kind {kinds!r}")
        if x.shape != (self.dim,):
            raise ValueError(f"expected shape ({self.dim},), got {x.shape}")

    def _combine(self, sums: NDArray[np.generic], out: NDArray[np.generic]) -> None:
        """out = the signed sum of each row's (row, sign) groups (out starts at 0)."""
        out[self._pos_rows] += sums[self._pos_seg]  # rows are distinct within a sign
        out[self._neg_rows] -= sums[self._neg_seg]

    def apply(self, x: NDArray[np.integer]) -> I64:
        """Exact ``S @ x`` for signed integers ``x`` of shape ``(dim,)`` (any integer
        dtype), as int64 of shape ``(rows,)``.

        Raises ``TypeError`` for a non-integer array, ``ValueError`` for a wrong shape,
        ``OverflowError`` when ``max_abs(max |x_i|)`` exceeds int64 (the result could
        not be exact).
        """
        self._check(x, "iu")
        if x.size:
            hi, lo = int(x.max()), int(x.min())
            if self.max_abs(max(hi, -lo)) > _INT64_MAX:
                raise OverflowError("S @ x may exceed int64 for inputs this large")
        g = x.astype(np.int64, copy=False)[self._perm]  # (dim * nnz,) grouped by (row, sign)
        out = np.zeros(self.rows, dtype=np.int64)
        self._combine(np.add.reduceat(g, self._starts), out)
        return out

    def apply_float(self, x: F64) -> F64:
        """``S @ x`` in float64 for real ``x`` of shape ``(dim,)`` (e.g. a reference
        direction before quantization).  Raises ``TypeError`` / ``ValueError`` as
        :meth:`apply`."""
        self._check(x, "f")
        g = x.astype(np.float64, copy=False)[self._perm]
        out = np.zeros(self.rows, dtype=np.float64)
        self._combine(np.add.reduceat(g, self._starts), out)
        return out

    # ------------------------------------------------------------ bounds

    @property
    def row_counts(self) -> I64:
        """Non-zeros in each row, shape ``(rows,)`` (read-only)."""
        return self._row_counts

    def max_abs(self, bound: int) -> int:
        """Exact bound on ``max_r |(S x)_r|`` over all ``x`` with ``|x_i| <= bound``:
        the largest number of non-zeros in a row times ``bound`` (attained)."""
        if bound < 0:
            raise ValueError("bound must be >= 0")
        return int(self._row_counts.max()) * bound

    def norm_bound(self, bound: int) -> int:
        """Exact bound on ``||S x||^2`` over all ``x`` with ``|x_i| <= bound``:
        ``sum_r (non-zeros of row r * bound)^2`` (attained).  By Cauchy–Schwarz it also
        bounds ``|<S x, S y>|`` for two such inputs."""
        if bound < 0:
            raise ValueError("bound must be >= 0")
        return sum(int(c) ** 2 for c in self._row_counts.tolist()) * bound * bound

    def to_dense(self) -> I64:
        """The matrix as a dense int64 ``(rows, dim)`` array (tests, small maps)."""
        out = np.zeros((self.rows, self.dim), dtype=np.int64)
        cols = np.repeat(np.arange(self.dim), self.nnz)
        out[self._col_rows.reshape(-1), cols] = self._col_signs.reshape(-1)
        return out

    def __repr__(self) -> str:
        return f"SketchMap(dim={self.dim}, rows={self.rows}, nnz={self.nnz})"
