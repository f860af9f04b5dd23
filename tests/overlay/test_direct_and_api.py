"""Direct messages and the driver's API over the memory transport; the public names."""

from __future__ import annotations

import contextlib

import pytest
import trio

import p2pfl.overlay as overlay
from p2pfl.errors import LocalProtocolError
from p2pfl.identity import Identity
from p2pfl.overlay import PeerUnreachable, open_overlay
from p2pfl.overlay._messages import valid_address
from p2pfl.transport import MemoryNetwork
from p2pfl.wire import registered_messages

from ._cluster import TOPIC, Cluster


async def test_direct_messages_over_link_dial_and_relay(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=8)
        for _ in range(12):
            await c.add()
            await trio.sleep(0.01)
        hidden = await c.add(listen=False)  # behind NAT: no address, connects out only
        await c.wait_until(lambda: c.healthy(min_active=2), timeout=30)
        hov = c.ov(hidden)
        assert hov.address is None
        # by dialing an address learned from membership (a peer we have no link to,
        # when there is one), then over the link that opened
        hp = hov.protocol
        known = [m for m in c.members[:-1] if hp.address_of(m.peer) is not None]
        a = next((m for m in known if not hp.connected(m.peer)), known[0])
        aov = c.ov(a)
        await hov.send_direct(a.peer, b"one")
        await hov.send_direct(a.peer, b"two")
        await trio.sleep(1)
        assert [p for o, p in a.direct if o == hidden.peer] == [b"one", b"two"]
        # the hidden peer can only be reached through its relays, learned from its publication
        await hov.publish(TOPIC, b"i am here")
        await trio.sleep(2)
        far = next(m for m in c.members if m is not hidden and not c.ov(m).protocol.connected(hidden.peer))
        await c.ov(far).send_direct(hidden.peer, b"via relay")
        await trio.sleep(2)
        assert (far.peer, b"via relay") in hidden.direct
        with pytest.raises(PeerUnreachable):
            await aov.send_direct(c.identity(999, b"z").peer_id, b"nobody")
        nursery.cancel_scope.cancel()


async def test_subscribe_statistics_live_peers_and_graceful_leave(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=9)
        for _ in range(8):
            await c.add()
        await c.wait_until(lambda: c.healthy(min_active=2), timeout=30)
        await trio.sleep(3)
        m = c.members[2]
        ov = c.ov(m)
        ch = ov.subscribe("other-topic")
        watch = ov.watch_events()
        await c.ov(c.members[5]).publish("other-topic", b"payload")
        with trio.fail_after(5):
            origin, payload = await ch.receive()
        assert origin == c.members[5].peer and payload == b"payload"
        s = ov.statistics()
        assert s.peer == m.peer and 1 <= len(s.active) <= c.config.active_size
        assert s.bytes_sent > 0 and s.bytes_received > 0 and s.messages_sent["Ping"] > 0
        assert c.members[5].peer in ov.live_peers()
        # a graceful leave: DISCONNECT(alive=False) to every neighbour, who drop it at once
        leaver = c.members[6]
        nbrs = c.ov(leaver).neighbors()
        assert leaver.scope is not None
        leaver.scope.cancel()
        leaver.dead = True
        await trio.sleep(0.5)
        for n in c.members:
            if n.peer in nbrs:
                assert leaver.peer not in c.ov(n).neighbors()
                assert leaver.peer not in c.ov(n).protocol.membership.dead
        if m.peer in nbrs:
            ev = watch.receive_nowait()
            assert ev is not None
        await ov.wait_neighbors(1)
        nursery.cancel_scope.cancel()


async def test_identity_must_match_the_transport() -> None:
    net = MemoryNetwork()
    t = net.transport(Identity.from_seed(b"1" * 32), b"n")
    with pytest.raises(LocalProtocolError):
        async with open_overlay(t, Identity.from_seed(b"2" * 32)):
            pass


def test_public_names() -> None:
    assert set(overlay.__all__) == {
        "Close", "Connect", "Delivered", "DirectFailed", "DirectReceived", "NeighborDown",
        "NeighborUp", "Offense", "Overlay", "OverlayConfig", "OverlayProtocol",
        "OverlayStatistics", "PeerFailed", "PeerGraylisted", "PeerRecord", "PeerUnreachable",
        "ScoreParams", "Scoreboard", "Send", "message_id", "open_overlay",
    }
    for name in overlay.__all__:
        assert getattr(overlay, name) is not None


def test_overlay_wire_tags_are_in_its_range() -> None:
    ours = {t: c for t, c in registered_messages().items() if c.__module__.startswith("p2pfl.overlay")}
    assert len(ours) == 21
    assert all(0x0300 <= t <= 0x03FF for t in ours)


@pytest.mark.parametrize(
    ("addr", "ok"),
    [(None, True), ("mem:a", True), ("tcp:127.0.0.1:4000", True), ("", False), ("noscheme", False),
     ("mem:a b", False), ("mem:\x00", False), ("mem:é", False), ("m:" + "x" * 300, False)],
)
def test_address_validation(addr: str | None, ok: bool) -> None:
    assert valid_address(addr) is ok


async def test_smoke_over_tcp_loopback() -> None:
    """The same driver over real TCP links (handshake, AEAD frames); bounded, never sleeps."""
    from p2pfl.overlay import OverlayConfig
    from p2pfl.transport import TcpTransport

    net_id = b"overlay-tcp-smoke"
    idents = [Identity.from_seed(bytes([40 + i]) * 32) for i in range(4)]
    cfg = OverlayConfig(network_id=net_id)
    got: dict[int, list[bytes]] = {i: [] for i in range(4)}
    done = trio.Event()
    with trio.fail_after(20):
        async with contextlib.AsyncExitStack() as stack:
            ovs = []
            for ident in idents:
                boot = [ovs[0].address] if ovs else []
                ov = await stack.enter_async_context(
                    open_overlay(TcpTransport(ident, net_id), ident, cfg, bootstrap=boot)
                )
                ovs.append(ov)
            for ov in ovs:
                await ov.wait_neighbors(1)
            async with trio.open_nursery() as n:
                for i, ov in enumerate(ovs):
                    ch = ov.subscribe("t")

                    async def collect(i: int = i, ch: trio.MemoryReceiveChannel = ch) -> None:  # type: ignore[type-arg]
                        async for _, payload in ch:
                            got[i].append(payload)
                            if all(got.values()):
                                done.set()

                    n.start_soon(collect)
                await ovs[3].publish("t", b"over tcp")
                await ovs[2].send_direct(ovs[1].local_peer, b"direct over tcp")
                await done.wait()
                origin, payload = await ovs[1].direct.receive()
                assert (origin, payload) == (idents[2].peer_id, b"direct over tcp")
                n.cancel_scope.cancel()
    assert all(v == [b"over tcp"] for v in got.values())
