"""What a simulation observed, the summary computed from it, and its files.

Theory of operation
-------------------
During the run :class:`Observations` collects, per peer, every global state the peer
actually held (from its ``RoundStarted``/``Synced`` events: the state round r + 1
starts from is the model *after* round r) and the round records of its
``RoundCompleted`` events.  :func:`build_summary` then derives everything from those
observations alone:

* ``models_agree``: for every round, the set of model hashes that any peer held after
  it has exactly one element (a peer that ever held another model breaks it), and
  every round was completed by at least one peer;
* ``accuracy_by_round``: the model most peers held after each round, evaluated on the
  task's held-out ``test_data`` (digits: the fixed test split) -- or, for a user task
  without one, the sample-weighted mean over the peers' ``val_data``;
* group outcomes, dropped and excluded members from the round records.

Outputs (:func:`write_outputs`): ``summary.json``, ``metrics.jsonl`` (one line per
round), ``accuracy.png`` and ``bytes_per_peer.png`` (matplotlib's object API with the
Agg canvas: no global backend switch, no display needed).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from p2pfl.federation import Federation, GlobalState, RoundCompleted
from p2pfl.identity import atomic_write
from p2pfl.learning.strategy import hash_vector
from p2pfl.wire import PeerId

if TYPE_CHECKING:
    from ._config import SimConfig

__all__ = ["Observations", "Summary", "build_summary", "models_agree", "write_outputs"]


@dataclass
class Observations:
    """Raw facts collected while a simulation ran."""

    peers: list[PeerId]
    held: dict[PeerId, dict[int, set[str]]] = field(default_factory=dict)  # r -> hashes after r
    models: dict[str, np.ndarray] = field(default_factory=dict)
    records: dict[int, dict[str, RoundCompleted]] = field(default_factory=dict)
    dropouts: dict[int, list[PeerId]] = field(default_factory=dict)
    time_by_round: dict[int, tuple[float, float]] = field(default_factory=dict)  # virtual, wall
    syncs: int = 0
    offences: int = 0
    virtual_s: float = 0.0
    wall_start: float = 0.0
    lagging: list[PeerId] = field(default_factory=list)  # alive at the end, not done
    down: list[PeerId] = field(default_factory=list)  # crashed at the end
    bytes_sent: dict[PeerId, int] = field(default_factory=dict)
    malicious: list[PeerId] = field(default_factory=list)
    reputation_by_round: dict[int, dict[str, float]] = field(default_factory=dict)
    weight_by_round: dict[int, dict[str, float]] = field(default_factory=dict)
    reputation: dict[str, float] = field(default_factory=dict)
    credits: dict[str, float] = field(default_factory=dict)

    def record_state(self, peer: PeerId, state: GlobalState) -> None:
        """``peer`` holds ``state``: the model after round ``state.round - 1`` (-1: initial)."""
        h = hash_vector(state.model)
        self.held.setdefault(peer, {}).setdefault(state.round - 1, set()).add(h)
        self.models.setdefault(h, state.model)

    def record_round(self, peer: PeerId, ev: RoundCompleted) -> None:
        self.records.setdefault(ev.record.round, {}).setdefault(ev.record.model_hash.hex(), ev)


def run_fields(cfg: SimConfig, fed: Federation, metrics: list[dict[str, Any]],
               initial: dict[str, float], agree: bool, bad_rounds: list[int],
               canonical: list[str | None]) -> dict[str, Any]:
    """The ``summary.json`` keys every simulation writes, whatever ran it: the
    configuration and the outcome derived from the per-round ``metrics`` and the
    ``canonical`` model hash of each round (index 0: the initial model)."""
    accuracy = [m["accuracy"] for m in metrics]
    return {
        "peers": cfg.peers,
        "rounds": cfg.rounds,
        "secure": fed.secure,
        "aggregation": "secure" if fed.secure else "plaintext",
        "dataset": cfg.dataset if cfg.task is None else None,
        "task": cfg.task or f"{cfg.dataset}-{cfg.model}",
        "partition": cfg.partition,
        "strategy": cfg.strategy,
        "dropout": cfg.dropout,
        "seed": cfg.seed,
        "cohort_size": fed.cohort.size,
        "group_size": fed.cohort.group_size,
        "federation_id": fed.id_hex,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "initial_accuracy": initial.get("accuracy"),
        "accuracy_by_round": accuracy,
        "loss_by_round": [m["loss"] for m in metrics],
        "models_agree": agree,
        "disagreeing_rounds": [r for r in bad_rounds if r >= 0],
        "rounds_completed": sum(h is not None for h in canonical[1:]),
        "model_hash_by_round": canonical[1:],
        "final_model_hash": canonical[-1],
        "dropouts_by_round": [m["dropouts"] for m in metrics],
        "dropped_by_round": [m["dropped"] for m in metrics],
        "binding_failures_by_round": [m["binding_failures"] for m in metrics],
        "aborted_groups_by_round": [m["groups_aborted"] for m in metrics],
        "excluded_by_round": [m["excluded"] for m in metrics],
        "attack": cfg.attack,
        "malicious_fraction": cfg.malicious,
        "defense": cfg.defended,
        "weighting": cfg.weighting,
        "clip_norm": cfg.clip,
    }


def detection_stats(metrics: list[dict[str, Any]], malicious: set[str]) -> dict[str, Any]:
    """Per-round detection over the peers that appear in accepted group results
    (included, dropped or excluded): detection rate = excluded malicious / malicious
    present, false-positive rate = excluded honest / honest present (None: none present).

    A second, separately named measure adds what detection alone does not count: a
    malicious peer whose weight factor before the round was 0 (below the reputation
    floor: never selected) and that is not present is *kept out*; one that is present
    but neither excluded nor dropped is *included* (its update entered a sum).
    ``kept_out_rate`` = (excluded + kept out) / (excluded + kept out + included);
    dropped malicious peers (present, contributed nothing) count in neither and are
    reported as ``malicious_dropped``.  Round 0, and rounds whose previous ``weight``
    map is empty (no ledger observed), count no kept-out peer.
    """
    mal_in = mal_ex = hon_in = hon_ex = kept = dropped = 0
    by_round = []
    prev: dict[str, float] = {}
    for m in metrics:
        present, ex = set(m["in_results"]), set(m["excluded"])
        a, b = len(present & malicious), len(ex & malicious)
        c, d = len(present - malicious), len(ex - malicious)
        k = sum(1 for p in malicious if p not in present and prev.get(p) == 0.0)
        x = len((set(m.get("dropped") or ()) - ex) & malicious)
        mal_in, mal_ex, hon_in, hon_ex = mal_in + a, mal_ex + b, hon_in + c, hon_ex + d
        kept, dropped = kept + k, dropped + x
        by_round.append({"malicious_present": a, "malicious_excluded": b,
                         "honest_present": c, "honest_excluded": d, "malicious_kept_out": k,
                         "malicious_dropped": x})
        prev = m.get("weight") or {}
    included = mal_in - mal_ex - dropped
    blocked = mal_ex + kept
    return {
        "detection_rate": mal_ex / mal_in if mal_in else None,
        "false_positive_rate": hon_ex / hon_in if hon_in else None,
        "malicious_present": mal_in, "malicious_excluded": mal_ex,
        "honest_present": hon_in, "honest_excluded": hon_ex,
        "malicious_kept_out": kept, "malicious_dropped": dropped, "malicious_included": included,
        "kept_out_rate": blocked / (blocked + included) if blocked + included else None,
        "by_round": by_round,
    }


def models_agree(held: dict[PeerId, dict[int, set[str]]], rounds: int) -> tuple[bool, list[int]]:
    """(agree, rounds with disagreement): see the module docstring."""
    bad = []
    for r in range(-1, rounds):
        seen = set().union(*(h.get(r, set()) for h in held.values())) if held else set()
        if len(seen) != 1:
            bad.append(r)
    return not bad, bad


@dataclass(frozen=True, eq=False)
class Summary:
    """The result of a simulation: ``data`` is ``summary.json``; ``final_model`` the
    global model after the last round (most peers' copy); ``metrics`` one dict per round."""

    data: dict[str, Any]
    metrics: list[dict[str, Any]]
    final_model: np.ndarray | None
    federation: Federation

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def _evaluator(tasks: list[Any], seed: int) -> Callable[[np.ndarray], dict[str, float]]:
    from p2pfl.learning.vector import vector_to_model

    task0 = tasks[0]
    scratch = task0.model_factory(seed)
    test = getattr(task0, "test_data", None)

    def evaluate(vec: np.ndarray) -> dict[str, float]:
        vector_to_model(scratch, np.array(vec, dtype=np.float32))
        if test is not None:
            return dict(task0.evaluate(scratch, test))
        acc = loss = n = 0.0
        for t in tasks:
            m = t.evaluate(scratch, t.val_data)
            k = float(m.get("num_samples", 1.0))
            acc, loss, n = acc + k * m["accuracy"], loss + k * m.get("loss", 0.0), n + k
        return {"accuracy": acc / max(n, 1.0), "loss": loss / max(n, 1.0), "num_samples": n}

    return evaluate


def build_summary(cfg: SimConfig, fed: Federation, tasks: list[Any], obs: Observations, *,
                  wall_s: float) -> Summary:
    """Derive the summary from the observations (see the module docstring)."""
    evaluate = _evaluator(tasks, fed.seed)
    agree, bad_rounds = models_agree(obs.held, cfg.rounds)
    metrics: list[dict[str, Any]] = []
    canonical: list[str | None] = []
    for r in range(-1, cfg.rounds):
        counts = Counter(h for held in obs.held.values() for h in held.get(r, ()))
        canonical.append(counts.most_common(1)[0][0] if counts else None)
    initial = evaluate(obs.models[canonical[0]]) if canonical[0] else {}
    prev_wall = obs.wall_start
    for r in range(cfg.rounds):
        h = canonical[r + 1]
        m = evaluate(obs.models[h]) if h is not None else {}
        rec = obs.records.get(r, {}).get(h) if h is not None else None
        groups = rec.record.groups if rec is not None else ()
        excluded = sorted({str(p) for res in (rec.results if rec else ()) for p, _ in res.body.excluded})
        reasons = {str(p): why for res in (rec.results if rec else ()) for p, why in res.body.excluded}
        cohort = sorted(str(p) for g in groups for p in (*g.included, *g.dropped))
        cohort = sorted(set(cohort) | set(excluded))
        t_virtual, t_wall = obs.time_by_round.get(r, (None, None))
        metrics.append({
            "round": r,
            "accuracy": m.get("accuracy"),
            "loss": m.get("loss"),
            "model_hash": h,
            "agree": r not in bad_rounds,
            "distinct_hashes": len({x for held in obs.held.values() for x in held.get(r, ())}),
            "groups": len(groups),
            "groups_accepted": sum(g.status == "accepted" for g in groups),
            "groups_aborted": sum(g.status == "aborted" for g in groups),
            "groups_missing": sum(g.status == "missing" for g in groups),
            "contributors": sum(len(g.included) for g in groups),
            "dropouts": sorted(str(p) for p in obs.dropouts.get(r, [])),
            "dropped": sorted(str(p) for g in groups for p in g.dropped),
            "excluded": excluded,
            "exclusion_reasons": reasons,
            "in_results": cohort,
            "binding_failures": sum(1 for g in groups
                                    if g.status == "aborted" and "binding" in g.reason),
            "reputation": obs.reputation_by_round.get(r, {}),
            "weight": obs.weight_by_round.get(r, {}),
            "virtual_time": t_virtual,
            "wall_s": None if t_wall is None else round(t_wall - prev_wall, 4),
        })
        prev_wall = t_wall if t_wall is not None else prev_wall
    final_hash = canonical[-1]
    bytes_per_peer = {str(p): int(obs.bytes_sent.get(p, 0)) for p in obs.peers}
    data: dict[str, Any] = {
        **run_fields(cfg, fed, metrics, initial, agree, bad_rounds, canonical),
        "reputation": obs.reputation,
        "credits": obs.credits,
        "detection": detection_stats(metrics, {str(p) for p in obs.malicious}),
        "malicious": sorted(str(p) for p in obs.malicious),
        "syncs": obs.syncs,
        "offences": obs.offences,
        "lagging_peers": sorted(str(p) for p in obs.lagging),
        "down_at_end": sorted(str(p) for p in obs.down),
        "wall_s": round(wall_s, 3),
        "virtual_s": round(obs.virtual_s, 3),
        "bytes_sent_per_peer": bytes_per_peer,
        "bytes_sent_mean": round(sum(bytes_per_peer.values()) / max(1, len(bytes_per_peer))),
        "peer_ids": [str(p) for p in obs.peers],
    }
    final = obs.models.get(final_hash) if final_hash is not None else None
    return Summary(data, metrics, final, fed)


def write_outputs(summary: Summary, out: Path) -> None:
    """Write ``summary.json``, ``metrics.jsonl`` and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.json", (json.dumps(summary.data, indent=2) + "\n").encode())
    lines = "".join(json.dumps(m) + "\n" for m in summary.metrics)
    atomic_write(out / "metrics.jsonl", lines.encode())
    _plot_accuracy(summary, out / "accuracy.png")
    if summary.data.get("bytes_sent_per_peer") is not None:  # not known for tcp runs
        _plot_bytes(summary, out / "bytes_per_peer.png")
    _plot_reputation(summary, out / "reputation.png")


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _plot_reputation(summary: Summary, path: Path) -> None:
    """Reputation of every peer after each round (one honest peer's ledger); malicious
    peers in red, honest in grey, the selection floor dashed."""
    from matplotlib.figure import Figure

    rows = [m.get("reputation") or {} for m in summary.metrics]
    if not any(rows):
        return
    malicious = set(summary.data.get("malicious", ()))
    fig = Figure(figsize=(6.4, 4.0), tight_layout=True)
    ax = fig.add_subplot()
    peers = sorted({p for r in rows for p in r})
    for p in peers:
        xs = [i for i, r in enumerate(rows) if p in r]
        ys = [rows[i][p] for i in xs]
        bad = p in malicious
        ax.plot(xs, ys, color="tab:red" if bad else "0.6", lw=1.4 if bad else 0.8,
                alpha=0.9 if bad else 0.6, zorder=3 if bad else 2)
    ax.axhline(summary.federation.ledger.floor, color="k", ls="--", lw=0.8, label="selection floor")
    ax.plot([], [], color="tab:red", label=f"malicious ({len(malicious)})")
    ax.plot([], [], color="0.6", label=f"honest ({len(peers) - len(malicious & set(peers))})")
    ax.set_xlabel("round")
    ax.set_ylabel("reputation")
    ax.set_ylim(0, 1)
    attack = summary.data.get("attack")
    ax.set_title(f"reputation per peer{f' ({attack})' if attack else ''}")
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


def _plot_accuracy(summary: Summary, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    d = summary.data
    fig = Figure(figsize=(6.4, 4.0), tight_layout=True)
    ax = fig.add_subplot()
    xs = list(range(len(d["accuracy_by_round"]) + 1))  # 0: the initial model
    label = "secure" if d["secure"] else "plaintext"
    ax.plot(xs, [d["initial_accuracy"], *d["accuracy_by_round"]], marker="o", markersize=3,
            label=label)
    refs = d.get("references", {})
    if "plaintext_accuracy_by_round" in refs:
        ax.plot(xs[1:], refs["plaintext_accuracy_by_round"], linestyle="--", label="plaintext")
    if "centralized_accuracy" in refs:
        ax.axhline(refs["centralized_accuracy"], color="grey", linestyle=":", label="centralized")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rounds completed")
    ax.set_ylabel("test accuracy (global model)")
    ax.set_title(f"{d['task']}, {d['peers']} peers, {d['partition']}, dropout {d['dropout']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)


def _plot_bytes(summary: Summary, path: Path) -> None:
    from matplotlib.figure import Figure

    per_peer = summary.data["bytes_sent_per_peer"]
    fig = Figure(figsize=(6.4, 3.6), tight_layout=True)
    ax = fig.add_subplot()
    ax.bar(range(len(per_peer)), [v / 1e6 for v in per_peer.values()])
    ax.set_xlabel("peer")
    ax.set_ylabel("MB sent (all layers)")
    ax.set_title("bytes sent per peer")
    _save(fig, path)


@contextmanager
def progress_bar(cfg: SimConfig) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over rounds on stderr (a no-op when disabled)."""
    enabled = cfg.progress if cfg.progress is not None else (not cfg.quiet and sys.stderr.isatty())
    if not enabled:
        yield lambda r: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    mode = "secure" if cfg.secure else "plaintext"
    with Progress(TextColumn("[bold]rounds"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn(f"{cfg.peers} peers, {mode}"),
                  console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("rounds", total=cfg.rounds)
        yield lambda r: progress.update(task, completed=min(r, cfg.rounds))


def centralized_accuracy(cfg: SimConfig) -> float:
    """Test accuracy of the digits model trained on the union of the peers' data with
    the peers' local-training settings for ``rounds x epochs`` epochs (the reference
    of ``benchmarks/centralized.py``)."""
    from p2pfl.learning import (
        DIGITS_TRAIN_CONFIG,
        TensorData,
        digits_model,
        evaluate_classifier,
        load_digits_arrays,
        train_classifier,
    )

    arrays = load_digits_arrays()
    train = TensorData.from_numpy(arrays.x_train, arrays.y_train)
    test = TensorData.from_numpy(arrays.x_test, arrays.y_test)
    config = dataclasses.replace(DIGITS_TRAIN_CONFIG, epochs=cfg.rounds * DIGITS_TRAIN_CONFIG.epochs,
                                 seed=cfg.seed, device=cfg.device)
    model = train_classifier(digits_model(cfg.model, cfg.seed), train, config)
    return float(evaluate_classifier(model, test, device=cfg.device)["accuracy"])
