"""Many overlay peers in one trio run over the memory transport (for integration tests)."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pfl.identity import Identity
from p2pfl.overlay import Delivered, Overlay, OverlayConfig, open_overlay
from p2pfl.transport import MemoryNetwork, Transport
from p2pfl.wire import PeerId

NETWORK = b"overlay-tests"
TOPIC = "t"


@dataclass(eq=False)
class Member:
    index: int
    ident: Identity
    ov: Overlay | None = None
    scope: trio.CancelScope | None = None
    dead: bool = False
    joined_at: float = 0.0
    got: dict[bytes, Delivered] = field(default_factory=dict)
    direct: list[tuple[PeerId, bytes]] = field(default_factory=list)

    @property
    def peer(self) -> PeerId:
        return self.ident.peer_id


class Cluster:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        seed: int = 0,
        config: OverlayConfig | None = None,
        latency: float = 0.01,
        jitter: float = 0.005,
        loss: float = 0.0,
    ) -> None:
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.seed = seed
        self.net = MemoryNetwork(
            rng=random.Random(seed + 1), default_latency=latency, jitter=jitter, loss=loss
        )
        self.config = config or OverlayConfig(network_id=NETWORK)
        self.members: list[Member] = []
        self.bootstrap: list[str] = []

    def identity(self, i: int, tag: bytes = b"h") -> Identity:
        return Identity.from_seed((tag + self.seed.to_bytes(4, "big") + i.to_bytes(4, "big")).ljust(32, b"\0"))

    async def add(
        self,
        *,
        tag: bytes = b"h",
        listen: bool = True,
        wrap: Callable[[Transport], Transport] | None = None,
        config: OverlayConfig | None = None,
        bootstrap: list[str] | None = None,
    ) -> Member:
        """A new member; it joins through ``bootstrap`` (default: the first member)."""
        m = Member(len(self.members), self.identity(len(self.members), tag))
        m.joined_at = trio.current_time()
        self.members.append(m)
        boot = self.bootstrap if bootstrap is None else bootstrap
        await self.nursery.start(self._run, m, listen, wrap, config, boot)
        if not self.bootstrap and listen:
            assert m.ov is not None and m.ov.address is not None
            self.bootstrap = [m.ov.address]
        return m

    async def _run(
        self,
        m: Member,
        listen: bool,
        wrap: Callable[[Transport], Transport] | None,
        config: OverlayConfig | None,
        bootstrap: list[str],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        t: Transport = self.net.transport(m.ident, NETWORK, name=f"n{m.index}")
        if wrap is not None:
            t = wrap(t)
        with trio.CancelScope() as scope:
            m.scope = scope
            async with open_overlay(
                t, m.ident, config or self.config, bootstrap=list(bootstrap),
                listen=listen, rng=random.Random(self.rng.getrandbits(64)), wall_offset=0.0,
            ) as ov:
                m.ov = ov
                async with trio.open_nursery() as n:
                    n.start_soon(self._collect, m, ov.subscribe_delivered(TOPIC, buffer=100_000))
                    n.start_soon(self._collect_direct, m, ov)
                    task_status.started()

    async def _collect(self, m: Member, ch: trio.MemoryReceiveChannel[Delivered]) -> None:
        async for ev in ch:
            m.got[ev.msg_id] = ev

    async def _collect_direct(self, m: Member, ov: Overlay) -> None:
        async for item in ov.direct:
            m.direct.append(item)

    def crash(self, m: Member) -> None:
        m.dead = True
        self.net.crash(m.ident)
        assert m.scope is not None
        m.scope.cancel()

    def leave(self, m: Member) -> None:
        """A graceful exit: the overlay says DISCONNECT to its neighbours."""
        m.dead = True
        assert m.scope is not None
        m.scope.cancel()

    def live(self) -> list[Member]:
        return [m for m in self.members if not m.dead]

    def ov(self, m: Member) -> Overlay:
        assert m.ov is not None
        return m.ov

    def connected(self, members: list[Member] | None = None) -> bool:
        """Is the active-view graph over ``members`` (default: the live ones) connected?"""
        ms = members if members is not None else self.live()
        by = {m.peer: m for m in ms}
        if not by:
            return True
        start = ms[0].peer
        seen = {start}
        todo = deque([start])
        while todo:
            for q in self.ov(by[todo.popleft()]).neighbors():
                if q in by and q not in seen:
                    seen.add(q)
                    todo.append(q)
        return len(seen) == len(by)

    def healthy(self, members: list[Member] | None = None, min_active: int = 2) -> bool:
        ms = members if members is not None else self.live()
        live = {m.peer for m in ms}
        for m in ms:
            act = self.ov(m).neighbors()
            if len(act) < min_active or any(p not in live for p in act):
                return False
        return self.connected(ms)

    async def wait_until(self, pred: Callable[[], bool], timeout: float, step: float = 0.5) -> float:
        t0 = trio.current_time()
        while not pred():
            if trio.current_time() - t0 > timeout:
                raise AssertionError(f"condition not reached within {timeout} s")
            await trio.sleep(step)
        return trio.current_time() - t0

    async def publish(self, m: Member, payload: bytes | None = None) -> bytes:
        data = payload if payload is not None else self.rng.randbytes(64)
        return await self.ov(m).publish(TOPIC, data)

    def missing(self, mid: bytes, members: list[Member] | None = None) -> list[Member]:
        ms = members if members is not None else self.live()
        return [m for m in ms if mid not in m.got]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]

