"""WebRTC signaling over the overlay, and the hybrid TCP + WebRTC transport.

The first part runs the overlay over the memory transport with a mock clock: the
overlay pieces signaling needs (``send_direct(dial=False)``, relay fan-out,
``route_direct``, relays named by peers with a ``webrtc:`` address).  The second
runs real aiortc over loopback, bounded with ``trio.fail_after``: two peers with
no listening socket join through a reachable third peer and open a WebRTC link
to each other, signaled through it over the overlay, then swap model-sized
messages.
"""

from __future__ import annotations

import os
import random
from contextlib import AsyncExitStack

import pytest
import trio

from p2pfl.identity import Identity
from p2pfl.overlay import OverlayConfig, PeerUnreachable, open_overlay
from p2pfl.transport import MemoryNetwork
from p2pfl.transport._signaling import (
    OVERLAY_SIGNAL_PREFIX,
    IceServer,
    OverlaySignal,
    OverlaySignaling,
)
from p2pfl.wire import encode

NETWORK_ID = b"webrtc-overlay-tests"
MiB = 1024 * 1024


def _identity(name: str) -> Identity:
    return Identity.from_seed(name.encode().ljust(32, b"."))


def _config(**kw: object) -> OverlayConfig:
    return OverlayConfig(network_id=NETWORK_ID, **kw)  # type: ignore[arg-type]


# -- the overlay side, no aiortc (memory transport, mock clock) ----------------------


async def test_signal_prefix_routes_and_dial_false_never_dials(autojump_clock: object) -> None:
    """R is reachable; A and B are not (no address).  A signals B through R by
    fan-out (it knows no relay of B yet); signaling payloads reach the routed
    channel, not ``direct``."""
    net = MemoryNetwork()
    ir, ia, ib = _identity("r"), _identity("a"), _identity("b")
    async with AsyncExitStack() as stack:
        r = await stack.enter_async_context(
            open_overlay(net.transport(ir, NETWORK_ID), ir, _config(), rng=_rng(0), wall_offset=0))
        assert r.address is not None
        sigs = {}
        ovs = {}
        for ident, seed in ((ia, 1), (ib, 2)):
            sig = OverlaySignaling()
            ovs[ident.peer_id] = await stack.enter_async_context(open_overlay(
                net.transport(ident, NETWORK_ID), ident, _config(), bootstrap=[r.address], listen=False,
                rng=_rng(seed), wall_offset=0, on_open=sig.attach))
            sigs[ident.peer_id] = sig
        a, b = ovs[ia.peer_id], ovs[ib.peer_id]
        with trio.fail_after(10):
            await a.wait_neighbors(1)
            await b.wait_neighbors(1)
        assert not a.protocol.connected(ib.peer_id)
        await sigs[ia.peer_id].send(ib.peer_id, b"offer-envelope")
        with trio.fail_after(5):
            assert await sigs[ib.peer_id].receive() == b"offer-envelope"
        assert a.protocol.statistics().messages_sent.get("Relay", 0) >= 1
        assert b.protocol.statistics().messages_received.get("Relayed", 0) == 1
        # an application direct message still reaches `direct`
        await b.send_direct(ia.peer_id, b"app", dial=False)
        with trio.fail_after(5):
            assert await a.direct.receive() == (ib.peer_id, b"app")
        # a payload that looks like a signal but is not one is dropped and counted
        await a.send_direct(ib.peer_id, OVERLAY_SIGNAL_PREFIX + b"\xff", dial=False)
        await sigs[ia.peer_id].send(ib.peer_id, b"second")
        with trio.fail_after(5):
            assert await sigs[ib.peer_id].receive() == b"second"
        assert sigs[ib.peer_id].malformed == 1
        # to a peer nobody links to: fanned out, dropped by the relays (best effort)
        relayed = r.protocol.statistics().messages_sent.get("Relayed", 0)
        await sigs[ia.peer_id].send(_identity("nobody").peer_id, b"x")
        await trio.sleep(1)
        assert r.protocol.statistics().messages_sent.get("Relayed", 0) == relayed


async def test_webrtc_address_lists_relays_and_is_never_a_relay(autojump_clock: object) -> None:
    """A peer announcing ``webrtc:...`` names its reachable neighbours as relays in
    its publications (an addressless peer does too); it is never named itself."""
    net = MemoryNetwork()
    ir, iu, iv = _identity("r"), _identity("u"), _identity("v")
    cfg = _config()
    assert cfg.needs_relay(None) and cfg.needs_relay("webrtc:x")
    assert not cfg.needs_relay("memory:x") and not cfg.needs_relay("tcp:1.2.3.4:5")
    async with AsyncExitStack() as stack:
        r = await stack.enter_async_context(
            open_overlay(net.transport(ir, NETWORK_ID), ir, cfg, rng=_rng(0), wall_offset=0))
        assert r.address is not None
        u = await stack.enter_async_context(open_overlay(
            net.transport(iu, NETWORK_ID), iu, cfg, bootstrap=[r.address], listen=False, rng=_rng(1),
            wall_offset=0))
        u.protocol.broadcast.address = u.protocol.address = f"webrtc:{iu.peer_id}"
        v = await stack.enter_async_context(open_overlay(
            net.transport(iv, NETWORK_ID), iv, cfg, bootstrap=[r.address], listen=False, rng=_rng(2),
            wall_offset=0))
        sub = v.subscribe("t")
        with trio.fail_after(10):
            await u.wait_neighbors(1)
            await v.wait_neighbors(1)
        await u.publish("t", b"hello")
        with trio.fail_after(5):
            assert await sub.receive() == (iu.peer_id, b"hello")
        rec = v.protocol.book[iu.peer_id]
        assert rec.addr == f"webrtc:{iu.peer_id}"
        assert [i.peer for i in rec.relays] == [ir.peer_id]


