"""Scale test: how a simulation's wall time and memory grow with the number of peers.

    python sims/scale.py --peers 100 300 1000 --rounds 3
    python sims/scale.py --peers 1000 --cohort 100 --rounds 3

Runs ``p2pfl.sim.run_simulation`` once per size -- each in its own child process, so
that every size reports its own peak memory -- with the ``p2pfl sim`` defaults (secure
aggregation with the sketch stage, IID digits, MLP, groups of 10, cohort = all peers
unless ``--cohort``), and prints one JSON object per size:

* ``wall_s``: the whole run (data, keys, peers, rounds, summary; no plots);
* ``wall_per_round_s``: wall seconds of each round (the first includes start-up:
  loading the data, making the keys and opening the peers);
* ``peak_rss_mib``: peak resident memory of the process (``resource.getrusage``);
* ``virtual_s``, ``final_accuracy``, ``models_agree``, ``aborted_groups_by_round``,
  ``offences``, ``load_1min`` (the machine's load average after the run: the wall
  times are only comparable at similar loads).

Results are in ``docs/simulation.md`` (section "Scale").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_one(peers: int, rounds: int, cohort: int | None, secure: bool, seed: int) -> dict[str, object]:
    from p2pfl.sim import SimConfig, run_simulation

    cfg = SimConfig(peers=peers, rounds=rounds, cohort=cohort, secure=secure, seed=seed,
                    out=None, quiet=True, progress=False)
    t0 = time.perf_counter()
    s = run_simulation(cfg)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "peers": peers,
        "rounds": rounds,
        "cohort": s["cohort_size"],
        "secure": s["secure"],
        "wall_s": round(wall, 1),
        "wall_per_round_s": [m["wall_s"] for m in s.metrics],
        "peak_rss_mib": rss // 1024,
        "virtual_s": s["virtual_s"],
        "final_accuracy": s["final_accuracy"],
        "models_agree": s["models_agree"],
        "rounds_completed": s["rounds_completed"],
        "aborted_groups_by_round": s["aborted_groups_by_round"],
        "offences": s["offences"],
        "bytes_sent_mean": s["bytes_sent_mean"],
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cohort", type=int, default=None, help="peers per round (default: all)")
    ap.add_argument("--plaintext", action="store_true", help="plaintext aggregation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.peers[0], args.rounds, args.cohort, not args.plaintext,
                                 args.seed)), flush=True)
        return
    for n in args.peers:
        cmd = [sys.executable, __file__, "--child", "--peers", str(n), "--rounds", str(args.rounds),
               "--seed", str(args.seed)]
        if args.cohort is not None:
            cmd += ["--cohort", str(min(args.cohort, n))]
        if args.plaintext:
            cmd.append("--plaintext")
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
