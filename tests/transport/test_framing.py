"""The frame codec: round trips, and every attack on the stream refused clearly."""

from __future__ import annotations

import os
import struct

import nacl.bindings
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.transport import CipherSuite, FrameDecoder, FrameEncoder
from p2pfl.transport._framing import FRAME_HEADER, TAG_BYTES, FrameKind

KEY = bytes(range(32))
SUITES = list(CipherSuite)


def codec(
    suite: CipherSuite = CipherSuite.CHACHA20_POLY1305, **kwargs: int
) -> tuple[FrameEncoder, FrameDecoder]:
    enc_args = {k: v for k, v in kwargs.items() if k in ("max_frame", "rekey_bytes")}
    return FrameEncoder(KEY, suite=suite, **enc_args), FrameDecoder(KEY, suite=suite, **kwargs)


def frames_of(enc: FrameEncoder, message: bytes) -> list[bytes]:
    return [bytes(f) for f in enc.frames(message)]


def refused(dec: FrameDecoder, data: bytes, match: str) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        dec.feed(data)
    return info.value


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
@given(
    messages=st.lists(st.binary(max_size=3000), max_size=12),
    cuts=st.lists(st.integers(1, 700), min_size=1, max_size=20),
    max_frame=st.sampled_from([17, 18, 64, 1000, 4096]),
)
def test_round_trip_any_split(
    suite: CipherSuite, messages: list[bytes], cuts: list[int], max_frame: int
) -> None:
    enc, dec = codec(suite, max_frame=max_frame)
    wire = b"".join(enc.encode(m) for m in messages) + enc.close()
    got: list[bytes] = []
    pos = k = 0
    while pos < len(wire):
        n = cuts[k % len(cuts)]
        got += dec.feed(wire[pos : pos + n])
        pos += n
        k += 1
    assert got == messages
    assert dec.closed and dec.feed_eof() is True


@given(
    messages=st.lists(st.binary(max_size=5000), max_size=8),
    reads=st.lists(st.integers(1, 9000), min_size=1, max_size=10),
)
def test_round_trip_through_get_buffer(messages: list[bytes], reads: list[int]) -> None:
    """The recv_into path: the socket writes into views the decoder hands out."""
    enc, dec = codec(max_frame=2048)
    wire = memoryview(b"".join(enc.encode(m) for m in messages))
    got: list[bytes] = []
    pos = k = 0
    while pos < len(wire):
        with dec.get_buffer(reads[k % len(reads)]) as buf:
            n = min(len(buf), len(wire) - pos)
            buf[:n] = wire[pos : pos + n]
        got += dec.buffer_updated(n)
        pos += n
        k += 1
    assert got == messages
    assert dec.buffered == 0


def test_large_message_reuses_buffers() -> None:
    enc, dec = codec(CipherSuite.AES_256_GCM)
    msg = os.urandom(3 * 1024 * 1024 + 5)
    for _ in range(3):
        assert dec.feed(enc.encode(msg)) == [msg]
    assert enc.frames_sent == 12 and dec.frames_received == 12


def test_bytes_like_inputs() -> None:
    enc, dec = codec()
    assert dec.feed(enc.encode(bytearray(b"ab")) + enc.encode(memoryview(b"cd"))) == [b"ab", b"cd"]


def test_libsodium_decrypts_our_chacha_frames() -> None:
    """Oracle: the frame is RFC 8439 ChaCha20-Poly1305 as libsodium computes it."""
    enc, _ = codec(CipherSuite.CHACHA20_POLY1305)
    enc.encode(b"first")  # counter 0
    frame = enc.encode(b"hello, oracle")  # counter 1
    header, body = frame[:FRAME_HEADER], frame[FRAME_HEADER:]
    nonce = bytes(4) + struct.pack(">Q", 1)
    plain = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(body, header, nonce, KEY)
    assert plain == b"hello, oracle"
    assert struct.unpack(">IB", header) == (len(b"hello, oracle") + TAG_BYTES, FrameKind.LAST)


def test_pings_are_counted_not_delivered() -> None:
    enc, dec = codec()
    assert dec.feed(enc.ping() + enc.encode(b"x") + enc.ping()) == [b"x"]
    assert dec.pings_received == 2


@pytest.mark.parametrize("suite", SUITES)
def test_key_rotation(suite: CipherSuite) -> None:
    enc, dec = codec(suite, max_frame=64, rekey_bytes=200)
    msgs = [os.urandom(n) for n in (10, 300, 0, 1000, 5)]
    wire = b"".join(enc.encode(m) for m in msgs)
    assert enc.rekeys >= 5
    assert dec.feed(wire) == msgs
    # a receiver that does not rotate in step cannot read past the first rotation
    _, stale = codec(suite, max_frame=64, rekey_bytes=10**9)
    refused(stale, wire, "authentication failed")


def test_encoder_refuses_to_wrap_its_counter() -> None:
    enc, _ = codec()
    enc._counter = 2**64 - 1
    with pytest.raises(LocalProtocolError, match="counter exhausted"):
        enc.encode(b"x")


def test_encoder_refuses_frames_after_close() -> None:
    enc, _ = codec()
    enc.close()
    with pytest.raises(LocalProtocolError):
        enc.encode(b"x")