def test_overlay_config_checks_relayed_schemes() -> None:
    from p2pfl.errors import ConfigError

    with pytest.raises(ConfigError):
        OverlayConfig(relayed_schemes=["webrtc"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        OverlayConfig(relayed_schemes=("web rtc",))
    assert OverlayConfig(relayed_schemes=()).needs_relay("webrtc:x") is False


def test_signal_prefix_is_the_encoding_header() -> None:
    for n in (0, 1, 23, 24, 300, 9000):
        assert encode(OverlaySignal(b"x" * n)).startswith(OVERLAY_SIGNAL_PREFIX)


def test_ice_server_urls_are_checked() -> None:
    assert IceServer("stun:h:3478").urls == ("stun:h:3478",)
    with pytest.raises(ValueError):
        IceServer(("http://h",))
    with pytest.raises(ValueError):
        IceServer(())


async def test_dial_false_without_any_link_is_unreachable(autojump_clock: object) -> None:
    net = MemoryNetwork()
    ia = _identity("alone")
    async with open_overlay(net.transport(ia, NETWORK_ID), ia, _config(), rng=_rng(0), wall_offset=0) as a:
        with pytest.raises(PeerUnreachable):
            await a.send_direct(_identity("b").peer_id, b"x", dial=False)


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


# -- real aiortc over loopback -----------------------------------------------------------


@pytest.mark.usefixtures("no_leaked_peer_connections")
async def test_unreachable_peers_meet_through_a_reachable_one() -> None:
    """Issue 8: two peers without listening sockets join through a reachable peer,
    open a WebRTC link to each other signaled through it over the overlay, and
    swap 4 MiB messages over that link."""
    from p2pfl.transport.hybrid import HybridTransport
    from p2pfl.transport.webrtc import WebRtcLink

    ir, ia, ib = _identity("reachable"), _identity("alice"), _identity("bob")
    cfg = _config(max_payload=5 * MiB)

    def transport(ident: Identity, listen: str | None) -> HybridTransport:
        return HybridTransport(ident, NETWORK_ID, listen=listen, host_addresses=("127.0.0.1",),
                               ice_servers=(), webrtc_options={"handshake_timeout": 5})

    tr, ta, tb = transport(ir, "tcp:127.0.0.1:0"), transport(ia, None), transport(ib, None)
    with trio.fail_after(40):
        async with open_overlay(tr, ir, cfg, on_open=tr.attach) as r:
            assert r.address is not None and r.address.startswith("tcp:")
            async with open_overlay(ta, ia, cfg, bootstrap=[r.address], on_open=ta.attach) as a, \
                    open_overlay(tb, ib, cfg, bootstrap=[r.address], on_open=tb.attach) as b:
                assert a.address == f"webrtc:{ia.peer_id}"
                assert b.address == f"webrtc:{ib.peer_id}"
                assert ta.tcp.address is None and tb.tcp.address is None  # no socket
                await a.wait_neighbors(1)
                await b.wait_neighbors(1)
                model_a, model_b = os.urandom(4 * MiB), os.urandom(4 * MiB)
                t0 = trio.current_time()
                # A learns B's address from the overlay (join walk, shuffle or
                # publication); the first direct message dials webrtc:B.
                while a.protocol.address_of(ib.peer_id) is None:
                    await trio.sleep(0.05)
                await a.send_direct(ib.peer_id, model_a)
                origin, got = await b.direct.receive()
                assert (origin, got) == (ia.peer_id, model_a)
                await b.send_direct(ia.peer_id, model_b)
                assert await a.direct.receive() == (ib.peer_id, model_b)
                elapsed = trio.current_time() - t0
                links = [st.link for st in a._links.get(ib.peer_id, [])]
                assert links and all(isinstance(link, WebRtcLink) for link in links)
                assert all(isinstance(st.link, WebRtcLink) for sts in b._links.values()
                           for st in sts if st.peer == ia.peer_id)
                # the signaling went through R: relayed by R, never a TCP link A-B
                assert r.protocol.statistics().messages_received.get("Relay", 0) >= 2
                sa, sb = ta.statistics(), tb.statistics()
                assert sa.webrtc is not None and sb.webrtc is not None
                assert sa.webrtc.links_connected + sb.webrtc.links_connected >= 1
                assert sa.webrtc.signaling_dropped == sb.webrtc.signaling_dropped == 0
                assert sa.tcp.links_accepted == sb.tcp.links_accepted == 0
                print(f"\nA and B: first direct message and the answer, 4 MiB each way, "
                      f"WebRTC link setup included: {elapsed:.2f} s")


def test_a_peer_needs_a_way_to_accept() -> None:
    from p2pfl.transport.hybrid import HybridTransport

    with pytest.raises(ValueError):
        HybridTransport(_identity("x"), NETWORK_ID, listen=None, webrtc=False)


async def test_tcp_only_hybrid_serves_and_refuses_webrtc() -> None:
    from p2pfl.transport.hybrid import HybridTransport

    t = HybridTransport(_identity("x"), NETWORK_ID, webrtc=False)
    with pytest.raises(ConnectionRefusedError):
        await t.connect(f"webrtc:{_identity('y').peer_id}")
    with pytest.raises(ValueError):
        await t.connect("memory:1")
    assert t.statistics().webrtc is None

