"""``p2pfl sim --transport tcp``: one ``p2pfl node`` process per peer over loopback TCP."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from p2pfl.errors import ConfigError
from p2pfl.federation import federation_from_dict
from p2pfl.sim import SimConfig, build_federation, run_simulation, sim_identities
from p2pfl.sim._processes import federation_toml

DEADLINE = 240  # seconds, the whole command


@pytest.mark.parametrize("secure", [True, False])
def test_the_federation_file_loads_back_to_the_same_federation(secure: bool) -> None:
    cfg = SimConfig(peers=5, secure=secure, weighting="uniform", out=None)
    fed = build_federation(cfg, sim_identities(5, 3), sample_cap=300, training={"epochs": 2})
    text = federation_toml(fed)
    assert federation_from_dict(tomllib.loads(text)).id == fed.id


@pytest.mark.parametrize("option", [
    {"dropout": 0.2}, {"attack": "signflip", "malicious": 0.2}, {"reference": True},
    {"peers": 65},
])
def test_what_tcp_cannot_do_is_refused_before_starting(option: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="--transport tcp"):
        run_simulation(SimConfig(transport="tcp", out=None, **option))  # type: ignore[arg-type]


@pytest.mark.slow
def test_sim_over_tcp_processes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "p2pfl", "sim", "--transport", "tcp", "--peers", "4",
         "--rounds", "2", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads((out / "summary.json").read_text())
    print(f"\nstartup {d['startup_s']} s, wall {d['wall_s']} s, accuracy {d['accuracy_by_round']}")
    assert d["transport"] == "tcp" and d["peers"] == 4
    assert d["models_agree"] is True and d["rounds_completed"] == 2
    assert isinstance(d["final_accuracy"], float) and d["final_accuracy"] > 0.8
    # every round's model came from the nodes' model files (keep_models), hash-checked
    assert len(d["accuracy_by_round"]) == 2
    assert all(isinstance(a, float) for a in d["accuracy_by_round"])
    assert d["models_loaded_by_round"] == [True, True] and d["model_files_rejected"] == 0
    assert "rounds_replayed" not in d
    assert d["down_at_end"] == [] and d["lagging_peers"] == []
    assert set(d["node_exit_codes"].values()) == {0}  # clean shutdowns on SIGINT
    assert d["aborted_groups_by_round"] == [0, 0]
    assert set(d["reputation"]) == set(d["peer_ids"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1]
    assert all(isinstance(m["accuracy"], float) for m in metrics)
    assert all(m["groups_accepted"] == m["groups"] >= 1 for m in metrics)
    assert (out / "accuracy.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "nodes").iterdir()) == [f"p{i}.log" for i in range(4)]
