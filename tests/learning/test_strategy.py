"""Strategies against naive oracles; bit-for-bit determinism; order keys."""

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.errors import ConfigError
from p2pfl.learning import (
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    GroupResult,
    StrategyState,
    aggregate,
    hash_vector,
    make_strategy,
)

D = 40


def make_round(rng, n_groups, dim=D, scale=1.0):
    """Per-peer updates and weights, summed per group the way secure aggregation
    would hand them over; keys are shuffled group ids."""
    results = []
    for key in rng.permutation(n_groups):
        members = int(rng.integers(1, 5))
        weights = rng.integers(1, 200, size=members).astype(float)
        updates = rng.normal(0, scale, size=(members, dim))
        s = np.zeros(dim)
        for w, u in zip(weights, updates, strict=True):
            s = s + w * u
        results.append(GroupResult(int(key), s, float(weights.sum()), int(weights.sum())))
    return results


def oracle_mean(results):
    """Python floats, element by element, groups in key order."""
    ordered = sorted(results, key=lambda r: r.key)
    total = math.fsum(r.weight for r in ordered)
    out = []
    for j in range(ordered[0].update_sum.shape[0]):
        acc = 0.0
        for r in ordered:
            acc += float(r.update_sum[j])
        out.append(acc / total)
    return out


def oracle_fedavg(x, results, lr):
    return np.array(
        [np.float32(float(xi) + lr * d) for xi, d in zip(x, oracle_mean(results), strict=True)],
        dtype=np.float32,
    )


def oracle_adaptive(kind, x, rounds, lr, b1, b2, tau):
    """Reddi et al. 2021 Algorithm 2, written out per coordinate."""
    x = [float(v) for v in x]
    m = [0.0] * len(x)
    v = [tau * tau] * len(x)
    for results in rounds:
        delta = oracle_mean(results)
        for j, d in enumerate(delta):
            m[j] = b1 * m[j] + (1 - b1) * d
            if kind == "adam":
                v[j] = b2 * v[j] + (1 - b2) * (d * d)
            else:
                sign = (v[j] > d * d) - (v[j] < d * d)
                v[j] = v[j] - (1 - b2) * (d * d) * sign
            x[j] = float(np.float32(x[j] + lr * (m[j] / (math.sqrt(v[j]) + tau))))
    return np.array(x, dtype=np.float32), m, v


@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from([1.0, 0.5, 1.7]))
def test_fedavg_equals_plain_weighted_mean(seed, n_groups, lr):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=D).astype(np.float32)
    results = make_round(rng, n_groups)
    new, state = FedAvg(server_lr=lr).apply(x, results)
    assert new.dtype == np.float32 and state.step == 1
    assert np.array_equal(new, oracle_fedavg(x, results, lr))  # bit for bit
    # and, loosely, the textbook formula over all peers
    mean = sum(r.update_sum for r in results) / sum(r.weight for r in results)
    np.testing.assert_allclose(new, x + lr * mean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["adam", "yogi"])
@given(seed=st.integers(0, 2**32 - 1), n_rounds=st.integers(1, 4))
def test_adaptive_matches_paper_oracle(kind, seed, n_rounds):
    rng = np.random.default_rng(seed)
    hp = {"server_lr": 0.03, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    strategy = (FedAdam if kind == "adam" else FedYogi)(**hp)
    x0 = rng.normal(size=D).astype(np.float32)
    rounds = [make_round(rng, int(rng.integers(1, 4)), scale=0.01) for _ in range(n_rounds)]
    x, state = x0, None
    for results in rounds:
        x, state = strategy.apply(x, results, state)
    ox, om, ov = oracle_adaptive(
        kind, x0, rounds, hp["server_lr"], hp["beta1"], hp["beta2"], hp["tau"]
    )
    assert state.step == n_rounds
    assert np.array_equal(x, ox)
    assert np.array_equal(state.m, np.array(om)) and np.array_equal(state.v, np.array(ov))


def test_yogi_and_adam_differ():
    rng = np.random.default_rng(0)
    x = rng.normal(size=D).astype(np.float32)
    rounds = [make_round(rng, 2) for _ in range(3)]
    xa, xy, sa, sy = x, x, None, None
    for r in rounds:
        xa, sa = FedAdam().apply(xa, r, sa)
        xy, sy = FedYogi().apply(xy, r, sy)
    assert not np.array_equal(sa.v, sy.v)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi"])
@given(seed=st.integers(0, 2**32 - 1), perm_seed=st.integers(0, 1000))
def test_bit_for_bit_and_input_order_independent(name, seed, perm_seed):
    rng = np.random.default_rng(seed)
    strategy = make_strategy(name)
    x = rng.normal(size=D).astype(np.float32)
    results = make_round(rng, 5)
    shuffled = [results[i] for i in np.random.default_rng(perm_seed).permutation(5)]
    a, sa = strategy.apply(x, results)
    b, sb = strategy.apply(x.copy(), shuffled)
    assert hash_vector(a) == hash_vector(b)
    a2, sa2 = strategy.apply(a, results, sa)
    b2, sb2 = strategy.apply(b, shuffled, sb)
    assert hash_vector(a2) == hash_vector(b2)
    for k, v in sa2.to_arrays().items():
        assert np.array_equal(v, sb2.to_arrays()[k])


def test_summation_follows_key_order():
    # (1e16 + -1e16) + 1 = 1, but (1 + 1e16) + -1e16 = 0 in float64.
    sums = {0: 1e16, 1: -1e16, 2: 1.0}
    assert (1.0 + 1e16) + -1e16 != (1e16 + -1e16) + 1.0
    results = [GroupResult(k, np.array([sums[k]]), 1.0) for k in (2, 0, 1)]
    agg = aggregate(results, 1)
    assert agg.delta[0] == 1.0 / 3.0
    # bytes keys sort lexicographically
    results = [GroupResult(bytes([k]), np.array([sums[k]]), 1.0) for k in (2, 0, 1)]
    assert aggregate(results, 1).delta[0] == 1.0 / 3.0


def test_empty_round_changes_nothing():
    x = np.arange(D, dtype=np.float32)
    for strategy in (FedAvg(), FedAdam()):
        state = strategy.init_state(D)
        new, new_state = strategy.apply(x, [], state)
        assert np.array_equal(new, x) and new_state is state
        zero = [GroupResult(0, np.zeros(D), 0.0)]
        assert np.array_equal(strategy.apply(x, zero, state)[0], x)


def test_inputs_not_mutated_and_state_read_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=D).astype(np.float32)
    results = make_round(rng, 3)
    copies = [r.update_sum.copy() for r in results]
    x_copy = x.copy()
    _, state = FedYogi().apply(x, results)
    _, state2 = FedYogi().apply(x, results, state)
    assert np.array_equal(x, x_copy)
    assert all(np.array_equal(r.update_sum, c) for r, c in zip(results, copies, strict=True))
    with pytest.raises(ValueError):
        state.m[0] = 1.0
    assert state2.step == 2


