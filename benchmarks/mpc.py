"""Secure aggregation benchmark: per-stage timings against plaintext summing and Flower.

    python benchmarks/mpc.py --out FILE [--quick] [--repeats R] [--dims D ...]
        [--groups N:K ...] [--dropouts P ...] [--workers W ...] [--flwr-path DIR]

For d in {1e5, 1e6, 1e7} parameters, groups of n in {10, 50}, k = 3 neighbours or all
pairs, 0% and 10% dropout (members that drop before sending their masked input, the
costly case for unmasking), one run drives one group of ``mpc.secagg`` machines with
one aggregator. Members run one after the other (the aggregator adds each masked
input into its accumulator at once), so n = 50, d = 1e7 needs a few hundred MiB. In
the same loop each member's float32 update is summed in plaintext (the baseline).

Each configuration runs once per ``--workers`` value (default: 1, and the machine's
default, :func:`mpc.prg.default_workers`, when that is more): the most threads one
mask expansion may use. Results are bit for bit the same; only time changes.

Like for like with Flower (``flwr``, when importable; ``--flwr-path`` appends a
``pip install --target`` directory to ``sys.path``, after the environment's own
packages), on the same float32 inputs, the same neighbour graph and dropouts:

* **client stage**: Flower's client does its masked-input stage in
  ``secaggplus_mod._collect_masked_vectors``; we call that very function (its state
  and ciphertexts made by its own ``_setup`` and ``_share_keys``): decrypt the
  neighbours' shares, deserialize the float arrays, weight, clip, quantize, add the
  self and pairwise masks (numpy's Mersenne Twister), reduce mod 2^32, serialize
  (``np.save``, int64). Ours: ``mpc.quant.quantize`` of the same floats into a new
  array, then ``Member.set_input`` (masks, SHA-256 commitment, signature, the
  ``MaskedInput`` to send), and separately the wire encoding of that message
  (``p2pfl`` CBOR, when importable), since Flower's number includes its
  serialization. Flower's stage is also split into its steps by running the same
  calls one by one.
* **server unmask**: Flower's ``SecAggPlusWorkflow.unmask_stage`` from the collected
  shares on: rebuild every secret (``combine_shares``), remove self masks and dropped
  nodes' pairwise masks (with *all* their neighbours, as its code does), mod 2^32,
  extract the weight factor, dequantize. Ours: the aggregator's unmask stage
  (rebuild and check seeds and keys, remove masks) plus ``dequantize_sum``.
* the mask arithmetic alone (the numbers this benchmark reported first): Flower's
  masking calls without quantization or serialization vs our ``set_input``, and
  Flower's mask-removal loop alone vs our unmask stage.

Reported numbers are medians over repeats (per-member stages: median over members,
then over repeats), in seconds. ``--quick`` keeps d <= 1e6 and one repeat (< 2 min).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpc import quant
from mpc.prg import MaskExpander, default_workers
from mpc.rand import SeededRng
from mpc.secagg import (
    Aggregator,
    GroupConfig,
    MaskedInput,
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

# Flower's SecAgg+ parameters (its defaults, but the clipping range of ours)
FL_CLIP = 1.0
FL_TARGET = 1 << 22
FL_MOD = 1 << 32
FL_MAX_WEIGHT = 1000.0
FL_EXAMPLES = 100

Encoder = Callable[[Message], bytes]


class TimedExpander(MaskExpander):
    """Counts the time spent in ``apply`` (masks, and the overlapped hash if any)."""

    __slots__ = ("seconds",)

    def __init__(self, workers: int | None = None) -> None:
        super().__init__(workers)
        self.seconds = 0.0

    def apply(self, acc: Any, plus: Sequence[bytes] = (), minus: Sequence[bytes] = (),
              **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = super().apply(acc, plus, minus, **kw)
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


def wire_encoder() -> Encoder | None:
    """p2pfl's wire encoding of secagg messages, if p2pfl is importable."""
    try:
        mod = importlib.import_module("p2pfl.federation._secure_wire")
    except Exception:
        return None
    enc: Encoder = mod.encode_message
    return enc


