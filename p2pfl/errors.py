"""Exception hierarchy shared by every layer.

The split follows h11 and trio:

* :class:`LocalProtocolError` -- *we* broke a protocol rule (a bug on this side,
  or an API misuse).  Never caused by remote input.
* :class:`RemoteProtocolError` -- the remote peer sent something invalid
  (malformed, oversized, badly signed, out of order).  Callers penalize the
  sender and carry on; it must never crash a peer.
* :class:`ClosedResourceError` / :class:`BrokenResourceError` are re-exported from
  trio: we closed the resource, or the peer/network broke it.
"""

from __future__ import annotations

from trio import BrokenResourceError, ClosedResourceError

__all__ = [
    "BrokenResourceError",
    "ClosedResourceError",
    "ConfigError",
    "LocalProtocolError",
    "P2PFLError",
    "RemoteProtocolError",
]


class P2PFLError(Exception):
    """Base class of all p2pfl errors."""


class LocalProtocolError(P2PFLError):
    """This side violated a protocol (programming error or API misuse)."""


class RemoteProtocolError(P2PFLError):
    """The remote side sent invalid data.

    ``peer`` names the offender when it is known (a :class:`p2pfl.identity.PeerId`
    or ``None``), so drivers can lower its score.
    """

    def __init__(self, message: str, *, peer: object | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class ConfigError(P2PFLError):
    """A configuration file or option is invalid; the message names the key."""
