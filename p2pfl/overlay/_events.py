"""Events the overlay protocol hands to its driver and the application."""

from __future__ import annotations

from dataclasses import dataclass, field

from p2pfl.wire import PeerId

from ._plumtree import Delivered

__all__ = [
    "Delivered",
    "DirectFailed",
    "DirectReceived",
    "NeighborDown",
    "NeighborUp",
    "OverlayStatistics",
    "PeerFailed",
    "PeerGraylisted",
]


@dataclass(frozen=True, slots=True)
class DirectReceived:
    """A point-to-point payload from ``origin`` (authenticated by link or signature)."""

    origin: PeerId
    payload: bytes
    relayed: bool = False


@dataclass(frozen=True, slots=True)
class DirectFailed:
    """A direct message to ``peer`` could not be sent (no link, no address, no relay)."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class NeighborUp:
    peer: PeerId


@dataclass(frozen=True, slots=True)
class NeighborDown:
    peer: PeerId


@dataclass(frozen=True, slots=True)
class PeerFailed:
    """An active neighbour was found dead (broken links or SWIM)."""

    peer: PeerId


@dataclass(frozen=True, slots=True)
class PeerGraylisted:
    peer: PeerId
    until: float


@dataclass(frozen=True)
class OverlayStatistics:
    """A snapshot of one peer's overlay state and counters."""

    peer: PeerId
    active: tuple[PeerId, ...]
    passive: int
    dead: int
    links: int
    incarnation: int
    messages_sent: dict[str, int] = field(default_factory=dict)
    messages_received: dict[str, int] = field(default_factory=dict)
    broadcast: dict[str, int] = field(default_factory=dict)
    failure_detector: dict[str, int] = field(default_factory=dict)
    penalties: dict[str, int] = field(default_factory=dict)
    graylisted: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
