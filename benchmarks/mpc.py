"""Secure aggregation benchmark: per-stage timings against plaintext summing and Flower.

    python benchmarks/mpc.py --out FILE [--quick] [--repeats R]

For d in {1e5, 1e6, 1e7} parameters, groups of n in {10, 50}, k = 3 neighbours or all
pairs, 0% and 10% dropout (members that drop before sending their masked input, the
costly case for unmasking), one run drives one group of ``mpc.secagg`` machines with
one aggregator. Members run one after the other and share their input/output buffers
(the aggregator adds each masked input into its accumulator at once), so n = 50,
d = 1e7 needs a few hundred MiB. In the same loop each member's float32 update is
summed in plaintext (the baseline) and quantized. When ``flwr`` is importable, Flower's
SecAgg+ primitives (its client masking and its server unmasking code path) run on the
same quantized inputs and graph; otherwise that part is reported as skipped.

Reported numbers are medians over repeats (per-member stages: median over members,
then over repeats), in seconds. ``--quick`` keeps d <= 1e6 and one repeat (< 1 min).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpc import quant
from mpc.prg import MaskExpander
from mpc.rand import SeededRng
from mpc.secagg import (
    Aggregator,
    GroupConfig,
    Member,
    MemberState,
    Message,
    OutputReady,
)
from mpc.secagg._crypto import commitment
from mpc.secagg._reveal import feasible
from mpc.secagg.harness import FakeIdentities

CTX = b"bench/round-1/group-0"

MEMBER_STAGE = {
    MemberState.KEYS: "1_share_keys",
    MemberState.SHARES: "2_open_shares",
    MemberState.ANNOUNCE: "4_consistency",
    MemberState.CONSISTENCY: "5_reveal",
}


class TimedExpander(MaskExpander):
    """Counts the time spent expanding and applying masks."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def apply(self, acc: Any, plus: Sequence[bytes] = (), minus: Sequence[bytes] = ()) -> Any:
        t0 = time.perf_counter()
        out = super().apply(acc, plus, minus)
        self.seconds += time.perf_counter() - t0
        return out


def threshold_for(n: int, k: int | None) -> int:
    """All pairs: t > n / 2. Sparse graph: t = holders / 2, so that a member survives
    half of its holders dropping (SecAgg+ sizes k ~ log n for real deployments)."""
    holders = n if k is None or k >= n - 1 else k + 1
    return holders // 2 + 1 if holders == n else max(2, holders // 2)


def draw_dropouts(cfg: GroupConfig, dropout: float, seed: int) -> set[int]:
    """A dropout set of the given size that leaves the round recoverable."""
    rng = np.random.default_rng(seed)
    everyone = frozenset(range(cfg.n))
    for _ in range(1000):
        drops = set(rng.choice(cfg.n, size=round(dropout * cfg.n), replace=False).tolist())
        alive = everyone - drops
        if feasible(cfg, everyone, alive, frozenset(), alive):
            return drops
    raise RuntimeError("no recoverable dropout pattern found")


