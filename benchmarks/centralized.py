"""Centralized reference for the digits accuracy claims.

Trains the digits model on the whole digits train split (the union of every peer's
data, train and validation parts) with the same local-training settings a peer uses
(``DIGITS_TRAIN_CONFIG``) and a comparable number of passes: ``rounds x local
epochs`` epochs, so each sample is seen as often as in a federated run of ``rounds``
rounds. Reports test accuracy on the fixed held-out split as JSON.

    python benchmarks/centralized.py --out out/centralized.json [--rounds 30] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from p2pfl.learning import (
    DIGITS_TRAIN_CONFIG,
    TensorData,
    digits_model,
    evaluate_classifier,
    hash_vector,
    load_digits_arrays,
    model_to_vector,
    num_params,
    train_classifier,
)


def run(model_name: str, rounds: int, seed: int, device: str) -> dict[str, object]:
    arrays = load_digits_arrays()
    train = TensorData.from_numpy(arrays.x_train, arrays.y_train)
    test = TensorData.from_numpy(arrays.x_test, arrays.y_test)
    config = dataclasses.replace(
        DIGITS_TRAIN_CONFIG, epochs=rounds * DIGITS_TRAIN_CONFIG.epochs, seed=seed, device=device
    )
    model = digits_model(model_name, seed)
    t0 = time.perf_counter()
    train_classifier(model, train, config)
    train_s = time.perf_counter() - t0
    metrics = evaluate_classifier(model, test, device=device)
    return {
        "seed": seed,
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "train_s": round(train_s, 3),
        "model_hash": hash_vector(model_to_vector(model)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the JSON report here (also printed)")
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--rounds", type=int, default=30, help="federated rounds to match")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arrays = load_digits_arrays()
    runs = [run(args.model, args.rounds, s, args.device) for s in seeds]
    accs = [float(r["test_accuracy"]) for r in runs]  # type: ignore[arg-type]
    report = {
        "benchmark": "centralized",
        "dataset": "digits",
        "model": args.model,
        "num_params": num_params(digits_model(args.model, 0)),
        "train_samples": int(arrays.y_train.shape[0]),
        "test_samples": int(arrays.y_test.shape[0]),
        "rounds_matched": args.rounds,
        "train_config": dataclasses.asdict(
            dataclasses.replace(
                DIGITS_TRAIN_CONFIG, epochs=args.rounds * DIGITS_TRAIN_CONFIG.epochs
            )
        ),
        "test_accuracy_mean": statistics.fmean(accs),
        "test_accuracy_min": min(accs),
        "test_accuracy_max": max(accs),
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
