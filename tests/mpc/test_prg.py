"""Tests of mpc.prg against libsodium's deterministic generator (pynacl)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import nacl.utils
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc.prg import SEED_BYTES, MaskExpander, default_workers, expand
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


# (n, seeds): one chunk; one part of several chunks; parts (4 to 9, by workers) with
# and without hashing, cut off the chunk grid (see the thresholds in mpc.prg); with
# workers=1 everything runs on the calling thread
PLANS = [(1000, 4), (70_001, 3), (300_007, 3), (600_001, 2)]


@pytest.mark.parametrize(("n", "k"), PLANS)
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_apply_is_the_same_on_any_number_of_threads(n: int, k: int, workers: int) -> None:
    rng = SeededRng(b"threads %d %d" % (n, k))
    seeds = [rng.random_bytes(32) for _ in range(k)]
    src = np.frombuffer(rng.random_bytes(4 * n), dtype=np.uint32).copy()
    expected = src.copy()
    for i, s in enumerate(seeds):
        expected = expected + expand(s, n) if i % 2 == 0 else expected - expand(s, n)
    plus, minus = seeds[0::2], seeds[1::2]
    me = MaskExpander(workers=workers)
    acc = src.copy()
    assert me.apply(acc, plus, minus) is acc
    assert np.array_equal(acc, expected)
    # src= writes src + masks into acc and leaves src alone; digest= hashes the result
    out = np.full(n, 7, dtype=np.uint32)
    h = hashlib.sha256()
    before = src.copy()
    assert me.apply(out, plus, minus, src=src, digest=h) is out
    assert np.array_equal(out, expected) and np.array_equal(src, before)
    assert h.digest() == hashlib.sha256(expected.tobytes()).digest()
    # src may be the accumulator itself
    h2 = hashlib.sha256()
    me.apply(src, plus, minus, src=src, digest=h2)
    assert np.array_equal(src, expected) and h2.digest() == h.digest()


def test_apply_without_seeds_copies_and_hashes() -> None:
    src = np.arange(10, dtype=np.uint32)
    acc = np.zeros(10, dtype=np.uint32)
    h = hashlib.sha256()
    MaskExpander().apply(acc, src=src, digest=h)
    assert np.array_equal(acc, src)
    assert h.digest() == hashlib.sha256(src.tobytes()).digest()


def test_apply_rejects_bad_src_and_workers() -> None:
    me = MaskExpander()
    acc = np.zeros(4, dtype=np.uint32)
    seed = b"\2" * 32
    with pytest.raises(TypeError):
        me.apply(acc, (seed,), src=np.zeros(4, dtype=np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        me.apply(acc, (seed,), src=np.zeros(5, dtype=np.uint32))
    with pytest.raises(ValueError):
        me.apply(acc, (seed, b"short"))
    assert not acc.any()  # nothing touched before the checks passed
    with pytest.raises(ValueError):
        MaskExpander(workers=0)
    assert MaskExpander(workers=1).workers == 1
    assert 1 <= default_workers() <= 8


def test_expanders_on_several_threads_at_once() -> None:
    rng = SeededRng(b"concurrent")
    seeds = [rng.random_bytes(32) for _ in range(3)]
    n = 300_001
    src = np.frombuffer(rng.random_bytes(4 * n), dtype=np.uint32)
    expected = src + expand(seeds[0], n) + expand(seeds[1], n) - expand(seeds[2], n)
    digest = hashlib.sha256(expected.tobytes()).digest()

    def one(_: int) -> tuple[bool, bytes]:
        acc = np.empty(n, dtype=np.uint32)
        h = hashlib.sha256()
        MaskExpander(workers=3).apply(acc, seeds[:2], seeds[2:], src=src, digest=h)
        return bool(np.array_equal(acc, expected)), h.digest()

    with ThreadPoolExecutor(max_workers=4) as ex:
        assert list(ex.map(one, range(8))) == [(True, digest)] * 8
