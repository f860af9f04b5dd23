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
        return peer_id_of(self.signer)


_PEER_IDS: dict[bytes, PeerId] = {}
_MAX_PEER_IDS = 1 << 16


def peer_id_of(public_key: bytes) -> PeerId:
    """``PeerId.from_public_key`` (a hash), remembered for the last keys seen: the
    origin of every gossiped envelope is asked for several times per receipt."""
    pid = _PEER_IDS.get(public_key)
    if pid is None:
        pid = PeerId.from_public_key(public_key)
        if len(_PEER_IDS) >= _MAX_PEER_IDS:
            _PEER_IDS.clear()  # bounded; refilled by the keys in use
        _PEER_IDS[public_key] = pid
    return pid


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
