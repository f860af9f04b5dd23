"""Micro-benchmarks of the mpc primitives, with plaintext float32 summing as baseline.

Usage: ``python benchmarks/mpc_primitives.py [--out FILE] [--repeats R] [--quick]``

Prints one JSON object (and writes it to FILE): for each vector length d in
{1e5, 1e6, 1e7} the median seconds of PRG expansion (and GB/s), fused mask
addition, wrapping ring addition, quantization, dequantization, L2 clipping and the
in-place float32 addition baseline; Shamir sharing and reconstruction of a 1024-long
vector over GF(2^31 - 1) for groups of 10 and 50; scalar sharing over the 257-bit
prime at n = 50.  Buffers are allocated and touched before timing, as hot paths do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpc import field, prg, quant, ring, shamir
from mpc.rand import SeededRng


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_vectors(d: int, repeats: int) -> dict[str, Any]:
    rng = SeededRng(b"bench-%d" % d)
    seed = rng.random_bytes(prg.SEED_BYTES)
    out = np.empty(d, dtype=np.uint32)
    acc = np.frombuffer(rng.random_bytes(4 * d), dtype=np.uint32).copy()
    other = prg.expand(rng.random_bytes(32), d)
    x = np.random.default_rng(d).standard_normal(d).astype(np.float32)
    facc = np.zeros(d, dtype=np.float32)
    qout = np.empty(d, dtype=np.uint32)
    params = quant.QuantParams(clip=1.0, max_summands=50)
    me = prg.MaskExpander()
    seeds3 = [rng.random_bytes(32) for _ in range(3)]
    r: dict[str, Any] = {"d": d}
    r["plaintext_f32_add_s"] = median_s(lambda: np.add(facc, x, out=facc), repeats)
    t = median_s(lambda: prg.expand(seed, d, out=out), repeats)
    r["prg_expand_s"] = t
    r["prg_expand_GBps"] = 4 * d / t / 1e9
    r["ring_add_s"] = median_s(lambda: ring.add_into(acc, other), repeats)
    r["mask_add_fused_s"] = median_s(lambda: me.add_mask(acc, seed), repeats)
    r["mask_apply_3_seeds_s"] = median_s(
        lambda: me.apply(acc, plus=seeds3[:2], minus=seeds3[2:]), repeats
    )
    r["quantize_s"] = median_s(lambda: quant.quantize(x, params, rng, out=qout), repeats)
    fout = np.empty(d, dtype=np.float64)
    cout = np.empty(d, dtype=np.float32)
    r["dequantize_sum_s"] = median_s(lambda: quant.dequantize_sum(qout, params, out=fout), repeats)
    r["l2_clip_s"] = median_s(lambda: quant.l2_clip(x, 1.0, out=cout), repeats)
    return r


def bench_vector_group(
    n: int, d: int, rng: SeededRng, repeats: int
) -> tuple[str, dict[str, float]]:
    """Vector Shamir over GF(2^31 - 1) for a group of ``n`` with ``2t - 1 <= n``."""
    t = (n + 1) // 2  # degree-2 scores can be opened
    xs = list(range(1, n + 1))
    v = field.to_field(np.arange(d, dtype=np.int64) - d // 2)
    shares = shamir.share_vector(v, t, xs, rng)
    bad = shares.copy()
    bad[1, 7] = (bad[1, 7] + 1) % field.P31
    return f"vector_d{d}_n{n}_t{t}", {
        "share_s": median_s(lambda: shamir.share_vector(v, t, xs, rng), repeats),
        "reconstruct_exact_t_s": median_s(
            lambda: shamir.reconstruct_vector(xs[:t], shares[:t], t), repeats
        ),
        "reconstruct_all_n_checked_s": median_s(
            lambda: shamir.reconstruct_vector(xs, shares, t), repeats
        ),
        "locate_one_bad_row_s": median_s(
            lambda: shamir.decode_vector(xs, bad, t), max(3, repeats // 3)
        ),
    }


def bench_int_group(n: int, rng: SeededRng, repeats: int) -> tuple[str, dict[str, float]]:
    """Scalar Shamir over the 257-bit prime (seeds and keys), threshold n/2 + 1."""
    t = n // 2 + 1
    xs = list(range(1, n + 1))
    secret = int.from_bytes(rng.random_bytes(32), "big")
    pts = list(zip(xs, shamir.share_int(secret, t, xs, rng), strict=True))
    return f"int_n{n}_t{t}", {
        "share_s": median_s(lambda: shamir.share_int(secret, t, xs, rng), repeats),
        "reconstruct_exact_t_s": median_s(lambda: shamir.reconstruct_int(pts[:t], t), repeats),
        "reconstruct_all_n_checked_s": median_s(lambda: shamir.reconstruct_int(pts, t), repeats),
    }


def bench_shamir(repeats: int) -> dict[str, Any]:
    rng = SeededRng(b"bench-shamir")
    res: dict[str, Any] = {}
    for n in (10, 50):
        key, val = bench_vector_group(n, 1024, rng, repeats * 3)
        res[key] = val
    key, val = bench_int_group(50, rng, repeats * 10)
    res[key] = val
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON here as well")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="only d = 1e5 and 1e6")
    args = ap.parse_args(argv)
    sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "repeats": args.repeats,
        "statistic": "median seconds",
        "vectors": [bench_vectors(d, args.repeats) for d in sizes],
        "shamir": bench_shamir(args.repeats),
    }
    report["wall_s"] = time.perf_counter() - t0
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
