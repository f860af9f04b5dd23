"""The link conformance suite (:func:`p2pfl.transport.testing.check_link`) over memory.

Also checks the checker: faulty links (no back-pressure, EndOfChannel reported
as a break, a crash that looks like a clean close, ...) must fail it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from p2pfl.transport import Link, LinkStatistics, MemoryNetwork
from p2pfl.transport.testing import LINK_CHECKS, LinkFactory, LinkPair, check_link, open_link_pair
from p2pfl.wire import PeerId

NETWORK_ID = b"conformance"


def memory_factory(**network_options: Any) -> LinkFactory:
    """Pairs over a fresh :class:`MemoryNetwork` built with ``network_options``."""

    async def factory(nursery: trio.Nursery) -> LinkPair:
        net = MemoryNetwork(**network_options)
        ta = net.transport(PeerId(b"a" * 20), NETWORK_ID)
        tb = net.transport(PeerId(b"b" * 20), NETWORK_ID)
        a, b = await open_link_pair(nursery, ta, tb)

        async def crash_a() -> None:
            net.crash(ta)

        return LinkPair(a, b, crash_a, extras={"net": net})

    return factory


MEMORY_VARIANTS: dict[str, dict[str, Any]] = {
    "instant": {},
    "latency": {"default_latency": 0.05, "jitter": 0.02, "rng": random.Random(1)},
    "bandwidth": {"default_latency": 0.01, "bandwidth": 10e6, "buffer_messages": 16},
    "small-max": {"max_message": 100_000, "buffer_bytes": 200_000},
}


@pytest.mark.parametrize("variant", sorted(MEMORY_VARIANTS))
@pytest.mark.parametrize("check", LINK_CHECKS)
async def test_memory_link_conformance(
    check: str, variant: str, autojump_clock: trio.testing.MockClock
) -> None:
    await check_link(memory_factory(**MEMORY_VARIANTS[variant]), only=[check])


async def test_check_link_whole_suite_real_clock() -> None:
    # Once without the mock clock: the suite must not depend on it.
    await check_link(memory_factory())


async def test_check_link_rejects_unknown_check() -> None:
    with pytest.raises(ValueError, match="unknown link checks"):
        await check_link(memory_factory(), only=["nope"])


# -- the checker catches faulty links ------------------------------------------------


class _Wrapped(Link):
    """Delegates to a real link; subclasses break one promise."""

    def __init__(self, inner: Link) -> None:
        self.inner = inner

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
        await self.inner.send(value)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    def statistics(self) -> LinkStatistics:
        return self.inner.statistics()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _EofAsBroken(_Wrapped):
    async def receive(self) -> bytes:
        try:
            return await self.inner.receive()
        except trio.EndOfChannel as e:
            raise trio.BrokenResourceError from e


class _LyingMax(_Wrapped):
    @property
    def max_message(self) -> int:
        return self.inner.max_message - 10


class _Reordering(_Wrapped):
    def __init__(self, inner: Link) -> None:
        super().__init__(inner)
        self.held: bytes | None = None

    async def send(self, value: bytes) -> None:
        if self.held is None and len(value) > 0:
            self.held = value
            return
        await self.inner.send(value)
        if self.held is not None:
            held, self.held = self.held, None
            await self.inner.send(held)


class _NoStats(_Wrapped):
    def statistics(self) -> LinkStatistics:
        s = self.inner.statistics()
        return LinkStatistics(s.messages_sent, s.messages_received, 0, s.bytes_received)


class _Chunked(_Wrapped):
    """Splits each message into two chunks sent without holding a lock."""

    async def send(self, value: bytes) -> None:
        half = len(value) // 2
        await self.inner.send(value[:half])
        await trio.lowlevel.checkpoint()
        await self.inner.send(value[half:])

    async def receive(self) -> bytes:
        return await self.inner.receive() + await self.inner.receive()


def _wrapping(
    wrap: Callable[[Link], Link], *, crash_by_close: bool = False, **options: Any
) -> LinkFactory:
    base = memory_factory(**options)

    async def factory(nursery: trio.Nursery) -> LinkPair:
        pair = await base(nursery)
        crash: Callable[[], Awaitable[None]] | None = pair.crash_a
        if crash_by_close:
            crash = pair.a.aclose
        return LinkPair(wrap(pair.a), wrap(pair.b), crash)

    return factory


@pytest.mark.parametrize(
    ("factory", "check", "message"),
    [
        (
            memory_factory(buffer_messages=10**9, buffer_bytes=10**15),
            "backpressure",
            "not back-pressured",
        ),
        (
            memory_factory(buffer_messages=10**9, buffer_bytes=10**15),
            "close_wakes_sender",
            "not back-pressured",
        ),
        (_wrapping(_EofAsBroken), "close_a", "expected EndOfChannel"),
        (_wrapping(_EofAsBroken), "close_wakes_receivers", "expected EndOfChannel"),
        (_wrapping(_LyingMax), "oversize", "expected ValueError"),
        (_wrapping(_Reordering), "ordering", "out of order"),
        (_wrapping(_NoStats), "statistics", "statistics"),
        (_wrapping(_Chunked), "concurrent_send", "interleaved"),
        (_wrapping(_Wrapped, crash_by_close=True), "crash", "expected BrokenResourceError"),
        (_wrapping(_Wrapped, crash_by_close=True), "crash_idle", "expected BrokenResourceError"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
async def test_check_link_catches_faulty_links(
    factory: LinkFactory, check: str, message: str, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(AssertionError, match=message):
        await check_link(factory, only=[check], backpressure_limit=16 * 1024 * 1024)
