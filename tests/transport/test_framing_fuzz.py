"""Fuzzing the frame decoder with random and mutated byte streams.

Promise under test: the decoder raises nothing but ``RemoteProtocolError``,
never delivers a message that was not sent (in order), keeps its buffer within
one frame, and does bounded work per byte.
"""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from p2pfl.errors import RemoteProtocolError
from p2pfl.transport import CipherSuite, FrameDecoder, FrameEncoder
from p2pfl.transport._framing import FRAME_HEADER

KEY = bytes(32)
MAX_FRAME = 256
MAX_MESSAGE = 2000


def decode_stream(data: bytes, cuts: list[int], suite: CipherSuite) -> list[bytes]:
    dec = FrameDecoder(
        KEY, suite=suite, max_frame=MAX_FRAME, max_message=MAX_MESSAGE, initial_buffer=64
    )
    got: list[bytes] = []
    pos = k = 0
    try:
        while pos < len(data):
            n = cuts[k % len(cuts)] if cuts else len(data)
            k += 1
            t0 = time.perf_counter()
            got += dec.feed(data[pos : pos + n])
            assert time.perf_counter() - t0 < 0.5, "one feed took too long"
            assert dec.buffered <= MAX_FRAME + FRAME_HEADER
            pos += n
        dec.feed_eof()
    except RemoteProtocolError:
        pass
    return got


CUTS = st.lists(st.integers(1, 300), max_size=6)
SUITE = st.sampled_from(list(CipherSuite))


@given(st.binary(max_size=4000), CUTS, SUITE)
def test_random_bytes(data: bytes, cuts: list[int], suite: CipherSuite) -> None:
    # Without the key nothing can authenticate: no message may come out.
    assert decode_stream(data, cuts, suite) == []


@given(
    st.lists(
        st.tuples(st.integers(0, MAX_FRAME + 50), st.integers(0, 255), st.binary(max_size=300)),
        max_size=10,
    ),
    CUTS,
    SUITE,
)
def test_plausible_headers(
    parts: list[tuple[int, int, bytes]], cuts: list[int], suite: CipherSuite
) -> None:
    data = b"".join(n.to_bytes(4, "big") + bytes([k]) + body for n, k, body in parts)
    assert decode_stream(data, cuts, suite) == []


@st.composite
def mutation(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "swap"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 40))]
        elif op == "truncate":
            del data[pos:]
        elif op == "swap" and len(data) > 60:
            a = draw(st.integers(0, len(data) - 30))
            data[a : a + 30] = bytes(reversed(data[a : a + 30]))
    return bytes(data)


@given(st.data(), st.lists(st.binary(max_size=600), min_size=1, max_size=6), CUTS, SUITE)
def test_mutated_streams(
    data: st.DataObject, messages: list[bytes], cuts: list[int], suite: CipherSuite
) -> None:
    enc = FrameEncoder(KEY, suite=suite, max_frame=MAX_FRAME)
    stream = b"".join(enc.encode(m) for m in messages) + enc.close()
    got = decode_stream(data.draw(mutation(stream)), cuts, suite)
    # Whatever got through is exactly a prefix of what was sent.
    assert got == messages[: len(got)]