def run_secagg(
    n: int,
    k: int | None,
    d: int,
    dropout: float,
    seed: int,
    x_f: np.ndarray,
    workers: int,
    encode: Encoder | None,
) -> dict[str, Any]:
    """One group round; returns per-stage timings and the plaintext baseline.

    Each member quantizes into a new array and masks into a new y (what a peer does,
    see ``p2pfl.federation.secure``), so allocation costs are counted.
    """
    t = threshold_for(n, k)
    cfg = GroupConfig(CTX, n=n, threshold=t, dim=d, k=k, aggregators=(n,))
    ids = FakeIdentities(b"bench")
    drops = draw_dropouts(cfg, dropout, seed)
    qp = quant.QuantParams(clip=1.0, max_summands=n)
    member_exp = TimedExpander(workers)
    agg_exp = TimedExpander(workers)
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
    plain_s = 0.0
    last_y: np.ndarray | None = None
    for u in range(n):
        member_input(u, d, seed, x_f)
        t0 = time.perf_counter()
        np.add(plain, x_f, out=plain)
        plain_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        x_q = quant.quantize(x_f, qp, SeededRng(b"q%d" % u))
        quant_s = time.perf_counter() - t0
        mtimes["2_quantize"].append(quant_s)
        if u in drops:
            continue
        np.add(expected, x_q, out=expected)
        m = members[u]
        before = member_exp.seconds
        t0 = time.perf_counter()
        m.set_input(x_q, now)
        mask_s = time.perf_counter() - t0
        mtimes["2_mask_total"].append(mask_s)
        mtimes["2_mask_apply"].append(member_exp.seconds - before)
        out = m.messages_to_send()
        stage = quant_s + mask_s
        masked = [msg for _, msg in out if isinstance(msg, MaskedInput)]
        if encode is not None and masked:
            t0 = time.perf_counter()
            encode(masked[0])  # the same message goes to every aggregator
            enc_s = time.perf_counter() - t0
            mtimes["2_encode_wire"].append(enc_s)
            mtimes["2_client_stage_wire"].append(stage + enc_s)
        mtimes["2_client_stage"].append(stage)
        if masked:
            last_y = masked[0].y
        queue.extend((u, to, msg) for to, msg in out)
        del masked, out, x_q
        deliver()  # the aggregator adds y_u now
    assert last_y is not None
    t0 = time.perf_counter()
    commitment(last_y)
    commit_s = time.perf_counter() - t0
    del last_y
    while not agg.finished:
        if not queue:
            tick()
        deliver()
    out_ev = [e for e in iter(agg.next_event, None) if isinstance(e, OutputReady)]
    if not out_ev or not np.array_equal(out_ev[0].total, expected):
        raise RuntimeError(f"wrong or missing output for n={n} k={k} d={d}")
    t0 = time.perf_counter()
    quant.dequantize_sum(out_ev[0].total, qp)
    deq_s = time.perf_counter() - t0
    agg_stage = {
        "0_keys": atimes["keys"],
        "1_relay_shares": atimes["shares"],
        "2_accumulate_inputs": atimes["masked"],
        "4_consistency": atimes["consistency"],
        "6_unmask_total": atimes["unmask"],
        "6_unmask_apply": agg_exp.seconds,
        "6_dequantize": deq_s,
        "6_server_stage": atimes["unmask"] + deq_s,
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
        "quantize_per_member": statistics.median(mtimes["2_quantize"]),
    }


# ------------------------------------------------------------------ Flower


def flower_available() -> bool:
    try:
        import flwr.common.secure_aggregation  # noqa: F401
        from flwr.client.mod.secure_aggregation import secaggplus_mod  # noqa: F401
    except Exception:
        return False
    return True


