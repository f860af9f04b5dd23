"""What result endorsements sign: the header digest, which binds the sum by its hash."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from p2pfl.federation.messages import (
    RESULT_DOMAIN,
    ResultBody,
    ResultHeader,
    digest_of,
    endorse,
    result_header,
    sum_hash,
)
from p2pfl.federation.schedule import hash_parts
from p2pfl.wire import PeerId, decode, encode
from tests.federation.harness import identities

F = bytes(range(32))


def _body(update_sum: np.ndarray | None = None) -> ResultBody:
    peers = sorted(i.peer_id for i in identities(4))
    s = np.arange(5, dtype=np.float64) / 3 if update_sum is None else update_sum
    return ResultBody(F, 3, 1, bytes(32), bytes([1]) * 32, tuple(peers[:3]), (peers[3],), (),
                      s, 2.5, 40)


def test_the_header_mirrors_the_body() -> None:
    body = [f.name for f in dataclasses.fields(ResultBody) if f.name != "update_sum"]
    head = [f.name for f in dataclasses.fields(ResultHeader)]
    assert set(head) - set(body) == {"sum_hash", "aggregator"} and set(body) <= set(head)
    b = _body()
    h = result_header(b)
    assert all(getattr(h, n) == getattr(b, n) for n in body)
    assert h.sum_hash == sum_hash(b.update_sum) and h.aggregator is None
    assert decode(encode(h)) == h


def test_a_body_and_its_header_have_one_digest() -> None:
    b = _body()
    h = result_header(b)
    assert digest_of(b) == digest_of(h)
    assert len(encode(h)) < 400  # whatever the model size
    assert len(encode(result_header(_body(np.zeros(100_000))))) == len(encode(h))


def test_the_sum_hash_is_over_little_endian_float64_and_length() -> None:
    s = np.array([1.0, -2.5, 3.25])
    assert sum_hash(s) == hash_parts(b"p2pfl/group-sum/1", (3).to_bytes(8, "little"),
                                     s.astype("<f8").tobytes())
    assert sum_hash(s.astype(">f8")) == sum_hash(s)
    assert sum_hash(s[:2]) != sum_hash(s)


@pytest.mark.parametrize("change", [
    {"update_sum": np.arange(5, dtype=np.float64) / 3 + 1e-12},
    {"update_sum": np.arange(4, dtype=np.float64) / 3},
    {"total_weight": 2.0}, {"total_samples": 41}, {"round": 4}, {"group": 2},
    {"dropped": ()}, {"schedule": bytes([9]) * 32},
])
def test_every_field_and_the_sum_are_bound(change: dict[str, object]) -> None:
    b = _body()
    signer = identities(1)[0]
    e = endorse(signer, RESULT_DOMAIN, digest_of(b))
    assert e.valid(RESULT_DOMAIN, digest_of(result_header(b)))
    other = dataclasses.replace(b, **change)  # type: ignore[arg-type]
    assert digest_of(other) != digest_of(b)
    assert not e.valid(RESULT_DOMAIN, digest_of(other))


def test_a_header_naming_a_proposer_is_another_header() -> None:
    h = result_header(_body())
    p: PeerId = h.included[0]
    assert digest_of(dataclasses.replace(h, aggregator=p)) != digest_of(h)
