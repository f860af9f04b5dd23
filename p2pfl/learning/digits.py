"""Built-in task ``digits``: scikit-learn's bundled 8x8 handwritten digits.

1797 images, 10 classes, shipped inside scikit-learn (no download). The data set is
split once, with a fixed seed, into a stratified 80/20 train/test split; the train
split is partitioned among peers (:mod:`p2pfl.learning.partition`) and each peer
keeps ``val_fraction`` of its shard as local validation data. The test split is the
held-out set on which simulations score the global model.

Pixels (0..16) are scaled to [0, 1] by a constant, not by statistics of the data:
peers cannot compute global statistics without sharing data.

Models (both take x as (B, 64) and build their weights from a seed alone, without
touching the global torch RNG):

* ``mlp``: 64 -> 64 -> 10 with ReLU, 4,810 parameters.
* ``cnn``: (1, 8, 8) -> conv3x3(16) -> conv3x3(32) -> maxpool2 -> 64 -> 10, 38,282
  parameters.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from p2pfl.errors import ConfigError

from .partition import PartitionSpec, parse_partition
from .task import ClassificationTask, TensorData, TrainConfig

__all__ = [
    "CNN",
    "DIGITS_TRAIN_CONFIG",
    "MLP",
    "CNNConfig",
    "DigitsArrays",
    "MLPConfig",
    "digits_model",
    "digits_task",
    "digits_tasks",
    "load_digits_arrays",
]

# Local training defaults for one round on digits: McMahan et al.'s E=5, B=10. With
# Dirichlet(0.5) shards of ~70 samples, one epoch of B=32 per round learns too slowly
# (20 peers, 30 rounds: 92% vs 97% test accuracy with these settings).
DIGITS_TRAIN_CONFIG = TrainConfig(epochs=5, batch_size=10, lr=0.05, momentum=0.9)

_SPLIT_SEED = 20240601  # fixed forever: the train/test split is part of the benchmark


class DigitsArrays(NamedTuple):
    """The fixed digits split: x float32 (N, 64) in [0, 1], y int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_digits_arrays(test_fraction: float = 0.2) -> DigitsArrays:
    """The digits data set with its fixed, stratified train/test split.

    For each class, ``round(test_fraction * n_class)`` samples chosen by a fixed
    seed go to the test split (360 of 1797 at the default 0.2). Arrays are fresh
    copies, sorted by original index within each split.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    x, y = _raw()
    rng = np.random.default_rng(_SPLIT_SEED)
    test_mask = np.zeros(y.shape[0], dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = round(test_fraction * idx.shape[0])
        test_mask[rng.permutation(idx)[:k]] = True
    return DigitsArrays(
        x[~test_mask].copy(), y[~test_mask].copy(), x[test_mask].copy(), y[test_mask].copy()
    )


@dataclass(frozen=True)
class MLPConfig:
    in_dim: int = 64
    hidden: tuple[int, ...] = (64,)
    n_classes: int = 10


class MLP(nn.Module):
    """Fully connected ReLU network."""

    def __init__(self, cfg: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        dims = (cfg.in_dim, *cfg.hidden, cfg.n_classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)  # (B, 64)
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))  # (B, H)
        out: torch.Tensor = self.layers[-1](x)  # (B, n_classes)
        return out


@dataclass(frozen=True)
class CNNConfig:
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    n_classes: int = 10


class CNN(nn.Module):
    """Two 3x3 convolutions, one 2x2 max-pool, two linear layers; input 8x8."""

    def __init__(self, cfg: CNNConfig = CNNConfig()) -> None:
        super().__init__()
        c1, c2 = cfg.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 4 * 4, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 8, 8)  # (B, 1, 8, 8)
        x = F.relu(self.conv1(x))  # (B, C1, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, C2, 4, 4)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, H)
        out: torch.Tensor = self.fc2(x)  # (B, n_classes)
        return out


def _init_(model: nn.Module, seed: int) -> nn.Module:
    """PyTorch's default Linear/Conv init, drawn from a private generator."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
    return model


