"""Tests of mpc.rand: determinism, stream splitting, unbiased samplers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc.rand import Rng, SeededRng, SystemRng, random_below, random_field_vector

P31 = 2**31 - 1


def test_protocol_is_satisfied() -> None:
    assert isinstance(SystemRng(), Rng)
    assert isinstance(SeededRng(b"x"), Rng)


def test_system_rng_lengths() -> None:
    rng = SystemRng()
    assert len(rng.random_bytes(0)) == 0
    assert len(rng.random_bytes(33)) == 33
    with pytest.raises(ValueError):
        rng.random_bytes(-1)


def test_seeded_is_deterministic_and_seed_sensitive() -> None:
    a, b, c = SeededRng(b"seed"), SeededRng(b"seed"), SeededRng(b"seed2")
    assert a.random_bytes(100) == b.random_bytes(100)
    assert SeededRng(b"seed").random_bytes(64) != c.random_bytes(64)
    with pytest.raises(TypeError):
        SeededRng("seed")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        a.random_bytes(-1)


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_seeded_stream_does_not_depend_on_split(sizes: list[int]) -> None:
    whole = SeededRng(b"split").random_bytes(sum(sizes))
    rng = SeededRng(b"split")
    assert b"".join(rng.random_bytes(n) for n in sizes) == whole


def test_seeded_stream_is_chacha20_keystream() -> None:
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    key = hashlib.blake2b(b"k", digest_size=32, person=b"mpc.SeededRng").digest()
    expected = Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor().update(bytes(999))
    assert SeededRng(b"k").random_bytes(999) == expected


@given(st.integers(min_value=1, max_value=2**300))
def test_random_below_in_range(bound: int) -> None:
    rng = SeededRng(bound.to_bytes(40, "little"))
    for _ in range(5):
        assert 0 <= random_below(rng, bound) < bound


def test_random_below_rejects_bad_bound() -> None:
    with pytest.raises(ValueError):
        random_below(SeededRng(b""), 0)


def test_random_below_is_uniform() -> None:
    # bound 6 draws 3 bits and rejects 6 and 7: a modulo shortcut would skew 0 and 1.
    rng = SeededRng(b"uniform")
    counts = np.bincount([random_below(rng, 6) for _ in range(60_000)], minlength=6)
    chi2 = float(((counts - 10_000) ** 2 / 10_000).sum())
    assert chi2 < 20.5  # 99.9% quantile of chi2 with 5 dof


@pytest.mark.parametrize("p", [2, 3, 7, 2**16 + 1, P31, 2**32, 2**61 - 1, 2**63])
def test_random_field_vector_range(p: int) -> None:
    v = random_field_vector(SeededRng(b"fv"), 5000, p)
    assert v.dtype == np.int64 and v.shape == (5000,)
    assert int(v.min()) >= 0 and int(v.max()) < p


def test_random_field_vector_is_uniform_with_heavy_rejection() -> None:
    # p = 5 draws 3 bits and rejects 3/8 of the words: exercises the redraw loop.
    v = random_field_vector(SeededRng(b"five"), 50_000, 5)
    counts = np.bincount(v, minlength=5)
    chi2 = float(((counts - 10_000) ** 2 / 10_000).sum())
    assert chi2 < 18.5  # 99.9% quantile, 4 dof


def test_random_field_vector_deterministic_and_edge_cases() -> None:
    a = random_field_vector(SeededRng(b"d"), 100, P31)
    b = random_field_vector(SeededRng(b"d"), 100, P31)
    assert np.array_equal(a, b)
    assert random_field_vector(SeededRng(b"d"), 0, P31).shape == (0,)
    assert not random_field_vector(SeededRng(b"d"), 10, 1).any()
    with pytest.raises(ValueError):
        random_field_vector(SeededRng(b"d"), -1, P31)
    with pytest.raises(ValueError):
        random_field_vector(SeededRng(b"d"), 1, 2**63 + 1)
