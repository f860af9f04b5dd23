"""Transport layer: authenticated message links over memory, TCP (and WebRTC)."""

from ._base import DEFAULT_MAX_MESSAGE, Link, LinkHandler, LinkStatistics, Transport

__all__ = ["DEFAULT_MAX_MESSAGE", "Link", "LinkHandler", "LinkStatistics", "Transport"]
