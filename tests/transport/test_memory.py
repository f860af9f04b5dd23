"""The memory network: connect/serve, routing (latency, jitter, bandwidth, loss),
partitions, crashes, back-pressure and statistics, under the mock clock."""

from __future__ import annotations

import math
import random

import pytest
import trio
import trio.testing

import p2pfl.transport as transport_pkg
from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.transport import (
    Link,
    MemoryNetwork,
    MemoryTransport,
    Route,
    RouteKind,
    StandardRouter,
)
from p2pfl.transport.testing import open_link_pair
from p2pfl.wire import PeerId

NET = b"test-net"


def pid(i: int) -> PeerId:
    return PeerId(i.to_bytes(20, "big"))


class Host:
    """A served transport whose handler hands inbound links to the test."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self._send, self.inbox = trio.open_memory_channel[Link](1000)

    async def handler(self, link: Link) -> None:
        await self._send.send(link)
        await trio.sleep_forever()

    async def start(self, nursery: trio.Nursery) -> str:
        address: str = await nursery.start(self.transport.serve, self.handler)
        return address


async def hosts(nursery: trio.Nursery, net: MemoryNetwork, n: int) -> list[Host]:
    result = [Host(net.transport(pid(i), NET)) for i in range(n)]
    for h in result:
        await h.start(nursery)
    return result


async def pair(
    nursery: trio.Nursery, net: MemoryNetwork, i: int = 1, j: int = 2
) -> tuple[Link, Link]:
    return await open_link_pair(nursery, net.transport(pid(i), NET), net.transport(pid(j), NET))


def test_public_names() -> None:
    for name in (
        "MemoryNetwork",
        "MemoryTransport",
        "MemoryLink",
        "Route",
        "RouteKind",
        "StandardRouter",
        "NetworkStatistics",
        "PeerStatistics",
        "Router",
    ):
        assert name in transport_pkg.__all__
        assert hasattr(transport_pkg, name)


# -- connect / serve ------------------------------------------------------------------


async def test_connect_serve_and_addresses() -> None:
    net = MemoryNetwork()
    ident = Identity.from_seed(b"\x01" * 32)
    server = net.transport(ident, NET, name="server")
    client = net.transport(pid(7), NET)
    assert server.address == "mem:server"
    assert client.address == f"mem:{pid(7)}"
    assert server.local_peer == ident.peer_id
    async with trio.open_nursery() as nursery:
        host = Host(server)
        address = await host.start(nursery)
        assert address == "mem:server"
        link = await client.connect(address)
        inbound = await host.inbox.receive()
        assert link.remote_peer == ident.peer_id and inbound.remote_peer == pid(7)
        await link.send(b"hello")
        assert await inbound.receive() == b"hello"
        await inbound.send(b"world")
        assert await link.receive() == b"world"
        nursery.cancel_scope.cancel()


async def test_connect_failures() -> None:
    net = MemoryNetwork()
    a = net.transport(pid(1), NET)
    net.transport(pid(2), NET)  # registered but not serving
    other = net.transport(pid(3), b"other-net")
    async with trio.open_nursery() as nursery:
        await nursery.start(other.serve, Host(other).handler)
        with pytest.raises(ConnectionRefusedError):
            await a.connect("mem:nobody")
        with pytest.raises(OSError):  # ConnectionRefusedError is an OSError
            await a.connect(f"mem:{pid(2)}")
        with pytest.raises(RemoteProtocolError, match="another network") as info:
            await a.connect(other.address)
        assert info.value.peer == pid(3)
        with pytest.raises(ValueError):
            await a.connect("tcp:127.0.0.1:1")
        nursery.cancel_scope.cancel()


async def test_names_are_unique_until_crash() -> None:
    net = MemoryNetwork()
    net.transport(pid(1), NET, name="x")
    with pytest.raises(ValueError, match="in use"):
        net.transport(pid(2), NET, name="x")
    with pytest.raises(ValueError, match="live transport"):
        net.transport(pid(1), NET, name="y")
    net.crash(pid(1))
    t = net.transport(pid(1), NET, name="x")  # a crashed peer comes back fresh
    assert not t.crashed and net.transport_of(pid(1)) is t


async def test_serve_twice_is_busy() -> None:
    net = MemoryNetwork()
    t = net.transport(pid(1), NET)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.serve, Host(t).handler)
        with pytest.raises(trio.BusyResourceError):
            await t.serve(Host(t).handler)
        nursery.cancel_scope.cancel()


async def test_handler_return_closes_link() -> None:
    net = MemoryNetwork()
    server, client = net.transport(pid(1), NET), net.transport(pid(2), NET)

    async def echo_once(link: Link) -> None:
        await link.send(await link.receive())

    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, echo_once)
        link = await client.connect(address)
        await link.send(b"ping")
        assert await link.receive() == b"ping"
        with pytest.raises(trio.EndOfChannel):
            await link.receive()
        await link.aclose()
        nursery.cancel_scope.cancel()
    assert net.statistics().links_open == 0


async def test_connect_delay(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(connect_delay=0.3)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await pair(nursery, net)
        assert trio.current_time() - t0 == pytest.approx(0.3)
        nursery.cancel_scope.cancel()


# -- sending ---------------------------------------------------------------------------


async def test_max_message_and_types() -> None:
    net = MemoryNetwork(max_message=1000)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        assert a.max_message == 1000
        with pytest.raises(ValueError, match="max_message"):
            await a.send(b"x" * 1001)
        with pytest.raises(TypeError):
            await a.send("text")  # type: ignore[arg-type]
        await a.send(bytearray(b"ba"))  # type: ignore[arg-type]
        await a.send(memoryview(b"x" * 1000))  # type: ignore[arg-type]
        assert await b.receive() == b"ba"
        assert await b.receive() == b"x" * 1000
        assert a.statistics().messages_sent == 2
        nursery.cancel_scope.cancel()


async def test_send_and_receive_are_checkpoints() -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        with trio.testing.assert_checkpoints():
            await a.send(b"1")
        with trio.testing.assert_checkpoints():
            assert await b.receive() == b"1"
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.send(b"not sent")
        assert a.statistics().messages_sent == 1
        nursery.cancel_scope.cancel()


async def test_cancelled_receive_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(default_latency=1.0)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        await a.send(b"late")
        with trio.move_on_after(0.5):
            await b.receive()
        assert await b.receive() == b"late"
        assert trio.current_time() == pytest.approx(1.0)
        nursery.cancel_scope.cancel()


async def test_big_message_admitted_into_empty_pipe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(buffer_messages=4, buffer_bytes=100)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        await a.send(b"x" * 1000)  # alone in the pipe: admitted
        with trio.move_on_after(1.0) as scope:
            await a.send(b"y")  # the pipe is over its byte budget
        assert scope.cancelled_caught
        assert await b.receive() == b"x" * 1000
        await a.send(b"y")
        assert await b.receive() == b"y"
        nursery.cancel_scope.cancel()


async def test_buffer_messages_bound(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(buffer_messages=3, default_latency=0.1)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        for i in range(3):
            await a.send(bytes([i]))
        with trio.move_on_after(10.0) as scope:
            await a.send(b"blocked")  # 3 in flight: the window is full
        assert scope.cancelled_caught
        assert await b.receive() == b"\x00"
        with trio.testing.assert_checkpoints():
            await a.send(b"\x03")
        assert [await b.receive() for _ in range(3)] == [b"\x01", b"\x02", b"\x03"]
        nursery.cancel_scope.cancel()


# -- routing -----------------------------------------------------------------------------


async def test_latency_is_exact(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(default_latency=0.25)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        t0 = trio.current_time()
        await a.send(b"ping")
        assert trio.current_time() == t0  # send does not wait for delivery
        assert await b.receive() == b"ping"
        assert trio.current_time() - t0 == pytest.approx(0.25)
        await b.send(b"pong")
        assert await a.receive() == b"pong"
        assert trio.current_time() - t0 == pytest.approx(0.5)  # one round trip
        nursery.cancel_scope.cancel()


async def test_jitter_never_reorders(autojump_clock: trio.testing.MockClock) -> None:
    # 400 messages 10 ms apart (jitter up to 1 s would reorder them), then 100
    # messages 2 s apart (no reordering possible: we see the raw jitter).
    net = MemoryNetwork(rng=random.Random(5), default_latency=0.1, jitter=1.0)
    gaps = [0.01] * 400 + [2.0] * 100
    sent_at: list[float] = []
    arrivals: list[float] = []
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)

        async def sender() -> None:
            for i, gap in enumerate(gaps):
                sent_at.append(trio.current_time())
                await a.send(i.to_bytes(4, "big"))
                await trio.sleep(gap)

        nursery.start_soon(sender)
        for i in range(len(gaps)):
            assert int.from_bytes(await b.receive(), "big") == i
            arrivals.append(trio.current_time())
        nursery.cancel_scope.cancel()
    assert arrivals == sorted(arrivals)
    delays = [t - s for s, t in zip(sent_at, arrivals, strict=True)]
    assert all(0.1 - 1e-9 <= d <= 1.1 + 1e-9 for d in delays)
    sparse = delays[400:]
    assert max(sparse) - min(sparse) > 0.8  # jitter is really drawn
    assert 0.4 < sum(sparse) / len(sparse) < 0.8  # mean of 0.1 + U(0, 1) is 0.6


async def test_bandwidth_serializes(autojump_clock: trio.testing.MockClock) -> None:
    # 1 MB/s, 10 ms latency: ten 100 kB messages sent at once arrive 0.1 s apart.
    net = MemoryNetwork(default_latency=0.01, bandwidth=1e6)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        t0 = trio.current_time()
        for _ in range(10):
            await a.send(b"z" * 100_000)
        times = []
        for _ in range(10):
            await b.receive()
            times.append(trio.current_time() - t0)
        assert times == pytest.approx([0.1 * (k + 1) + 0.01 for k in range(10)])
        # The other direction has its own bandwidth.
        t1 = trio.current_time()
        await b.send(b"w" * 50_000)
        await a.receive()
        assert trio.current_time() - t1 == pytest.approx(0.06)
        nursery.cancel_scope.cancel()


async def test_loss_rate_near_configured(autojump_clock: trio.testing.MockClock) -> None:
    loss, n = 0.2, 5000
    net = MemoryNetwork(rng=random.Random(42), loss=loss, default_latency=0.001)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)

        async def sender() -> None:
            for i in range(n):
                await a.send(i.to_bytes(4, "big"))
            await a.aclose()  # close is not subject to loss

        nursery.start_soon(sender)
        received = []
        while True:
            try:
                received.append(int.from_bytes(await b.receive(), "big"))
            except trio.EndOfChannel:
                break
        nursery.cancel_scope.cancel()
    assert received == sorted(received)  # what survives stays in order
    sigma = math.sqrt(n * loss * (1 - loss))
    assert abs((n - len(received)) - n * loss) < 4 * sigma
    stats = net.statistics()
    assert stats.messages_sent == n
    assert stats.messages_dropped == n - len(received)
    assert stats.messages_received == len(received)
    assert stats.peers[pid(1)].messages_dropped == stats.messages_dropped


async def test_custom_router_drop_break_and_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    calls: list[tuple[PeerId, PeerId, int]] = []

    def router(src: PeerId, dst: PeerId, nbytes: int) -> Route:
        calls.append((src, dst, nbytes))
        if nbytes == 1:
            return Route.DROP
        if nbytes == 2:
            return Route.BREAK
        return Route.deliver(delay=0.5)

    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        c, d = await pair(nursery, net, 3, 4)
        net.set_router(router)
        assert net.router is router
        await a.send(b"x")  # dropped
        await a.send(b"abc")
        t0 = trio.current_time()
        assert await b.receive() == b"abc"
        assert trio.current_time() - t0 == pytest.approx(0.5)
        assert calls == [(pid(1), pid(2), 1), (pid(1), pid(2), 3)]
        with pytest.raises(trio.BrokenResourceError):
            await a.send(b"xy")  # the network breaks this link
        with pytest.raises(trio.BrokenResourceError):
            await b.receive()
        with pytest.raises(trio.BrokenResourceError):
            await b.send(b"abc")
        net.set_router(None)
        await c.send(b"xy")
        assert await d.receive() == b"xy"
        nursery.cancel_scope.cancel()
    assert net.statistics().links_broken == 1


def test_route_validation() -> None:
    assert Route.deliver() is Route.NOW
    assert Route.deliver(0.1).kind is RouteKind.DELIVER
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            Route.deliver(bad)
    with pytest.raises(ValueError):
        StandardRouter(loss=1.5)
    with pytest.raises(ValueError):
        StandardRouter(bandwidth=0)
    with pytest.raises(ValueError):
        MemoryNetwork(buffer_messages=0)


def test_standard_router_is_deterministic() -> None:
    def draws(seed: int) -> list[Route]:
        r = StandardRouter(
            rng=random.Random(seed), latency=0.1, jitter=0.2, loss=0.3, bandwidth=1e3
        )
        return [r(pid(1), pid(2), k) for k in range(200)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    routes = draws(1)
    delivered = [r for r in routes if r.kind is RouteKind.DELIVER]
    assert all(0.1 <= r.delay <= 0.3 for r in delivered)
    assert all(r.transmit == k / 1e3 for k, r in enumerate(routes) if r in delivered)


# -- partitions ------------------------------------------------------------------------


async def test_partition_breaks_across_and_heals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(default_latency=0.01)
    async with trio.open_nursery() as nursery:
        h = await hosts(nursery, net, 4)
        t = [x.transport for x in h]
        ab = await t[0].connect(t[1].address)
        ac = await t[0].connect(t[2].address)
        ba = await h[1].inbox.receive()
        ca = await h[2].inbox.receive()
        net.partition([pid(0), pid(1)], [pid(2), pid(3)])
        with pytest.raises(trio.BrokenResourceError):
            await ca.receive()
        with pytest.raises(trio.BrokenResourceError):
            await ac.send(b"x")
        await ab.send(b"same side")
        assert await ba.receive() == b"same side"
        with pytest.raises(ConnectionRefusedError):
            await t[3].connect(t[0].address)
        await t[3].connect(t[2].address)  # inside one side: fine
        net.heal()
        link = await t[3].connect(t[0].address)
        await link.send(b"healed")
        assert await (await h[0].inbox.receive()).receive() == b"healed"
        nursery.cancel_scope.cancel()


async def test_partition_against_everyone_else(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        h = await hosts(nursery, net, 3)
        net.partition([h[0].transport])  # peer 0 alone against the rest
        with pytest.raises(ConnectionRefusedError):
            await h[1].transport.connect(h[0].transport.address)
        await h[1].transport.connect(h[2].transport.address)
        nursery.cancel_scope.cancel()


async def test_blackhole_partition_drops_silently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        net.partition([pid(1)], [pid(2)], blackhole=True)
        await a.send(b"lost")
        with trio.move_on_after(5.0) as scope:
            await b.receive()
        assert scope.cancelled_caught  # the link hangs: nothing arrives, nothing breaks
        net.heal()
        await a.send(b"after heal")
        assert await b.receive() == b"after heal"
        assert net.statistics().messages_dropped == 1
        nursery.cancel_scope.cancel()


# -- crashes ---------------------------------------------------------------------------


async def test_crash_breaks_all_links_and_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(default_latency=0.05)
    async with trio.open_nursery() as nursery:
        h = await hosts(nursery, net, 4)
        victim = h[3].transport
        links = [await h[i].transport.connect(victim.address) for i in range(3)]
        inbound = [await h[3].inbox.receive() for _ in range(3)]
        await links[0].send(b"in flight")  # lost in the crash
        outcome: list[BaseException] = []

        async def wait_on(link: Link) -> None:
            try:
                await link.receive()
            except trio.BrokenResourceError as e:
                outcome.append(e)

        for link in links:
            nursery.start_soon(wait_on, link)
        await trio.testing.wait_all_tasks_blocked()
        net.crash(pid(3))
        await trio.testing.wait_all_tasks_blocked()
        assert len(outcome) == 3  # all at once, without any time passing
        for end in inbound:
            with pytest.raises(trio.BrokenResourceError):
                await end.receive()
        with pytest.raises(ConnectionRefusedError):
            await h[0].transport.connect(victim.address)
        with pytest.raises(OSError):
            await victim.connect(h[0].transport.address)
        assert victim.links() == frozenset()
        net.restart(pid(3))
        again = await h[0].transport.connect(victim.address)  # same serve() accepts again
        await again.send(b"back")
        assert await (await h[3].inbox.receive()).receive() == b"back"
        with pytest.raises(trio.BrokenResourceError):
            await links[1].send(b"old links stay broken")
        nursery.cancel_scope.cancel()


async def test_remote_close_after_in_flight_data(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(default_latency=1.0)
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        t0 = trio.current_time()
        await a.send(b"last words")
        await a.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await b.send(b"too late")  # the sender learns at once
        assert await b.receive() == b"last words"
        with pytest.raises(trio.EndOfChannel):
            await b.receive()
        assert trio.current_time() - t0 == pytest.approx(1.0)
        nursery.cancel_scope.cancel()


# -- statistics ------------------------------------------------------------------------


async def test_network_statistics() -> None:
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        a, b = await pair(nursery, net)
        await a.send(b"12345")
        await a.send(b"")
        await b.receive()
        await b.receive()
        await b.send(b"abc")
        await a.receive()
        stats = net.statistics()
        assert (stats.messages_sent, stats.bytes_sent) == (3, 8)
        assert (stats.messages_received, stats.bytes_received) == (3, 8)
        assert stats.links_opened == 1 and stats.links_open == 1
        assert stats.bytes_sent_per_peer() == {str(pid(1)): 5, str(pid(2)): 3}
        assert net.transport_of(pid(1)) is not None
        assert net.transport_of(pid(1)).statistics().messages_received == 1  # type: ignore[union-attr]
        ls = a.statistics()
        assert (ls.messages_sent, ls.bytes_sent, ls.messages_received) == (2, 5, 1)
        await a.aclose()
        await b.aclose()
        assert net.statistics().links_open == 0
        nursery.cancel_scope.cancel()


# -- scale -----------------------------------------------------------------------------


async def test_two_thousand_peers(autojump_clock: trio.testing.MockClock) -> None:
    """Every peer connects to 3 random others and sends one message on each link."""
    n, degree = 2000, 3
    rng = random.Random(7)
    net = MemoryNetwork(rng=rng, default_latency=0.02, jitter=0.01)
    got: list[tuple[PeerId, bytes]] = []

    async def handler(link: Link) -> None:
        got.append((link.remote_peer, await link.receive()))

    transports = [net.transport(pid(i), NET) for i in range(n)]

    async def peer(i: int) -> None:
        targets = rng.sample([j for j in range(n) if j != i], degree)
        for j in targets:
            link = await transports[i].connect(transports[j].address)
            await link.send(f"{i}->{j}".encode())
            await link.aclose()

    async with trio.open_nursery() as nursery:
        for t in transports:
            await nursery.start(t.serve, handler)
        async with trio.open_nursery() as peers:
            for i in range(n):
                peers.start_soon(peer, i)
        while len(got) < n * degree:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert len(got) == n * degree
    assert all(msg.startswith(f"{int.from_bytes(p.raw, 'big')}->".encode()) for p, msg in got)
    stats = net.statistics()
    assert stats.messages_sent == stats.messages_received == n * degree
    assert stats.links_opened == n * degree and stats.links_open == 0
    assert len(stats.bytes_sent_per_peer()) == n


async def test_handler_errors_from_the_remote_end_only_that_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    server = net.transport(pid(1), NET)
    ended: list[str] = []

    async def handler(link: Link) -> None:
        try:
            await link.receive()  # raises when the client crashes or closes
        finally:
            ended.append(str(link.remote_peer))

    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, handler)
        crasher = net.transport(pid(2), NET)
        closer = net.transport(pid(3), NET)
        await crasher.connect(address)
        link = await closer.connect(address)
        await trio.testing.wait_all_tasks_blocked()
        net.crash(crasher)  # BrokenResourceError in one handler
        await link.aclose()  # EndOfChannel in the other
        await trio.testing.wait_all_tasks_blocked()
        assert len(ended) == 2
        again = await net.transport(pid(4), NET).connect(address)  # still serving
        await again.aclose()
        nursery.cancel_scope.cancel()


async def test_other_handler_errors_propagate() -> None:
    net = MemoryNetwork()
    server = net.transport(pid(1), NET)

    async def handler(link: Link) -> None:
        raise KeyError("bug in the handler")

    with pytest.RaisesGroup(KeyError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(server.serve, handler)
            await net.transport(pid(2), NET).connect(address)
            await trio.sleep_forever()
