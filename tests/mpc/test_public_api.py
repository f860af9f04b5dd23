"""Pins the public names of mpc (changing them is an API change)."""

from __future__ import annotations

import mpc

EXPECTED = {
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
}


def test_public_names() -> None:
    assert set(mpc.__all__) >= EXPECTED
    for name in mpc.__all__:
        assert hasattr(mpc, name), name


def test_mpc_imports_neither_p2pfl_nor_trio() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mpc, mpc.field, mpc.graph, mpc.ka, mpc.prg, mpc.quant, mpc.rand, "
        "mpc.ring, mpc.shamir, mpc.sketch, mpc.secagg; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('p2pfl', 'trio')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
