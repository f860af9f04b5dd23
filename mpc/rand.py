"""Randomness as a parameter: the :class:`Rng` protocol and samplers over it.

Theory of operation
-------------------
Protocol code never calls the global ``random`` or ``os.urandom`` directly; it is
handed an :class:`Rng`, an object with a single method ``random_bytes(n)``.
Production passes :class:`SystemRng` (the kernel CSPRNG); tests and simulations pass
:class:`SeededRng`, a deterministic generator of cryptographic quality: the ChaCha20
keystream (from the ``cryptography`` package) under a key derived from the seed with
BLAKE2b.  Everything else here turns uniform bytes into uniform integers *without
bias*:

* :func:`random_below` draws ``bit_length(bound)`` random bits and rejects values
  ``>= bound`` (fewer than two draws on average), so the result is exactly uniform.
* :func:`random_field_vector` does the same, vectorized: it draws one little-endian
  word per element, masks it to ``bit_length(p)`` bits and redraws only the rejected
  positions until none is left.  The output is exactly uniform on ``[0, p)``; for
  ``p = 2**31 - 1`` a word is rejected with probability ``2**-31``.

Streams are consumed in order: for a :class:`SeededRng` the concatenation of the
outputs of successive calls does not depend on how the requests were split, and every
sampler here consumes a deterministic number of bytes given the rng's output, so a
seed fixes every result.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

__all__ = [
    "Rng",
    "SeededRng",
    "SystemRng",
    "random_below",
    "random_field_vector",
]


@runtime_checkable
class Rng(Protocol):
    """A source of uniformly random bytes."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` uniformly random bytes (``n >= 0``)."""
        ...


class SystemRng:
    """The operating system's CSPRNG (``os.urandom``); for production use."""

    __slots__ = ()

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` bytes from ``os.urandom``; raises ``ValueError`` if ``n < 0``."""
        if n < 0:
            raise ValueError(f"negative byte count {n}")
        return os.urandom(n)

    def __repr__(self) -> str:
        return "SystemRng()"


_SEEDED_PERSON = b"mpc.SeededRng"
# ChaCha20 nonce as the ``cryptography`` package wants it: 4-byte little-endian block
# counter followed by the 12-byte IETF nonce.
_SEEDED_NONCE = bytes(16)
_POOL_BYTES = 4096


class SeededRng:
    """Deterministic cryptographic generator: ChaCha20 keystream keyed by the seed.

    The key is ``BLAKE2b-256(seed, person=b"mpc.SeededRng")`` so seeds of any length
    (including short test seeds such as ``b"test"``) are accepted; distinct seeds give
    independent streams.  Small requests are served from an internal pool of keystream,
    large ones straight from the cipher; either way successive outputs concatenate to
    the one keystream.  Not thread-safe: give each thread its own instance.
    """

    __slots__ = ("_enc", "_pool", "_pos")

    def __init__(self, seed: bytes) -> None:
        """Key the generator with ``seed`` (any length; ``TypeError`` if not bytes)."""
        if not isinstance(seed, bytes | bytearray | memoryview):
            raise TypeError(f"seed must be bytes, not {type(seed).__name__}")
        key = hashlib.blake2b(bytes(seed), digest_size=32, person=_SEEDED_PERSON).digest()
        self._enc = Cipher(algorithms.ChaCha20(key, _SEEDED_NONCE), mode=None).encryptor()
        self._pool = b""
        self._pos = 0

    def random_bytes(self, n: int) -> bytes:
        """Return the next ``n`` bytes of the keystream; ``ValueError`` if ``n < 0``."""
        if n < 0:
            raise ValueError(f"negative byte count {n}")
        avail = len(self._pool) - self._pos
        if n <= avail:
            out = self._pool[self._pos : self._pos + n]
            self._pos += n
            return out
        head = self._pool[self._pos :]
        need = n - avail
        if need >= _POOL_BYTES:
            self._pool, self._pos = b"", 0
            return head + self._enc.update(bytes(need))
        self._pool = self._enc.update(bytes(_POOL_BYTES))
        self._pos = need
        return head + self._pool[:need]

    def __repr__(self) -> str:
        return "SeededRng(<seed>)"


def random_below(rng: Rng, bound: int) -> int:
    """Return an integer uniform on ``[0, bound)``, exactly (rejection sampling).

    Raises ``ValueError`` if ``bound < 1``.
    """
    if bound < 1:
        raise ValueError(f"bound must be >= 1, got {bound}")
    if bound == 1:
        return 0
    bits = (bound - 1).bit_length()
    nbytes = (bits + 7) // 8
    mask = (1 << bits) - 1
    while True:
        r = int.from_bytes(rng.random_bytes(nbytes), "little") & mask
        if r < bound:
            return r


def random_field_vector(rng: Rng, n: int, p: int) -> NDArray[np.int64]:
    """Return ``n`` independent integers, each exactly uniform on ``[0, p)``, as int64.

    Vectorized rejection sampling: ``p <= 2**32`` uses 4 bytes per draw, larger moduli
    (up to ``2**63``) 8 bytes.  No bias.  Raises ``ValueError`` if ``n < 0`` or ``p`` is
    outside ``[1, 2**63]``.
    """
    if n < 0:
        raise ValueError(f"negative length {n}")
    if not 1 <= p <= 1 << 63:
        raise ValueError(f"modulus {p} outside [1, 2**63]")
    if p == 1:
        return np.zeros(n, dtype=np.int64)
    bits = (p - 1).bit_length()
    dtype = np.dtype("<u4") if bits <= 32 else np.dtype("<u8")
    mask = dtype.type((1 << bits) - 1)
    bound = dtype.type(p) if p < 1 << (8 * dtype.itemsize) else None
    raw = np.frombuffer(rng.random_bytes(n * dtype.itemsize), dtype=dtype).copy()
    np.bitwise_and(raw, mask, out=raw)
    if bound is not None:
        bad = np.flatnonzero(raw >= bound)
        while bad.size:
            fresh = np.frombuffer(rng.random_bytes(bad.size * dtype.itemsize), dtype=dtype)
            fresh = np.bitwise_and(fresh, mask)
            raw[bad] = fresh
            bad = bad[fresh >= bound]
    return raw.astype(np.int64)