def test_bad_parameters() -> None:
    with pytest.raises(LocalProtocolError):
        FrameEncoder(b"short")
    with pytest.raises(ValueError):
        FrameDecoder(KEY, max_frame=TAG_BYTES)


# -- attacks: each refused with a clear RemoteProtocolError ------------------------------


def test_replayed_frame() -> None:
    enc, dec = codec()
    f0 = enc.encode(b"pay me")
    assert dec.feed(f0) == [b"pay me"]
    refused(dec, f0, r"frame 1: authentication failed \(tampered, replayed")


def test_reordered_frames() -> None:
    enc, dec = codec()
    f0, f1 = enc.encode(b"a"), enc.encode(b"b")
    refused(dec, f1 + f0, "frame 0: authentication failed")


def test_dropped_frame() -> None:
    enc, dec = codec()
    enc.encode(b"a")
    refused(dec, enc.encode(b"b"), "frame 0: authentication failed")


def test_frame_from_another_key() -> None:
    _, dec = codec()
    other = FrameEncoder(os.urandom(32))
    refused(dec, other.encode(b"x"), "authentication failed")


def test_frame_from_the_other_suite() -> None:
    enc = FrameEncoder(KEY, suite=CipherSuite.AES_256_GCM)
    dec = FrameDecoder(KEY, suite=CipherSuite.CHACHA20_POLY1305)
    refused(dec, enc.encode(b"x"), "authentication failed")


@pytest.mark.parametrize("suite", SUITES)
def test_every_tampered_byte(suite: CipherSuite) -> None:
    enc, _ = codec(suite)
    frame = enc.encode(b"a short message")
    for pos in range(len(frame)):
        for bit in (0x01, 0x80):
            bad = bytearray(frame)
            bad[pos] ^= bit
            _, dec = codec(suite)
            try:
                got = dec.feed(bytes(bad))
            except RemoteProtocolError:
                continue
            # A longer length makes the decoder wait for more: then the stream
            # must not end cleanly.
            assert got == []
            with pytest.raises(RemoteProtocolError, match="truncated"):
                dec.feed_eof()


def test_truncated_frame() -> None:
    enc, dec = codec()
    frame = enc.encode(b"cut me")
    assert dec.feed(frame[:-3]) == []
    with pytest.raises(RemoteProtocolError, match="truncated frame: the stream ended 24 bytes"):
        dec.feed_eof()


def test_truncated_chunked_message() -> None:
    enc, dec = codec(max_frame=32)
    frames = frames_of(enc, os.urandom(100))
    assert dec.feed(b"".join(frames[:-1])) == []
    with pytest.raises(RemoteProtocolError, match="truncated message"):
        dec.feed_eof()


def test_end_without_close_is_not_clean() -> None:
    enc, dec = codec()
    assert dec.feed(enc.encode(b"x")) == [b"x"]
    assert dec.feed_eof() is False


def test_oversized_frame_refused_from_its_header() -> None:
    _, dec = codec(max_frame=1024)
    header = struct.pack(">IB", 1025, FrameKind.LAST)
    refused(dec, header, "length 1025 exceeds the maximum frame of 1024")


def test_frame_shorter_than_a_tag() -> None:
    _, dec = codec()
    refused(dec, struct.pack(">IB", 15, FrameKind.LAST), "shorter than the 16-byte tag")


def test_oversized_message_refused_before_it_is_buffered() -> None:
    enc, dec = codec(max_frame=1000, max_message=2500)
    frames = frames_of(enc, os.urandom(4000))
    assert dec.feed(b"".join(frames[:2])) == []
    # only the header of the third chunk is needed to refuse
    refused(dec, frames[2][:FRAME_HEADER], "exceeds max_message")


def test_data_after_close() -> None:
    enc, dec = codec()
    close = enc.close()
    refused(dec, close + b"\x00", "data after the CLOSE frame")
    enc2, dec2 = codec()
    assert dec2.feed(enc2.close()) == []
    refused(dec2, b"x", "data after the CLOSE frame")


def test_close_inside_a_chunked_message() -> None:
    enc, dec = codec()
    chunks = enc._small(FrameKind.MORE, b"part 1") + enc._small(FrameKind.MORE, b"part 2")
    refused(dec, chunks + enc._small(FrameKind.CLOSE, b""), "CLOSE in the middle")


@pytest.mark.parametrize(
    ("kind", "payload", "match"),
    [
        (4, b"", "unknown frame kind 4"),
        (255, b"x", "unknown frame kind 255"),
        (FrameKind.PING, b"x", "must be empty"),
        (FrameKind.CLOSE, b"x", "must be empty"),
        (FrameKind.MORE, b"", "empty continuation chunk"),
    ],
)
def test_authenticated_but_invalid_frames(kind: int, payload: bytes, match: str) -> None:
    enc, dec = codec()
    refused(dec, enc._small(kind, payload), match)


def test_decoder_stays_failed() -> None:
    enc, dec = codec()
    refused(dec, struct.pack(">IB", 3, 0), "shorter")
    refused(dec, enc.encode(b"x"), "already failed")
    with pytest.raises(RemoteProtocolError):
        dec.feed_eof()
