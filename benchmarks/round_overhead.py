"""Round overhead of secure aggregation: one secure round vs one plaintext round.

    python benchmarks/round_overhead.py --out FILE [--repeats R] [--quick]

For N in {10, 20} peers and D in {4810 (the digits MLP), 10^6 (synthetic)} parameters,
N peers run one whole round (``RoundMachine``: schedule, aggregation, signed group
results gossiped to everyone, the global step) in one process, once with
``PlaintextAggregation`` and once with ``SecureAggregation``, from the same state and
the same updates. Training is a fake instant trainer (a precomputed random update), so
what is measured is the aggregation and the round around it. Every message is encoded
and decoded with the wire codec on every hop; broadcasts are encoded once and decoded
by every peer. The federation: groups of 10 (one group at N = 10, two at N = 20),
2 aggregators, threshold 0.6, all-pairs masks, 32-bit quantization.

Two times per run, medians over repeats, in seconds:

* ``sim_s``: wall time of the whole round with every peer in this one process (the
  sum of all peers' work);
* ``latency_s``: the round's critical path if every peer ran on its own core with an
  instant network: each peer has a logical clock, a message carries its sender's
  clock, a receiver starts at ``max(own clock, message clock)`` and adds the time its
  machine took. With instant training, the key exchange (which in a real round
  overlaps local training) is on this path.

``bytes_per_peer`` is the mean of the encoded bytes each peer sent (direct messages
plus one copy of each broadcast).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mpc.rand import SeededRng
from p2pfl.federation import (
    Federation,
    GlobalState,
    PlaintextAggregation,
    RoundCompleted,
    RoundMachine,
    TrainRequested,
    federation_from_dict,
    schedule_round,
)
from p2pfl.federation.aggregation import AggregationFactory
from p2pfl.federation.secure import SecureAggregation
from p2pfl.identity import Identity
from p2pfl.wire import PeerId, decode, encode

DIGITS_MLP = 64 * 64 + 64 + 64 * 10 + 10  # p2pfl.learning.digits MLP (64-64-10): 4810


def federation(ids: list[Identity]) -> Federation:
    return federation_from_dict({
        "name": "bench", "task": "synthetic", "secure": True,
        "update": {"clip_norm": 10.0},
        "cohort": {"size": len(ids), "group_size": 10, "min_group_size": 5, "aggregators": 2},
        "secagg": {"threshold": 0.6, "quant_bits": 32, "quant_range": 1.0},
        "membership": {"policy": "permissioned", "members": [i.public_key.hex() for i in ids]},
    })


def run_round(fed: Federation, ids: list[Identity], state: GlobalState,
              updates: dict[PeerId, np.ndarray], factory: AggregationFactory,
              seed: int) -> dict[str, Any]:
    """One round on every peer; returns timings, bytes and the model hashes."""
    peers = [i.peer_id for i in ids]
    clock = dict.fromkeys(peers, 0.0)
    sent = dict.fromkeys(peers, 0)
    hashes: set[bytes] = set()
    queue: deque[tuple[PeerId, PeerId | None, bytes, float]] = deque()
    machines: dict[PeerId, RoundMachine] = {}

    def collect(p: PeerId) -> list[tuple[PeerId | None, bytes]]:
        m, out = machines[p], []
        while True:
            for o in m.messages_to_send():
                data = encode(o.message)
                sent[p] += len(data)
                out.append((o.recipient if isinstance(o.recipient, PeerId) else None, data))
            ev = m.next_event()
            if ev is None:
                return out
            if isinstance(ev, TrainRequested):
                m.training_done(updates[p], 100, 0.0)  # the fake instant trainer
            elif isinstance(ev, RoundCompleted):
                hashes.add(ev.record.model_hash)

    def step(p: PeerId, start: float, fn: Any) -> None:
        clock[p] = max(clock[p], start)
        t = time.perf_counter()
        fn()
        out = collect(p)
        clock[p] += time.perf_counter() - t
        queue.extend((p, to, data, clock[p]) for to, data in out)

    t0 = time.perf_counter()
    for i, p in zip(ids, peers, strict=True):
        sched = schedule_round(fed, state.round, state.beacon, peers)
        machines[p] = RoundMachine(fed, i, state, sched, aggregation=factory,
                                   rng=SeededRng(p.raw + seed.to_bytes(4, "little")))
    for p in peers:
        m = machines[p]
        step(p, 0.0, lambda m=m: m.start(0.0))
        if (d := m.next_deadline()) is not None and d <= 0.0:  # payloads queued at start
            step(p, 0.0, lambda m=m: m.handle_timer(0.0))
    while queue:
        sender, to, data, stamp = queue.popleft()
        for q in [to] if to is not None else [q for q in peers if q != sender]:
            m = machines[q]
            step(q, stamp, lambda m=m, s=sender, d=data: m.receive(s, decode(d), 0.0))
    sim = time.perf_counter() - t0
    unfinished = [p for p in peers if not machines[p].finished]
    return {"sim_s": sim, "latency_s": max(clock.values()), "hashes": hashes,
            "bytes_per_peer": statistics.mean(sent.values()), "unfinished": len(unfinished)}


def bench(n: int, dim: int, repeats: int) -> dict[str, Any]:
    ids = [Identity.from_seed(hashlib.blake2b(b"bench" + bytes([i]), digest_size=32).digest())
           for i in range(n)]
    fed = federation(ids)
    rng = np.random.default_rng(0)
    state = GlobalState.initial(fed, rng.normal(size=dim).astype(np.float32))
    updates = {i.peer_id: (rng.normal(size=dim) * 0.01).astype(np.float32) for i in ids}
    out: dict[str, Any] = {"peers": n, "dim": dim}
    runs: dict[str, list[dict[str, Any]]] = {"plaintext": [], "secure": []}
    for r in range(repeats):
        for name, factory in (("plaintext", PlaintextAggregation), ("secure", SecureAggregation)):
            res = run_round(fed, ids, state, updates, factory, r)
            if res["unfinished"] or len(res["hashes"]) != 1:
                raise RuntimeError(f"{name} round did not complete in agreement: {res}")
            runs[name].append(res)
    for name, rs in runs.items():
        out[name] = {
            "sim_s": round(statistics.median(x["sim_s"] for x in rs), 4),
            "latency_s": round(statistics.median(x["latency_s"] for x in rs), 4),
            "bytes_per_peer": int(statistics.median(x["bytes_per_peer"] for x in rs)),
        }
    for key in ("sim_s", "latency_s", "bytes_per_peer"):
        out[f"ratio_{key}"] = round(out["secure"][key] / out["plaintext"][key], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="one repeat, D = 4810 only")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    dims = [DIGITS_MLP] if args.quick else [DIGITS_MLP, 1_000_000]
    results = [bench(n, d, repeats) for d in dims for n in (10, 20)]
    text = json.dumps({
        "benchmark": "round_overhead",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor(),
        "repeats": repeats,
        "results": results,
    }, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
