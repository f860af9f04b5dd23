"""Transport layer: authenticated message links over memory, TCP (and WebRTC)."""

from ._base import DEFAULT_MAX_MESSAGE, Link, LinkHandler, LinkStatistics, Transport
from ._memory import (
    MemoryLink,
    MemoryNetwork,
    MemoryTransport,
    NetworkStatistics,
    PeerStatistics,
    Route,
    RouteKind,
    Router,
    StandardRouter,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "Link",
    "LinkHandler",
    "LinkStatistics",
    "MemoryLink",
    "MemoryNetwork",
    "MemoryTransport",
    "NetworkStatistics",
    "PeerStatistics",
    "Route",
    "RouteKind",
    "Router",
    "StandardRouter",
    "Transport",
]
