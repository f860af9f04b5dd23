"""The CBOR codec: round trips, canonical form, strict validation, fuzzing."""

from __future__ import annotations

import contextlib
import enum
from typing import Annotated

import cbor2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.wire import (
    WIRE_VERSION,
    ArraySpec,
    MaxLen,
    PeerId,
    Range,
    decode,
    decode_as,
    encode,
    message,
    registered_messages,
)


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


@message(0xFF01)
class Inner:
    x: Annotated[int, Range(0, 100)]
    name: Annotated[str, MaxLen(8)]


@message(0xFF02)
class Sample:
    n: Annotated[int, Range(-5, 2**40)]
    flag: bool
    ratio: Annotated[float, Range(0.0, 1.0)]
    blob: Annotated[bytes, MaxLen(16)]
    peers: Annotated[tuple[PeerId, ...], MaxLen(4)]
    pair: tuple[int, str]
    scores: dict[str, float]
    color: Color
    vec: Annotated[np.ndarray, ArraySpec(dtypes=("f4", "u4"), ndim=1, max_elems=1000)]
    inner: Inner
    maybe: Inner | None = None


def _sample(**kw: object) -> Sample:
    base: dict[str, object] = dict(
        n=7,
        flag=True,
        ratio=0.25,
        blob=b"abc",
        peers=(PeerId(b"\x01" * 20), PeerId(b"\x02" * 20)),
        pair=(3, "x"),
        scores={"b": 1.0, "a": -2.5},
        color=Color.BLUE,
        vec=np.arange(10, dtype=np.float32),
        inner=Inner(5, "hi"),
    )
    base.update(kw)
    return Sample(**base)  # type: ignore[arg-type]


def _fields(data: bytes) -> list[object]:
    obj = cbor2.loads(data)
    assert obj[0] == WIRE_VERSION
    return obj[2]


def _with_field(index: int, value: object) -> bytes:
    obj = cbor2.loads(encode(_sample()))
    obj[2][index] = value
    return cbor2.dumps(obj)


def test_round_trip_preserves_every_field() -> None:
    s = _sample(maybe=Inner(1, "z"))
    d = decode(encode(s))
    assert type(d) is Sample
    assert d.n == 7 and d.flag is True and d.ratio == 0.25 and d.blob == b"abc"
    assert d.peers == s.peers and d.pair == (3, "x") and d.scores == s.scores
    assert d.color is Color.BLUE and d.inner == Inner(5, "hi") and d.maybe == Inner(1, "z")
    assert d.vec.dtype == np.float32 and np.array_equal(d.vec, s.vec)
    assert encode(d) == encode(s)


def test_encoding_is_canonical_dict_order_does_not_matter() -> None:
    a = _sample(scores={"a": 1.0, "b": 2.0})
    b = _sample(scores={"b": 2.0, "a": 1.0})
    assert encode(a) == encode(b)


def test_big_endian_arrays_go_out_little_endian() -> None:
    be = np.arange(4, dtype=">u4")
    d = decode(encode(_sample(vec=be)))
    assert d.vec.dtype == np.dtype("<u4")
    assert d.vec.tolist() == [0, 1, 2, 3]


def test_decode_as_checks_the_class() -> None:
    data = encode(Inner(1, "a"))
    assert decode_as(data, Inner) == Inner(1, "a")
    with pytest.raises(RemoteProtocolError, match="expected Sample, got Inner"):
        decode_as(data, Sample)


@pytest.mark.parametrize(
    ("index", "value", "match"),
    [
        (0, 2**41, "outside"),
        (0, "7", "expected int"),
        (0, True, "expected int"),
        (1, 1, "expected bool"),
        (2, 1.5, "outside"),
        (2, float("nan"), "finite"),
        (3, b"x" * 17, "length 17"),
        (4, [b"\x01" * 20] * 5, "5 items"),
        (4, [b"\x01" * 19], "20-byte peer id"),
        (5, [1], "list of 2"),
        (6, [["a", 1.0], ["a", 2.0]], "duplicate key"),
        (7, 9, "unknown Color"),
        (8, ["f8", [2], b"\x00" * 16], "not in"),
        (8, ["f4", [2, 1], b"\x00" * 8], "dimensions"),
        (8, ["f4", [2000], b"\x00" * 8000], "elements"),
        (8, ["f4", [3], b"\x00" * 8], "data length"),
        (8, ["O", [1], b"\x00"], "not allowed"),
        (9, [500, "x"], "outside"),
        (9, [5, "too long name"], "length"),
    ],
)
def test_invalid_fields_are_remote_protocol_errors(index: int, value: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(_with_field(index, value))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "undecodable"),
        (cbor2.dumps([WIRE_VERSION + 1, 0xFF01, [1, "a"]]), "unsupported wire version"),
        (cbor2.dumps([WIRE_VERSION, 0xABCDE, []]), "unknown message tag"),
        (cbor2.dumps({"a": 1}), "not a p2pfl message"),
        (cbor2.dumps([WIRE_VERSION, 0xFF01, [1, "a"]]) + b"\x00", "trailing"),
        (b"\xc1\x1a\x00\x00\x00\x01", "tag"),  # epoch datetime
        (b"\xc2\x41\x01", "tag"),  # bignum
        (b"\x9f\x01\xff", "undecodable"),  # indefinite array
        (b"\x5b\x00\x00\x00\xff\xff\xff\xff\xff", "undecodable"),  # huge bytestring header
    ],
)
def test_garbage_is_rejected_with_a_clear_error(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(data)


def test_oversized_message_is_refused_before_parsing() -> None:
    data = encode(Inner(1, "a"))
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decode(data, max_size=len(data) - 1)


def test_deep_nesting_is_refused() -> None:
    data = b"\x81" * 10_000 + b"\x00"
    with pytest.raises(RemoteProtocolError):
        decode(data)


def test_duplicate_tags_are_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="used by both"):

        @message(0xFF01)
        class Other:
            y: int


