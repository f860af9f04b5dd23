"""Tests of the SecAgg+ neighbour graph."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc.graph import neighbours


def _connected(adj: list[frozenset[int]]) -> bool:
    seen, todo = {0}, [0]
    while todo:
        for v in adj[todo.pop()]:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(adj)


@given(st.integers(1, 60), st.integers(0, 64), st.binary(max_size=8))
def test_graph_shape(n: int, k: int, seed: bytes) -> None:
    adj = neighbours(n, k, seed)
    assert len(adj) == n
    for u, nb in enumerate(adj):
        assert u not in nb
        assert all(0 <= v < n and u in adj[v] for v in nb)
    degrees = sorted(len(nb) for nb in adj)
    if k >= n - 1:
        assert degrees == [n - 1] * n
    elif k % 2 and n % 2:
        assert degrees == [k] * (n - 1) + [k + 1]  # n*k odd: one vertex gets k + 1
    else:
        assert degrees == [k] * n
    if n > 1 and k >= 2:
        assert _connected(adj)
    assert adj == neighbours(n, k, seed)


def test_seed_changes_the_graph() -> None:
    graphs = {tuple(neighbours(30, 4, bytes([i]))) for i in range(20)}
    assert len(graphs) == 20


def test_every_member_is_equally_likely_neighbour() -> None:
    # over many seeds, member 0's neighbours are spread over all others
    counts = [0] * 20
    for i in range(400):
        for v in neighbours(20, 3, i.to_bytes(2, "big"))[0]:
            counts[v] += 1
    assert counts[0] == 0
    assert min(counts[1:]) > 30  # expected ~63 each


def test_errors() -> None:
    with pytest.raises(ValueError):
        neighbours(0, 1, b"")
    with pytest.raises(ValueError):
        neighbours(3, -1, b"")
    with pytest.raises(TypeError):
        neighbours(3, 1, "seed")  # type: ignore[arg-type]
