"""p2pfl._lru.BoundedLru: the container of the process-wide memos."""

from __future__ import annotations

import pytest

from p2pfl._lru import BoundedLru


def test_least_recently_used_leaves_first_and_counts() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert "b" not in lru and lru.get("a") == 1 and lru.get("c") == 3
    assert lru.get("b") is None
    assert (lru.hits, lru.misses) == (3, 1)
    lru.clear()
    assert len(lru) == 0 and (lru.hits, lru.misses) == (0, 0)


def test_weight_bound_and_eviction_callback() -> None:
    gone: list[tuple[str, bytes]] = []
    lru: BoundedLru[str, bytes] = BoundedLru(100, max_weight=10, weigh=len,
                                             on_evict=lambda k, v: gone.append((k, v)))
    lru.put("a", b"xxxx")
    lru.put("b", b"yyyy")
    assert lru.weight == 8 and not gone
    lru.put("c", b"zzzz")  # 12 > 10: a leaves
    assert gone == [("a", b"xxxx")] and lru.weight == 8
    lru.put("b", b"y")  # replacing re-weighs, and the old value leaves
    assert lru.weight == 5 and len(lru) == 2 and gone[-1] == ("b", b"yyyy")
    lru.put("big", b"0" * 11)  # heavier than the bound alone: nothing of it stays
    assert len(lru) == 0 and lru.weight == 0
    assert [k for k, _ in gone] == ["a", "b", "c", "b", "big"]


def test_capacity_zero_remembers_nothing_and_resize_shrinks() -> None:
    off: BoundedLru[int, int] = BoundedLru(0)
    off.put(1, 1)
    assert off.get(1) is None and len(off) == 0
    lru: BoundedLru[int, int] = BoundedLru(5)
    for i in range(5):
        lru.put(i, i)
    lru.resize(2)
    assert len(lru) == 2 and 3 in lru and 4 in lru
    with pytest.raises(ValueError):
        lru.resize(-1)
    with pytest.raises(ValueError):
        BoundedLru(-1)
    with pytest.raises(ValueError, match="together"):
        BoundedLru(4, max_weight=3)


def test_identity_memo_is_per_object_and_holds_it() -> None:
    from p2pfl._lru import IdentityMemo

    memo: IdentityMemo[list[int], str] = IdentityMemo(2, max_weight=5, weigh=len)
    a, b = [1, 2], [1, 2]  # equal, distinct objects
    memo.put(a, "a")
    assert memo.get(a) == "a" and memo.get(b) is None
    memo.put([1, 2, 3, 4], "big")  # weight 2 + 4 > 5: a leaves
    assert memo.get(a) is None and len(memo) == 1
    memo.clear()
    assert len(memo) == 0
