"""Tests of mpc.shamir against a naive big-int Lagrange interpolation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from mpc import shamir
from mpc.errors import InconsistentShares, NotEnoughShares
from mpc.field import BIG_PRIME, P31, from_field, to_field
from mpc.rand import SeededRng


def naive_interpolate(points: Sequence[tuple[int, int]], at: int, p: int) -> int:
    """Lagrange interpolation, term by term, one modular inverse per term."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % p
                den = den * (xi - xj) % p
        total = (total + yi * num * pow(den, -1, p)) % p
    return total


@st.composite
def sharing_setups(draw: st.DrawFn, max_n: int = 12) -> tuple[int, int, list[int], list[int]]:
    n = draw(st.integers(1, max_n))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n, unique=True))
    subset = draw(st.permutations(range(n)))
    return n, t, xs, list(subset[: draw(st.integers(t, n))])


# ----------------------------------------------------------------- scalar sharing


@given(sharing_setups(), st.integers(0, BIG_PRIME - 1), st.binary(min_size=1, max_size=8))
def test_share_int_reconstructs_from_any_subset(
    setup: tuple[int, int, list[int], list[int]], secret: int, seed: bytes
) -> None:
    _, t, xs, subset = setup
    shares = shamir.share_int(secret, t, xs, SeededRng(seed))
    pts = [(xs[i], shares[i]) for i in subset]
    assert shamir.reconstruct_int(pts, t) == secret
    assert naive_interpolate(pts[:t], 0, BIG_PRIME) == secret
    # all shares lie on one polynomial of degree t - 1
    for x, y in zip(xs, shares, strict=True):
        assert naive_interpolate(pts[:t], x, BIG_PRIME) == y
    assert shamir.decode_int(pts, t) == (secret, frozenset())


def test_reconstruct_int_errors() -> None:
    shares = shamir.share_int(5, 3, [1, 2, 3, 4], SeededRng(b"e"))
    pts = list(zip([1, 2, 3, 4], shares, strict=True))
    with pytest.raises(NotEnoughShares) as ei:
        shamir.reconstruct_int(pts[:2], 3)
    assert (ei.value.needed, ei.value.got) == (3, 2)
    with pytest.raises(ValueError):
        shamir.reconstruct_int([*pts[:3], pts[0]], 3)  # duplicate point
    with pytest.raises(ValueError):
        shamir.reconstruct_int([(1, BIG_PRIME), *pts[1:]], 3)
    with pytest.raises(ValueError):
        shamir.reconstruct_int([(0, 1), *pts[1:]], 3)
    with pytest.raises(ValueError):
        shamir.share_int(BIG_PRIME, 2, [1, 2], SeededRng(b""))
    with pytest.raises(ValueError):
        shamir.share_int(1, 3, [1, 2], SeededRng(b""))
    with pytest.raises(ValueError):
        shamir.share_int(1, 0, [1, 2], SeededRng(b""))
    with pytest.raises(ValueError):
        shamir.share_int(1, 1, [1, 1], SeededRng(b""))


