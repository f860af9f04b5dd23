"""Signed envelopes: a message, its signer's public key and a signature.

The signature covers ``domain`` (what the signature is *for*) and the canonical
encoding of the message, so any re-encoding or re-purposing breaks it.  Opening
an envelope verifies the signature *before* decoding the body.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from p2pfl.errors import RemoteProtocolError
from p2pfl.wire import DEFAULT_MAX_MESSAGE, MaxLen, PeerId, decode, decode_as, encode, message

from ._keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature

__all__ = ["Signed", "open_signed", "seal"]

T = TypeVar("T")


@message(0x0002)
class Signed:
    """``body`` is the encoding of a message; ``signature`` is over domain + body."""

    signer: Annotated[bytes, MaxLen(PUBLIC_KEY_BYTES, exact=True)]
    body: bytes
    signature: Annotated[bytes, MaxLen(SIGNATURE_BYTES, exact=True)]

    @property
    def peer_id(self) -> PeerId:
        return PeerId.from_public_key(self.signer)


def seal(identity: Identity, msg: Any, *, domain: bytes) -> Signed:
    """Sign ``msg`` (any registered message) for the purpose ``domain``."""
    body = encode(msg)
    return Signed(identity.public_key, body, identity.sign(domain, body))


def open_signed(
    env: Signed,
    *,
    domain: bytes,
    expect: type[T] | None = None,
    max_size: int = DEFAULT_MAX_MESSAGE,
) -> tuple[PeerId, T]:
    """Verify and decode an envelope; returns ``(signer peer id, message)``.

    Raises :class:`RemoteProtocolError` for a bad signature or a malformed body.
    """
    if not verify_signature(env.signer, domain, env.body, env.signature):
        raise RemoteProtocolError(f"bad signature on envelope from {env.peer_id.short()}")
    msg = decode(env.body, max_size=max_size) if expect is None else decode_as(
        env.body, expect, max_size=max_size
    )
    return env.peer_id, msg
