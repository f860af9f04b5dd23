"""TrainConfig validation, deterministic local training, FedProx, evaluation."""

import dataclasses

import numpy as np
import pytest
import torch

from p2pfl.errors import ConfigError
from p2pfl.learning import (
    DIGITS_TRAIN_CONFIG,
    ClassificationTask,
    Task,
    TensorData,
    TrainConfig,
    digits_model,
    digits_task,
    digits_tasks,
    evaluate_classifier,
    local_update,
    model_to_vector,
    resolve_device,
    train_classifier,
)

CPU = dataclasses.replace(DIGITS_TRAIN_CONFIG, device="cpu", epochs=2)


@pytest.fixture(scope="module")
def task():
    return digits_task(0, 4, seed=0, partition="dirichlet:0.5", device="cpu")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": -1},
        {"batch_size": 0},
        {"lr": -0.1},
        {"lr": float("nan")},
        {"momentum": 1.0},
        {"weight_decay": -1},
        {"prox_mu": float("inf")},
        {"seed": 1.5},
        {"device": "gpu"},
        {"device": "cuda:x"},
    ],
)
def test_train_config_rejects(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        TrainConfig(**kwargs)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


def test_model_init_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = model_to_vector(digits_model("cnn", 7))
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(a, model_to_vector(digits_model("cnn", 7)))
    assert not np.array_equal(a, model_to_vector(digits_model("cnn", 8)))
    with pytest.raises(ConfigError):
        digits_model("resnet", 0)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_training_is_deterministic(name):
    data = digits_task(0, 4, seed=0).train_data
    runs = []
    for _ in range(2):
        model = digits_model(name, 3)
        train_classifier(model, data, dataclasses.replace(CPU, seed=11))
        runs.append(model_to_vector(model))
    assert np.array_equal(runs[0], runs[1])  # same bits
    other = digits_model(name, 3)
    train_classifier(other, data, dataclasses.replace(CPU, seed=12))
    assert not np.array_equal(runs[0], model_to_vector(other))  # seed drives shuffling


def test_training_does_not_use_global_rng(task):
    model = digits_model("mlp", 0)
    state = torch.get_rng_state()
    task.train(model, task.train_data, CPU)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_learns_and_evaluate_reports(task):
    model = task.model_factory(0)
    before = task.evaluate(model, task.test_data)
    task.train(model, task.train_data, CPU)
    after = task.evaluate(model, task.test_data)
    assert set(after) >= {"accuracy", "loss", "num_samples"}
    assert after["num_samples"] == 359
    assert after["loss"] < before["loss"]
    assert 0.0 <= after["accuracy"] <= 1.0


def test_zero_epochs_is_identity(task):
    model = task.model_factory(0)
    vec = model_to_vector(model)
    task.train(model, task.train_data, dataclasses.replace(CPU, epochs=0))
    assert np.array_equal(vec, model_to_vector(model))


def test_prox_term_pulls_towards_start(task):
    start = model_to_vector(task.model_factory(0))

    def distance(mu):
        model = task.model_factory(0)
        task.train(model, task.train_data, dataclasses.replace(CPU, prox_mu=mu, epochs=3))
        return float(np.linalg.norm(model_to_vector(model) - start))

    free, prox = distance(0.0), distance(1.0)
    assert prox < 0.8 * free


def test_local_update_is_local_minus_global(task):
    scratch = task.model_factory(5)
    glob = model_to_vector(task.model_factory(0))
    upd = local_update(task, scratch, glob, CPU)
    assert upd.dtype == np.float64 and upd.shape == glob.shape
    model = task.model_factory(0)
    task.train(model, task.train_data, CPU)
    assert np.array_equal(upd, model_to_vector(model).astype(np.float64) - glob)


def test_evaluate_empty_and_task_protocol():
    empty = TensorData(torch.zeros(0, 64), torch.zeros(0, dtype=torch.int64))
    assert evaluate_classifier(digits_model("mlp", 0), empty)["num_samples"] == 0
    t = ClassificationTask(lambda s: digits_model("mlp", s), empty, empty)
    assert isinstance(t, Task) and t.num_samples == 0
    with pytest.raises(ValueError):
        TensorData(torch.zeros(3, 64), torch.zeros(2, dtype=torch.int64))


def test_digits_tasks_split():
    tasks = digits_tasks(5, seed=1, partition="dirichlet:0.5")
    total = sum(len(t.train_data) + len(t.val_data) for t in tasks)
    assert total == 1438
    assert all(len(t.val_data) >= 1 and t.num_samples >= 1 for t in tasks)
    assert all(t.test_data is tasks[0].test_data for t in tasks)
    one = digits_task(3, 5, seed=1, partition="dirichlet:0.5")
    assert torch.equal(one.train_data.x, tasks[3].train_data.x)
    assert torch.equal(one.val_data.y, tasks[3].val_data.y)
    with pytest.raises(ConfigError):
        digits_task(5, 5)
    with pytest.raises(ConfigError):
        digits_tasks(5, partition="dirichlet:-1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_returns_model_home(task):
    model = task.model_factory(0)
    task.train(model, task.train_data, dataclasses.replace(CPU, device="cuda"))
    assert next(model.parameters()).device.type == "cpu"
    assert task.evaluate(model, task.test_data)["accuracy"] > 0.5
