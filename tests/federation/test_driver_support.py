"""The driver's helpers for scale: the shared decode memo and bounded state answers."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import (
    GlobalState,
    SignedGroupAbort,
    SignedGroupResult,
    StateRequest,
    StateResponse,
)
from p2pfl.federation._driver_support import (
    DecodeMemo,
    Presence,
    bounded_answer,
    result_size_bound,
)
from p2pfl.federation.messages import RESULT_DOMAIN, ResultBody, endorse
from p2pfl.wire import decode, encode

from .harness import identities, make_federation


def _result(fed_id: bytes, group: int, dim: int, ids: list, fill: float = 1.0) -> SignedGroupResult:
    peers = tuple(sorted(i.peer_id for i in ids))
    body = ResultBody(fed_id, 3, group, bytes(32), bytes(32), peers, (), (),
                      np.full(dim, fill + group, dtype=np.float64), float(len(peers)), 10)
    ends = tuple(sorted((endorse(i, RESULT_DOMAIN, bytes(32)) for i in ids),
                        key=lambda e: e.public_key))
    return SignedGroupResult(body, ends)


def test_decode_memo_shares_one_immutable_object_per_payload() -> None:
    fed = make_federation()
    ids = identities(4)
    memo = DecodeMemo((SignedGroupResult, SignedGroupAbort, Presence))
    data = encode(_result(fed.id, 0, 50, ids))
    a, b = memo.decode(data), memo.decode(bytes(bytearray(data)))  # equal bytes, new object
    assert a is b and memo.hits == 1 and memo.misses == 1
    assert isinstance(a, SignedGroupResult)
    arr = a.body.update_sum
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr.flags.writeable = True  # a view of immutable bytes: never writeable
    changed = bytearray(data)
    at = bytes(data).index(np.float64(1.0).tobytes())  # the first element of the sum
    changed[at + 7] ^= 0x40
    c = memo.decode(bytes(changed))
    assert c is not a and encode(c) == bytes(changed)
    assert not np.array_equal(c.body.update_sum, a.body.update_sum)
    # classes outside ``shared`` are decoded afresh every time
    req = encode(StateRequest(fed.id, 1, b"n" * 16))
    assert memo.decode(req) is not memo.decode(req)
    # garbage raises every time and is never remembered
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            memo.decode(b"\x00garbage")


def test_decode_memo_is_bounded() -> None:
    fed = make_federation()
    ids = identities(3)
    memo = DecodeMemo((SignedGroupResult,), max_items=3, max_bytes=1 << 30)
    payloads = [encode(_result(fed.id, g, 10, ids)) for g in range(5)]
    objs = [memo.decode(p) for p in payloads]
    assert len(memo._items) == 3
    assert memo.decode(payloads[4]) is objs[4] and memo.decode(payloads[0]) is not objs[0]
    small = DecodeMemo((SignedGroupResult,), max_items=100, max_bytes=len(payloads[0]) * 2)
    for p in payloads:
        small.decode(p)
    assert len(small._items) <= 2 and small._items.weight <= len(payloads[0]) * 2
    assert len(small._ids) == len(small._items)  # the identity index follows evictions


def test_bounded_answer_fits_and_rotates_through_the_results() -> None:
    fed = make_federation()
    ids = identities(4)
    state = GlobalState.initial(fed, np.zeros(8, dtype=np.float32))
    state = GlobalState(fed.id, 3, state.beacon, state.model, state.strategy_state)
    results = [_result(fed.id, g, 5000, ids) for g in range(12)]  # ~40 kB each
    for m in results:
        assert result_size_bound(m) >= len(encode(m))
    cap = 200_000
    full = len(encode(StateResponse(fed.id, b"n", state.to_snapshot(), tuple(results))))
    assert full > cap
    seen: set[int] = set()
    for k in range(12):
        req = StateRequest(fed.id, 3, bytes([k]) * 16)
        data = bounded_answer(fed, req, state, results, (), max_bytes=cap)
        assert len(data) <= cap
        ans = decode(data)
        assert isinstance(ans, StateResponse) and ans.snapshot is not None
        groups = [m.body.group for m in ans.results]
        assert groups == sorted(groups) and 0 < len(groups) < len(results)
        seen |= set(groups)
    assert seen == set(range(12))  # other nonces, other results: pulls fill the gaps
    # small enough: everything, unchanged
    req = StateRequest(fed.id, 3, b"x" * 16)
    small = bounded_answer(fed, req, state, results[:2], ())
    assert small == encode(StateResponse(fed.id, req.nonce, state.to_snapshot(),
                                         tuple(results[:2])))
    # no state held: the plain refusal
    assert decode(bounded_answer(fed, req, None, results, ())).snapshot is None
