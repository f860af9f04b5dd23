"""Identity layer: Ed25519 identity keys, peer ids, key files, signed envelopes."""

from p2pfl.wire import PeerId

from ._envelope import Signed, open_signed, seal
from ._keys import (
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Identity,
    SignatureCache,
    SignatureCacheStatistics,
    atomic_write,
    signature_cache,
    verify_signature,
)

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Identity",
    "PeerId",
    "SignatureCache",
    "SignatureCacheStatistics",
    "Signed",
    "atomic_write",
    "open_signed",
    "seal",
    "signature_cache",
    "verify_signature",
]
