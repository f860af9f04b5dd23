"""mpc.sketch.SketchMap against a dense matrix built from the same non-zeros."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc.sketch import SketchMap

SEED = bytes(range(32))


@given(
    st.integers(1, 300),
    st.integers(1, 40),
    st.integers(1, 4),
    st.binary(min_size=0, max_size=40),
    st.integers(0, 2**31),
)
def test_apply_equals_the_dense_product(dim: int, rows: int, nnz: int, seed: bytes, xs: int) -> None:
    nnz = min(nnz, rows)
    s = SketchMap.from_seed(seed, dim, rows, nnz)
    dense = s.to_dense()  # (rows, dim)
    assert dense.shape == (rows, dim)
    assert ((dense != 0).sum(axis=0) == nnz).all()  # nnz distinct rows per column
    assert np.isin(dense, (-1, 0, 1)).all()
    assert np.array_equal(s.row_counts, (dense != 0).sum(axis=1))
    rng = np.random.default_rng(xs)
    x = rng.integers(-(2**40), 2**40, dim)
    want = [sum(int(a) * int(b) for a, b in zip(row, x, strict=True)) for row in dense]
    assert s.apply(x).tolist() == want
    assert np.array_equal(s.apply(x.astype(np.int32) if dim else x), dense @ x.astype(np.int32))
    xf = rng.standard_normal(dim)
    assert np.allclose(s.apply_float(xf), dense @ xf)


def test_deterministic_and_seed_dependent() -> None:
    a = SketchMap.from_seed(SEED, 1000, 64, 2)
    b = SketchMap.from_seed(SEED, 1000, 64, 2)
    assert np.array_equal(a.to_dense(), b.to_dense())
    c = SketchMap.from_seed(SEED[:-1] + b"\x00", 1000, 64, 2)
    assert not np.array_equal(a.to_dense(), c.to_dense())
    d = SketchMap.from_seed(SEED, 1000, 65, 2)  # another shape: an unrelated map
    assert not np.array_equal(a.to_dense()[:, :10], d.to_dense()[:64, :10])


def test_rows_and_signs_are_balanced() -> None:
    s = SketchMap.from_seed(SEED, 200_000, 100, 1)
    counts = s.row_counts
    assert counts.sum() == 200_000
    assert abs(counts - 2000).max() < 250  # ~ 5.6 standard deviations
    signs = s.to_dense().sum()  # 200k signs of ±1: |sum| ~ 450
    assert abs(int(signs)) < 3000


def test_bounds_are_exact_and_attained() -> None:
    s = SketchMap.from_seed(SEED, 500, 16, 3)
    dense = s.to_dense()
    bound = 7
    r = int(np.argmax(s.row_counts))
    x = bound * dense[r]  # every non-zero of row r pushes the same way
    assert int(np.abs(s.apply(x)).max()) == s.max_abs(bound)
    assert s.max_abs(bound) == int(s.row_counts.max()) * bound
    assert s.norm_bound(bound) == sum(int(c) ** 2 for c in s.row_counts) * bound**2
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(-bound, bound + 1, 500)
        z = s.apply(y)
        assert int(np.abs(z).max()) <= s.max_abs(bound)
        assert int(z @ z) <= s.norm_bound(bound)


def test_overflow_is_refused_not_wrapped() -> None:
    s = SketchMap.from_seed(SEED, 10, 1, 1)  # one row holding all 10 columns
    x = np.full(10, 2**62, dtype=np.int64)
    with pytest.raises(OverflowError):
        s.apply(x)
    x[:] = (2**63 - 1) // 10
    assert abs(int(s.apply(x)[0])) <= 2**63 - 1


def test_validation() -> None:
    with pytest.raises(ValueError):
        SketchMap.from_seed(SEED, 0, 4)
    with pytest.raises(ValueError):
        SketchMap.from_seed(SEED, 4, 2, 3)
    with pytest.raises(TypeError):
        SketchMap.from_seed("seed", 4, 2)  # type: ignore[arg-type]
    s = SketchMap.from_seed(SEED, 4, 2)
    with pytest.raises(ValueError):
        s.apply(np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError):
        s.apply(np.zeros(4))  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # two non-zeros of a column in one row
        SketchMap(2, 3, np.array([[0, 0], [1, 2]]), np.ones((2, 2), dtype=np.int8))
    with pytest.raises(ValueError):
        SketchMap(2, 3, np.array([[0], [3]]), np.ones((2, 1), dtype=np.int8))
    with pytest.raises(ValueError):
        SketchMap(2, 3, np.array([[0], [1]]), np.array([[1], [2]], dtype=np.int8))


def test_large_map_is_fast_enough() -> None:
    import time

    s = SketchMap.from_seed(SEED, 1_000_000, 1024, 1)
    x = np.random.default_rng(0).integers(-(2**31), 2**31, 1_000_000)
    s.apply(x)
    t = time.perf_counter()
    z = s.apply(x)
    assert time.perf_counter() - t < 0.5  # ~2 ms here; generous for loaded CI machines
    assert z.dtype == np.int64 and z.shape == (1024,)
    e0 = np.zeros(1_000_000, dtype=np.int64)
    e0[0] = 1
    assert int(np.abs(s.apply(e0)).sum()) == 1  # column 0: one non-zero, ±1
