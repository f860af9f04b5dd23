"""Tests of mpc.field against Python integers; primality of the constants."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc import field
from mpc.field import BIG_PRIME, P31


def miller_rabin(n: int, rounds: int = 48) -> bool:
    """Textbook Miller-Rabin with fixed small-prime witnesses plus seeded random ones."""
    if n < 2:
        return False
    small = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
    for q in small:
        if n % q == 0:
            return n == q
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    gen = random.Random(n)
    witnesses = small + [gen.randrange(2, n - 1) for _ in range(rounds)]
    for a in witnesses:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_constants_are_prime() -> None:
    assert all(miller_rabin(q) for q in field.PRIMES_31)
    assert field.PRIMES_31[0] == P31
    # they are the largest primes below 2**31, in order
    assert [q for q in range(2**31 - 1, 2**31 - 70, -1) if miller_rabin(q)] == list(field.PRIMES_31)
    assert miller_rabin(P31)
    assert miller_rabin(BIG_PRIME)
    assert BIG_PRIME > 2**256
    # it is the smallest prime above 2**256
    assert not any(miller_rabin(c) for c in range(2**256 + 1, BIG_PRIME))
    assert not miller_rabin(2**256 + 299)  # the witness test can say no


vals = st.integers(min_value=0, max_value=P31 - 1)
PRIMES = [P31, 2**31 - 19, 65537, 257, 3]


@pytest.mark.parametrize("p", PRIMES)
def test_reduce_matches_modulo(p: int) -> None:
    edge = [0, 1, p - 1, p, p + 1, 2 * p - 1, 2 * p, (p - 1) ** 2, 2**62, 2**63 - 1]
    gen = np.random.default_rng(p)
    rand = gen.integers(0, 2**63 - 1, size=5000, dtype=np.int64)
    x = np.concatenate([np.array(edge, dtype=np.int64), rand])
    got = field.reduce(x, p)
    assert got.tolist() == [int(v) % p for v in x.tolist()]
    y = x.copy()
    field.reduce(y, p, out=y)
    assert np.array_equal(y, got)


@given(st.lists(st.tuples(vals, vals), min_size=1, max_size=40))
def test_elementwise_ops(pairs: list[tuple[int, int]]) -> None:
    a = np.array([u for u, _ in pairs], dtype=np.int64)
    b = np.array([v for _, v in pairs], dtype=np.int64)
    assert field.add(a, b).tolist() == [(u + v) % P31 for u, v in pairs]
    assert field.sub(a, b).tolist() == [(u - v) % P31 for u, v in pairs]
    assert field.mul(a, b).tolist() == [(u * v) % P31 for u, v in pairs]
    assert field.neg(a).tolist() == [(-u) % P31 for u, _ in pairs]


def naive_matmul(a: np.ndarray, b: np.ndarray, p: int) -> list[list[int]]:
    al, bl = a.tolist(), b.tolist()
    return [
        [sum(al[i][t] * bl[t][j] for t in range(len(bl))) % p for j in range(len(bl[0]))]
        for i in range(len(al))
    ]


@pytest.mark.parametrize("p", [P31, 2**31 - 19, 257])
@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 1, 1), (3, 64, 5), (50, 25, 300), (4, 65, 3), (2, 700, 9)]
)
def test_matmul_matches_big_ints(p: int, m: int, k: int, n: int) -> None:
    gen = np.random.default_rng(m * 1000 + k)
    a = gen.integers(0, p, size=(m, k), dtype=np.int64)
    b = gen.integers(0, p, size=(k, n), dtype=np.int64)
    assert field.matmul(a, b, p).tolist() == naive_matmul(a, b, p)


def test_matmul_worst_case_values_do_not_overflow() -> None:
    for k in (1, 64, 65, 3000):
        a = np.full((3, k), P31 - 1, dtype=np.int64)
        b = np.full((k, 4), P31 - 1, dtype=np.int64)
        assert field.matmul(a, b).tolist() == [[k % P31] * 4] * 3  # (-1)(-1) k


def test_matmul_inner_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(field, "_BLOCK_K", 70)  # exercise several inner blocks
    gen = np.random.default_rng(7)
    a = gen.integers(0, P31, size=(5, 301), dtype=np.int64)
    b = gen.integers(0, P31, size=(301, 6), dtype=np.int64)
    assert field.matmul(a, b).tolist() == naive_matmul(a, b, P31)


def test_matmul_shapes() -> None:
    gen = np.random.default_rng(3)
    a = gen.integers(0, P31, size=(40, 700), dtype=np.int64)  # tall GEMV path
    v = gen.integers(0, P31, size=700, dtype=np.int64)
    got = field.matmul(a, v)
    assert got.shape == (40,)
    assert got.tolist() == [row[0] for row in naive_matmul(a, v.reshape(-1, 1), P31)]
    assert field.matmul(v, a.T.copy()).shape == (40,)
    assert field.matmul(v[:3], v[:3]).shape == ()
    assert field.matmul(
        np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    ).shape == (2, 3)
    with pytest.raises(ValueError):
        field.matmul(a, a)
    with pytest.raises(ValueError):
        field.matmul(np.zeros((1, 1, 1), dtype=np.int64), a)
    with pytest.raises(ValueError):
        field.matmul(a, v, p=2**31)


@given(st.lists(st.integers(-(P31 - 1) // 2, (P31 - 1) // 2), max_size=30))
def test_centered_encoding_round_trips(xs: list[int]) -> None:
    x = np.array(xs, dtype=np.int64)
    y = field.to_field(x)
    assert y.tolist() == [v % P31 for v in xs]
    assert field.from_field(y).tolist() == xs


def test_encoding_errors() -> None:
    half = (P31 - 1) // 2
    with pytest.raises(ValueError):
        field.to_field(np.array([half + 1]))
    with pytest.raises(ValueError):
        field.to_field(np.array([-half - 1]))
    with pytest.raises(TypeError):
        field.to_field(np.array([0.5]))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        field.from_field(np.array([P31], dtype=np.int64))
    with pytest.raises(ValueError):
        field.check_canonical(np.array([-1]), P31)
    assert field.to_field(np.array([-1], dtype=np.int8), 257).tolist() == [256]


def test_inverse() -> None:
    for p in (P31, BIG_PRIME, 257):
        for a in (1, 2, p - 1, 12345):
            assert a * field.inv(a, p) % p == 1
    with pytest.raises(ZeroDivisionError):
        field.inv(P31, P31)


@given(st.integers(-(2**120), 2**120))
def test_crt_recovers_signed_integers(v: int) -> None:
    primes = field.PRIMES_31
    assert field.crt_centered([v % q for q in primes], primes) == v
    assert field.crt_centered([v % P31], [P31]) == (v + P31 // 2) % P31 - P31 // 2


def test_crt_errors() -> None:
    with pytest.raises(ValueError):
        field.crt_centered([], [])
    with pytest.raises(ValueError):
        field.crt_centered([1], [P31, 3])
    with pytest.raises(ValueError):
        field.crt_centered([1, 1], [P31, P31])


@given(st.lists(st.integers(-(2**120), 2**120), min_size=1, max_size=20), st.integers(1, 4))
def test_crt_centered_array_matches_the_scalar_version(values: list[int], k: int) -> None:
    primes = field.PRIMES_31[:k]
    modulus = 1
    for q in primes:
        modulus *= q
    res = [np.array([v % q for v in values], dtype=np.int64) for q in primes]
    got = field.crt_centered_array(res, primes)
    assert got.dtype == object and got.shape == (len(values),)
    for v, g in zip(values, got.tolist(), strict=True):
        assert g == field.crt_centered([v % q for q in primes], primes)
        if abs(v) <= (modulus - 1) // 2:
            assert g == v
    with pytest.raises(ValueError):
        field.crt_centered_array(res, (*primes[:-1], primes[0]) if k > 1 else ())
