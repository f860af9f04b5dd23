"""``p2pfl sim``: the summary's fields are present and true (recomputed here from the
returned model and the written files), the agreement check is not vacuous, dropouts
happen and rounds still complete, the CLI face."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pfl.cli import main
from p2pfl.errors import ConfigError
from p2pfl.learning import (
    TensorData,
    digits_model,
    evaluate_classifier,
    hash_vector,
    load_digits_arrays,
    vector_to_model,
)
from p2pfl.sim import SimConfig, models_agree, run_simulation

FIELDS = ("peers", "rounds", "secure", "final_accuracy", "accuracy_by_round", "models_agree",
          "dropouts_by_round", "excluded_by_round", "malicious", "reputation", "credits",
          "wall_s", "bytes_sent_per_peer", "model_hash_by_round")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("sim")
    return run_simulation(SimConfig(peers=5, rounds=3, out=out, progress=False)), out


def test_summary_fields_are_present_and_true(small_run: tuple[object, Path]) -> None:
    summary, out = small_run
    data = json.loads((out / "summary.json").read_text())
    for key in FIELDS:
        assert key in data, key
    assert data["peers"] == 5 and data["rounds"] == 3
    assert data["models_agree"] is True and data["rounds_completed"] == 3
    assert data["malicious"] == [] and data["attack"] is None
    # every peer contributed and was never excluded: reputation above the prior (0.5)
    assert set(data["reputation"]) == set(data["peer_ids"]) == set(data["credits"])
    assert all(v > 0.5 for v in data["reputation"].values())
    assert all(v > 0 for v in data["credits"].values())
    assert data["excluded_by_round"] == [[], [], []]
    assert data["dropouts_by_round"] == [[], [], []]
    # the final accuracy, recomputed from the returned model on the held-out split
    model = summary.final_model  # type: ignore[attr-defined]
    assert hash_vector(model) == data["model_hash_by_round"][-1] == data["final_model_hash"]
    arrays = load_digits_arrays()
    net = vector_to_model(digits_model("mlp", 0), model.copy())
    acc = evaluate_classifier(net, TensorData.from_numpy(arrays.x_test, arrays.y_test),
                              device="cpu")["accuracy"]
    assert acc == data["final_accuracy"] == data["accuracy_by_round"][-1]
    assert data["final_accuracy"] > 0.8
    # bytes come from the memory network's counters, for every peer
    assert set(data["bytes_sent_per_peer"]) == set(data["peer_ids"])
    assert all(v > 10_000 for v in data["bytes_sent_per_peer"].values())
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0, 1, 2]
    assert [json.loads(line)["accuracy"] for line in lines] == data["accuracy_by_round"]
    for png in ("accuracy.png", "bytes_per_peer.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_agree_is_false_when_a_peer_holds_another_model(tmp_path: Path) -> None:
    # peer 1 restarts at round 1 from a state with one flipped bit: it must show
    s = run_simulation(SimConfig(peers=4, rounds=3, out=None, progress=False,
                                 corrupt=((1, 1),)))
    assert s["models_agree"] is False
    assert 0 in s["disagreeing_rounds"]


def test_models_agree_oracle() -> None:
    from p2pfl.wire import PeerId

    a, b = PeerId(bytes(20)), PeerId(bytes([1]) * 20)
    same = {a: {-1: {"x"}, 0: {"y"}}, b: {-1: {"x"}, 0: {"y"}}}
    assert models_agree(same, 1) == (True, [])
    assert models_agree({**same, b: {-1: {"x"}, 0: {"y", "z"}}}, 1) == (False, [0])
    assert models_agree({a: {-1: {"x"}}}, 1) == (False, [0])  # round 0 never completed


def test_dropouts_happen_and_rounds_complete() -> None:
    s = run_simulation(SimConfig(peers=10, rounds=3, dropout=0.2, out=None, progress=False))
    assert [len(d) for d in s["dropouts_by_round"]] == [2, 2, 2]
    assert s["rounds_completed"] == 3 and s["models_agree"] is True
    assert s["final_accuracy"] > 0.8


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--dropout is not supported with --transport tcp"):
        run_simulation(SimConfig(transport="tcp", dropout=0.2, out=None))
    with pytest.raises(ConfigError, match="--dropout"):
        run_simulation(SimConfig(dropout=1.5, out=None))
    with pytest.raises(ConfigError, match="--partition"):
        run_simulation(SimConfig(partition="zipf", out=None))


def test_cli_sim_writes_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["sim", "--peers", "3", "--rounds", "1", "--plaintext", "--out", str(out),
                 "--quiet"]) == 0
    data = json.loads((out / "summary.json").read_text())
    assert data["peers"] == 3 and data["secure"] is False
    assert main(["sim", "--transport", "tcp", "--attack", "signflip", "--malicious", "0.2",
                 "--out", str(out)]) == 2
    assert "--attack is not supported with --transport tcp" in capsys.readouterr().err
