"""Tests of quantization: exact sums, no wrap, unbiased rounding, clipping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc import ring
from mpc.quant import QuantParams, decode_sum, dequantize_sum, l2_clip, quantize
from mpc.rand import SeededRng


def test_params() -> None:
    p = QuantParams(clip=2.0, max_summands=50)
    assert p.bits == 32
    assert p.level == (2**31 - 1) // 50
    assert p.scale == p.level / 2.0
    assert QuantParams(clip=1.0, bits=8, max_summands=3).level == 42
    for bad in (
        {"clip": 0.0, "max_summands": 1},
        {"clip": float("inf"), "max_summands": 1},
        {"clip": 1.0, "max_summands": 0},
        {"clip": 1.0, "bits": 33, "max_summands": 1},
        {"clip": 1.0, "bits": 4, "max_summands": 8},
    ):
        with pytest.raises(ValueError):
            QuantParams(**bad)  # type: ignore[arg-type]


@given(
    st.integers(1, 40),
    st.integers(1, 300),
    st.sampled_from([32, 20, 8]),
    st.floats(0.01, 100.0),
    st.binary(max_size=4),
)
def test_sums_are_exact_and_never_wrap(n: int, d: int, bits: int, clip: float, seed: bytes) -> None:
    params = QuantParams(clip=clip, bits=bits, max_summands=n)
    gen = np.random.default_rng([*seed, n, d])
    rng = SeededRng(seed)
    acc = ring.zeros(d)
    ints = np.zeros(d, dtype=np.int64)
    for u in range(n):
        # extreme inputs: far beyond the clip, both signs, and weights <= 1
        x = (gen.standard_normal(d) * clip * 3).astype(np.float32)
        if u == 0:
            x[:] = clip * 10
        weight = 1.0 if u % 2 else float(gen.uniform(0, 1))
        q = quantize(x, params, rng, weight=weight)
        qi = ring.centered(q)
        assert int(np.abs(qi).max()) <= params.level
        ints += qi
        ring.add_into(acc, q)
    assert np.array_equal(decode_sum(acc), ints)
    assert int(np.abs(ints).max()) <= 2 ** (bits - 1) - 1
    assert np.array_equal(dequantize_sum(acc, params), ints / params.scale)
    buf = np.empty(d, dtype=np.float64)
    assert dequantize_sum(acc, params, out=buf) is buf


def test_rounding_is_floor_or_ceil_and_clips() -> None:
    params = QuantParams(clip=1.0, max_summands=10)
    x = np.linspace(-2, 2, 10_001, dtype=np.float32)
    q = ring.centered(quantize(x, params, SeededRng(b"r")))
    y = np.clip(x.astype(np.float64) * params.scale, -params.level, params.level)
    assert np.all((q == np.floor(y)) | (q == np.ceil(y)))
    assert q[0] == -params.level and q[-1] == params.level


def test_stochastic_rounding_is_unbiased() -> None:
    params = QuantParams(clip=1.0, bits=8, max_summands=1)  # coarse: 127 levels
    d = 200_000
    for value in (0.3, -0.71, 0.5 / 127, -1.0):
        x = np.full(d, value, dtype=np.float32)
        q = ring.centered(quantize(x, params, SeededRng(b"u" + str(value).encode())))
        y = float(np.float32(value)) * params.scale
        frac = y - np.floor(y)
        sigma = np.sqrt(max(frac * (1 - frac), 1e-12) / d)
        assert abs(q.mean() - y) <= 5 * sigma + 1e-9


def test_quantize_out_determinism_and_errors() -> None:
    params = QuantParams(clip=1.0, max_summands=4)
    x = np.random.default_rng(0).standard_normal(70_000).astype(np.float32)  # > one chunk
    out = np.empty(70_000, dtype=np.uint32)
    assert quantize(x, params, SeededRng(b"o"), out=out) is out
    assert np.array_equal(out, quantize(x, params, SeededRng(b"o")))
    assert not np.array_equal(out, quantize(x, params, SeededRng(b"other")))
    assert quantize(x.reshape(700, 100), params, SeededRng(b"o")).shape == (700, 100)
    assert not quantize(x, params, SeededRng(b"o"), weight=0.0).any()
    with pytest.raises(ValueError):
        quantize(np.array([np.nan], dtype=np.float32), params, SeededRng(b""))
    with pytest.raises(ValueError):
        quantize(x, params, SeededRng(b""), weight=1.5)
    with pytest.raises(ValueError):
        quantize(x, params, SeededRng(b""), out=np.empty(3, dtype=np.uint32))
    with pytest.raises(TypeError):
        quantize(x, params, SeededRng(b""), out=np.empty(70_000, dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        quantize(np.arange(3), params, SeededRng(b""))  # type: ignore[arg-type]


def test_l2_clip() -> None:
    gen = np.random.default_rng(1)
    x = gen.standard_normal(100_000).astype(np.float32)
    norm = float(np.linalg.norm(x.astype(np.float64)))
    c = l2_clip(x, 10.0)
    assert c.dtype == np.float32 and c is not x
    cn = float(np.linalg.norm(c.astype(np.float64)))
    assert 10.0 * (1 - 1e-5) <= cn <= 10.0
    assert np.allclose(c * (norm / cn), x, rtol=1e-5, atol=1e-6)
    buf = np.empty_like(x)
    assert l2_clip(x, 10.0, out=buf) is buf and np.array_equal(buf, c)
    y = x.copy()
    assert l2_clip(y, 10.0, out=y) is y and np.array_equal(y, c)
    with pytest.raises(TypeError):
        l2_clip(x, 1.0, out=np.empty(x.shape, dtype=np.float64))  # type: ignore[arg-type]
    same = l2_clip(x, norm * 2)
    assert np.array_equal(same, x) and same is not x
    with pytest.raises(ValueError):
        l2_clip(x, 0.0)
    with pytest.raises(ValueError):
        l2_clip(np.array([np.inf], dtype=np.float32), 1.0)
    with pytest.raises(TypeError):
        l2_clip(np.arange(3), 1.0)  # type: ignore[arg-type]
