"""Glue between the protocol and the primitives: keys, share payloads, commitments.

Domain separation: the c-keys (share encryption) and s-keys (pairwise masks) of a
round are distinct X25519 pairs; every agreement, AEAD associated data and signature
is bound to the group context plus a purpose tag and the ordered pair of members.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from mpc import ka, shamir
from mpc.errors import DecryptionError
from mpc.field import BIG_PRIME
from mpc.rand import Rng

from ._config import SketchConfig

__all__ = [
    "DecryptionError",
    "KeyMaterial",
    "commitment",
    "decode_share_payload",
    "decode_sketch_payload",
    "encode_share_payload",
    "encode_sketch_payload",
    "public_of",
    "sketch_ciphertext_bytes",
    "sketch_payload_bytes",
    "sketch_seed",
    "valid_public",
]

SHARE_BYTES = (BIG_PRIME.bit_length() + 7) // 8


class KeyMaterial:
    """One member's round keys: c (share encryption) and s (pairwise masks)."""

    __slots__ = ("c", "s")

    def __init__(self, rng: Rng) -> None:
        self.c = ka.KeyPair.generate(rng)
        self.s = ka.KeyPair.generate(rng)

    def wipe(self) -> None:
        """Forget the secrets (best effort; Python cannot zero immutable bytes)."""
        del self.c, self.s


def pair_context(context: bytes, purpose: bytes) -> bytes:
    """The KA context for ``purpose`` (b"c" or b"s") in this group."""
    return b"p2pfl/secagg/" + purpose + b"\x00" + context


def public_of(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret key."""
    return ka.public_key(secret)


_PROBE = bytes(range(1, 33))


def valid_public(pk: bytes) -> bool:
    """False for an X25519 public key whose agreement would be all zero (low order)."""
    try:
        ka.agree(_PROBE, pk, b"probe")
    except ValueError:
        return False
    return True


def commitment(y: NDArray[np.uint32]) -> bytes:
    """H(y): SHA-256 of the little-endian bytes of a masked input."""
    arr = np.ascontiguousarray(y, dtype="<u4")
    return hashlib.sha256(arr.data.cast("B")).digest()


def share_aad(context: bytes, owner: int, holder: int, tag: bytes) -> bytes:
    """Associated data of one encrypted payload from ``owner`` to ``holder``."""
    return (
        b"p2pfl/secagg/"
        + tag
        + b"\x00"
        + owner.to_bytes(4, "big")
        + holder.to_bytes(4, "big")
        + context
    )


def encode_share_payload(owner: int, holder: int, b_share: int, sk_share: int) -> bytes:
    """Plaintext carrying one holder's shares of b_owner and s_sk_owner."""
    return (
        owner.to_bytes(4, "big")
        + holder.to_bytes(4, "big")
        + b_share.to_bytes(SHARE_BYTES, "big")
        + sk_share.to_bytes(SHARE_BYTES, "big")
    )


def decode_share_payload(data: bytes, owner: int, holder: int) -> tuple[int, int]:
    """Inverse of :func:`encode_share_payload`; ``ValueError`` unless well formed
    and naming (owner, holder)."""
    if len(data) != 8 + 2 * SHARE_BYTES:
        raise ValueError("share payload has the wrong length")
    if int.from_bytes(data[:4], "big") != owner or int.from_bytes(data[4:8], "big") != holder:
        raise ValueError("share payload names other members")
    b = int.from_bytes(data[8 : 8 + SHARE_BYTES], "big")
    sk = int.from_bytes(data[8 + SHARE_BYTES :], "big")
    if b >= BIG_PRIME or sk >= BIG_PRIME:
        raise ValueError("share out of range")
    return b, sk


def sketch_payload_bytes(sketch: SketchConfig, validators: int) -> int:
    """Length of one sketch payload when ``validators`` members share sketches."""
    return 8 + 4 * sketch.primes * (sketch.rows + sketch.zero_count(validators))


def sketch_ciphertext_bytes(sketch: SketchConfig, validators: int) -> int:
    """Length of one encrypted sketch payload (payload + AEAD nonce and tag)."""
    return sketch_payload_bytes(sketch, validators) + ka.OVERHEAD


def encode_sketch_payload(
    owner: int, holder: int, z_share: NDArray[np.int64], zero_shares: NDArray[np.int64]
) -> bytes:
    """Plaintext carrying one validator's shares of z_owner, shape ``(primes, rows)``,
    and of the owner's zero-sharings, shape ``(primes, zeros)`` (row i modulo the i-th
    prime; entries canonical, so they fit 4 bytes)."""
    return (
        owner.to_bytes(4, "big")
        + holder.to_bytes(4, "big")
        + np.ascontiguousarray(z_share, dtype="<u4").tobytes()
        + np.ascontiguousarray(zero_shares, dtype="<u4").tobytes()
    )


def decode_sketch_payload(
    data: bytes, owner: int, holder: int, moduli: Sequence[int], rows: int, zeros: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Inverse of :func:`encode_sketch_payload`: ``(z_share, zero_shares)`` as int64 of
    shapes ``(primes, rows)`` and ``(primes, zeros)``.  ``ValueError`` unless the
    length is exact, the header names (owner, holder) and every entry of row i is
    below ``moduli[i]``."""
    k = len(moduli)
    if len(data) != 8 + 4 * k * (rows + zeros):
        raise ValueError("sketch payload has the wrong length")
    if int.from_bytes(data[:4], "big") != owner or int.from_bytes(data[4:8], "big") != holder:
        raise ValueError("sketch payload names other members")
    body = np.frombuffer(data, dtype="<u4", offset=8).astype(np.int64)
    z = body[: k * rows].reshape(k, rows)
    zero = body[k * rows :].reshape(k, zeros)
    bound = np.array(moduli, dtype=np.int64)[:, None]
    if bool((z >= bound).any()) or bool((zero >= bound).any()):
        raise ValueError("sketch share out of range")
    return z, zero


def sketch_seed(context: bytes, commitments: Iterable[tuple[int, bytes]]) -> bytes:
    """The public seed of the sketch map: SHA-256 over a tag, the group ``context`` and
    the survivors' commitments ``(member, H(y_member))`` in member order.

    Everyone learns it only after the commitment deadline (the primary's
    ``SketchRequest`` carries the signed commitments; ``Aggregator.sketch_seed`` and
    ``OutputReady.sketch_seed`` expose it), so no member can tailor its update to the
    map derived from it."""
    h = hashlib.sha256(b"p2pfl/secagg/sketch\x00")
    h.update(len(context).to_bytes(4, "big") + context)
    for u, digest in sorted(commitments):
        h.update(u.to_bytes(4, "big") + digest)
    return h.digest()


def share_secret(secret: bytes, threshold: int, holders: Sequence[int], rng: Rng) -> list[int]:
    """Shamir shares of a 32-byte secret for members ``holders`` (points member + 1)."""
    return shamir.share_bytes(secret, threshold, [h + 1 for h in holders], rng)


def encrypt(key: bytes, plaintext: bytes, aad: bytes, rng: Rng) -> bytes:
    """AEAD encryption (see :mod:`mpc.ka`)."""
    return ka.encrypt(key, plaintext, aad, rng)


def decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """AEAD decryption; raises :class:`DecryptionError`."""
    return ka.decrypt(key, ciphertext, aad)


def agree(secret: bytes, peer_public: bytes, context: bytes) -> bytes:
    """Symmetric 32-byte key of two members (see :mod:`mpc.ka`)."""
    return ka.agree(secret, peer_public, context)
