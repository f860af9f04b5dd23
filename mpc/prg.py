"""Mask expansion: a 32-byte seed to a uint32 vector with ChaCha20.

Theory of operation
-------------------
``expand(seed, n)`` is the first ``4 n`` bytes of the IETF ChaCha20 keystream
(RFC 8439) under key ``seed``, 12-byte nonce ``b"LibsodiumDRG"`` and initial block
counter 0, read as little-endian uint32 words.  This is byte for byte libsodium's
``randombytes_buf_deterministic`` (pynacl's ``nacl.utils.randombytes_deterministic``),
which the tests use as an oracle.  The ``cryptography`` package takes a 16-byte nonce:
the 4-byte little-endian initial counter followed by the 12-byte IETF nonce, so the
nonce is ``b"\\0\\0\\0\\0" + b"LibsodiumDRG"``.  (libsodium's 32-bit counter limits a
stream to 256 GiB, far above any model.)

The seed is the whole key: seeds must be uniformly random and used for one mask only
(masks are derived per round and pair by :func:`mpc.ka.agree` with a context).

Performance: the keystream is produced by ``update_into`` over a read-only zero
buffer, chunk by chunk, straight into the destination (no intermediate allocation).
:class:`MaskExpander` fuses generation and wrapping addition chunk by chunk so each
chunk of keystream is still in L2 cache when it is added, and :meth:`MaskExpander.apply`
runs all seeds over one accumulator chunk before moving on, which keeps the
accumulator in cache as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from numpy.typing import NDArray

__all__ = ["NONCE", "SEED_BYTES", "MaskExpander", "expand"]

SEED_BYTES = 32
"""Length of a PRG seed (a ChaCha20 key) in bytes."""

NONCE = (0).to_bytes(4, "little") + b"LibsodiumDRG"
"""The 16-byte ``cryptography`` ChaCha20 nonce: counter 0 (LE u32) + libsodium's nonce."""

_CHUNK = 1 << 16  # uint32 words per chunk: 256 KiB, fits L2 with room to spare
_ZEROS = bytes(4 * _CHUNK)

U32 = NDArray[np.uint32]


def _keystream(seed: bytes) -> CipherContext:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        n = len(seed) if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {n}")
    return Cipher(algorithms.ChaCha20(bytes(seed), NONCE), mode=None).encryptor()


def _check_out(out: NDArray[np.uint32], n: int) -> None:
    if out.dtype != np.uint32:
        raise TypeError(f"out must be uint32, got {out.dtype}")
    if out.shape != (n,):
        raise ValueError(f"out must have shape ({n},), got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")


def expand(seed: bytes, n: int, out: U32 | None = None) -> U32:
    """Return the ``n``-word mask of ``seed`` (see the module docstring).

    Writes into ``out`` when given (shape ``(n,)``, uint32, C-contiguous) and returns it.
    Raises ``ValueError`` for a seed that is not 32 bytes, ``n < 0`` or a wrong ``out``
    shape, ``TypeError`` for a wrong ``out`` dtype.
    """
    if n < 0:
        raise ValueError(f"negative length {n}")
    enc = _keystream(seed)
    if out is None:
        out = np.empty(n, dtype=np.uint32)
    else:
        _check_out(out, n)
    dst = out.data.cast("B")
    zeros = memoryview(_ZEROS)
    total = 4 * n
    step = 4 * _CHUNK
    for start in range(0, total, step):
        stop = min(total, start + step)
        enc.update_into(zeros[: stop - start], dst[start:stop])
    return out


class MaskExpander:
    """Adds or subtracts PRG masks into uint32 accumulators, reusing one scratch chunk.

    One instance per thread (it owns mutable scratch memory); cheap to keep for the
    lifetime of a peer.
    """

    __slots__ = ("_scratch", "_scratch_bytes")

    def __init__(self) -> None:
        self._scratch: U32 = np.empty(_CHUNK, dtype=np.uint32)
        self._scratch_bytes = self._scratch.data.cast("B")

    def add_mask(self, acc: U32, seed: bytes) -> U32:
        """``acc += expand(seed, len(acc)) (mod 2**32)`` in place; returns ``acc``.

        Raises as :meth:`apply`.
        """
        return self.apply(acc, plus=(seed,))

    def sub_mask(self, acc: U32, seed: bytes) -> U32:
        """``acc -= expand(seed, len(acc)) (mod 2**32)`` in place; returns ``acc``.

        Raises as :meth:`apply`.
        """
        return self.apply(acc, minus=(seed,))

    def apply(self, acc: U32, plus: Sequence[bytes] = (), minus: Sequence[bytes] = ()) -> U32:
        """``acc += sum(expand(s) for s in plus) - sum(expand(s) for s in minus)`` in place.

        All masks are processed chunk by chunk over the accumulator, so the accumulator
        chunk stays in cache while every seed is applied.  Returns ``acc``.  Raises
        ``TypeError`` unless ``acc`` is uint32 and ``ValueError`` unless it is 1-D,
        C-contiguous and writeable, or when a seed is not 32 bytes (checked before
        ``acc`` is touched).
        """
        if acc.dtype != np.uint32:
            raise TypeError(f"accumulator must be uint32, got {acc.dtype}")
        if acc.ndim != 1:
            raise ValueError(f"accumulator must be 1-D, got shape {acc.shape}")
        _check_out(acc, acc.shape[0])
        streams = [(_keystream(s), True) for s in plus]
        streams += [(_keystream(s), False) for s in minus]
        if not streams:
            return acc
        n = acc.shape[0]
        zeros = memoryview(_ZEROS)
        scratch = self._scratch
        sbytes = self._scratch_bytes
        for start in range(0, n, _CHUNK):
            m = min(_CHUNK, n - start)
            a = acc[start : start + m]
            s = scratch[:m]
            for enc, positive in streams:
                enc.update_into(zeros[: 4 * m], sbytes[: 4 * m])
                if positive:
                    np.add(a, s, out=a)
                else:
                    np.subtract(a, s, out=a)
        return acc
