"""Partitioners: disjoint cover, min size, determinism, skew vs alpha, parsing."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.errors import ConfigError
from p2pfl.learning import (
    PartitionSpec,
    dirichlet,
    iid,
    label_skew,
    load_digits_arrays,
    parse_partition,
    quantity_skew,
)


def check_cover(parts, n):
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert np.array_equal(np.sort(allidx), np.arange(n))  # disjoint and covering
    for p in parts:
        assert np.array_equal(p, np.sort(p))


@st.composite
def problems(draw):
    n_classes = draw(st.integers(1, 10))
    n = draw(st.integers(1, 300))
    labels = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    n_peers = draw(st.integers(1, min(n, 25)))
    return labels, n_peers


spec_strategy = st.one_of(
    st.just(PartitionSpec("iid")),
    st.builds(PartitionSpec, st.sampled_from(["dirichlet", "quantity"]), st.floats(0.01, 100.0)),
)


@given(problems(), spec_strategy, st.integers(0, 2**32 - 1))
def test_partition_properties(problem, spec, seed):
    labels, n_peers = problem
    parts = spec(labels, n_peers, seed)
    assert len(parts) == n_peers
    check_cover(parts, labels.shape[0])
    floor = max(1, min(10, labels.shape[0] // n_peers))
    if spec.kind == "iid":
        sizes = [p.shape[0] for p in parts]
        assert max(sizes) - min(sizes) <= 1
    else:
        assert min(p.shape[0] for p in parts) >= floor
    again = spec(labels, n_peers, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@given(problems(), st.floats(0.01, 10.0), st.integers(0, 5), st.integers(0, 1000))
def test_explicit_min_size(problem, alpha, min_size, seed):
    labels, n_peers = problem
    if min_size * n_peers > labels.shape[0]:
        with pytest.raises(ConfigError, match="min_size"):
            dirichlet(labels, n_peers, alpha, seed, min_size=min_size)
        return
    for fn in (dirichlet, quantity_skew):
        parts = fn(labels, n_peers, alpha, seed, min_size=min_size)
        check_cover(parts, labels.shape[0])
        assert min(p.shape[0] for p in parts) >= min_size


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = load_digits_arrays().y_train
    skews = [
        np.mean([label_skew(labels, dirichlet(labels, 20, alpha, seed)) for seed in range(3)])
        for alpha in (100.0, 5.0, 0.5, 0.1)
    ]
    assert all(a < b for a, b in itertools.pairwise(skews)), skews
    assert label_skew(labels, iid(labels, 20, 0)) < skews[1]
    assert skews[-1] > 0.6  # alpha 0.1: peers see few classes


def test_quantity_skew_sizes_grow_uneven_as_alpha_shrinks():
    labels = np.zeros(2000, dtype=np.int64)
    cv = [
        np.std([p.shape[0] for p in quantity_skew(labels, 20, alpha, 0)]) for alpha in (100.0, 0.2)
    ]
    assert cv[0] < cv[1]


def test_too_many_peers():
    with pytest.raises(ConfigError, match="only 3 samples"):
        iid(np.zeros(3), 4, 0)
    with pytest.raises(ConfigError):
        dirichlet(np.zeros(10), 0, 0.5, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        (" IID ", PartitionSpec("iid")),
        ("dirichlet:0.5", PartitionSpec("dirichlet", 0.5)),
        ("Dirichlet: 1e-1", PartitionSpec("dirichlet", 0.1)),
        ("quantity:1.0", PartitionSpec("quantity", 1.0)),
    ],
)
def test_parse_partition(text, expected):
    spec = parse_partition(text)
    assert spec == expected
    assert parse_partition(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "iid:1",
        "dirichlet",
        "dirichlet:",
        "dirichlet:abc",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "quantity:inf",
        "shards:2",
        "label:0.5",
    ],
)
def test_parse_partition_rejects(text):
    with pytest.raises(ConfigError) as e:
        parse_partition(text)
    assert repr(text) in str(e.value) or text.strip() == ""
