"""The TCP transport over loopback: handshakes, attacks, slowloris, timeouts.

Real sockets and the real clock, so every wait is bounded by ``fail_after``
and the timeouts under test are short.  Attackers are raw trio TCP clients
that speak the protocol (or not) by hand with the sans-I/O machines.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.transport import (
    CipherSuite,
    FailureReason,
    FrameEncoder,
    Handshake,
    HandshakeComplete,
    HandshakeError,
    Link,
    Role,
    TcpTransport,
)
from p2pfl.transport.tcp import format_tcp_address, parse_tcp_address

NET = b"tcp-tests"
SERVER_ID = Identity.from_seed(b"S" * 32)
CLIENT_ID = Identity.from_seed(b"C" * 32)
OTHER_ID = Identity.from_seed(b"O" * 32)


class Server:
    """A serving TcpTransport whose handler records what each link saw."""

    def __init__(self, transport: TcpTransport, address: str) -> None:
        self.transport = transport
        self.address = address
        self.outcomes: trio.MemoryReceiveChannel[tuple[Link, object]]
        self._put, self.outcomes = trio.open_memory_channel[tuple[Link, object]](100)

    async def handler(self, link: Link) -> None:
        """Echo messages until the link ends; report how it ended."""
        try:
            while True:
                msg = await link.receive()
                await link.send(b"echo:" + msg)
        except (trio.EndOfChannel, trio.BrokenResourceError) as e:
            await self._put.send((link, e))

    @property
    def host_port(self) -> tuple[str, int]:
        host, port, _ = parse_tcp_address(self.address)
        return host, port


@asynccontextmanager
async def serving(**kwargs: object) -> AsyncIterator[Server]:
    kwargs.setdefault("handshake_timeout", 5.0)
    transport = TcpTransport(SERVER_ID, NET, **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        server = Server(transport, "")
        server.address = await nursery.start(transport.serve, server.handler)
        yield server
        nursery.cancel_scope.cancel()


def client(identity: object = CLIENT_ID, network: bytes = NET, **kw: object) -> TcpTransport:
    return TcpTransport(identity, network, **kw)  # type: ignore[arg-type]


async def raw_handshake(
    server: Server, identity: Identity = CLIENT_ID
) -> tuple[trio.SocketStream, HandshakeComplete, bytes]:
    """Handshake by hand: (stream, session, trailing bytes)."""
    stream = await trio.open_tcp_stream(*server.host_port)
    hs = Handshake(Role.INITIATOR, identity, NET, now=trio.current_time())
    await stream.send_all(hs.data_to_send())
    while not hs.established:
        hs.receive_data(await stream.receive_some(4096))
        out = hs.data_to_send()
        if out:
            await stream.send_all(out)
    event = hs.next_event()
    assert event is not None
    return stream, event, hs.trailing_data


async def wait_failures(transport: TcpTransport, reason: str, count: int = 1) -> None:
    while transport.statistics().handshake_failures.get(reason, 0) < count:
        await trio.sleep(0.005)


# -- addresses ---------------------------------------------------------------------------


def test_address_round_trip() -> None:
    peer = SERVER_ID.peer_id
    for host in ("127.0.0.1", "::1", "example.org"):
        text = format_tcp_address(host, 4000, peer)
        assert parse_tcp_address(text) == (host, 4000, peer)
    assert parse_tcp_address("tcp:127.0.0.1:0") == ("127.0.0.1", 0, None)


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1:80",
        "tcp:127.0.0.1",
        "tcp::80",
        "tcp:1.2.3.4:99999",
        "tcp:::1:80",
        "tcp:[::1]80",
        "tcp:h:80#nope",
        "udp:h:80",
    ],
)
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_tcp_address(bad)


# -- the happy path -----------------------------------------------------------------------


async def test_connect_serve_exchange() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            assert server.address.endswith("#" + str(SERVER_ID.peer_id))
            c = client()
            link = await c.connect(server.address)
            assert link.local_peer == CLIENT_ID.peer_id
            assert link.remote_peer == SERVER_ID.peer_id
            await link.send(b"hi")
            assert await link.receive() == b"echo:hi"
            big = bytes(range(256)) * 20000  # 5 MB: several frames
            await link.send(big)
            assert await link.receive() == b"echo:" + big
            await link.aclose()
            srv_link, how = await server.outcomes.receive()
            assert isinstance(how, trio.EndOfChannel)
            assert srv_link.remote_peer == CLIENT_ID.peer_id
            stats = server.transport.statistics()
            assert stats.links_accepted == 1 and stats.handshakes_failed == 0
            assert c.statistics().links_connected == 1
            assert c.statistics().links_open == 0


@pytest.mark.parametrize("suite", list(CipherSuite))
async def test_both_cipher_suites(suite: CipherSuite) -> None:
    with trio.fail_after(10):
        async with serving(cipher_suites=(suite,)) as server:
            link = await client(cipher_suites=(suite,)).connect(server.address)
            assert link.cipher_suite is suite
            await link.send(b"x" * 3_000_000)
            assert len(await link.receive()) == 3_000_005
            await link.aclose()


async def test_connect_without_peer_id_and_channel_binding() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            host, port = server.host_port
            link = await client().connect(f"tcp:{host}:{port}")
            await link.send(b"x")
            assert await link.receive() == b"echo:x"
            assert len(link.channel_binding) == 64
            await link.aclose()


async def test_connection_refused_is_oserror() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(10), pytest.raises(OSError):
        await client().connect(f"tcp:127.0.0.1:{port}")


# -- handshake refusals -------------------------------------------------------------------


async def test_expected_peer_mismatch() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            host, port = server.host_port
            with pytest.raises(HandshakeError, match="expected peer") as info:
                await client().connect(format_tcp_address(host, port, OTHER_ID.peer_id))
            assert info.value.reason is FailureReason.UNEXPECTED_PEER
            await wait_failures(server.transport, "refused")
            # the server keeps serving
            link = await client().connect(server.address)
            await link.send(b"still there?")
            assert await link.receive() == b"echo:still there?"
            await link.aclose()


async def test_wrong_network_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="p2pfl.transport.tcp")
    with trio.fail_after(10):
        async with serving() as server:
            with pytest.raises(HandshakeError, match="network id mismatch") as info:
                await client(network=b"other-federation").connect(server.address)
            assert info.value.remote_reason is FailureReason.NETWORK
            await wait_failures(server.transport, "network")
            assert "network id mismatch" in caplog.text


class KeySwapper:
    """Claims ``victim``'s identity key but can only sign with its own."""

    def __init__(self, victim: Identity, own: Identity) -> None:
        self.public_key = victim.public_key
        self.peer_id = victim.peer_id
        self._own = own

    def sign(self, domain: bytes, data: bytes) -> bytes:
        return self._own.sign(domain, data)


