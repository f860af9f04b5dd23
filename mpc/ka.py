"""Key agreement (X25519) and authenticated encryption (XChaCha20-Poly1305).

Theory of operation
-------------------
Each member publishes fresh X25519 round keys (signed elsewhere by its identity key).
Two members ``u`` and ``v`` obtain the same 32-byte seed with :func:`agree`:

    seed = BLAKE2b-256(key = X25519(sk_u, pk_v),
                       msg = min(pk_u, pk_v) ‖ max(pk_u, pk_v) ‖ len(context) ‖ context,
                       person = "mpc.ka.agree")

Hashing both public keys (in a canonical order, so both sides agree) binds the seed to
this pair of keys; hashing the context (federation, round, group, purpose) makes seeds
from the same keys in different rounds, groups or purposes independent.  An all-zero
DH output (a low-order peer key, which would make the seed predictable) is rejected
with ``ValueError``; libsodium also rejects it and the check is repeated here in
constant time.  Public keys are not otherwise validated: X25519 is safe for any 32-byte
string except the low-order points, which the zero check covers.

:func:`encrypt` / :func:`decrypt` are XChaCha20-Poly1305 (libsodium via pynacl) with a
random 24-byte nonce drawn from the caller's :class:`~mpc.rand.Rng` and prepended to
the ciphertext; random 192-bit nonces never collide in practice, so one key may encrypt
many messages.  ``aad`` (associated data) is authenticated, not encrypted: put the
context and the sender/recipient there.  Any failure to authenticate raises
:class:`~mpc.errors.DecryptionError`, never returns partial plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions

from mpc.errors import DecryptionError
from mpc.rand import Rng

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "OVERHEAD",
    "DecryptionError",
    "KeyPair",
    "agree",
    "decrypt",
    "encrypt",
    "public_key",
]

KEY_BYTES = 32
"""Length of X25519 keys, agreed seeds and AEAD keys."""
NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
_TAG_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
OVERHEAD = NONCE_BYTES + _TAG_BYTES
"""Bytes a ciphertext adds to its plaintext (nonce + tag = 40)."""

_ZERO = bytes(32)


def _check_key(key: bytes, what: str) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} bytes")
    return bytes(key)


def public_key(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret; ``ValueError`` for a wrong length."""
    return nacl.bindings.crypto_scalarmult_base(_check_key(secret, "secret key"))


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair (``secret`` is never shown by ``repr``)."""

    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls, rng: Rng) -> KeyPair:
        """A fresh key pair from 32 bytes of ``rng`` (deterministic for a seeded rng)."""
        return cls.from_secret(rng.random_bytes(KEY_BYTES))

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """The key pair of a 32-byte secret; ``ValueError`` for a wrong length."""
        secret = _check_key(secret, "secret key")
        return cls(public=public_key(secret), secret=secret)


def agree(secret: bytes, peer_public: bytes, context: bytes) -> bytes:
    """Return the 32-byte seed shared with the owner of ``peer_public`` (see above).

    ``agree(sk_u, pk_v, c) == agree(sk_v, pk_u, c)``.  Raises ``ValueError`` for keys
    of the wrong length or an all-zero DH output (low-order ``peer_public``).
    """
    secret = _check_key(secret, "secret key")
    peer_public = _check_key(peer_public, "public key")
    try:
        dh = nacl.bindings.crypto_scalarmult(secret, peer_public)
    except nacl.exceptions.RuntimeError as e:  # libsodium refuses an all-zero output
        raise ValueError("X25519 output is all zero (low-order public key)") from e
    if hmac.compare_digest(dh, _ZERO):
        raise ValueError("X25519 output is all zero (low-order public key)")
    own = public_key(secret)
    lo, hi = sorted((own, peer_public))
    h = hashlib.blake2b(key=dh, digest_size=32, person=b"mpc.ka.agree")
    h.update(lo + hi + len(context).to_bytes(8, "big") + bytes(context))
    return h.digest()


def encrypt(key: bytes, plaintext: bytes, aad: bytes, rng: Rng) -> bytes:
    """Return ``nonce ‖ XChaCha20-Poly1305(key, nonce, plaintext, aad)``.

    The output is ``len(plaintext) + OVERHEAD`` bytes.  Raises ``ValueError`` for a key
    that is not 32 bytes.
    """
    key = _check_key(key, "key")
    nonce = rng.random_bytes(NONCE_BYTES)
    ct = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        bytes(plaintext), bytes(aad), nonce, key
    )
    return nonce + ct


def decrypt(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Return the plaintext of :func:`encrypt`'s output.

    Raises :class:`DecryptionError` when the ciphertext is too short, was tampered
    with, or was made with another key or other ``aad``; ``ValueError`` for a key that
    is not 32 bytes.
    """
    key = _check_key(key, "key")
    if len(ciphertext) < OVERHEAD:
        raise DecryptionError("ciphertext too short")
    nonce, body = bytes(ciphertext[:NONCE_BYTES]), bytes(ciphertext[NONCE_BYTES:])
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            body, bytes(aad), nonce, key
        )
    except nacl.exceptions.CryptoError as e:
        raise DecryptionError("ciphertext failed authentication") from e
