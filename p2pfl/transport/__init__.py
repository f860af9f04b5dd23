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
from ._framing import (
    DEFAULT_MAX_FRAME,
    CipherSuite,
    FrameDecoder,
    FrameEncoder,
    default_suites,
)
from ._handshake import FailureReason, Handshake, HandshakeComplete, HandshakeError, Role
from ._signaling import IceServer
from .tcp import TcpLink, TcpTransport, TcpTransportStatistics

__all__ += [
    "DEFAULT_MAX_FRAME",
    "CipherSuite",
    "FailureReason",
    "FrameDecoder",
    "FrameEncoder",
    "Handshake",
    "HandshakeComplete",
    "HandshakeError",
    "IceServer",
    "Role",
    "TcpLink",
    "TcpTransport",
    "TcpTransportStatistics",
    "default_suites",
]
