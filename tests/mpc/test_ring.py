"""Tests of mpc.ring against Python integers modulo 2**32."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc import ring

words = st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=50)


@given(words, st.data())
def test_add_sub_neg_match_integers(a: list[int], data: st.DataObject) -> None:
    b = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=len(a), max_size=len(a)))
    x = np.array(a, dtype=np.uint32)
    y = np.array(b, dtype=np.uint32)
    acc = x.copy()
    assert ring.add_into(acc, y) is acc
    assert acc.tolist() == [(u + v) % 2**32 for u, v in zip(a, b, strict=True)]
    ring.sub_into(acc, y)
    assert acc.tolist() == a
    assert ring.neg(x).tolist() == [(-u) % 2**32 for u in a]
    assert ring.centered(x).tolist() == [u - 2**32 if u >= 2**31 else u for u in a]


def test_neg_in_place_and_zeros() -> None:
    x = np.array([0, 1, 2**31, 2**32 - 1], dtype=np.uint32)
    ring.neg(x, out=x)
    assert x.tolist() == [0, 2**32 - 1, 2**31, 1]
    z = ring.zeros(3)
    assert z.dtype == np.uint32 and not z.any()
    with pytest.raises(ValueError):
        ring.zeros(-1)


def test_type_and_shape_errors() -> None:
    a = ring.zeros(3)
    with pytest.raises(TypeError):
        ring.add_into(a, np.zeros(3, dtype=np.int64))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ring.sub_into(a, ring.zeros(4))
    with pytest.raises(TypeError):
        ring.centered(np.zeros(2, dtype=np.int32))  # type: ignore[arg-type]
