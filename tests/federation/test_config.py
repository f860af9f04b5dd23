"""The federation file: parsing, normalization, the federation id, and validation."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest

from p2pfl.errors import ConfigError
from p2pfl.federation import Threshold, federation_from_dict, load_federation
from p2pfl.identity import Identity
from p2pfl.learning.strategy import FedAdam

KEYS = [Identity.from_seed(bytes([i]) * 32).public_key for i in range(3)]

FULL = """
# a federation file with every table
name = "digits-demo"
task = "digits"
seed = 7
secure = true

[strategy]
name = "fedadam"
server_lr = 0.01
beta1 = 0.9

[training]
epochs = 2
batch_size = 16
lr = 0.1

[update]
clip_norm = 5.0
weighting = "samples"
sample_cap = 500

[cohort]
size = 20
group_size = 8
min_group_size = 4
aggregators = 2

[secagg]
threshold = 0.6
neighbours = 4
quant_bits = 20
quant_range = 2.0

[timeouts]
train = 60.0
stage = 10.0
sign = 5.0
failover = 5.0
round = 200.0

[membership]
policy = "permissioned"
members = ["{k0}", "{k1}", "{k2}"]
"""


def full_text(**fmt: str) -> str:
    keys = {f"k{i}": k.hex() for i, k in enumerate(KEYS)}
    keys.update(fmt)
    return FULL.format(**keys)


def test_full_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "fed.toml"
    f.write_text(full_text())
    fed = load_federation(f)
    assert fed.name == "digits-demo" and fed.seed == 7 and fed.secure
    assert isinstance(fed.strategy, FedAdam) and fed.strategy.server_lr == 0.01
    assert fed.strategy.beta2 == 0.99  # default filled in
    assert fed.training.epochs == 2 and fed.training.momentum == 0.9
    assert fed.cohort.max_group_size == 11
    assert fed.threshold_for(8) == 5 and fed.threshold_for(5) == 3
    assert fed.membership.members == tuple(sorted(KEYS))
    assert Identity.from_seed(bytes([1]) * 32).peer_id in fed.membership.member_ids
    assert not fed.membership.admits(Identity.from_seed(bytes([9]) * 32).peer_id)
    assert len(fed.id) == 32
    cfg = fed.train_config(seed=3, device="cpu")
    assert cfg.epochs == 2 and cfg.prox_mu == 0.0 and cfg.seed == 3


def test_minimal_file_gets_defaults() -> None:
    fed = federation_from_dict({"name": "x", "task": "digits"})
    assert fed.secure and fed.strategy.name == "fedavg" and fed.cohort.aggregators == 2
    assert fed.membership.policy == "open" and fed.membership.admits(
        Identity.from_seed(bytes(32)).peer_id)


def test_id_ignores_formatting_and_spelling() -> None:
    import tomllib

    a = federation_from_dict(tomllib.loads(full_text()))
    b32 = [base64.b32encode(k).decode().rstrip("=").lower() for k in KEYS]
    text = full_text(k0=b32[2], k1=KEYS[0].hex().upper(), k2=b32[1])  # other order, spellings
    text = text.replace("server_lr = 0.01", "server_lr = 1e-2   # same value")
    text = text.replace("round = 200.0", "round = 200").replace("\n\n", "\n\n\n")
    b = federation_from_dict(tomllib.loads(text))
    assert a.id == b.id and a == b and hash(a) == hash(b)
    assert federation_from_dict(a.to_dict()).id == a.id  # to_dict round-trips


@pytest.mark.parametrize("change", [
    ("seed", 8), ("name", "other"), ("strategy.server_lr", 0.02), ("cohort.size", 21),
    ("secagg.threshold", 4), ("timeouts.sign", 6.0), ("training.lr", 0.2),
])
def test_id_changes_with_any_value(change: tuple[str, Any]) -> None:
    import tomllib

    base = tomllib.loads(full_text())
    other = copy.deepcopy(base)
    key, value = change
    if "." in key:
        t, k = key.split(".")
        other[t][k] = value
    else:
        other[key] = value
    assert federation_from_dict(base).id != federation_from_dict(other).id


def test_threshold_resolution_is_exact() -> None:
    assert Threshold(fraction=0.1).resolve(10) == 1  # 0.1 * 10 in floats is 1.0000000000000002
    assert Threshold(fraction=0.6).resolve(5) == 3
    assert Threshold(fraction=0.7).resolve(10) == 7
    assert Threshold(fraction=1.0).resolve(7) == 7
    assert Threshold(fraction=0.01).resolve(3) == 1
    assert Threshold(count=4).resolve(3) == 3 and Threshold(count=4).resolve(9) == 4


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("missing name", {"name": None}, "name: required"),
    ("unknown top key", {"colour": "red"}, "colour: unknown key"),
    ("unknown table key", {"cohort": {"sise": 3}}, "cohort.sise: unknown key"),
    ("table not a table", {"cohort": 3}, "cohort: must be a table"),
    ("seed type", {"seed": "7"}, "seed: must be an integer"),
    ("secure type", {"secure": 1}, "secure: must be true or false"),
    ("negative cohort", {"cohort": {"size": 0}}, "cohort.size"),
    ("min group > group", {"cohort": {"group_size": 4, "min_group_size": 5}}, "cohort.min_group_size"),
    ("secure tiny groups", {"cohort": {"group_size": 4, "min_group_size": 2}}, "cohort.min_group_size: must be >= 3"),
    ("aggregators > min", {"cohort": {"min_group_size": 3, "aggregators": 4}}, "cohort.aggregators"),
    ("threshold zero", {"secagg": {"threshold": 0}}, "secagg.threshold"),
    ("threshold fraction > 1", {"secagg": {"threshold": 1.5}}, "secagg.threshold"),
    ("threshold count > min", {"secagg": {"threshold": 9}}, "secagg.threshold: 9 exceeds"),
    ("threshold string", {"secagg": {"threshold": "half"}}, "secagg.threshold"),
    ("threshold 1 secure", {"secagg": {"threshold": 1}}, "secagg.threshold: must be at least 2"),
    ("neighbours 1", {"secagg": {"neighbours": 1}}, "secagg.neighbours"),
    ("quant bits", {"secagg": {"quant_bits": 4}}, "secagg.quant_bits: a 4-bit sum"),
    ("quant range", {"secagg": {"quant_range": 0.0}}, "secagg.quant_range"),
    ("clip inf secure", {"update": {"clip_norm": float("inf")}}, "update.clip_norm: must be finite"),
    ("clip nan", {"update": {"clip_norm": float("nan")}}, "update.clip_norm"),
    ("weighting", {"update": {"weighting": "loss"}}, "update.weighting: must be one of"),
    ("momentum", {"training": {"momentum": 1.0}}, "training.momentum"),
    ("round timeout", {"timeouts": {"round": 61.0}}, "timeouts.round: must be >="),
    ("train vs stage", {"timeouts": {"train": 15.0}}, "timeouts.train"),
    ("negative timeout", {"timeouts": {"sign": -1.0}}, "timeouts.sign"),
    ("policy", {"membership": {"policy": "closed"}}, "membership.policy"),
    ("no members", {"membership": {"policy": "permissioned"}}, "membership.members"),
    ("members with open", {"membership": {"members": [KEYS[0].hex()]}}, "membership.members: only"),
    ("bad key", {"membership": {"policy": "permissioned", "members": ["abc"]}}, "membership.members[0]"),
    ("dup key", {"membership": {"policy": "permissioned", "members": [KEYS[0].hex(), KEYS[0].hex()]}},
     "listed twice"),
    ("newcomer weight", {"membership": {"newcomer_weight": 1.5}}, "membership.newcomer_weight"),
    ("unknown strategy", {"strategy": {"name": "fedsgd"}}, "strategy.name"),
    ("unknown hparam", {"strategy": {"name": "fedavg", "beta1": 0.9}}, "strategy.beta1: unknown"),
    ("hparam type", {"strategy": {"name": "fedavg", "server_lr": "1"}}, "strategy.server_lr"),
    ("hparam value", {"strategy": {"name": "fedavg", "server_lr": -1.0}}, "strategy.server_lr: "),
]


@pytest.mark.parametrize("why, patch, needle", BAD, ids=[b[0] for b in BAD])
def test_invalid_values_name_the_key(why: str, patch: dict[str, Any], needle: str) -> None:
    d: dict[str, Any] = {"name": "x", "task": "digits", "cohort": {"group_size": 8, "min_group_size": 4}}
    for k, v in patch.items():
        if v is None:
            d.pop(k)
        elif isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    with pytest.raises(ConfigError) as e:
        federation_from_dict(d)
    assert needle in str(e.value), str(e.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_federation(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_federation(bad)
