"""Tests of mpc.prg against libsodium's deterministic generator (pynacl)."""

from __future__ import annotations

import nacl.utils
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc.prg import SEED_BYTES, MaskExpander, expand
from mpc.rand import SeededRng

SIZES = [0, 1, 15, 16, 17, 1000, (1 << 16) - 1, 1 << 16, (1 << 16) + 3, 200_001]


@pytest.mark.parametrize("n", SIZES)
def test_expand_equals_libsodium(n: int) -> None:
    seed = bytes(range(32))
    got = expand(seed, n)
    assert got.dtype == np.uint32 and got.shape == (n,)
    assert got.tobytes() == nacl.utils.randombytes_deterministic(4 * n, seed)


@given(st.binary(min_size=SEED_BYTES, max_size=SEED_BYTES), st.integers(0, 3000))
def test_expand_equals_libsodium_any_seed(seed: bytes, n: int) -> None:
    expected = np.frombuffer(nacl.utils.randombytes_deterministic(4 * n, seed), dtype="<u4")
    assert np.array_equal(expand(seed, n), expected)


def test_expand_reuses_out() -> None:
    seed = b"\x07" * 32
    out = np.zeros(70_000, dtype=np.uint32)
    assert expand(seed, 70_000, out=out) is out
    assert np.array_equal(out, expand(seed, 70_000))
    with pytest.raises(ValueError):
        expand(seed, 10, out=out)
    with pytest.raises(TypeError):
        expand(seed, 10, out=np.zeros(10, dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        expand(seed, 10, out=np.zeros(20, dtype=np.uint32)[::2])


def test_bad_seed_and_length() -> None:
    with pytest.raises(ValueError):
        expand(b"short", 4)
    with pytest.raises(ValueError):
        expand(b"\0" * 32, -1)
    with pytest.raises(ValueError):
        MaskExpander().add_mask(np.zeros(3, dtype=np.uint32), b"\0" * 31)


@pytest.mark.parametrize("n", [1, 1000, (1 << 16) + 5, 150_000])
def test_mask_expander_matches_expand(n: int) -> None:
    rng = SeededRng(b"masks")
    seeds = [rng.random_bytes(32) for _ in range(4)]
    start = np.frombuffer(rng.random_bytes(4 * n), dtype=np.uint32).copy()
    me = MaskExpander()
    acc = start.copy()
    assert me.add_mask(acc, seeds[0]) is acc
    me.sub_mask(acc, seeds[1])
    expected = start + expand(seeds[0], n) - expand(seeds[1], n)  # uint32 wraps
    assert np.array_equal(acc, expected)
    acc2 = start.copy()
    me.apply(acc2, plus=seeds[:3], minus=seeds[3:])
    exp2 = start + expand(seeds[0], n) + expand(seeds[1], n) + expand(seeds[2], n)
    exp2 -= expand(seeds[3], n)
    assert np.array_equal(acc2, exp2)
    # masks cancel: +s then -s gives back the start exactly
    me.apply(acc2, plus=seeds[3:], minus=seeds[:3])
    assert np.array_equal(acc2, start)


def test_mask_expander_rejects_bad_accumulators() -> None:
    me = MaskExpander()
    seed = b"\1" * 32
    with pytest.raises(TypeError):
        me.add_mask(np.zeros(4, dtype=np.int64), seed)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        me.add_mask(np.zeros((2, 2), dtype=np.uint32), seed)
    acc = np.zeros(4, dtype=np.uint32)
    me.apply(acc)
    assert not acc.any()
