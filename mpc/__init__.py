"""Arithmetic and cryptography for secure aggregation (no ``p2pfl``, no trio).

Modules, bottom up:

* :mod:`mpc.rand` — randomness as a parameter (:class:`Rng`, seeded and system).
* :mod:`mpc.ring` — Z_2^32 vectors (wrapping uint32, in place).
* :mod:`mpc.prg` — ChaCha20 mask expansion (= libsodium's deterministic generator).
* :mod:`mpc.field` — GF(2^31 - 1) vectors in int64, and the 257-bit ``BIG_PRIME``.
* :mod:`mpc.shamir` — Shamir sharing of scalars and vectors, error detection and
  location, computing on shares (sketch scores).
* :mod:`mpc.ka` — X25519 key agreement and XChaCha20-Poly1305.
* :mod:`mpc.graph` — the SecAgg+ neighbour graph.
* :mod:`mpc.quant` — clipping, unbiased stochastic quantization into Z_2^32.
* :mod:`mpc.sketch` — sparse ±1 sketch maps with exact integer products.

The names below are re-exported for convenience; element-wise ring and field helpers
stay in their modules (``ring.add_into``, ``field.mul``...) because their names would
clash.
"""

from mpc import field, graph, ka, prg, quant, rand, ring, shamir, sketch
from mpc.errors import DecryptionError, InconsistentShares, MpcError, NotEnoughShares
from mpc.field import BIG_PRIME, P31, from_field, to_field
from mpc.graph import neighbours
from mpc.ka import KeyPair, agree, decrypt, encrypt
from mpc.prg import SEED_BYTES, MaskExpander, expand
from mpc.quant import QuantParams, dequantize_sum, l2_clip, quantize
from mpc.rand import Rng, SeededRng, SystemRng, random_below, random_field_vector
from mpc.shamir import (
    decode_int,
    decode_vector,
    open_degree2,
    open_linear,
    reconstruct_bytes,
    reconstruct_int,
    reconstruct_vector,
    share_bytes,
    share_int,
    share_vector,
    share_zeros,
)
from mpc.sketch import SketchMap

__all__ = [
    "BIG_PRIME",
    "P31",
    "SEED_BYTES",
    "DecryptionError",
    "InconsistentShares",
    "KeyPair",
    "MaskExpander",
    "MpcError",
    "NotEnoughShares",
    "QuantParams",
    "Rng",
    "SeededRng",
    "SketchMap",
    "SystemRng",
    "agree",
    "decode_int",
    "decode_vector",
    "decrypt",
    "dequantize_sum",
    "encrypt",
    "expand",
    "field",
    "from_field",
    "graph",
    "ka",
    "l2_clip",
    "neighbours",
    "open_degree2",
    "open_linear",
    "prg",
    "quant",
    "quantize",
    "rand",
    "random_below",
    "random_field_vector",
    "reconstruct_bytes",
    "reconstruct_int",
    "reconstruct_vector",
    "ring",
    "shamir",
    "share_bytes",
    "share_int",
    "share_vector",
    "share_zeros",
    "sketch",
    "to_field",
]
