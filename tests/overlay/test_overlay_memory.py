"""The overlay over the memory transport, under pytest-trio's autojump clock.

Every test is deterministic in its inputs (seeded generators, mock clock) and
asserts properties that must hold whatever the task schedule: 100 % delivery to
live peers, repaired views, penalized misbehaviour.
"""

from __future__ import annotations

import pytest
import trio

from p2pfl.overlay import OverlayConfig

from ._cluster import NETWORK, Cluster


async def _grow(c: Cluster, n: int, every: float = 0.01) -> None:
    for _ in range(n):
        await c.add()
        await trio.sleep(every)


async def test_200_peers_join_through_one_bootstrap_and_all_reach_all(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=1)
        await _grow(c, 200)
        await c.wait_until(lambda: c.healthy(min_active=3), timeout=30)
        # every peer publishes once, all at the same moment; every peer must get all
        mids = [await c.publish(m) for m in c.members]
        await trio.sleep(10)
        for mid in mids:
            assert not c.missing(mid)
        sizes = [len(c.ov(m).neighbors()) for m in c.members]
        assert max(sizes) <= c.config.active_size
        nursery.cancel_scope.cancel()


async def test_30_percent_crash_at_once_then_full_delivery(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=2)
        await _grow(c, 100)
        await c.wait_until(lambda: c.healthy(min_active=3), timeout=30)
        for m in c.rng.sample(c.members[1:], 30):
            c.crash(m)
        await c.wait_until(lambda: c.healthy(min_active=2), timeout=30)
        mids = [await c.publish(m) for m in c.rng.sample(c.live(), 10)]
        await trio.sleep(5)
        for mid in mids:
            assert not c.missing(mid)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("blackhole", [False, True], ids=["links-break", "blackhole"])
async def test_partition_heals(autojump_clock: object, blackhole: bool) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=3)
        await _grow(c, 60)
        await c.wait_until(lambda: c.healthy(min_active=3), timeout=30)
        side = c.members[30:]
        # links across break at once, or stay up and lose everything (SWIM must notice)
        c.net.partition([m.ident for m in side], blackhole=blackhole)
        # each side repairs on its own: broadcasts reach that side
        await c.wait_until(lambda: c.healthy(c.members[:30]) and c.healthy(side), timeout=60)
        mid = await c.publish(side[0])
        await trio.sleep(3)
        assert not c.missing(mid, side)
        assert len(c.missing(mid)) == 30
        c.net.heal()
        # the dead tables of both sides reconnect across
        healed_in = await c.wait_until(lambda: c.healthy(min_active=3), timeout=120)
        assert healed_in < 2 * c.config.reconnect_backoff_max
        mids = [await c.publish(c.members[0]), await c.publish(side[-1])]
        await trio.sleep(5)
        for mid in mids:
            assert not c.missing(mid)
        nursery.cancel_scope.cancel()


async def test_churn_keeps_full_delivery_to_live_peers(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=4)
        await _grow(c, 60)
        await c.wait_until(lambda: c.healthy(min_active=3), timeout=30)
        checks: list[tuple[bytes, float]] = []
        for i in range(16):
            # every 2 s one peer crashes or leaves, and one newcomer joins
            victim = c.rng.choice(c.live()[1:])
            (c.crash if i % 2 else c.leave)(victim)
            await c.add()
            await trio.sleep(1.0)
            origin = c.rng.choice(c.live()[:-1])
            checks.append((await c.publish(origin), trio.current_time()))
            await trio.sleep(1.0)
        await trio.sleep(5)
        for mid, t in checks:
            # every peer alive now that had joined 3 s before the publication
            eligible = [m for m in c.live() if m.joined_at <= t - 3]
            assert not c.missing(mid, eligible), t
        nursery.cancel_scope.cancel()


async def test_forged_and_tampered_broadcasts_dropped_by_first_honest_peer(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=5, config=OverlayConfig(network_id=b"overlay-tests"))
        await _grow(c, 20)
        await c.wait_until(lambda: c.healthy(min_active=3), timeout=30)
        liar = c.members[7]
        lov = c.ov(liar)
        victims = lov.neighbors()
        from p2pfl.identity import Signed, seal
        from p2pfl.overlay._messages import Gossip, Publication

        other = c.identity(999, b"x")
        body = Publication("t", trio.current_time(), 1, None, (), b"forged")
        good = seal(other, body, domain=c.config.gossip_domain)
        forged = Signed(good.signer, good.body.replace(b"forged", b"F0rged"), good.signature)
        wrong_domain = seal(other, body, domain=b"elsewhere")
        proto = lov.protocol
        for v in victims:
            for env in (forged, wrong_domain):
                proto.out.send(v, Gossip(env, 0))
        lov._flush()
        await trio.sleep(2)
        for m in c.members:
            assert not any(d.payload in (b"forged", b"F0rged") for d in m.got.values())
        for v in victims:
            vm = next(m for m in c.members if m.peer == v)
            vp = c.ov(vm).protocol
            assert vp.scores.score(liar.peer, trio.current_time()) < 0
            assert vp.broadcast.stats["invalid"] >= 2
        # nobody beyond the liar's neighbours even saw the bad messages
        for m in c.members:
            if m.peer not in victims:
                assert c.ov(m).protocol.broadcast.stats["invalid"] == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("refresh", [10.0, 0.0], ids=["refresh", "no-refresh"])
async def test_components_joined_through_different_bootstraps_merge(
    autojump_clock: object, refresh: float
) -> None:
    """Two groups form through their own bootstrap; a bridge peer lists both bootstrap
    addresses but joins through one.  Its bootstrap refresh links the other group, so
    the components merge and every broadcast reaches everyone.  Without the refresh
    (0) they stay apart: the test shows what the refresh is for."""
    cfg = OverlayConfig(network_id=NETWORK, bootstrap_refresh=refresh)
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=7, config=cfg)
        a = [await c.add(bootstrap=[])]
        a += [await c.add(bootstrap=[c.ov(a[0]).address or ""]) for _ in range(3)]
        b = [await c.add(bootstrap=[])]
        b += [await c.add(bootstrap=[c.ov(b[0]).address or ""]) for _ in range(3)]
        await trio.sleep(5)
        assert not c.connected()  # two components that know nothing of each other
        boots = [c.ov(a[0]).address or "", c.ov(b[0]).address or ""]
        await c.add(bootstrap=boots)
        await trio.sleep(200)
        mid = await c.publish(b[-1])
        await trio.sleep(5)
        if refresh:
            assert c.connected() and not c.missing(mid)
        else:
            assert not c.connected() and {m.index for m in a} <= {m.index for m in c.missing(mid)}
        nursery.cancel_scope.cancel()
