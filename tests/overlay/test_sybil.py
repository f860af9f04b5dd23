"""Sybil / eclipse: 50 honest peers and 200 attacker identities.

The attackers run the real membership protocol (so they spread into views and
try to eclipse honest peers) but forward nothing (no GOSSIP, IHAVE or GRAFT
leaves them), and after a few seconds flood every link with junk: undecodable
frames, broadcasts with bad signatures, and IHAVEs for messages they never
serve.  Honest peers must graylist them, repair their views among themselves,
and deliver every honest broadcast to every honest peer.
"""

from __future__ import annotations

import random

import trio

from p2pfl.identity import Identity, Signed
from p2pfl.overlay._messages import Gossip, Graft, IHave
from p2pfl.transport import Link, LinkHandler, LinkStatistics, Transport
from p2pfl.wire import PeerId, decode, encode

from ._cluster import Cluster, Member

_SILENCED = {Gossip, IHave, Graft}


class _SilentLink(Link):
    """Drops the broadcast traffic its overlay sends (the attacker forwards nothing)."""

    def __init__(self, inner: Link, registry: set[Link]) -> None:
        self.inner = inner
        self._registry = registry
        registry.add(self)

    @property
    def local_peer(self) -> PeerId:
        return self.inner.local_peer

    @property
    def remote_peer(self) -> PeerId:
        return self.inner.remote_peer

    @property
    def max_message(self) -> int:
        return self.inner.max_message

    async def send(self, value: bytes) -> None:
        if type(decode(value)) in _SILENCED:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send(value)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    def statistics(self) -> LinkStatistics:
        return self.inner.statistics()

    async def aclose(self) -> None:
        self._registry.discard(self)
        await self.inner.aclose()


class _AttackerTransport(Transport):
    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.links: set[Link] = set()

    @property
    def local_peer(self) -> PeerId:
        return self.inner.local_peer

    async def connect(self, address: str) -> Link:
        return _SilentLink(await self.inner.connect(address), self.links)

    async def serve(
        self, handler: LinkHandler, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async def wrapped(link: Link) -> None:
            await handler(_SilentLink(link, self.links))

        await self.inner.serve(wrapped, task_status=task_status)


def _junk(rng: random.Random, ident: Identity) -> list[bytes]:
    bad_sig = Signed(ident.public_key, rng.randbytes(80), rng.randbytes(64))
    return [
        rng.randbytes(rng.randrange(1, 64)),  # undecodable
        encode(Gossip(bad_sig, 0)),  # invalid signature
        encode(IHave(tuple(rng.randbytes(20) for _ in range(4)))),  # promises never kept
    ]


async def _flood(t: _AttackerTransport, ident: Identity, seed: int, start: float) -> None:
    rng = random.Random(seed)
    await trio.sleep_until(start)
    while True:
        for link in list(t.links):
            sl = link.inner if isinstance(link, _SilentLink) else link
            for data in _junk(rng, ident):
                try:
                    await sl.send(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
        await trio.sleep(0.25)


async def test_50_honest_200_sybils_every_honest_broadcast_reaches_every_honest_peer(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, seed=6)
        honest: list[Member] = []
        attackers: list[Member] = []
        transports: dict[PeerId, _AttackerTransport] = {}

        def wrap(t: Transport) -> Transport:
            at = _AttackerTransport(t)
            transports[t.local_peer] = at
            return at

        honest.append(await c.add())  # the bootstrap is honest
        kinds = [True] * 49 + [False] * 200
        c.rng.shuffle(kinds)
        for is_honest in kinds:
            if is_honest:
                honest.append(await c.add())
            else:
                attackers.append(await c.add(tag=b"s", wrap=wrap))
            await trio.sleep(0.01)
        flood_at = trio.current_time() + 3.0
        for i, a in enumerate(attackers):
            nursery.start_soon(_flood, transports[a.peer], a.ident, 1000 + i, flood_at)
        bad = {a.peer for a in attackers}

        def clean() -> bool:
            return all(not bad & set(c.ov(h).neighbors()) for h in honest) and c.healthy(
                honest, min_active=2
            )

        await trio.sleep(4.0)
        await c.wait_until(clean, timeout=180)
        mids = [await c.publish(h) for h in c.rng.sample(honest, 10)]
        await trio.sleep(5)
        for mid in mids:
            assert not c.missing(mid, honest)
        now = trio.current_time()
        graylisted_by_someone = {
            p for h in honest for p in c.ov(h).protocol.scores.graylist() if p in bad
        }
        assert graylisted_by_someone == bad
        for h in honest:  # no honest peer ever graylisted another honest peer
            assert not set(c.ov(h).protocol.scores.graylist()) - bad
            assert all(c.ov(h).protocol.scores.score(o.peer, now) >= 0 for o in honest)
        nursery.cancel_scope.cancel()
