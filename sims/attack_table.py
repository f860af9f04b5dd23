"""Every built-in attack against the no-attack run: the table of docs/detection.md.

    python sims/attack_table.py [--peers 30] [--rounds 30] [--seed 0] [--out runs/attacks]

Runs ``p2pfl sim`` (the library API, :func:`p2pfl.sim.run_simulation`) once per row --
digits, Dirichlet(0.5), secure, uniform weights, the same seed -- writes each run's
outputs under ``OUT/<row>/`` and the table as ``OUT/table.json`` and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from p2pfl.sim import SimConfig, run_simulation

ROWS: list[tuple[str, str | None, float, bool]] = [
    ("no attack, defenses off", None, 0.0, False),
    ("no attack, defenses on", None, 0.0, True),
    ("30% signflip", "signflip", 0.3, True),
    ("10% scale", "scale", 0.1, True),
    ("30% noise", "noise", 0.3, True),
    ("20% labelflip", "labelflip", 0.2, True),
    ("20% freerider", "freerider", 0.2, True),
    ("40% sybil", "sybil", 0.4, True),
    ("1 sketchliar", "sketchliar", 0.034, True),
]


def _rank_ok(metrics: list[dict[str, Any]], malicious: set[str], by: int) -> bool | None:
    """Every malicious peer below every honest peer by reputation after round ``by``."""
    if not malicious or len(metrics) <= by:
        return None
    rep = metrics[by]["reputation"]
    if not rep:
        return None
    bad = [v for k, v in rep.items() if k in malicious]
    good = [v for k, v in rep.items() if k not in malicious]
    return bool(bad and good and max(bad) < min(good))


def row_stats(name: str, data: dict[str, Any], metrics: list[dict[str, Any]],
              base_acc: float | None) -> dict[str, Any]:
    mal = set(data["malicious"])
    det = data["detection"]
    rep5 = metrics[min(5, len(metrics) - 1)]["reputation"]
    out: dict[str, Any] = {
        "row": name,
        "final_accuracy": data["final_accuracy"],
        "delta_vs_no_attack": (None if base_acc is None or data["final_accuracy"] is None
                               else data["final_accuracy"] - base_acc),
        "models_agree": data["models_agree"],
        "detection_rate": det["detection_rate"],
        "malicious_excluded": det["malicious_excluded"],
        "malicious_present": det["malicious_present"],
        "kept_out_rate": det.get("kept_out_rate"),
        "malicious_included": det.get("malicious_included"),
        "malicious_dropped": det.get("malicious_dropped"),
        "false_positive_rate": det["false_positive_rate"],
        "honest_excluded": det["honest_excluded"],
        "honest_present": det["honest_present"],
        "max_malicious_reputation_r5": max((v for k, v in rep5.items() if k in mal), default=None),
        "malicious_below_all_honest_r10": _rank_ok(metrics, mal, 10),
        "malicious_credits": sum(v for k, v in data["credits"].items() if k in mal),
        "binding_failures": sum(data["binding_failures_by_round"]),
        "aborted_groups": sum(data["aborted_groups_by_round"]),
        "wall_s": data["wall_s"],
    }
    if metrics and len(metrics) > 3 and metrics[3]["weight"]:
        w = metrics[3]["weight"]
        honest = [v for k, v in w.items() if k not in mal]
        out["malicious_weight_r3"] = sum(v for k, v in w.items() if k in mal)
        out["min_honest_weight_r3"] = min(honest) if honest else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/attacks")
    ap.add_argument("--only", default=None, help="comma-separated row numbers to run")
    args = ap.parse_args()
    out = Path(args.out)
    base = SimConfig(peers=args.peers, rounds=args.rounds, partition="dirichlet:0.5",
                     secure=True, weighting="uniform", seed=args.seed, quiet=True,
                     progress=False)
    pick = {int(x) for x in args.only.split(",")} if args.only else set(range(len(ROWS)))
    table: list[dict[str, Any]] = []
    base_acc = None
    for i, (name, attack, frac, defense) in enumerate(ROWS):
        if i not in pick:
            continue
        cfg = dataclasses.replace(base, attack=attack, malicious=frac, defense=defense,
                                  out=out / f"row{i}")
        s = run_simulation(cfg)
        if i == 1:
            base_acc = s.data["final_accuracy"]
        row = row_stats(name, s.data, s.metrics, base_acc)
        table.append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(table, indent=1))
    cols = ["row", "final_accuracy", "delta_vs_no_attack", "detection_rate", "kept_out_rate",
            "false_positive_rate", "max_malicious_reputation_r5",
            "malicious_below_all_honest_r10", "malicious_credits", "binding_failures"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