@given(
    st.integers(1, 8),
    st.integers(0, 8),
    st.data(),
)
def test_tampered_scalar_shares_detected_and_named(t: int, extra: int, data: st.DataObject) -> None:
    m = t + extra
    xs = list(range(1, m + 1))
    secret = data.draw(st.integers(0, BIG_PRIME - 1))
    shares = shamir.share_int(secret, t, xs, SeededRng(bytes([t, extra])))
    max_wrong = max(1, m - t)
    wrong = data.draw(st.lists(st.sampled_from(xs), min_size=1, max_size=max_wrong, unique=True))
    pts = [
        (x, (y + data.draw(st.integers(1, BIG_PRIME - 1))) % BIG_PRIME if x in wrong else y)
        for x, y in zip(xs, shares, strict=True)
    ]
    if m == t:
        assert shamir.reconstruct_int(pts, t) != secret or not wrong  # undetectable
        return
    with pytest.raises(InconsistentShares) as ei:
        shamir.reconstruct_int(pts, t)
    event("identifiable" if len(wrong) <= (m - t) // 2 else "detect only")
    if len(wrong) <= (m - t) // 2:
        assert ei.value.bad == frozenset(wrong)
        assert shamir.decode_int(pts, t) == (secret, frozenset(wrong))
    elif (m - t) // 2 == 0:
        assert ei.value.bad == frozenset()


def test_one_liar_named_from_threshold_plus_two() -> None:
    xs = list(range(1, 51))
    shares = shamir.share_int(42, 25, xs, SeededRng(b"liar"))
    pts = list(zip(xs, shares, strict=True))[:27]
    pts[10] = (pts[10][0], (pts[10][1] + 1) % BIG_PRIME)
    with pytest.raises(InconsistentShares) as ei:
        shamir.reconstruct_int(pts, 25)
    assert ei.value.bad == frozenset({11})
    with pytest.raises(InconsistentShares) as ei:
        shamir.reconstruct_int(pts[:26], 25)
    assert ei.value.bad == frozenset()
    with pytest.raises(InconsistentShares):
        shamir.decode_int(pts[:26], 25)


@given(st.binary(max_size=32), st.integers(1, 5))
def test_bytes_round_trip(secret: bytes, t: int) -> None:
    xs = [3, 9, 27, 81, 243]
    shares = shamir.share_bytes(secret, t, xs, SeededRng(secret))
    pts = list(zip(xs, shares, strict=True))
    assert shamir.reconstruct_bytes(pts, t, length=len(secret)) == secret
    padded = shamir.reconstruct_bytes(pts[::-1], t)
    assert padded == bytes(32 - len(secret)) + secret


def test_bytes_errors() -> None:
    with pytest.raises(ValueError):
        shamir.share_bytes(bytes(33), 1, [1], SeededRng(b""))
    shares = shamir.share_bytes(b"\xff" * 32, 1, [1], SeededRng(b""))
    with pytest.raises(InconsistentShares):
        shamir.reconstruct_bytes([(1, shares[0])], 1, length=4)
    with pytest.raises(ValueError):
        shamir.reconstruct_bytes([(1, shares[0])], 1, length=33)


def test_single_scalar_share_is_uniform_whatever_the_secret() -> None:
    # threshold 2: one share alone is uniform; its top 4 bits are uniform on 16 bins
    # (bins below 2**256; the last 297 field values are negligible).
    for secret in (0, BIG_PRIME - 1, 2**255):
        rng = SeededRng(secret.to_bytes(33, "big"))
        tops = [shamir.share_int(secret, 2, [5, 6], rng)[0] >> 252 for _ in range(3200)]
        counts = np.bincount(tops, minlength=17)[:16]
        chi2 = float(((counts - 200) ** 2 / 200).sum())
        assert chi2 < 37.7  # 99.9% quantile, 15 dof


# ----------------------------------------------------------------- vector sharing


@given(sharing_setups(max_n=10), st.integers(0, 20), st.sampled_from([P31, 2**31 - 19, 257]))
def test_share_vector_reconstructs_from_any_subset(
    setup: tuple[int, int, list[int], list[int]], d: int, p: int
) -> None:
    _, t, xs, subset = setup
    xs = [x % (p - 1) + 1 for x in xs]
    if len(set(xs)) != len(xs):
        return
    rng = SeededRng(bytes([t, d]))
    v = np.frombuffer(rng.random_bytes(8 * d), dtype=np.uint64) % np.uint64(p)
    v = v.astype(np.int64)
    shares = shamir.share_vector(v, t, xs, rng, p=p)
    assert shares.shape == (len(xs), d) and shares.dtype == np.int64
    sx = [xs[i] for i in subset]
    sy = shares[subset]
    assert np.array_equal(shamir.reconstruct_vector(sx, sy, t, p=p), v)
    for k in range(d):  # the oracle, coordinate by coordinate
        pts = [(x, int(y)) for x, y in zip(sx, sy[:, k], strict=True)]
        assert naive_interpolate(pts[:t], 0, p) == v[k]
        assert all(naive_interpolate(pts[:t], x, p) == y for x, y in pts)


def test_vector_threshold_minus_one_shares_are_identically_distributed() -> None:
    # p = 11, threshold 3: any 2 shares of each coordinate are uniform on 11**2 cells,
    # for every secret; compare two secrets cell by cell (chi-square homogeneity).
    p, t, xs, d = 11, 3, [1, 2, 3, 4, 5], 60_500
    hist = []
    for secret in (0, 7):
        shares = shamir.share_vector(
            np.full(d, secret, dtype=np.int64), t, xs, SeededRng(bytes([secret])), p=p
        )
        cells = shares[1] * p + shares[3]  # holders 2 and 4
        hist.append(np.bincount(cells, minlength=p * p).astype(float))
    a, b = hist
    expected = (a + b) / 2
    chi2 = float((((a - expected) ** 2 + (b - expected) ** 2) / expected).sum())
    assert chi2 < 176.0  # 99.9% quantile, 120 dof
    uniform = d / (p * p)
    assert float(((a - uniform) ** 2 / uniform).sum()) < 176.0


@given(st.integers(1, 6), st.integers(1, 8), st.integers(1, 40), st.data())
def test_tampered_vector_rows_detected_and_named(
    t: int, extra: int, d: int, data: st.DataObject
) -> None:
    m = t + extra
    xs = data.draw(st.lists(st.integers(1, 200), min_size=m, max_size=m, unique=True))
    rng = SeededRng(bytes([t, extra, d]))
    v = np.arange(d, dtype=np.int64) * 7919 % P31
    shares = shamir.share_vector(v, t, xs, rng)
    wrong = data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=extra, unique=True))
    for i in wrong:
        col = data.draw(st.integers(0, d - 1))
        shares[i, col] = (shares[i, col] + data.draw(st.integers(1, P31 - 1))) % P31
    bad = frozenset(xs[i] for i in wrong)
    with pytest.raises(InconsistentShares) as ei:
        shamir.reconstruct_vector(xs, shares, t)
    event("identifiable" if len(wrong) <= extra // 2 else "detect only")
    if len(wrong) <= extra // 2:
        assert ei.value.bad == bad
        got, named = shamir.decode_vector(xs, shares, t)
        assert np.array_equal(got, v) and named == bad
    elif extra // 2 == 0:
        assert ei.value.bad == frozenset()


def test_reconstruct_vector_errors_and_shapes() -> None:
    rng = SeededRng(b"shape")
    v = np.arange(12, dtype=np.int64)
    shares = shamir.share_vector(v, 2, [1, 2, 3], rng)
    # trailing shape is preserved; row order is free
    got = shamir.reconstruct_vector([3, 1], shares[[2, 0]].reshape(2, 3, 4), 2)
    assert got.shape == (3, 4) and np.array_equal(got.ravel(), v)
    with pytest.raises(NotEnoughShares):
        shamir.reconstruct_vector([1], shares[:1], 2)
    with pytest.raises(ValueError):
        shamir.reconstruct_vector([1, 2], shares, 2)
    with pytest.raises(ValueError):
        shamir.reconstruct_vector([1, 1, 2], shares, 2)
    bad = shares.copy()
    bad[0, 0] = P31
    with pytest.raises(ValueError):
        shamir.reconstruct_vector([1, 2, 3], bad, 2)
    with pytest.raises(TypeError):
        shamir.reconstruct_vector([1, 2, 3], shares.astype(float), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shamir.share_vector(np.array([P31]), 1, [1], rng)
    with pytest.raises(ValueError):
        shamir.share_vector(v.reshape(3, 4), 1, [1], rng)
    with pytest.raises(ValueError):
        shamir.share_vector(v, 1, [P31], rng)


# --------------------------------------------------------------- computing on shares


def _setup_sketches(
    u: int, d: int, t: int, n: int, seed: bytes
) -> tuple[list[int], np.ndarray, np.ndarray, SeededRng]:
    rng = SeededRng(seed)
    xs = list(range(1, n + 1))
    z = (np.frombuffer(rng.random_bytes(8 * u * d), dtype=np.int64) % 2001 - 1000).reshape(u, d)
    # holder-major: shares[i, v] = holder i's share of z_v
    shares = np.stack([shamir.share_vector(to_field(z[v]), t, xs, rng) for v in range(u)], axis=1)
    return xs, z, shares, rng


@pytest.mark.parametrize(("t", "n"), [(1, 1), (2, 3), (3, 7), (4, 9)])
def test_scores_on_shares_match_plain_integers(t: int, n: int) -> None:
    u, d = 4, 33
    xs, z, shares, rng = _setup_sketches(u, d, t, n, bytes([t, n]))
    ref = (np.arange(d, dtype=np.int64) % 9) - 4
    coeffs = np.array([1, 0, 3, P31 - 1], dtype=np.int64)  # c = (1, 0, 3, -1)
    zeros_norm = shamir.share_zeros(u, t, xs, rng)  # (n, u)
    zeros_gram = shamir.share_zeros(u * u, t, xs, rng).reshape(n, u, u)
    norms = np.stack([shamir.local_sq_norms(shares[i], mask=zeros_norm[i]) for i in range(n)])
    gram = np.stack([shamir.local_gram(shares[i], mask=zeros_gram[i]) for i in range(n)])
    inner = np.stack([shamir.local_inner_public(shares[i], to_field(ref)) for i in range(n)])
    comb = np.stack([shamir.local_combination(coeffs, shares[i]) for i in range(n)])
    zl = z.tolist()
    assert from_field(shamir.open_degree2(xs, norms, t)).tolist() == [
        sum(a * a for a in row) for row in zl
    ]
    assert from_field(shamir.open_degree2(xs, gram, t)).tolist() == (z @ z.T).tolist()
    assert from_field(shamir.open_linear(xs, inner, t)).tolist() == (z @ ref).tolist()
    assert from_field(shamir.open_linear(xs, comb, t)).tolist() == (z[0] + 3 * z[2] - z[3]).tolist()
    # openings from exactly the minimum and with a holder missing
    assert np.array_equal(
        shamir.open_degree2(xs[: 2 * t - 1], norms[: 2 * t - 1], t),
        shamir.open_degree2(xs, norms, t),
    )
    assert np.array_equal(
        shamir.open_linear(xs[-t:], inner[-t:], t), shamir.open_linear(xs, inner, t)
    )


def test_degree2_needs_2t_minus_1_and_checks_extras() -> None:
    t, n = 3, 7
    xs, _, shares, rng = _setup_sketches(2, 5, t, n, b"deg2")
    mask = shamir.share_zeros(2, t, xs, rng)
    local = np.stack([shamir.local_sq_norms(shares[i], mask=mask[i]) for i in range(n)])
    with pytest.raises(NotEnoughShares) as ei:
        shamir.open_degree2(xs[:4], local[:4], t)
    assert ei.value.needed == 5
    local[2, 1] = (local[2, 1] + 1) % P31
    with pytest.raises(InconsistentShares) as ej:
        shamir.open_degree2(xs, local, t)  # 7 = 5 + 2: one liar is named
    assert ej.value.bad == frozenset({3})
    with pytest.raises(ValueError):
        shamir.share_zeros(1, 5, xs, rng)  # 2*5-1 > 7 holders


def test_unmasked_product_leaks_and_mask_hides() -> None:
    # threshold 2: a colluder holding share s of z learns <z, s> from the opened raw
    # product polynomial h(x) = |z|^2 + 2x<z,a> + x^2|a|^2, since a = (s - z) / x1.
    p, t, xs, d = P31, 2, [1, 2, 3], 16
    rng = SeededRng(b"leak")
    z = np.arange(d, dtype=np.int64) * 3 + 1
    sh = shamir.share_vector(z, t, xs, rng)
    s = sh[0]  # the colluder is holder x1 = 1
    target = int(sum(int(a) * int(b) for a, b in zip(z, s, strict=True)) % p)

    def colluder_guess(opened: np.ndarray) -> int:
        pts = [(x, int(y)) for x, y in zip(xs, opened, strict=True)]
        h0 = naive_interpolate(pts, 0, p)
        # h1 = derivative at 0: interpolate coefficients of a degree-2 polynomial
        h_at_m1 = naive_interpolate(pts, p - 1, p)
        h_at_1 = pts[0][1]
        h1 = (h_at_1 - h_at_m1) * pow(2, -1, p) % p
        return (h1 * xs[0] * pow(2, -1, p) + h0) % p

    raw = np.array(
        [int(shamir.local_sq_norms(sh[i].reshape(1, d), mask=None)[0]) for i in range(3)]
    )
    assert colluder_guess(raw) == target
    mask = shamir.share_zeros(1, t, xs, rng)
    masked = np.array(
        [int(shamir.local_sq_norms(sh[i].reshape(1, d), mask=mask[i])[0]) for i in range(3)]
    )
    assert naive_interpolate(list(zip(xs, masked.tolist(), strict=True)), 0, p) == int(
        (z * z).sum()
    )
    assert colluder_guess(masked) != target
