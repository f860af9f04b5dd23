"""Peer identifiers: BLAKE2b-160 of an Ed25519 public key, shown in base32.

A :class:`PeerId` is a plain value (20 bytes).  It lives in the wire layer
because messages carry peer ids; :mod:`p2pfl.identity` derives them from keys.
"""

from __future__ import annotations

import base64
import hashlib
from typing import ClassVar

from p2pfl.errors import RemoteProtocolError

__all__ = ["PEER_ID_BYTES", "PeerId"]

PEER_ID_BYTES = 20


class PeerId:
    """An immutable 20-byte peer identifier; ``str()`` is 32 lowercase base32 chars."""

    __slots__ = ("_raw",)
    _raw: bytes
    SIZE: ClassVar[int] = PEER_ID_BYTES

    def __init__(self, raw: bytes) -> None:
        if type(raw) is not bytes or len(raw) != PEER_ID_BYTES:
            raise RemoteProtocolError(f"peer id must be {PEER_ID_BYTES} bytes")
        object.__setattr__(self, "_raw", raw)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PeerId is immutable")

    @classmethod
    def from_public_key(cls, public_key: bytes) -> PeerId:
        """The peer id of an Ed25519 public key (BLAKE2b with a 20-byte digest)."""
        return cls(hashlib.blake2b(public_key, digest_size=PEER_ID_BYTES).digest())

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse the base32 form printed by ``str()``; raises ``ValueError``."""
        if not isinstance(text, str) or len(text) != 32:
            raise ValueError(f"not a peer id: {text!r}")
        try:
            return cls(base64.b32decode(text.upper()))
        except (ValueError, RemoteProtocolError) as e:
            raise ValueError(f"not a peer id: {text!r}") from e

    @property
    def raw(self) -> bytes:
        return self._raw

    def __bytes__(self) -> bytes:
        return self._raw

    def __str__(self) -> str:
        return base64.b32encode(self._raw).decode("ascii").lower()

    def short(self) -> str:
        """The first 8 characters, for logs."""
        return str(self)[:8]

    def __repr__(self) -> str:
        return f"PeerId({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other._raw == self._raw

    def __lt__(self, other: PeerId) -> bool:
        return self._raw < other._raw

    def __hash__(self) -> int:
        return hash(self._raw)
