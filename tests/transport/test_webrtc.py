"""The WebRTC transport over loopback: conformance, signaling, relay, failures.

Real aiortc, real time: every test is bounded with ``trio.fail_after``.  The two
WebRTC peers have no listening socket; their signaling goes through a third
peer (a :class:`SignalingRelay` served over TCP) unless a test says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

pytest.importorskip("aiortc")

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity, seal
from p2pfl.transport import Link, TcpTransport
from p2pfl.transport._handshake import FailureReason, HandshakeError, network_tag
from p2pfl.transport._webrtc_bridge import (
    INITIAL_WINDOW,
    ChannelStream,
)
from p2pfl.transport.testing import LINK_CHECKS, LinkPair, check_link, open_link_pair
from p2pfl.transport.webrtc import (
    MemorySignalingHub,
    RelaySignaling,
    Signaling,
    SignalingRelay,
    SignalOffer,
    Undeliverable,
    WebRtcLink,
    WebRtcTransport,
    _domain,
    format_webrtc_address,
    parse_webrtc_address,
)
from p2pfl.wire import PeerId, encode

NETWORK_ID = b"webrtc-tests"
LOOPBACK = ("127.0.0.1",)
MiB = 1024 * 1024


def _identity(name: str) -> Identity:
    return Identity.from_seed(name.encode().ljust(32, b"."))


def _webrtc(identity: Identity, signaling: Signaling, network: bytes = NETWORK_ID,
            **options: object) -> WebRtcTransport:
    options.setdefault("connect_timeout", 10)
    options.setdefault("handshake_timeout", 5)
    return WebRtcTransport(identity, network, signaling, host_addresses=LOOPBACK,
                           **options)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _every_test_closes_its_connections(no_leaked_peer_connections: None) -> None:
    """Every test must close every peer connection it opened (tests/transport/conftest.py)."""


@asynccontextmanager
async def relay_signaling(
    nursery: trio.Nursery, *identities: Identity
) -> AsyncIterator[list[RelaySignaling]]:
    """A third peer relaying signaling over TCP; one RelaySignaling per identity."""
    relay = SignalingRelay()
    server = TcpTransport(_identity("relay"), NETWORK_ID, handshake_timeout=5)
    address = await nursery.start(server.serve, relay.handle)
    links: list[Link] = []
    try:
        for identity in identities:
            client = TcpTransport(identity, NETWORK_ID, handshake_timeout=5)
            links.append(await client.connect(address))
        # the relay registers a link once its handler runs
        with trio.fail_after(5):
            while relay.statistics().peers < len(identities):
                await trio.sleep(0.005)
        yield [RelaySignaling(link) for link in links]
    finally:
        with trio.CancelScope(shield=True):
            for link in links:
                await link.aclose()


# -- conformance ---------------------------------------------------------------------


async def webrtc_pair(nursery: trio.Nursery) -> LinkPair:
    ia, ib = _identity("a"), _identity("b")
    relay = SignalingRelay()
    server = TcpTransport(_identity("relay"), NETWORK_ID, handshake_timeout=5)
    address = await nursery.start(server.serve, relay.handle)
    sa = RelaySignaling(await TcpTransport(ia, NETWORK_ID).connect(address))
    sb = RelaySignaling(await TcpTransport(ib, NETWORK_ID).connect(address))
    nursery.start_soon(_close_when_cancelled, sa.link, sb.link)
    while relay.statistics().peers < 2:
        await trio.sleep(0.005)
    ta = _webrtc(ia, sa, max_message=4 * MiB)
    tb = _webrtc(ib, sb, max_message=4 * MiB)
    a, b = await open_link_pair(nursery, ta, tb)
    assert isinstance(a, WebRtcLink)

    async def crash_a() -> None:
        a.abort()
        await trio.lowlevel.checkpoint()

    return LinkPair(a, b, crash_a, extras={"relay": relay, "signaling": (sa, sb)})


async def _close_when_cancelled(*links: Link) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            for link in links:
                await link.aclose()


@pytest.mark.parametrize("check", LINK_CHECKS)
async def test_webrtc_link_conformance(check: str) -> None:
    # aiortc moves bytes in its own thread, outside trio's view: "all tasks
    # blocked" must hold for a while (cushion) before it means "stuck".
    await check_link(webrtc_pair, only=[check], timeout=20, ordering_messages=300,
                     backpressure_limit=16 * MiB, cushion=0.3)


# -- the scenario of issue 8 ----------------------------------------------------------


async def test_model_sized_messages_through_a_relay() -> None:
    """Two peers without listening sockets meet through a third and swap 4 MiB models."""
    ia, ib = _identity("alice"), _identity("bob")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, \
                relay_signaling(nursery, ia, ib) as (sa, sb):
            ta, tb = _webrtc(ia, sa), _webrtc(ib, sb)
            a, b = await open_link_pair(nursery, ta, tb)
            assert a.remote_peer == ib.peer_id and b.remote_peer == ia.peer_id
            model_a, model_b = os.urandom(4 * MiB), os.urandom(4 * MiB)
            got: dict[str, bytes] = {}

            async def recv(link: Link, key: str) -> None:
                got[key] = await link.receive()

            async with trio.open_nursery() as inner:
                inner.start_soon(a.send, model_a)
                inner.start_soon(b.send, model_b)
                inner.start_soon(recv, a, "a")
                inner.start_soon(recv, b, "b")
            assert got == {"a": model_b, "b": model_a}
            assert a.statistics().bytes_sent == 4 * MiB
            assert isinstance(a, WebRtcLink) and isinstance(b, WebRtcLink)
            assert a.channel_binding == b.channel_binding
            assert a.cipher_suite == b.cipher_suite
            await a.aclose()
            with pytest.raises(trio.EndOfChannel):
                await b.receive()
            await b.aclose()
            stats = ta.statistics()
            assert stats.links_connected == 1 and stats.links_open == 0
            nursery.cancel_scope.cancel()


async def test_wrong_network_is_refused() -> None:
    ia, ib = _identity("alice"), _identity("bob")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, \
                relay_signaling(nursery, ia, ib) as (sa, sb):
            ta = _webrtc(ia, sa, network=b"federation-1")
            tb = _webrtc(ib, sb, network=b"federation-2")
            address = await nursery.start(tb.serve, _never_called)
            with pytest.raises(HandshakeError) as info:
                await ta.connect(address)
            assert info.value.reason is FailureReason.REFUSED
            assert info.value.remote_reason is FailureReason.NETWORK
            assert "network" in str(info.value)
            assert tb.statistics().handshake_failures == {"network": 1}
            assert ta.statistics().handshake_failures == {"network": 1}
            nursery.cancel_scope.cancel()


async def _never_called(link: Link) -> None:  # pragma: no cover
    raise AssertionError(f"unexpected link {link!r}")


async def test_unreachable_peer_fails_fast() -> None:
    ia, ib = _identity("alice"), _identity("bob")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, relay_signaling(nursery, ia) as (sa,):
            ta = _webrtc(ia, sa)
            with pytest.raises(ConnectionRefusedError, match="unreachable"):
                await ta.connect(format_webrtc_address(ib.peer_id))
            nursery.cancel_scope.cancel()


async def test_peer_not_serving_refuses() -> None:
    hub = MemorySignalingHub()
    ia, ib = _identity("alice"), _identity("bob")
    ta, tb = _webrtc(ia, hub.signaling(ia.peer_id)), _webrtc(ib, hub.signaling(ib.peer_id))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            # b reads signaling (a connect of its own in progress) but does not serve
            silent = _identity("silent").peer_id
            hub.signaling(silent)
            nursery.start_soon(_connect_quietly, tb, format_webrtc_address(silent))
            with pytest.raises(ConnectionRefusedError, match="not_serving"):
                await ta.connect(format_webrtc_address(ib.peer_id))
            nursery.cancel_scope.cancel()


async def _connect_quietly(transport: WebRtcTransport, address: str) -> None:
    try:
        await transport.connect(address)
    except OSError:
        await trio.sleep_forever()


async def test_both_ends_connect_while_serving() -> None:
    """Concurrent connects both ways over one signaling carrier, with serve running."""
    hub = MemorySignalingHub()
    ia, ib = _identity("alice"), _identity("bob")
    ta, tb = _webrtc(ia, hub.signaling(ia.peer_id)), _webrtc(ib, hub.signaling(ib.peer_id))
    accepted: list[Link] = []

    async def keep(link: Link) -> None:
        accepted.append(link)
        msg = await link.receive()
        await link.send(msg[::-1])

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(ta.serve, keep)
            await nursery.start(tb.serve, keep)
            links: list[Link] = []

            async def dial(t: WebRtcTransport, peer: PeerId) -> None:
                links.append(await t.connect(format_webrtc_address(peer)))

            async with trio.open_nursery() as inner:
                inner.start_soon(dial, ta, ib.peer_id)
                inner.start_soon(dial, tb, ia.peer_id)
            for link in links:
                await link.send(b"abc")
                assert await link.receive() == b"cba"
                await link.aclose()
            assert len(accepted) == 2
            nursery.cancel_scope.cancel()


async def test_many_peers_connect_to_one_through_the_relay() -> None:
    server_id = _identity("server")
    clients = [_identity(f"client{i}") for i in range(3)]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, \
                relay_signaling(nursery, server_id, *clients) as (ss, *cs):
            server = _webrtc(server_id, ss)

            async def echo(link: Link) -> None:
                await link.send(await link.receive())

            address = await nursery.start(server.serve, echo)

            async def client(identity: Identity, signaling: Signaling) -> None:
                link = await _webrtc(identity, signaling).connect(address)
                payload = identity.peer_id.raw * 1000
                await link.send(payload)
                assert await link.receive() == payload
                await link.aclose()

            async with trio.open_nursery() as inner:
                for identity, signaling in zip(clients, cs, strict=True):
                    inner.start_soon(client, identity, signaling)
            assert server.statistics().links_accepted == 3
            nursery.cancel_scope.cancel()


# -- signaling checks (no ICE needed) --------------------------------------------------------


class _Tap(Signaling):
    """A signaling endpoint whose traffic a test can read and inject."""

    def __init__(self) -> None:
        self.sent: list[tuple[PeerId, bytes]] = []
        self.inbox_send, self.inbox = trio.open_memory_channel[bytes | Undeliverable](16)

    async def send(self, recipient: PeerId, envelope: bytes) -> None:
        self.sent.append((recipient, envelope))
        await trio.lowlevel.checkpoint()

    async def receive(self) -> bytes | Undeliverable:
        return await self.inbox.receive()


async def test_forged_stale_misaddressed_and_replayed_offers_are_dropped() -> None:
    me, other, mallory = _identity("me"), _identity("other"), _identity("mallory")
    tap = _Tap()
    t = _webrtc(me, tap, clock=lambda: 1000.0)
    tag = network_tag(NETWORK_ID)

    def offer(signer: Identity, *, recipient: PeerId = me.peer_id, sent_at: float = 1000.0,
              session: bytes = b"s" * 16, sdp: str = "v=0") -> bytes:
        msg = SignalOffer(tag, session, recipient, sent_at, sdp)
        return encode(seal(signer, msg, domain=_domain(tag)))

    forged = seal(mallory, SignalOffer(tag, b"f" * 16, me.peer_id, 1000.0, "v=0"),
                  domain=_domain(tag))
    forged = type(forged)(other.public_key, forged.body, forged.signature)  # claims "other"
    bad = [
        encode(forged),  # signature does not match the claimed signer
        offer(other, recipient=mallory.peer_id),  # not for us
        offer(other, sent_at=1000.0 - 3600),  # stale
        offer(other, sent_at=1000.0 + 3600),  # from the future
        b"\x00garbage",  # not an envelope
        offer(me),  # signed by ourselves
    ]
    for raw in bad:
        await tap.inbox_send.send(raw)

    async def handler(link: Link) -> None:  # pragma: no cover
        raise AssertionError("no link expected")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(t.serve, handler)
            while t.statistics().signaling_received < len(bad):
                await trio.sleep(0.01)
            assert t.statistics().signaling_dropped == len(bad)
            assert tap.sent == []  # nothing was answered
            # A valid offer with an unusable SDP is refused; its replay is dropped.
            await tap.inbox_send.send(offer(other))
            await tap.inbox_send.send(offer(other))
            while t.statistics().signaling_received < len(bad) + 2:
                await trio.sleep(0.01)
            while not tap.sent:
                await trio.sleep(0.01)
            assert t.statistics().signaling_dropped == len(bad) + 1
            assert t.statistics().handshake_failures == {"malformed": 1}
            nursery.cancel_scope.cancel()


async def test_signaling_end_fails_pending_connects() -> None:
    hub = MemorySignalingHub()
    ia, ib = _identity("alice"), _identity("bob")
    sa = hub.signaling(ia.peer_id)
    hub.signaling(ib.peer_id)  # registered, never answers
    ta = _webrtc(ia, sa)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.2)
                sa.close()

            nursery.start_soon(close_soon)
            with pytest.raises(ConnectionError, match="signaling ended"):
                await ta.connect(format_webrtc_address(ib.peer_id))


async def test_connect_times_out_when_nobody_answers() -> None:
    hub = MemorySignalingHub()
    ia, ib = _identity("alice"), _identity("bob")
    ta = _webrtc(ia, hub.signaling(ia.peer_id), connect_timeout=0.5)
    hub.signaling(ib.peer_id)
    with trio.fail_after(10):
        with pytest.raises(TimeoutError):
            await ta.connect(format_webrtc_address(ib.peer_id))
    assert ta.statistics().handshake_failures == {"timeout": 1}


async def test_signaling_works_for_any_network_id() -> None:
    # Some network tags contain NUL bytes, which a signature domain may not.
    tags = [network_tag(f"federation-{i}".encode()) for i in range(300)]
    assert any(0 in tag for tag in tags)
    me = _identity("me")
    for tag in tags:
        seal(me, SignalOffer(tag, b"s" * 16, me.peer_id, 0.0, "v=0"), domain=_domain(tag))


async def test_addresses() -> None:
    peer = _identity("a").peer_id
    assert parse_webrtc_address(format_webrtc_address(peer)) == peer
    for bad in ("tcp:1.2.3.4:5", "webrtc:", "webrtc:nope"):
        with pytest.raises(ValueError):
            parse_webrtc_address(bad)


async def test_relay_cuts_off_a_source_speaking_garbage() -> None:
    relay = SignalingRelay()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = TcpTransport(_identity("relay"), NETWORK_ID)
            address = await nursery.start(server.serve, relay.handle)
            link = await TcpTransport(_identity("a"), NETWORK_ID).connect(address)
            await link.send(b"not a relay message")
            with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
                await link.receive()
            await link.aclose()
            nursery.cancel_scope.cancel()


async def test_relay_rate_limits_each_source() -> None:
    ia, ib = _identity("a"), _identity("b")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = TcpTransport(_identity("relay"), NETWORK_ID)
            relay = SignalingRelay(rate=0.001, burst=2)
            address = await nursery.start(server.serve, relay.handle)
            sa = RelaySignaling(await TcpTransport(ia, NETWORK_ID).connect(address))
            sb = RelaySignaling(await TcpTransport(ib, NETWORK_ID).connect(address))
            nursery.start_soon(_close_when_cancelled, sa.link, sb.link)
            while relay.statistics().peers < 2:
                await trio.sleep(0.005)
            for i in range(5):
                await sa.send(ib.peer_id, b"envelope %d" % i)
            assert await sb.receive() == b"envelope 0"
            assert await sb.receive() == b"envelope 1"
            while relay.statistics().rate_limited < 3:
                await trio.sleep(0.005)
            assert relay.statistics().forwarded == 2
            nursery.cancel_scope.cancel()


# -- flow control of the byte stream (no network) ----------------------------------------------


class _FakeChannel:
    def __init__(self) -> None:
        self.controls: list[str] = []
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, pieces: list[bytes]) -> None:
        self.written += pieces

    def write_control(self, text: str) -> None:
        self.controls.append(text)

    def abort(self) -> None:
        self.aborted = True


def _stream(window: int = 1 * MiB) -> tuple[ChannelStream, _FakeChannel]:
    stream = ChannelStream(receive_window=window, send_buffer=MiB)
    fake = _FakeChannel()
    stream.channel = fake  # type: ignore[assignment]
    return stream, fake


async def test_stream_grants_credit_as_the_reader_consumes() -> None:
    stream, fake = _stream()
    stream.on_open()
    assert fake.controls == [f"credit {MiB}"]
    for _ in range(8):
        stream.on_data(b"x" * (32 * 1024))
    assert stream.buffered_received == 256 * 1024
    while stream.read_nowait() is not None:
        pass
    assert fake.controls[-1] == f"credit {MiB + 256 * 1024}"
    assert stream.error is None


async def test_stream_refuses_data_past_the_window() -> None:
    stream, fake = _stream()
    stream.on_data(b"x" * INITIAL_WINDOW)
    assert stream.error is None
    stream.on_data(b"x" * 100)  # beyond the window and the close slack
    assert isinstance(stream.error, RemoteProtocolError) and fake.aborted


@pytest.mark.parametrize("text", ["credit -1", "credit x", "hello", "credit " + "9" * 40])
async def test_stream_refuses_bad_control(text: str) -> None:
    stream, fake = _stream()
    stream.on_control(text)
    assert isinstance(stream.error, RemoteProtocolError) and fake.aborted


async def test_stream_send_budget_follows_credit_and_buffer() -> None:
    stream, fake = _stream()
    assert stream.send_budget() == INITIAL_WINDOW
    stream.on_control(f"credit {8 * MiB}")
    assert stream.send_budget() == MiB  # now the send buffer is the limit
    stream.write_nowait(b"y" * MiB)
    assert [len(p) for p in fake.written] == [64 * 1024] * 16
    assert stream.send_budget() == 0
    stream.on_drained(MiB, 256 * 1024)  # aiortc passed 768 KiB on to SCTP
    assert stream.send_budget() == 768 * 1024
    stream.on_control("credit 5")  # an old grant never shrinks the window
    assert stream.send_budget() == 768 * 1024


async def test_idle_links_are_kept_alive_and_silent_ones_time_out() -> None:
    hub = MemorySignalingHub()
    ia, ib = _identity("alice"), _identity("bob")
    ta = _webrtc(ia, hub.signaling(ia.peer_id), idle_timeout=0.6)
    tb = _webrtc(ib, hub.signaling(ib.peer_id), idle_timeout=0.6)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            a, b = await open_link_pair(nursery, ta, tb)
            # Both ends receiving: pings keep the link up well past the timeout.
            with trio.move_on_after(1.5):
                async with trio.open_nursery() as inner:
                    inner.start_soon(a.receive)
                    inner.start_soon(b.receive)
            await a.send(b"still here")
            assert await b.receive() == b"still here"
            # Only b receives: a sends no pings, b gives up after idle_timeout.
            start = trio.current_time()
            with pytest.raises(trio.BrokenResourceError, match="idle timeout"):
                await b.receive()
            assert 0.4 < trio.current_time() - start < 1.5
            await a.aclose()
            await b.aclose()
            nursery.cancel_scope.cancel()
