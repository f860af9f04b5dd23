"""Overlay layer: HyParView membership, SWIM failure detection, Plumtree broadcast,
peer scoring and direct messages -- sans-I/O protocol objects and one trio driver.

See ``docs/overlay.md`` for the protocols message by message.
"""

from ._config import OverlayConfig, ScoreParams
from ._driver import Overlay, open_overlay
from ._events import (
    Delivered,
    DirectFailed,
    DirectReceived,
    NeighborDown,
    NeighborUp,
    OverlayStatistics,
    PeerFailed,
    PeerGraylisted,
)
from ._plumtree import message_id
from ._protocol import OverlayProtocol, PeerRecord, PeerUnreachable
from ._scoring import Offense, Scoreboard
from ._util import Close, Connect, Send

__all__ = [
    "Close",
    "Connect",
    "Delivered",
    "DirectFailed",
    "DirectReceived",
    "NeighborDown",
    "NeighborUp",
    "Offense",
    "Overlay",
    "OverlayConfig",
    "OverlayProtocol",
    "OverlayStatistics",
    "PeerFailed",
    "PeerGraylisted",
    "PeerRecord",
    "PeerUnreachable",
    "ScoreParams",
    "Scoreboard",
    "Send",
    "message_id",
    "open_overlay",
]
