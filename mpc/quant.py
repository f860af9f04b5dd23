"""Quantization of float updates into Z_2^32, with sums that never wrap.

Theory of operation
-------------------
A member's update ``x`` (float32) becomes a ring vector ``q = Q(x)`` in Z_2^32 so it
can be masked; the aggregators get ``Σ_u q_u mod 2**32`` and decode it.  For the sum
to be exact it must not wrap: with at most ``n = max_summands`` contributions, each
quantized value is kept within ``±L`` where

    L = floor((2**(bits-1) - 1) / n),     scale = L / clip,

so ``|Σ q_u| <= n L <= 2**(bits-1) - 1`` (``log2 n`` bits of headroom) and the sum's
centered representative in ``[-2**31, 2**31)`` *is* the integer sum.  ``bits`` (at
most 32) is the signed width budgeted for the sum; the ring is always Z_2^32.

``quantize`` computes, per coordinate, ``y = clip(x * scale, -L, L) * weight`` in
float64 (clipping ``x`` to ``[-clip, clip]``; a weight ``0 <= w <= 1`` scales a
contribution without breaking the bound), then rounds *stochastically* in fixed
point: with ``Y = trunc(y * 2**32)`` (an int64; ``y * 2**32`` is exact) and ``r`` a
uniform 32-bit word, ``q = (Y + r) >> 32`` (arithmetic shift, i.e. floor division).
So ``q`` is ``floor(y)`` or ``ceil(y)``, and ``E[q] = Y / 2**32`` exactly: unbiased up
to the truncation of ``y`` to 32 fractional bits (less than ``2**-32`` of one
quantization step, toward zero).  Negative values are stored in two's complement; no
offset is added, so the sum of encodings is the encoding of the sum.  The rounding
words are a ChaCha20 stream (:mod:`mpc.prg`) under a 32-byte seed drawn from the
caller's rng: cheap, and deterministic for a seeded rng.

``dequantize_sum`` maps a ring sum back: ``centered(s) / scale`` in float64, the
correctly rounded quotient of the exact integer sum (identical on every peer).

Everything runs in chunks of 64 Ki elements over reused scratch buffers, so a 10^7
parameter update allocates nothing but its output (and not even that with ``out=``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from mpc.prg import NONCE, SEED_BYTES
from mpc.rand import Rng
from mpc.ring import centered

__all__ = ["QuantParams", "decode_sum", "dequantize_sum", "l2_clip", "quantize"]

_CHUNK = 1 << 16
_ZEROS = bytes(4 * _CHUNK)
_TWO32 = float(1 << 32)


@dataclass(frozen=True, kw_only=True)
class QuantParams:
    """Quantization agreed by a federation (keyword-only).

    ``clip``: per-coordinate clipping bound ``c > 0`` (values are clipped to
    ``[-c, c]``); ``bits``: signed width of a sum, ``2..32``; ``max_summands``: most
    contributions ever summed (the group size).  Raises ``ValueError`` when the
    parameters leave no room (fewer than one level per contribution).
    """

    clip: float
    bits: int = 32
    max_summands: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be positive and finite, got {self.clip}")
        if not 2 <= self.bits <= 32:
            raise ValueError(f"bits must be in [2, 32], got {self.bits}")
        if self.max_summands < 1:
            raise ValueError(f"max_summands must be >= 1, got {self.max_summands}")
        if self.level < 1:
            raise ValueError(f"{self.bits} bits leave no level for {self.max_summands} summands")

    @property
    def level(self) -> int:
        """``L``: the largest magnitude of one quantized value."""
        return ((1 << (self.bits - 1)) - 1) // self.max_summands

    @property
    def scale(self) -> float:
        """Quantization steps per unit: ``L / clip``."""
        return self.level / self.clip


def quantize(
    x: NDArray[np.floating],
    params: QuantParams,
    rng: Rng,
    out: NDArray[np.uint32] | None = None,
    *,
    weight: float = 1.0,
) -> NDArray[np.uint32]:
    """Return ``Q(weight * clip(x))`` as uint32 (two's complement), shape of ``x``.

    Writes into ``out`` when given (uint32, same shape, C-contiguous); on error its
    contents are unspecified.  Draws 32 bytes from ``rng``.  Raises ``ValueError`` for
    non-finite entries, a weight outside ``[0, 1]`` or a wrong ``out`` shape,
    ``TypeError`` for a non-float ``x`` or non-uint32 ``out``.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError("quantize takes a floating-point array")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if out is None:
        out = np.empty(x.shape, dtype=np.uint32)
    elif out.dtype != np.uint32:
        raise TypeError(f"out must be uint32, got {out.dtype}")
    elif out.shape != x.shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous with shape {x.shape}")
    src = x.reshape(-1)
    dst = out.reshape(-1).view(np.int32)
    fixed = params.scale * _TWO32  # exact: a power-of-two multiple
    limit = float(params.level) * _TWO32
    enc = Cipher(algorithms.ChaCha20(rng.random_bytes(SEED_BYTES), NONCE), None).encryptor()
    y = np.empty(_CHUNK, dtype=np.float64)
    fx = np.empty(_CHUNK, dtype=np.int64)
    rnd = np.empty(_CHUNK, dtype=np.uint32)
    rnd_bytes = rnd.data.cast("B")
    zeros = memoryview(_ZEROS)
    n = src.shape[0]
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        yc, fc, rc = y[:m], fx[:m], rnd[:m]
        np.copyto(yc, src[start : start + m])
        yc *= fixed  # y * 2**32
        if not math.isfinite(float(yc.sum())):  # NaN or inf anywhere in the chunk
            raise ValueError("cannot quantize non-finite values")
        np.clip(yc, -limit, limit, out=yc)
        if weight != 1.0:
            yc *= weight
        np.copyto(fc, yc, casting="unsafe")  # Y = trunc(y * 2**32), |Y| < 2**63 - 2**32
        enc.update_into(zeros[: 4 * m], rnd_bytes[: 4 * m])
        np.add(fc, rc, out=fc, casting="unsafe")
        fc >>= 32  # floor((Y + r) / 2**32), in [-L, L]
        np.copyto(dst[start : start + m], fc, casting="unsafe")
    return out


def decode_sum(s: NDArray[np.uint32]) -> NDArray[np.int64]:
    """The exact integer sum encoded by a ring sum (its centered representative).

    Raises ``TypeError`` unless ``s`` is uint32.
    """
    return centered(s)


def dequantize_sum(
    s: NDArray[np.uint32], params: QuantParams, out: NDArray[np.float64] | None = None
) -> NDArray[np.float64]:
    """Decode a sum of at most ``max_summands`` quantized vectors to float64.

    Returns ``decode_sum(s) / params.scale`` (the correctly rounded quotient of the
    exact integer sum), written into ``out`` when given (float64, shape of ``s``).
    Raises ``TypeError`` unless ``s`` is uint32 (and ``out`` float64), ``ValueError``
    for a wrong ``out`` shape.
    """
    if s.dtype != np.uint32:
        raise TypeError(f"ring vectors must be uint32, got {s.dtype}")
    if out is None:
        out = np.empty(s.shape, dtype=np.float64)
    elif out.dtype != np.float64:
        raise TypeError(f"out must be float64, got {out.dtype}")
    elif out.shape != s.shape:
        raise ValueError(f"out must have shape {s.shape}, got {out.shape}")
    np.divide(s.view(np.int32), params.scale, out=out)  # int32 -> float64 is exact
    return out


def l2_clip(
    x: NDArray[np.floating], bound: float, out: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """Return ``x`` as float32, scaled down if needed so its L2 norm is at most ``bound``.

    The norm is accumulated in float64; when scaling, the factor is shrunk by a relative
    ``1e-6`` so that float32 rounding cannot push the result above ``bound``.  Writes
    into ``out`` when given (float32, shape of ``x``; may be ``x`` itself), else returns
    a new array.  Raises ``ValueError`` for a non-positive or non-finite bound,
    non-finite entries or a wrong ``out`` shape, ``TypeError`` for a non-float ``x`` or
    non-float32 ``out``.
    """
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        raise TypeError("l2_clip takes a floating-point array")
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be positive and finite, got {bound}")
    flat = x.reshape(-1)
    total = 0.0
    buf = np.empty(_CHUNK, dtype=np.float64)
    for start in range(0, flat.shape[0], _CHUNK):
        c = buf[: min(_CHUNK, flat.shape[0] - start)]
        np.copyto(c, flat[start : start + c.shape[0]])
        total += float(np.einsum("i,i->", c, c))
    if not math.isfinite(total):
        raise ValueError("cannot clip non-finite values")
    norm = math.sqrt(total)
    if out is None:
        out = x.astype(np.float32)  # always a copy (astype copies by default)
    elif out.dtype != np.float32:
        raise TypeError(f"out must be float32, got {out.dtype}")
    elif out.shape != x.shape:
        raise ValueError(f"out must have shape {x.shape}, got {out.shape}")
    elif out is not x:
        np.copyto(out, x)
    if norm > bound:
        out *= np.float32(bound / norm * (1.0 - 1e-6))
    return out