def test_float32_group_sums_accepted_exactly():
    s32 = np.linspace(-1, 1, D, dtype=np.float32)
    a = aggregate([GroupResult(0, s32, 2.0)], D)
    b = aggregate([GroupResult(0, s32.astype(np.float64), 2.0)], D)
    assert np.array_equal(a.delta, b.delta)


@pytest.mark.parametrize(
    ("results", "match"),
    [
        ([GroupResult(0, np.zeros(D), 1.0), GroupResult(0, np.zeros(D), 1.0)], "duplicate"),
        ([GroupResult(0, np.zeros(D), 1.0), GroupResult("a", np.zeros(D), 1.0)], "comparable"),
        ([GroupResult(0, np.zeros(D + 1), 1.0)], "shape"),
        ([GroupResult(0, np.zeros(D, dtype=np.int64), 1.0)], "float"),
        ([GroupResult(0, np.full(D, np.nan), 1.0)], "non-finite"),
        ([GroupResult(0, np.zeros(D), -1.0)], "weight"),
        ([GroupResult(0, np.zeros(D), float("inf"))], "weight"),
    ],
)
def test_bad_group_results(results, match):
    with pytest.raises(ValueError, match=match):
        FedAvg().apply(np.zeros(D, dtype=np.float32), results)


def test_bad_global_and_state():
    with pytest.raises(ValueError, match="float32"):
        FedAvg().apply(np.zeros(D), [])
    with pytest.raises(ValueError, match="state"):
        FedAdam().apply(np.zeros(D, dtype=np.float32), [], FedAdam().init_state(D + 1))


def test_state_serialization_round_trip():
    rng = np.random.default_rng(2)
    x = rng.normal(size=D).astype(np.float32)
    _, state = FedAdam().apply(x, make_round(rng, 2))
    arrays = state.to_arrays()
    assert set(arrays) == {"step", "m", "v"}
    back = StrategyState.from_arrays(arrays)
    assert back.step == 1
    assert np.array_equal(back.m, state.m) and np.array_equal(back.v, state.v)
    assert StrategyState.from_arrays(StrategyState(3).to_arrays()) == StrategyState(3)
    with pytest.raises(ValueError):
        StrategyState.from_arrays({"m": state.m})


def test_make_strategy_and_config_round_trip():
    for name, cls in [
        ("fedavg", FedAvg),
        ("FedProx", FedProx),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
    ]:
        s = make_strategy(name)
        assert type(s) is cls
        assert make_strategy(**s.to_config()) == s
    assert make_strategy("fedprox", mu=0.1).prox_mu == 0.1
    assert make_strategy("fedavg").prox_mu == 0.0
    assert make_strategy("fedadam", server_lr=0.1, tau=1e-2).to_config() == {
        "name": "fedadam",
        "server_lr": 0.1,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-2,
    }


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("fedsgd", {}, "unknown strategy"),
        ("fedavg", {"beta1": 0.9}, "no hyper-parameter 'beta1'"),
        ("fedavg", {"server_lr": 0}, "server_lr"),
        ("fedavg", {"server_lr": "1"}, "server_lr"),
        ("fedprox", {"mu": -1}, "mu"),
        ("fedadam", {"beta1": 1.0}, "beta1"),
        ("fedyogi", {"beta2": -0.1}, "beta2"),
        ("fedyogi", {"tau": 0.0}, "tau"),
        ("fedadam", {"server_lr": float("nan")}, "server_lr"),
    ],
)
def test_make_strategy_rejects(name, hparams, match):
    with pytest.raises(ConfigError, match=match):
        make_strategy(name, **hparams)


def test_hash_vector():
    vec = np.array([1.0, -0.0, 3.5], dtype=np.float32)
    expected = hashlib.blake2b(
        bytes.fromhex("0000803f0000008000006040"), digest_size=32
    ).hexdigest()
    assert hash_vector(vec) == expected
    assert hash_vector(vec.astype(">f4")) == expected
    assert hash_vector(FedAvg().apply(vec.astype(">f4"), [])[0]) == expected
    assert hash_vector(np.zeros(3, dtype=np.float32)) != expected  # -0.0 is not 0.0
    with pytest.raises(TypeError):
        hash_vector(vec.astype(np.float64))
