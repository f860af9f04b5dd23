"""Exceptions raised by :mod:`mpc`.

``mpc`` does not import ``p2pfl``; the federation layer maps these to its own
``RemoteProtocolError`` (a peer sent bad shares or a bad ciphertext) or
``LocalProtocolError`` (our misuse), naming the offender from the attributes here.
"""

from __future__ import annotations

__all__ = ["DecryptionError", "InconsistentShares", "MpcError", "NotEnoughShares"]


class MpcError(Exception):
    """Base class of the errors :mod:`mpc` raises about data (not API misuse)."""


class NotEnoughShares(MpcError):
    """Fewer shares arrived than reconstruction needs.

    ``needed`` and ``got`` give the counts.
    """

    def __init__(self, needed: int, got: int) -> None:
        super().__init__(f"need {needed} shares, got {got}")
        self.needed = needed
        self.got = got


class InconsistentShares(MpcError):
    """The shares do not all lie on one polynomial of the expected degree.

    ``bad`` is the set of evaluation points whose shares are off the polynomial
    agreed by the others, when that set could be determined (see
    :mod:`mpc.shamir` for exactly when); it is empty when the inconsistency was
    detected but the culprits could not be identified.
    """

    def __init__(self, bad: frozenset[int], message: str | None = None) -> None:
        if message is None:
            if bad:
                message = f"inconsistent shares at evaluation points {sorted(bad)}"
            else:
                message = "inconsistent shares; culprits cannot be identified"
        super().__init__(message)
        self.bad = bad


class DecryptionError(MpcError):
    """A ciphertext failed authentication (wrong key, wrong associated data, tampered,
    or malformed)."""
