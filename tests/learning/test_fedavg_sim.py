"""A small plaintext federated run on digits: 10 peers, Dirichlet(0.5).

Measured on the dev machine (CPU, torch 2.13): FedAvg reaches ~96% test accuracy
after 5 rounds (centralized MLP: ~98.7%); FedProx(mu=0.01) about the same; FedAdam
and FedYogi (server_lr 0.03) ~90-93%. Each peer trains in ~10 ms per round.
"""

import dataclasses

import numpy as np
import pytest

from p2pfl.learning import (
    DIGITS_TRAIN_CONFIG,
    GroupResult,
    digits_tasks,
    hash_vector,
    local_update,
    make_strategy,
    model_to_vector,
    vector_to_model,
)

N_PEERS, ROUNDS, GROUPS = 10, 5, 3


@pytest.fixture(scope="module")
def tasks():
    return digits_tasks(N_PEERS, seed=0, partition="dirichlet:0.5", device="cpu")


def simulate(tasks, strategy, rounds):
    """Every peer trains from the global model; group sums of n_u * update are
    combined by two independent replicas of the global step, which must agree."""
    scratch = tasks[0].model_factory(0)
    glob = model_to_vector(scratch)
    states = [None, None]
    accuracy = []
    for r in range(rounds):
        sums = [np.zeros(glob.shape[0]) for _ in range(GROUPS)]
        weights = [0.0] * GROUPS
        for i, task in enumerate(tasks):
            config = dataclasses.replace(
                DIGITS_TRAIN_CONFIG, seed=1000 * r + i, prox_mu=strategy.prox_mu, device="cpu"
            )
            update = local_update(task, scratch, glob, config)
            g = i % GROUPS
            sums[g] += task.num_samples * update
            weights[g] += task.num_samples
        results = [GroupResult(g, sums[g], weights[g], int(weights[g])) for g in range(GROUPS)]
        a, states[0] = strategy.apply(glob, results, states[0])
        b, states[1] = strategy.apply(glob.copy(), results[::-1], states[1])
        assert hash_vector(a) == hash_vector(b), f"replicas disagree at round {r}"
        glob = a
        vector_to_model(scratch, glob)
        accuracy.append(tasks[0].evaluate(scratch, tasks[0].test_data)["accuracy"])
    return accuracy, glob


@pytest.mark.parametrize(
    ("name", "hparams", "threshold"),
    [
        ("fedavg", {}, 0.85),
        ("fedprox", {"mu": 0.01}, 0.85),
        ("fedadam", {"server_lr": 0.03}, 0.80),
        ("fedyogi", {"server_lr": 0.03}, 0.80),
    ],
)
def test_federated_digits_reaches_accuracy(tasks, name, hparams, threshold):
    accuracy, _ = simulate(tasks, make_strategy(name, **hparams), ROUNDS)
    print(name, [round(a, 3) for a in accuracy])
    assert accuracy[-1] > threshold, accuracy
    assert accuracy[-1] > accuracy[0] or accuracy[0] > 0.9


def test_simulation_is_reproducible(tasks):
    _, a = simulate(tasks, make_strategy("fedavg"), 2)
    _, b = simulate(tasks, make_strategy("fedavg"), 2)
    assert hash_vector(a) == hash_vector(b)
