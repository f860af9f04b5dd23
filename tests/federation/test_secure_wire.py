"""The wire mirrors of the mpc.secagg messages: lossless round trips, strict decoding
(every failure a RemoteProtocolError naming the sender), bounded sizes."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mpc.field import BIG_PRIME
from mpc.secagg import (
    AbortNotice,
    Announce,
    Complaint,
    ConsistencySig,
    Decision,
    ForwardedInput,
    GroupConfig,
    InputRequest,
    KeyBundle,
    MaskedInput,
    Message,
    ScoreShares,
    ShareKeys,
    ShareRelay,
    SigBundle,
    SignedKeys,
    SketchConfig,
    SketchRelay,
    SketchRequest,
    SketchShares,
    UnmaskShares,
)
from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import PlaintextAggregation  # noqa: F401  (registers PlainContribution)
from p2pfl.federation._secure_wire import (
    WMaskedInput,
    WUnmaskShares,
    decode_payload,
    encode_message,
    from_wire,
    max_payload,
    to_wire,
)
from p2pfl.federation.plaintext import PlainContribution
from p2pfl.wire import PeerId, encode, registered_messages

DIM = 10
CFG = GroupConfig(context=b"c" * 32, n=5, threshold=3, dim=DIM, aggregators=(0, 2),
                  sketch=SketchConfig(rows=4, threshold=2, with_reference=True))
SENDER = PeerId(b"\x07" * 20)
SIG = b"s" * 64
KEYS = SignedKeys(1, b"a" * 32, b"b" * 32, SIG)
ANN = Announce(2, (0, 1, 3), (3,), SIG)
BIG = BIG_PRIME - 1  # the largest share: 33 bytes on the wire

SAMPLES: list[Message] = [
    KEYS,
    KeyBundle((SignedKeys(0, b"c" * 32, b"d" * 32, SIG), KEYS)),
    ShareKeys(((0, b"ct0"), (2, b"ct2"))),
    ShareRelay((0, 1, 2), ((0, b"x"), (2, b"y"))),
    MaskedInput(np.arange(DIM, dtype=np.uint32) * 7919, SIG),
    Decision(0, (0, 1), SIG, (KEYS,)),
    Decision(2, (0, 1, 3), SIG),
    SketchRequest(((0, (b"h" * 32, SIG)), (4, (b"i" * 32, SIG)))),
    SketchShares(((1, b"z"),)),
    SketchRelay(((3, b"zz"),)),
    ScoreShares(((0, (5, 2**31 - 2)), (1, (0, 1)))),
    ANN,
    ConsistencySig(SIG, (ANN, Announce(0, (0, 1, 3), (3,), SIG))),
    Complaint((ANN,)),
    SigBundle(((0, SIG), (3, SIG))),
    UnmaskShares(((0, BIG), (1, 12345)), ((3, 0),), (1, 2, 3, 4)),
    UnmaskShares((), ((4, BIG),)),
    InputRequest((1, 4)),
    ForwardedInput(3, np.full(DIM, 2**32 - 1, dtype=np.uint32), SIG),
    AbortNotice("primary aborted"),
]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and bool(a == b)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_secagg_message_round_trips(msg: Message) -> None:
    msg.check(CFG)
    data = encode_message(msg)
    assert len(data) <= max_payload(CFG)
    back = decode_payload(CFG, data, SENDER)
    assert same(back, msg)
    assert back.TO_AGGREGATOR == msg.TO_AGGREGATOR


def test_every_mirror_is_covered_and_in_the_secagg_tag_range() -> None:
    ours = {t: c for t, c in registered_messages().items()
            if c.__module__ == "p2pfl.federation._secure_wire"}
    assert len(ours) == 18 and all(0x0400 <= t <= 0x04FF for t in ours)
    assert {type(to_wire(m)) for m in SAMPLES} == set(ours.values())


def _rejects(data: bytes, cfg: GroupConfig = CFG) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload(cfg, data, SENDER)
    assert info.value.peer == SENDER
    return str(info.value)


def test_garbage_and_foreign_messages_are_rejected_naming_the_sender() -> None:
    _rejects(b"")
    _rejects(b"\x00garbage")
    _rejects(encode_message(KEYS)[:-1])  # truncated
    _rejects(encode_message(KEYS) + b"\x00")  # trailing bytes
    plain = PlainContribution(b"c" * 32, np.zeros(DIM, np.float32), 1.0, 1)
    assert "unexpected PlainContribution" in _rejects(encode(plain))


def test_field_checks_of_the_group_apply() -> None:
    bad_shape = MaskedInput(np.zeros(DIM + 1, dtype=np.uint32), SIG)
    assert "shape" in _rejects(encode_message(bad_shape))
    u8 = encode(WMaskedInput(np.zeros(DIM, dtype=np.uint32), SIG)).replace(b"u4", b"u8", 1)
    assert "dtype" in _rejects(u8)
    _rejects(encode_message(InputRequest((4, 1))))  # not increasing
    _rejects(encode_message(InputRequest((5,))))  # not a member of n = 5
    _rejects(encode_message(Decision(7, (0,), SIG)))  # no such stage
    over = WUnmaskShares(((0, BIG_PRIME.to_bytes(33, "big")),), (), None)
    assert "b share" in _rejects(encode(over))  # a share outside the field
    short = WUnmaskShares(((0, b"\x01" * 32),), (), None)
    _rejects(encode(short))  # shares are exactly 33 bytes
    _rejects(encode_message(ScoreShares(((0, (1, 2, 3)),))))  # too many scores


def test_payload_size_is_bounded_by_the_group() -> None:
    small = GroupConfig(context=b"c" * 32, n=3, threshold=2, dim=4, aggregators=(0,))
    big = MaskedInput(np.zeros(max_payload(small), dtype=np.uint32), SIG)
    assert "exceeds the limit" in _rejects(encode_message(big), small)


def test_from_wire_inverts_to_wire_for_shares() -> None:
    m = UnmaskShares(((0, BIG),), ((1, 1),))
    assert from_wire(to_wire(m)) == m