def test_unregistered_and_unsupported_types_are_local_errors() -> None:
    class Plain:
        pass

    with pytest.raises(LocalProtocolError):
        encode(Plain())

    @message(0xFF03)
    class HasList:
        xs: list[int]

    with pytest.raises(LocalProtocolError, match="unsupported"):
        encode(HasList([1]))


def test_registry_lists_messages() -> None:
    assert registered_messages()[0xFF01] is Inner


def _all_valid_messages() -> list[bytes]:
    return [encode(_sample()), encode(_sample(maybe=Inner(2, "q"))), encode(Inner(3, "b"))]


@given(st.binary(max_size=512))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode(data)


@given(
    st.sampled_from(_all_valid_messages()),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10_000),
)
def test_fuzz_mutated_messages_never_crash(base: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(base)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    for candidate in (bytes(buf), bytes(buf[: cut % (len(buf) + 1)])):
        try:
            msg = decode(candidate)
        except RemoteProtocolError:
            continue
        # anything accepted must re-encode to a valid message of a known class
        assert type(msg) in registered_messages().values()
        decode(encode(msg))


@given(
    st.integers(-5, 2**40),
    st.booleans(),
    st.floats(0.0, 1.0),
    st.binary(max_size=16),
    st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False), max_size=5),
    st.lists(st.integers(0, 2**32 - 1), max_size=50),
)
def test_round_trip_property(
    n: int, flag: bool, ratio: float, blob: bytes, scores: dict[str, float], vals: list[int]
) -> None:
    s = _sample(n=n, flag=flag, ratio=ratio, blob=blob, scores=scores, vec=np.array(vals, dtype=np.uint32))
    d = decode(encode(s))
    assert encode(d) == encode(s)
    assert d.n == n and d.blob == blob and d.scores == scores and d.vec.tolist() == vals


def test_peer_id_text_form() -> None:
    p = PeerId.from_public_key(b"k" * 32)
    assert len(str(p)) == 32 and str(p).islower()
    assert PeerId.parse(str(p)) == p
    with pytest.raises(ValueError):
        PeerId.parse("nope")
    with pytest.raises(RemoteProtocolError):
        PeerId(b"short")


@message(0xFF07)
class _Ints:
    xs: Annotated[tuple[Annotated[int, Range(0, 9)], ...], MaxLen(8)]
    nested: tuple[tuple[Annotated[int, Range(0, 9)], ...], ...] = ()


@pytest.mark.parametrize(
    ("xs", "nested", "match"),
    [
        ([1, 2, 10], [], r"xs\[2\]: 10 outside \[0, 9\]"),
        ([1, True], [], r"xs\[1\]: expected int, got bool"),
        ([1, 2.0], [], r"xs\[1\]: expected int, got float"),
        ([-1], [], r"xs\[0\]: -1 outside"),
        ([1] * 9, [], "9 items, limit 8"),
        ([], [[1], [2, 3, 99]], r"nested\[1\]\[2\]: 99 outside"),
    ],
)
def test_sequences_of_ints_name_the_bad_item(xs: object, nested: object, match: str) -> None:
    """Integer sequences are checked in bulk; a failure still names its item."""
    data = cbor2.dumps([WIRE_VERSION, 0xFF07, [xs, nested]])
    with pytest.raises(RemoteProtocolError, match=match):
        decode(data)


def test_sequences_of_ints_decode_to_plain_int_tuples() -> None:
    msg = decode(encode(_Ints((0, 9, 3), ((1,), (), (2, 8)))))
    assert msg == _Ints((0, 9, 3), ((1,), (), (2, 8)))
    assert all(type(x) is int for x in msg.xs) and type(msg.xs) is tuple