def member_input(u: int, d: int, seed: int, out: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([seed, u])
    rng.random(d, dtype=np.float32, out=out)
    out -= 0.5
    return out


def run_secagg(
    n: int, k: int | None, d: int, dropout: float, seed: int, bufs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """One group round; returns per-stage timings and the plaintext baseline."""
    t = threshold_for(n, k)
    cfg = GroupConfig(CTX, n=n, threshold=t, dim=d, k=k, aggregators=(n,))
    ids = FakeIdentities(b"bench")
    drops = draw_dropouts(cfg, dropout, seed)
    qp = quant.QuantParams(clip=1.0, max_summands=n)
    member_exp = TimedExpander()
    agg_exp = TimedExpander()
    mtimes: dict[str, list[float]] = defaultdict(list)
    atimes: dict[str, float] = defaultdict(float)
    queue: deque[tuple[int, int, Message]] = deque()
    now = 0.0

    members: dict[int, Member] = {}
    for u in range(n):
        t0 = time.perf_counter()
        members[u] = Member(
            cfg,
            u,
            SeededRng(b"m%d/%d" % (seed, u)),
            ids.signer(u),
            ids.verify,
            start=0.0,
            out=bufs["y"],
            expander=member_exp,
        )
        mtimes["0_keys"].append(time.perf_counter() - t0)
    agg = Aggregator(
        cfg, n, ids.signer(n), ids.verify, start=0.0, retain_inputs=False, expander=agg_exp
    )
    dead: set[int] = set()

    def flush(party: int, m: Member | Aggregator) -> None:
        for to, msg in m.messages_to_send():
            queue.append((party, to, msg))

    def deliver() -> None:
        while queue:
            s, r, msg = queue.popleft()
            if msg.TO_AGGREGATOR:
                label = agg.state.value
                t0 = time.perf_counter()
                agg.receive(s, msg, now)
                atimes[label] += time.perf_counter() - t0
                flush(n, agg)
            elif r not in dead:
                m = members[r]
                label = MEMBER_STAGE.get(m.state, m.state.value)
                t0 = time.perf_counter()
                m.receive(s, msg, now)
                mtimes[label].append(time.perf_counter() - t0)
                flush(r, m)

    def tick() -> None:
        nonlocal now
        live = [m for u, m in members.items() if u not in dead and not m.finished]
        ds = [x for x in [agg.next_deadline()] + [m.next_deadline() for m in live] if x]
        now = min(ds)
        label = agg.state.value
        t0 = time.perf_counter()
        agg.handle_timer(now)
        atimes[label] += time.perf_counter() - t0
        flush(n, agg)
        for u, m in members.items():
            if u not in dead:
                m.handle_timer(now)
                flush(u, m)

    for u in range(n):
        flush(u, members[u])
    deliver()
    while not all(m.state is MemberState.INPUT for u, m in members.items()):
        tick()
        deliver()
    dead |= drops
    expected = np.zeros(d, dtype=np.uint32)
    plain = np.zeros(d, dtype=np.float32)
    x_f, x_q = bufs["x_f"], bufs["x_q"]
    plain_s = quant_s = 0.0
    for u in range(n):
        member_input(u, d, seed, x_f)
        t0 = time.perf_counter()
        np.add(plain, x_f, out=plain)
        plain_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        quant.quantize(x_f, qp, SeededRng(b"q%d" % u), out=x_q)
        quant_s += time.perf_counter() - t0
        if u in drops:
            continue
        np.add(expected, x_q, out=expected)
        m = members[u]
        before = member_exp.seconds
        t0 = time.perf_counter()
        m.set_input(x_q, now)
        mtimes["2_mask_total"].append(time.perf_counter() - t0)
        mtimes["2_mask_prg"].append(member_exp.seconds - before)
        flush(u, m)
        deliver()  # the aggregator adds y_u now, before the buffer is reused
    t0 = time.perf_counter()
    commitment(bufs["y"])
    commit_s = time.perf_counter() - t0
    while not agg.finished:
        if not queue:
            tick()
        deliver()
    out = [e for e in iter(agg.next_event, None) if isinstance(e, OutputReady)]
    if not out or not np.array_equal(out[0].total, expected):
        raise RuntimeError(f"wrong or missing output for n={n} k={k} d={d}")
    agg_stage = {
        "0_keys": atimes["keys"],
        "1_relay_shares": atimes["shares"],
        "2_accumulate_inputs": atimes["masked"],
        "4_consistency": atimes["consistency"],
        "6_unmask_total": atimes["unmask"],
        "6_unmask_prg": agg_exp.seconds,
    }
    agg_stage["6_unmask_reconstruct"] = agg_stage["6_unmask_total"] - agg_exp.seconds
    return {
        "threshold": t,
        "dropped": len(drops),
        "member": {s: statistics.median(v) for s, v in sorted(mtimes.items())},
        "member_commit_sha256": commit_s,
        "aggregator": agg_stage,
        "plaintext_sum_total": plain_s,
        "plaintext_add_per_member": plain_s / n,
        "quantize_per_member": quant_s / n,
    }


# ------------------------------------------------------------------ Flower


def flower_available() -> bool:
    try:
        import flwr.common.secure_aggregation  # noqa: F401
    except Exception:
        return False
    return True


def run_flower(
    n: int, k: int | None, d: int, dropout: float, seed: int, bufs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Flower's SecAgg+ client masking and server unmasking on the same inputs."""
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
        generate_key_pairs,
        private_key_to_bytes,
        public_key_to_bytes,
    )

    mod = 1 << 32
    t = threshold_for(n, k)
    cfg = GroupConfig(CTX, n=n, threshold=t, dim=d, k=k, aggregators=(n,))
    nb = cfg.plan.neighbours
    rng = np.random.default_rng(seed)
    drops = draw_dropouts(cfg, dropout, seed)
    keys = [generate_key_pairs() for _ in range(n)]
    sk = [private_key_to_bytes(s) for s, _ in keys]
    pk = [public_key_to_bytes(p) for _, p in keys]
    seeds = [os.urandom(32) for _ in range(n)]
    qp = quant.QuantParams(clip=1.0, max_summands=n)
    client_s = []
    for u in range(min(n, 3)):  # client masking, as secaggplus_mod._collect_masked_vectors
        member_input(u, d, seed, bufs["x_f"])
        quant.quantize(bufs["x_f"], qp, SeededRng(b"q%d" % u), out=bufs["x_q"])
        params = [bufs["x_q"].astype(np.int64)]
        t0 = time.perf_counter()
        dims = get_parameters_shape(params)
        params = parameters_addition(params, pseudo_rand_gen(seeds[u], mod, dims))
        for v in sorted(nb[u]):
            shared = generate_shared_key(bytes_to_private_key(sk[u]), bytes_to_public_key(pk[v]))
            mask = pseudo_rand_gen(shared, mod, dims)
            params = (
                parameters_addition(params, mask) if u > v else parameters_subtraction(params, mask)
            )
        params = parameters_mod(params, mod)
        client_s.append(time.perf_counter() - t0)
    # shares as the clients would have sent them (not timed: that is Flower's stage 1)
    holders = [sorted(nb[u] | {u}) for u in range(n)]
    seed_sh = {
        u: dict(zip(holders[u], create_shares(seeds[u], t, len(holders[u])), strict=True))
        for u in range(n)
    }
    sk_sh = {
        u: dict(zip(holders[u], create_shares(sk[u], t, len(holders[u])), strict=True))
        for u in range(n)
    }
    alive = set(range(n)) - drops
    masked = [rng.integers(0, mod, d, dtype=np.int64)]
    t0 = time.perf_counter()  # server unmask, as secaggplus_workflow.unmask_stage
    vec = masked
    for u in range(n):
        shares_of = seed_sh[u] if u in alive else sk_sh[u]
        secret = combine_shares([s for h, s in shares_of.items() if h in alive])
        if u in alive:
            vec = parameters_subtraction(
                vec, pseudo_rand_gen(secret, mod, get_parameters_shape(vec))
            )
        else:
            for v in sorted(nb[u] & alive):
                shared = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(pk[v])
                )
                mask = pseudo_rand_gen(shared, mod, get_parameters_shape(vec))
                vec = parameters_addition(vec, mask) if u > v else parameters_subtraction(vec, mask)
    vec = parameters_mod(vec, mod)
    server_s = time.perf_counter() - t0
    return {
        "client_mask": statistics.median(client_s),
        "server_unmask": server_s,
        "upload_bytes_per_param": int(masked[0].itemsize),
    }


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    dims = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    have_flwr = flower_available()
    results = []
    started = time.perf_counter()
    for d in dims:
        repeats = args.repeats or (1 if args.quick or d >= 10**7 else 3)
        bufs = {
            "x_f": np.empty(d, np.float32),
            "x_q": np.empty(d, np.uint32),
            "y": np.empty(d, np.uint32),
        }
        for n in (10, 50):
            for k in (3, None):
                for dropout in (0.0, 0.1):
                    runs = [run_secagg(n, k, d, dropout, seed, bufs) for seed in range(repeats)]
                    row: dict[str, Any] = {
                        "d": d,
                        "n": n,
                        "k": "all" if k is None else k,
                        "dropout": dropout,
                        "threshold": runs[0]["threshold"],
                        "dropped": runs[0]["dropped"],
                        "repeats": repeats,
                        "upload_bytes_per_param": 4,
                    }
                    for key in ("member", "aggregator"):
                        row[key] = {
                            s: statistics.median(r[key][s] for r in runs) for s in runs[0][key]
                        }
                    for key in (
                        "member_commit_sha256",
                        "plaintext_sum_total",
                        "plaintext_add_per_member",
                        "quantize_per_member",
                    ):
                        row[key] = statistics.median(r[key] for r in runs)
                    mask = row["member"]["2_mask_total"]
                    unmask = row["aggregator"]["6_unmask_total"]
                    row["ratios"] = {
                        "member_mask_over_plaintext_add": mask / row["plaintext_add_per_member"],
                        "aggregator_unmask_over_plaintext_sum": unmask / row["plaintext_sum_total"],
                    }
                    # Flower's server takes 7-15 s for all pairs at n = 50 (its Shamir and
                    # EC key handling dominate), minutes at d = 1e7
                    slow = (k is None and n == 50 and args.quick) or (d >= 10**7 and k is None)
                    if not have_flwr:
                        row["flower"] = {"skipped": "flwr is not importable"}
                    elif slow:
                        row["flower"] = {"skipped": "too slow for this mode (minutes)"}
                    else:
                        once = d >= 10**7 or (k is None and n == 50)
                        fl = [
                            run_flower(n, k, d, dropout, seed, bufs)
                            for seed in range(1 if once else repeats)
                        ]
                        row["flower"] = {s: statistics.median(f[s] for f in fl) for s in fl[0]}
                        row["ratios"]["flower_client_over_ours"] = (
                            row["flower"]["client_mask"] / mask
                        )
                        row["ratios"]["flower_unmask_over_ours"] = (
                            row["flower"]["server_unmask"] / unmask
                        )
                    results.append(row)
                    print(
                        json.dumps(
                            {k2: row[k2] for k2 in ("d", "n", "k", "dropout")}
                            | {
                                "mask": round(mask, 5),
                                "unmask": round(unmask, 4),
                                "flower": row["flower"],
                            }
                        ),
                        flush=True,
                    )
    doc = {
        "benchmark": "mpc.secagg",
        "mode": "quick" if args.quick else "full",
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "flower": "available" if have_flwr else "skipped: flwr is not importable",
        "notes": "seconds, medians; member stages are per member; aggregator stages are "
        "the aggregator's total per stage; dropouts happen before the masked input",
        "wall_s": time.perf_counter() - started,
        "results": results,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
    }
    args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
