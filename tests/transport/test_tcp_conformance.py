"""The link conformance suite over real TCP on loopback."""

from __future__ import annotations

import pytest
import trio

from p2pfl.identity import Identity
from p2pfl.transport import CipherSuite, TcpLink, TcpTransport, default_suites
from p2pfl.transport.testing import (
    LINK_CHECKS,
    LinkFactory,
    LinkPair,
    check_link,
    open_link_pair,
)

NETWORK_ID = b"tcp-conformance"


def tcp_factory(suite: CipherSuite) -> LinkFactory:
    async def factory(nursery: trio.Nursery) -> LinkPair:
        kw = {"handshake_timeout": 5.0, "cipher_suites": (suite,)}
        client = TcpTransport(Identity.from_seed(b"c" * 32), NETWORK_ID, **kw)  # type: ignore[arg-type]
        server = TcpTransport(Identity.from_seed(b"s" * 32), NETWORK_ID, **kw)  # type: ignore[arg-type]
        a, b = await open_link_pair(nursery, client, server)
        assert isinstance(a, TcpLink) and a.cipher_suite is suite

        async def crash_a() -> None:
            a.abort()  # a TCP reset, no close frame: what a crash looks like
            await trio.lowlevel.checkpoint()

        return LinkPair(a, b, crash_a, extras={"client": client, "server": server})

    return factory


@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
@pytest.mark.parametrize("check", LINK_CHECKS)
async def test_tcp_link_conformance(check: str, suite: CipherSuite) -> None:
    await check_link(tcp_factory(suite), only=[check], timeout=20, ordering_messages=300)


async def test_tcp_whole_suite_default_settings() -> None:
    await check_link(tcp_factory(default_suites()[0]), timeout=20)
