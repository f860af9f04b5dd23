"""Attacks in small secure simulations: detection, the binding check, reputation."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.errors import ConfigError
from p2pfl.federation.adversary import AttackContext
from p2pfl.ledger import reason_code
from p2pfl.sim import SimConfig, run_simulation
from p2pfl.sim.attacks import choose_malicious, make_attack
from p2pfl.wire import PeerId

BASE = SimConfig(peers=10, rounds=3, secure=True, weighting="uniform", out=None, quiet=True,
                 progress=False)


def _run(**kw: object):  # type: ignore[no-untyped-def]
    import dataclasses

    return run_simulation(dataclasses.replace(BASE, **kw))  # type: ignore[arg-type]


def test_boosted_updates_are_excluded_every_round_and_honest_ones_kept() -> None:
    s = _run(attack="scale", malicious=0.2)
    mal = set(s["malicious"])
    assert len(mal) == 2 and s["models_agree"]
    for m in s.metrics:
        present = set(m["in_results"]) & mal
        assert present <= set(m["excluded"])  # every boosted update present is excluded
        assert set(m["excluded"]) <= mal  # and no honest one
        assert all(reason_code(m["exclusion_reasons"][p]) == "norm" for p in present)
    assert s["detection"]["malicious_present"] >= 2


def test_without_defenses_nothing_is_excluded() -> None:
    s = _run(attack="scale", malicious=0.2, defense=False)
    assert all(not m["excluded"] for m in s.metrics)


def test_a_sketch_liar_fails_the_binding_check_and_sinks() -> None:
    s = _run(attack="sketchliar", malicious=0.1)
    (liar,) = s["malicious"]
    assert s["binding_failures_by_round"][0] >= 1  # the round it lied in
    rep = s["reputation"]
    assert rep[liar] == min(rep.values()) and rep[liar] < 0.5
    assert s["credits"].get(liar, 0.0) == 0.0


def test_attack_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="--malicious"):
        SimConfig(attack="signflip").validate()
    with pytest.raises(ConfigError, match="unknown attack"):
        make_attack("nope", cohort=3)
    with pytest.raises(ConfigError, match="freerider"):
        make_attack("freerider:later", cohort=3)
    assert choose_malicious(30, 0.3, 0) == choose_malicious(30, 0.3, 0)
    assert len(choose_malicious(30, 0.3, 0)) == 9


def _user_attack(update: np.ndarray, ctx: AttackContext) -> np.ndarray:
    return -2.0 * update


def test_user_attacks_receive_the_honest_update_and_context() -> None:
    a = make_attack(f"{__name__}:_user_attack", cohort=4)
    adv = a.adversary(0)
    ctx = AttackContext(0, PeerId(b"\x00" * 20), np.zeros(3, np.float32), None, 5, 1.0,
                        np.random.default_rng(0))
    out = adv.update(np.array([1.0, 0.0, 0.0]), ctx)
    assert out.tolist() == [-2.0, -0.0, -0.0]
    q = np.array([30, -30], dtype=np.int64)
    assert adv.sketch_input(q) is q


def test_open_membership_caps_newcomers_then_lifts_the_cap() -> None:
    """Open federation: keys come from the overlay (verified publications); every peer
    is a newcomer capped at newcomer_weight (0.25) until it has 5 accepted
    contributions, then it gets full weight."""
    s = _run(membership="open", rounds=6, attack=None, malicious=0.0)
    assert s["models_agree"] and s["final_accuracy"] > 0.9
    weights = [set(m["weight"].values()) for m in s.metrics]
    assert weights[0] == {0.25} and weights[3] == {0.25}
    assert weights[5] == {1.0}


def test_detection_stats_counts_peers_kept_out_by_the_floor_separately() -> None:
    """detection_rate counts present peers only; kept_out_rate adds the malicious
    peers that the previous round's weights left out (weight factor 0, not present)
    and leaves dropped ones (present, contributed nothing) out of both sides."""
    from p2pfl.sim._report import detection_stats

    def m(present: list[str], excluded: list[str], weight: dict[str, float],
          dropped: tuple[str, ...] = ()) -> dict[str, object]:
        return {"in_results": present, "excluded": excluded, "weight": weight,
                "dropped": list(dropped)}

    metrics = [
        m(["a", "b", "h"], ["a", "b"], {"a": 0.0, "b": 0.4, "h": 1.0}),  # both caught
        m(["b", "h"], [], {"a": 0.0, "b": 1.0, "h": 1.0}),  # a kept out, b slips through
        m(["b", "h"], ["b"], {"a": 0.0, "b": 0.0, "h": 1.0}),  # a kept out, b caught
        m(["h"], [], {"a": 0.0, "b": 0.0, "h": 1.0}),  # both kept out
        m(["a", "h"], [], {"a": 0.0, "b": 0.0, "h": 1.0}, ("a",)),  # a dropped, b kept out
    ]
    d = detection_stats(metrics, {"a", "b"})
    assert (d["malicious_excluded"], d["malicious_present"]) == (3, 5)
    assert d["detection_rate"] == 3 / 5
    assert (d["malicious_kept_out"], d["malicious_dropped"], d["malicious_included"]) == (5, 1, 1)
    assert d["kept_out_rate"] == (3 + 5) / (3 + 5 + 1)
    assert [r["malicious_kept_out"] for r in d["by_round"]] == [0, 1, 1, 2, 1]
    assert detection_stats([m(["h"], [], {})], set())["kept_out_rate"] is None