def run_flower(n: int, k: int | None, d: int, dropout: float, seed: int,
               x_f: np.ndarray) -> dict[str, Any]:
    """Flower's SecAgg+ client stage and server unmask on the same inputs."""
    from flwr.common import ConfigRecord, Parameters, ndarray_to_bytes, parameters_to_ndarrays
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
        generate_shared_key,
    )
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import (
        bytes_to_private_key,
        bytes_to_public_key,
    )

    sm = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    t = threshold_for(n, k)
    cfg = GroupConfig(CTX, n=n, threshold=t, dim=d, k=k, aggregators=(n,))
    nb = cfg.plan.neighbours
    holders = {u: sorted(nb[u] | {u}) for u in range(n)}
    rng = np.random.default_rng(seed)
    drops = draw_dropouts(cfg, dropout, seed)
    timed = list(range(min(n, 5)))

    # Flower's own setup and share-keys stages for every node (not timed)
    states: dict[int, Any] = {}
    for u in range(n):
        st = sm.SecAggPlusState()
        st.nid = u
        sm._setup(st, ConfigRecord({
            Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: len(holders[u]), Key.THRESHOLD: t,
            Key.CLIPPING_RANGE: FL_CLIP, Key.TARGET_RANGE: FL_TARGET, Key.MOD_RANGE: FL_MOD,
            Key.MAX_WEIGHT: FL_MAX_WEIGHT,
        }))
        states[u] = st
    cts: dict[tuple[int, int], bytes] = {}
    need_cts = set(timed).union(*(nb[u] for u in timed))
    for u in sorted(need_cts):
        keys = ConfigRecord({str(v): [states[v].pk1, states[v].pk2] for v in holders[u]})
        res = sm._share_keys(states[u], keys)
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
            cts[(u, dst)] = ct

    stage_s: list[float] = []
    steps: dict[str, list[float]] = defaultdict(list)
    for u in timed:
        member_input(u, d, seed, x_f)
        params = Parameters(tensors=[ndarray_to_bytes(x_f)], tensor_type="numpy.ndarray")
        srcs = sorted(nb[u])
        conf = ConfigRecord({Key.CIPHERTEXT_LIST: [cts[(v, u)] for v in srcs],
                             Key.SOURCE_LIST: srcs})
        t0 = time.perf_counter()
        res = sm._collect_masked_vectors(states[u], conf, FL_EXAMPLES, params)
        stage_s.append(time.perf_counter() - t0)
        del res
        # the same calls, step by step (as in _collect_masked_vectors)
        st = states[u]
        t0 = time.perf_counter()
        arrs = parameters_to_ndarrays(params)
        t1 = time.perf_counter()
        q_ratio = round(FL_EXAMPLES / st.max_weight * st.target_range)
        arrs = parameters_multiply(arrs, q_ratio / st.target_range)
        qs = factor_combine(q_ratio, quantize(arrs, st.clipping_range, st.target_range))
        t2 = time.perf_counter()
        dims = [a.shape for a in qs]
        qs = parameters_addition(qs, pseudo_rand_gen(st.rd_seed, st.mod_range, dims))
        for v in srcs:
            shared = generate_shared_key(
                bytes_to_private_key(st.sk1), bytes_to_public_key(st.public_keys_dict[v][0])
            )
            mask = pseudo_rand_gen(shared, st.mod_range, dims)
            qs = parameters_addition(qs, mask) if u > v else parameters_subtraction(qs, mask)
        qs = parameters_mod(qs, st.mod_range)
        t3 = time.perf_counter()
        blobs = [ndarray_to_bytes(a) for a in qs]
        t4 = time.perf_counter()
        for name, s in (("deserialize", t1 - t0), ("quantize", t2 - t1), ("mask", t3 - t2),
                        ("serialize", t4 - t3)):
            steps[name].append(s)
        del blobs, qs, arrs

    # server unmask, as SecAggPlusWorkflow.unmask_stage from the collected shares on
    alive = set(range(n)) - drops
    sk1 = {u: states[u].sk1 for u in range(n)}
    pk1 = {u: states[u].pk1 for u in range(n)}
    seeds = {u: os.urandom(32) for u in range(n)}
    collected: dict[int, list[bytes]] = {}
    for u in range(n):  # an active holder returns its share of b_u or of sk1_u
        shares = create_shares(seeds[u] if u in alive else sk1[u], t, len(holders[u]))
        collected[u] = [s for h, s in zip(holders[u], shares, strict=True) if h in alive]
    masked_vector = [np.array([round(len(alive) * FL_EXAMPLES / FL_MAX_WEIGHT * FL_TARGET)]),
                     rng.integers(0, FL_MOD, d, dtype=np.int64)]
    t0 = time.perf_counter()
    for nid, share_list in collected.items():
        if len(share_list) < t:
            raise RuntimeError("Flower: not enough shares")
        secret = combine_shares(share_list)
        if nid in alive:
            private_mask = pseudo_rand_gen(secret, FL_MOD, get_parameters_shape(masked_vector))
            masked_vector = parameters_subtraction(masked_vector, private_mask)
        else:
            for v in sorted(nb[nid]):  # every neighbour, dropped or not, as Flower does
                shared = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(pk1[v])
                )
                mask = pseudo_rand_gen(shared, FL_MOD, get_parameters_shape(masked_vector))
                masked_vector = (
                    parameters_addition(masked_vector, mask)
                    if nid > v
                    else parameters_subtraction(masked_vector, mask)
                )
    t1 = time.perf_counter()
    recon = parameters_mod(masked_vector, FL_MOD)
    q_total_ratio, recon = factor_extract(recon)
    inv_dq_total_ratio = FL_TARGET / q_total_ratio
    aggregated = dequantize(recon, FL_CLIP, FL_TARGET)
    offset = -(len(alive) - 1) * FL_CLIP
    for vec in aggregated:
        vec += offset
        vec *= inv_dq_total_ratio
    t2 = time.perf_counter()
    return {
        "client_stage": statistics.median(stage_s),
        "client_steps": {s: statistics.median(v) for s, v in steps.items()},
        "client_mask": statistics.median(steps["mask"]),
        "server_stage": t2 - t0,
        "server_unmask": t1 - t0,
        "server_dequantize": t2 - t1,
        "upload_bytes_per_param": int(masked_vector[1].itemsize),
    }