def digits_model(name: str = "mlp", seed: int = 0) -> nn.Module:
    """Build ``'mlp'`` or ``'cnn'`` with weights determined by ``seed`` only.

    The module is created on the meta device (no RNG use) and then initialized from a
    private ``torch.Generator``. Raises :class:`~p2pfl.errors.ConfigError` for an
    unknown name.
    """
    builders = {"mlp": MLP, "cnn": CNN}
    if name not in builders:
        raise ConfigError(f"unknown digits model {name!r}; choose 'mlp' or 'cnn'")
    with torch.device("meta"):
        model = builders[name]()
    model = model.to_empty(device="cpu")
    return _init_(model, seed).eval()


def _peer_task(
    arrays: DigitsArrays,
    shard: np.ndarray,
    peer_index: int,
    *,
    seed: int,
    model: str,
    val_fraction: float,
    test: TensorData,
    device: str,
) -> ClassificationTask:
    rng = np.random.default_rng([seed, 1, peer_index])
    shard = rng.permutation(shard)
    n_val = min(shard.shape[0] - 1, max(1, round(val_fraction * shard.shape[0])))
    n_val = n_val if val_fraction > 0 else 0
    val, train = np.sort(shard[:n_val]), np.sort(shard[n_val:])
    return ClassificationTask(
        model_fn=functools.partial(digits_model, model),
        train_data=TensorData.from_numpy(arrays.x_train[train], arrays.y_train[train]),
        val_data=TensorData.from_numpy(arrays.x_train[val], arrays.y_train[val]),
        test_data=test,
        device=device,
        name=f"digits-{model}",
    )


def _shards(
    n_peers: int, seed: int, partition: str | PartitionSpec, min_size: int | None
) -> tuple[DigitsArrays, list[np.ndarray]]:
    spec = parse_partition(partition)
    arrays = load_digits_arrays()
    return arrays, spec(
        arrays.y_train, n_peers, np.random.default_rng([seed, 0]), min_size=min_size
    )


def _check_options(model: str, val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if model not in ("mlp", "cnn"):
        raise ConfigError(f"unknown digits model {model!r}; choose 'mlp' or 'cnn'")


def digits_tasks(
    n_peers: int,
    *,
    seed: int = 0,
    partition: str | PartitionSpec = "iid",
    model: str = "mlp",
    val_fraction: float = 0.1,
    min_size: int | None = None,
    device: str = "auto",
) -> list[ClassificationTask]:
    """One :class:`ClassificationTask` per peer over the digits train split.

    ``partition`` is ``'iid' | 'dirichlet:A' | 'quantity:A'``; the split depends only
    on (``seed``, ``partition``, ``n_peers``, ``min_size``). Each peer keeps
    ``val_fraction`` of its shard (at least one sample, at most all but one) as
    validation data; every task's ``test_data`` is the same held-out test split
    (one shared tensor pair). Raises :class:`~p2pfl.errors.ConfigError` on bad
    options.
    """
    _check_options(model, val_fraction)
    arrays, shards = _shards(n_peers, seed, partition, min_size)
    test = TensorData.from_numpy(arrays.x_test, arrays.y_test)
    return [
        _peer_task(
            arrays,
            shard,
            i,
            seed=seed,
            model=model,
            val_fraction=val_fraction,
            test=test,
            device=device,
        )
        for i, shard in enumerate(shards)
    ]


def digits_task(
    peer_index: int = 0,
    n_peers: int = 1,
    *,
    seed: int = 0,
    partition: str | PartitionSpec = "iid",
    model: str = "mlp",
    val_fraction: float = 0.1,
    min_size: int | None = None,
    device: str = "auto",
) -> ClassificationTask:
    """Peer ``peer_index`` of :func:`digits_tasks` (same arguments, same data).

    This has the keyword shape that :func:`p2pfl.learning.call_task_factory` uses, so
    ``--task p2pfl.learning.digits:digits_task`` is the built-in task.
    """
    if not isinstance(peer_index, int) or not 0 <= peer_index < n_peers:
        raise ConfigError(f"peer_index must be in [0, {n_peers}), got {peer_index!r}")
    _check_options(model, val_fraction)
    arrays, shards = _shards(n_peers, seed, partition, min_size)
    test = TensorData.from_numpy(arrays.x_test, arrays.y_test)
    return _peer_task(
        arrays,
        shards[peer_index],
        peer_index,
        seed=seed,
        model=model,
        val_fraction=val_fraction,
        test=test,
        device=device,
    )
