"""Ready-made sweeps through the library API (the same outputs as ``p2pfl sim``).

    python sims/sweeps.py noniid  [--peers 20] [--rounds 30] [--out runs/noniid]
    python sims/sweeps.py dropout [--peers 20] [--rounds 30] [--out runs/dropout]

``noniid``: IID and Dirichlet(A) for A in 1.0, 0.5, 0.1, secure vs plaintext.
``dropout``: dropout F in 0, 0.1, 0.2, 0.3, secure.  Each run writes its outputs under
``OUT/<name>/``; the sweep prints one JSON line per run and writes ``OUT/sweep.json``.
See also ``sims/attack_table.py`` (every attack) and ``sims/scale.py`` (many peers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from p2pfl.sim import SimConfig, run_simulation


def runs(kind: str) -> list[tuple[str, dict[str, Any]]]:
    if kind == "noniid":
        return [(f"{p.replace(':', '')}-{'secure' if s else 'plain'}",
                 {"partition": p, "secure": s})
                for p in ("iid", "dirichlet:1.0", "dirichlet:0.5", "dirichlet:0.1")
                for s in (True, False)]
    if kind == "dropout":
        return [(f"dropout{f}", {"dropout": f, "partition": "dirichlet:0.5"})
                for f in (0.0, 0.1, 0.2, 0.3)]
    raise SystemExit(f"unknown sweep {kind!r}: noniid or dropout")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["noniid", "dropout"])
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or f"runs/{args.kind}")
    base = SimConfig(peers=args.peers, rounds=args.rounds, seed=args.seed, quiet=True,
                     progress=False)
    rows = []
    for name, over in runs(args.kind):
        s = run_simulation(dataclasses.replace(base, out=out / name, **over))
        row = {"run": name, **over, "final_accuracy": s["final_accuracy"],
               "models_agree": s["models_agree"], "aborted_groups": sum(s["aborted_groups_by_round"]),
               "excluded": sum(len(e) for e in s["excluded_by_round"]), "wall_s": s["wall_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
