"""Fixtures of the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio


@pytest.fixture
async def no_leaked_peer_connections() -> AsyncIterator[None]:
    """Every test must close every WebRTC peer connection it opened."""
    pytest.importorskip("aiortc")
    from p2pfl.transport._webrtc_bridge import live_peer_connections

    before = live_peer_connections()
    yield
    with trio.move_on_after(3):
        while live_peer_connections() > before:
            await trio.sleep(0.01)
    assert live_peer_connections() == before, "peer connections left open"