# ------------------------------------------------------------------ main


def _median_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    return {s: statistics.median(r[s] for r in rows) for s in rows[0]}


def _ours(runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        key: _median_dicts([r[key] for r in runs]) for key in ("member", "aggregator")
    }
    for key in ("member_commit_sha256", "plaintext_sum_total",
                "plaintext_add_per_member", "quantize_per_member"):
        row[key] = statistics.median(r[key] for r in runs)
    return row


def _ratios(ours: dict[str, Any], fl: dict[str, Any] | None) -> dict[str, float]:
    m, a = ours["member"], ours["aggregator"]
    r = {
        "member_mask_over_plaintext_add": m["2_mask_total"] / ours["plaintext_add_per_member"],
        "aggregator_unmask_over_plaintext_sum":
            a["6_unmask_total"] / ours["plaintext_sum_total"],
    }
    if fl is None or "skipped" in fl:
        return r
    steps = fl["client_steps"]
    r["client_stage_flower_over_ours"] = fl["client_stage"] / m["2_client_stage"]
    if "2_client_stage_wire" in m:
        r["client_stage_serialized_flower_over_ours"] = (
            fl["client_stage"] / m["2_client_stage_wire"]
        )
    r["client_quantize_mask_flower_over_ours"] = (
        (steps["quantize"] + steps["mask"]) / m["2_client_stage"]
    )
    r["client_mask_only_flower_over_ours"] = fl["client_mask"] / m["2_mask_total"]
    r["server_stage_flower_over_ours"] = fl["server_stage"] / a["6_server_stage"]
    r["server_unmask_only_flower_over_ours"] = fl["server_unmask"] / a["6_unmask_total"]
    return r


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _parse_group(s: str) -> tuple[int, int | None]:
    n, _, k = s.partition(":")
    return int(n), None if k in ("", "all") else int(k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dims", type=float, nargs="+", default=None)
    ap.add_argument("--groups", nargs="+", default=None, help="N:K or N:all, e.g. 50:3")
    ap.add_argument("--dropouts", type=float, nargs="+", default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=None)
    ap.add_argument("--flwr-path", type=Path, default=None,
                    help="a `pip install --target` directory holding flwr")
    args = ap.parse_args(argv)
    if args.flwr_path is not None:
        sys.path.append(str(args.flwr_path))  # after the environment's numpy & co.
    dims = [int(x) for x in args.dims] if args.dims else (
        [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7])
    groups = [_parse_group(g) for g in args.groups] if args.groups else [
        (n, k) for n in (10, 50) for k in (3, None)]
    dropouts = args.dropouts if args.dropouts is not None else [0.0, 0.1]
    workers = args.workers or sorted({1, default_workers()})
    have_flwr = flower_available()
    encode = wire_encoder()
    results = []
    started = time.perf_counter()
    for d in dims:
        repeats = args.repeats or (1 if args.quick or d >= 10**7 else 3)
        x_f = np.empty(d, np.float32)
        for n, k in groups:
            for dropout in dropouts:
                row: dict[str, Any] = {
                    "d": d,
                    "n": n,
                    "k": "all" if k is None else k,
                    "dropout": dropout,
                    "repeats": repeats,
                    "upload_bytes_per_param": 4,
                }
                # Flower's server takes 7-15 s for all pairs at n = 50 (its Shamir and
                # EC key handling dominate), minutes at d = 1e7
                slow = (k is None and n == 50 and args.quick) or (d >= 10**7 and k is None)
                once = d >= 10**7 or (k is None and n == 50)
                fls: list[dict[str, Any]] = []
                runs: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
                for seed in range(repeats):  # interleaved, so that load drifts hit all
                    if have_flwr and not slow and (seed == 0 or not once):
                        fls.append(run_flower(n, k, d, dropout, seed, x_f))
                    for w in workers:
                        runs[w].append(run_secagg(n, k, d, dropout, seed, x_f, w, encode))
                fl: dict[str, Any]
                if not have_flwr:
                    fl = {"skipped": "flwr is not importable (see --flwr-path)"}
                elif slow:
                    fl = {"skipped": "too slow for this mode (minutes)"}
                else:
                    fl = {s: statistics.median(f[s] for f in fls) for s in fls[0]
                          if s != "client_steps"}
                    fl["client_steps"] = _median_dicts([f["client_steps"] for f in fls])
                    fl["repeats"] = len(fls)
                row["flower"] = fl
                row["threshold"] = runs[workers[0]][0]["threshold"]
                row["dropped"] = runs[workers[0]][0]["dropped"]
                row["ours"] = {}
                for w in workers:
                    ours = _ours(runs[w])
                    ours["ratios"] = _ratios(ours, fl)
                    row["ours"][f"workers={w}"] = ours
                results.append(row)
                brief = {
                    w: {
                        "client": round(o["member"]["2_client_stage"], 5),
                        "mask": round(o["member"]["2_mask_total"], 5),
                        "unmask": round(o["aggregator"]["6_unmask_total"], 4),
                        "x_client": _round(o["ratios"].get("client_stage_flower_over_ours")),
                        "x_unmask": _round(o["ratios"].get("server_stage_flower_over_ours")),
                    }
                    for w, o in row["ours"].items()
                }
                fl_brief = fl if "skipped" in fl else {
                    s: round(fl[s], 4) for s in ("client_stage", "client_mask", "server_stage")}
                print(json.dumps({k2: row[k2] for k2 in ("d", "n", "k", "dropout")}
                                 | {"ours": brief, "flower": fl_brief}), flush=True)
    doc = {
        "benchmark": "mpc.secagg",
        "mode": "quick" if args.quick else "full",
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "default_workers": default_workers(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average": os.getloadavg(),
        },
        "flower": "available" if have_flwr else "skipped: flwr is not importable",
        "wire_encoding": "p2pfl CBOR" if encode is not None else "skipped",
        "notes": "seconds, medians; member stages are per member; aggregator stages are "
        "the aggregator's total per stage; dropouts happen before the masked input; "
        "ours[workers=W]: at most W threads per mask expansion (same results); "
        "2_client_stage = 2_quantize + 2_mask_total (masks, SHA-256 commitment, "
        "signature, message); 2_client_stage_wire adds 2_encode_wire; 6_server_stage "
        "= 6_unmask_total + 6_dequantize; flower.client_stage = its "
        "_collect_masked_vectors (incl. its np.save serialization), flower.client_mask "
        "= its mask arithmetic alone; flower.server_stage = unmask_stage from the "
        "collected shares through dequantization, flower.server_unmask = the "
        "mask-removal loop alone",
        "wall_s": time.perf_counter() - started,
        "results": results,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16],
    }
    args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