async def test_client_with_a_stolen_public_key_is_refused() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            mallory = client(KeySwapper(CLIENT_ID, OTHER_ID))
            with pytest.raises(HandshakeError) as info:
                await mallory.connect(server.address)
            assert info.value.remote_reason is FailureReason.AUTHENTICATION
            await wait_failures(server.transport, "authentication")
            assert server.transport.statistics().links_accepted == 0


async def test_server_with_a_stolen_public_key_is_refused() -> None:
    fake = TcpTransport(KeySwapper(SERVER_ID, OTHER_ID), NET)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        address = await nursery.start(fake.serve, lambda link: trio.sleep_forever())
        with trio.fail_after(10), pytest.raises(HandshakeError, match="signature") as info:
            await client().connect(address)  # the address names SERVER_ID
        assert info.value.reason is FailureReason.AUTHENTICATION
        nursery.cancel_scope.cancel()


async def test_garbage_instead_of_a_handshake() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream = await trio.open_tcp_stream(*server.host_port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # the server answers with a reject and closes
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
            assert b"p2pfl" not in data or len(data) < 300
            await wait_failures(server.transport, "malformed")
            await stream.aclose()


async def test_slowloris_is_cut_off_while_others_are_served() -> None:
    with trio.fail_after(10):
        async with serving(handshake_timeout=0.5) as server:
            # one connection that starts a handshake and never finishes it,
            # one that sends nothing at all
            slow = await trio.open_tcp_stream(*server.host_port)
            hs = Handshake(Role.INITIATOR, CLIENT_ID, NET, now=0)
            await slow.send_all(hs.data_to_send()[:10])
            silent = await trio.open_tcp_stream(*server.host_port)
            # meanwhile, an honest client is served at once
            link = await client().connect(server.address)
            await link.send(b"fast")
            assert await link.receive() == b"echo:fast"
            assert server.transport.statistics().handshakes_in_progress == 2
            # after the timeout both are closed by the server
            for stream in (slow, silent):
                while await stream.receive_some(4096):
                    pass
                await stream.aclose()
            await wait_failures(server.transport, "timeout", 2)
            assert server.transport.statistics().handshakes_in_progress == 0
            await link.send(b"still fine")
            assert await link.receive() == b"echo:still fine"
            await link.aclose()


async def test_pending_handshakes_are_capped() -> None:
    with trio.fail_after(10):
        async with serving(handshake_timeout=5, max_pending_handshakes=1) as server:
            hog = await trio.open_tcp_stream(*server.host_port)
            while server.transport.statistics().handshakes_in_progress < 1:
                await trio.sleep(0.005)
            with pytest.raises(HandshakeError) as info:
                await client().connect(server.address)
            assert info.value.reason is FailureReason.CLOSED
            assert server.transport.statistics().handshake_failures["busy"] == 1
            await hog.aclose()


async def test_client_handshake_timeout() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:

        async def mute(stream: trio.SocketStream) -> None:
            await trio.sleep_forever()

        nursery.start_soon(trio.serve_listeners, mute, [listener])
        with trio.fail_after(10), pytest.raises(HandshakeError) as info:
            await client(handshake_timeout=0.3).connect(f"tcp:127.0.0.1:{port}")
        assert info.value.reason is FailureReason.TIMEOUT
        nursery.cancel_scope.cancel()


# -- attacks on an established link -----------------------------------------------------


async def expect_broken_by_remote(server: Server, match: str) -> None:
    _, how = await server.outcomes.receive()
    assert isinstance(how, trio.BrokenResourceError), how
    cause = how.__cause__
    assert isinstance(cause, RemoteProtocolError), cause
    assert cause.peer == CLIENT_ID.peer_id
    assert match in str(cause), str(cause)


async def test_replayed_frame_breaks_the_link() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream, session, _ = await raw_handshake(server)
            enc = FrameEncoder(session.send_key, suite=session.suite)
            frame = enc.encode(b"transfer 10 credits")
            await stream.send_all(frame)
            await stream.send_all(frame)  # replay
            await expect_broken_by_remote(server, "authentication failed")
            await stream.aclose()


async def test_tampered_frame_breaks_the_link() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream, session, _ = await raw_handshake(server)
            frame = bytearray(FrameEncoder(session.send_key, suite=session.suite).encode(b"x" * 50))
            frame[20] ^= 1
            await stream.send_all(bytes(frame))
            await expect_broken_by_remote(server, "authentication failed")
            await stream.aclose()


async def test_truncated_frame_breaks_the_link() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream, session, _ = await raw_handshake(server)
            frame = FrameEncoder(session.send_key, suite=session.suite).encode(b"x" * 100)
            await stream.send_all(frame[:60])
            await stream.send_eof()
            await expect_broken_by_remote(server, "truncated frame")
            await stream.aclose()


async def test_oversized_frame_breaks_the_link() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream, _, _ = await raw_handshake(server)
            await stream.send_all(struct.pack(">IB", 64 * 1024 * 1024, 0))
            await expect_broken_by_remote(server, "exceeds the maximum frame")
            await stream.aclose()


async def test_oversized_message_breaks_the_link() -> None:
    with trio.fail_after(10):
        async with serving(max_message=100_000) as server:
            stream, session, _ = await raw_handshake(server)
            enc = FrameEncoder(session.send_key, suite=session.suite, max_frame=60_000)
            with contextlib.suppress(trio.BrokenResourceError):  # the server cuts us off
                for frame in enc.frames(b"x" * 200_000):
                    await stream.send_all(bytes(frame))
            await expect_broken_by_remote(server, "exceeds max_message")
            await stream.aclose()


async def test_end_without_close_frame_is_broken_not_eof() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream, session, _ = await raw_handshake(server)
            await stream.send_all(FrameEncoder(session.send_key, suite=session.suite).encode(b"hi"))
            await stream.send_eof()  # FIN without the authenticated CLOSE frame
            _, how = await server.outcomes.receive()
            assert isinstance(how, trio.BrokenResourceError)
            assert "without a close frame" in str(how)
            await stream.aclose()


async def test_authenticated_close_is_end_of_channel() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            stream, session, _ = await raw_handshake(server)
            enc = FrameEncoder(session.send_key, suite=session.suite)
            await stream.send_all(enc.close())
            _, how = await server.outcomes.receive()
            assert isinstance(how, trio.EndOfChannel)
            await stream.aclose()


# -- idle links ------------------------------------------------------------------------------


async def test_idle_link_times_out_and_keepalives_keep_it_open() -> None:
    with trio.fail_after(10):
        async with serving(idle_timeout=0.4) as server:
            # a well-behaved client: pings flow from its pending receive
            good = await client(idle_timeout=0.4).connect(server.address)
            # a raw client that never sends anything after the handshake
            mute, _, _ = await raw_handshake(server)
            received: list[bytes] = []

            async def receive_one() -> None:
                received.append(await good.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_one)
                # the mute one is cut for silence...
                _, how = await server.outcomes.receive()
                assert isinstance(how, trio.BrokenResourceError)
                assert "idle timeout" in str(how)
                # ...while the good one, silent just as long, is still there
                await good.send(b"alive")
            assert received == [b"echo:alive"]
            await good.aclose()
            await mute.aclose()


async def test_cancelled_send_breaks_the_link() -> None:
    with trio.fail_after(10):
        async with serving() as server:
            c = client()
            link = await c.connect(server.address)
            with trio.CancelScope() as cs:
                cs.cancel()
                await link.send(b"x" * 5_000_000)
            with pytest.raises(trio.BrokenResourceError):
                await link.send(b"y")
            await link.aclose()


def test_public_names() -> None:
    import p2pfl.transport as transport_pkg

    for name in (
        "TcpTransport",
        "TcpLink",
        "TcpTransportStatistics",
        "Handshake",
        "HandshakeComplete",
        "HandshakeError",
        "FailureReason",
        "Role",
        "FrameEncoder",
        "FrameDecoder",
        "CipherSuite",
        "DEFAULT_MAX_FRAME",
        "default_suites",
    ):
        assert name in transport_pkg.__all__
        assert hasattr(transport_pkg, name)
