"""Fuzzing the handshake: random and mutated bytes, both roles, every waiting state.

Promise under test: feeding anything never raises anything but a
:class:`HandshakeError` (a ``RemoteProtocolError``), buffers stay bounded, and
work is bounded (each feed returns promptly).
"""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.identity import Identity
from p2pfl.transport import Handshake, HandshakeError, Role
from p2pfl.transport._handshake import MAX_HANDSHAKE_MESSAGE, HandshakeState

ALICE = Identity.from_seed(b"A" * 32)
BOB = Identity.from_seed(b"B" * 32)
NET = b"fuzz"
WAITING = [
    HandshakeState.AWAIT_INIT,
    HandshakeState.AWAIT_RESPONSE,
    HandshakeState.AWAIT_FINISH,
    HandshakeState.AWAIT_CONFIRM,
]


def machine_in(state: HandshakeState, seed: int = 0) -> tuple[Handshake, bytes]:
    """A machine waiting in ``state``, and the genuine message it waits for."""
    i = Handshake(Role.INITIATOR, ALICE, NET, now=0, rng=random.Random(seed).randbytes)
    r = Handshake(Role.RESPONDER, BOB, NET, now=0, rng=random.Random(seed + 1).randbytes)
    m1 = i.data_to_send()
    if state is HandshakeState.AWAIT_INIT:
        return r, m1
    r.receive_data(m1)
    m2 = r.data_to_send()
    if state is HandshakeState.AWAIT_RESPONSE:
        return i, m2
    i.receive_data(m2)
    m3 = i.data_to_send()
    if state is HandshakeState.AWAIT_FINISH:
        return r, m3
    r.receive_data(m3)
    return i, r.data_to_send()


def feed_all(machine: Handshake, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` in pieces; only HandshakeError may escape; bounded state."""
    pos = 0
    k = 0
    try:
        while pos < len(data):
            n = cuts[k % len(cuts)] if cuts else len(data)
            k += 1
            t0 = time.perf_counter()
            machine.receive_data(data[pos : pos + n])
            assert time.perf_counter() - t0 < 0.5, "one feed took too long"
            assert len(machine._inbuf) <= MAX_HANDSHAKE_MESSAGE + 2
            pos += n
            if machine.state in (HandshakeState.ESTABLISHED, HandshakeState.FAILED):
                break
    except HandshakeError:
        assert machine.state is HandshakeState.FAILED
        assert machine.error is not None
    # whatever happened, the machine still answers its driver
    machine.data_to_send()
    try:
        machine.handle_timer(1e9)
        machine.receive_eof()
    except HandshakeError:
        assert machine.state is HandshakeState.FAILED


STATE = st.sampled_from(WAITING)
CUTS = st.lists(st.integers(1, 64), max_size=8)


@given(STATE, st.binary(max_size=3000), CUTS)
def test_random_bytes(state: HandshakeState, data: bytes, cuts: list[int]) -> None:
    machine, _ = machine_in(state)
    feed_all(machine, data, cuts)


@given(STATE, st.binary(max_size=1200), CUTS)
def test_random_body_behind_a_plausible_length(
    state: HandshakeState, body: bytes, cuts: list[int]
) -> None:
    machine, _ = machine_in(state)
    feed_all(machine, len(body).to_bytes(2, "big") + body, cuts)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data += bytes(data)
    return bytes(data)


@pytest.mark.parametrize("state", WAITING, ids=lambda s: s.name)
@given(data=st.data(), cuts=CUTS)
def test_mutated_genuine_message(
    state: HandshakeState, data: st.DataObject, cuts: list[int]
) -> None:
    machine, genuine = machine_in(state, seed=7)
    feed_all(machine, data.draw(mutated(genuine)), cuts)


@given(STATE, st.binary(max_size=64))
def test_genuine_message_followed_by_garbage(state: HandshakeState, tail: bytes) -> None:
    machine, genuine = machine_in(state, seed=9)
    feed_all(machine, genuine + tail, [])
    if machine.state is HandshakeState.ESTABLISHED:
        assert machine.trailing_data == tail
