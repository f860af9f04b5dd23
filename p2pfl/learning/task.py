"""The ``Task`` interface: what a federation trains, on which local data, and how.

A task is everything peer-specific and ML-specific; the federation layer only sees
it through this interface and through flat vectors (:mod:`p2pfl.learning.vector`).

* :class:`Task` is a :class:`typing.Protocol`: any object with these members works
  (a user task does not have to inherit from anything).
* :class:`ClassificationTask` is a ready-made implementation for in-memory tensors
  and cross-entropy classifiers; the built-in ``digits`` task is one. Users with a
  ``(x, y)`` data set only supply a model factory.
* :class:`TrainConfig` holds the local-training hyper-parameters. The federation
  derives ``seed`` per (round, peer) and ``prox_mu`` from the strategy (FedProx).

Determinism. :func:`train_classifier` draws all its randomness (the shuffling of
each epoch) from a private ``torch.Generator`` seeded with ``config.seed``; it never
touches the global RNG. On CPU the ops it uses (linear, conv2d, cross-entropy, SGD)
are deterministic run to run for a fixed torch build and thread count, so the same
(initial model, data, config) give the same bits: the tests pin this. We do not call
``torch.use_deterministic_algorithms``: it is a process-wide switch (it would change
other peers' and the user's code in a one-process simulation), it changes nothing for
these CPU ops, and on CUDA it makes some ops raise instead of run. Bit-for-bit
agreement between peers never depends on local training: it depends only on the
strategy step (:mod:`p2pfl.learning.strategy`), which is pure numpy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from p2pfl.errors import ConfigError

from .vector import model_to_vector, vector_to_model

__all__ = [
    "ClassificationTask",
    "Task",
    "TensorData",
    "TrainConfig",
    "evaluate_classifier",
    "local_update",
    "resolve_device",
    "train_classifier",
]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one local training run (SGD with momentum).

    ``prox_mu > 0`` adds FedProx's proximal term ``mu/2 * ||w - w_start||^2`` to the
    loss, where ``w_start`` is the model the run started from (the global model).
    ``device`` is ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``
    or ``'cuda:N'``. Invalid values raise :class:`~p2pfl.errors.ConfigError`.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    prox_mu: float = 0.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"TrainConfig.epochs must be an int >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(
                f"TrainConfig.batch_size must be an int >= 1, got {self.batch_size!r}"
            )
        for name in ("lr", "momentum", "weight_decay", "prox_mu"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.momentum >= 1:
            raise ConfigError(f"TrainConfig.momentum must be < 1, got {self.momentum!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"TrainConfig.seed must be an int, got {self.seed!r}")
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ConfigError(
                f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )


def resolve_device(device: str) -> torch.device:
    """Map ``'auto' | 'cpu' | 'cuda' | 'cuda:N'`` to a torch device.

    Raises :class:`~p2pfl.errors.ConfigError` when CUDA is asked for but absent.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE_RE.match(device):
        raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


@dataclass(frozen=True, eq=False)
class TensorData:
    """An in-memory labelled data set: ``x`` (N, ...) float, ``y`` (N,) int64.

    Compared by identity (element-wise tensor equality has no single truth value)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x and y disagree: x {tuple(self.x.shape)}, y {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @classmethod
    def from_numpy(cls, x: np.ndarray, y: np.ndarray) -> TensorData:
        """Copy numpy arrays into a ``TensorData`` (x as float32, y as int64)."""
        return cls(
            torch.as_tensor(np.asarray(x, dtype=np.float32).copy()),
            torch.as_tensor(np.asarray(y, dtype=np.int64).copy()),
        )


@runtime_checkable
class Task(Protocol):
    """What a peer trains. Implement these members; inheritance is not required.

    * ``model_factory(seed)`` returns a fresh module whose initial weights depend
      only on ``seed`` (every peer builds the same round-0 model from the
      federation's init seed). It must not consume the global torch RNG in a way
      its result depends on.
    * ``train_data`` / ``val_data``: this peer's local data, of whatever type the
      task's ``train`` and ``evaluate`` understand.
    * ``num_samples``: the number of local training samples (FedAvg weight).
    * ``train(model, data, config)`` trains ``model`` (in place or not) on ``data``
      and returns the trained module, on the device it arrived on.
    * ``evaluate(model, data)`` returns metrics; at least ``'accuracy'`` (in
      [0, 1]), ``'loss'`` and ``'num_samples'``. It must not change the model.
    """

    train_data: Any
    val_data: Any

    @property
    def num_samples(self) -> int: ...

    def model_factory(self, seed: int = 0) -> nn.Module: ...

    def train(self, model: nn.Module, data: Any, config: TrainConfig) -> nn.Module: ...

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]: ...


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def train_classifier(model: nn.Module, data: TensorData, config: TrainConfig) -> nn.Module:
    """Train ``model`` in place with SGD on cross-entropy; return it.

    One epoch is a pass over a fresh permutation of ``data`` in mini-batches of
    ``config.batch_size`` (the last one may be smaller). The model comes back on the
    device it arrived on, in eval mode.
    """
    home = _model_device(model)
    device = resolve_device(config.device)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)  # shuffling only
    model.to(device).train()
    x, y = data.x.to(device), data.y.to(device)  # (N, ...), (N,)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    anchor = [p.detach().clone() for p in params] if config.prox_mu > 0 else []
    n = len(data)
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen).to(device)  # (N,)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]  # (B,)
            logits = model(x[idx])  # (B, C)
            loss = F.cross_entropy(logits, y[idx])
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
                loss = loss + 0.5 * config.prox_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return model.to(home).eval()


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, data: TensorData, *, device: str = "auto", batch_size: int = 1024
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data``.

    Returns ``{'accuracy', 'loss', 'num_samples'}``; all zeros for empty data. The
    model is put back on its device and left in eval mode.
    """
    n = len(data)
    if n == 0:
        return {"accuracy": 0.0, "loss": 0.0, "num_samples": 0.0}
    home = _model_device(model)
    dev = resolve_device(device)
    model.to(dev).eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, n, batch_size):
        xb = data.x[start : start + batch_size].to(dev)  # (B, ...)
        yb = data.y[start : start + batch_size].to(dev)  # (B,)
        logits = model(xb)  # (B, C)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    model.to(home)
    return {"accuracy": correct / n, "loss": loss_sum / n, "num_samples": float(n)}


@dataclass(frozen=True, eq=False)
class ClassificationTask:
    """A :class:`Task` over in-memory tensors with a cross-entropy classifier.

    ``model_fn(seed)`` builds the model; ``test_data`` is an optional held-out set
    (simulations evaluate the global model on it); ``device`` is used by
    :meth:`evaluate` (training uses ``TrainConfig.device``).
    """

    model_fn: Callable[[int], nn.Module]
    train_data: TensorData
    val_data: TensorData
    test_data: TensorData | None = None
    device: str = "auto"
    name: str = "classification"

    @property
    def num_samples(self) -> int:
        return len(self.train_data)

    def model_factory(self, seed: int = 0) -> nn.Module:
        return self.model_fn(seed)

    def train(self, model: nn.Module, data: TensorData, config: TrainConfig) -> nn.Module:
        return train_classifier(model, data, config)

    def evaluate(self, model: nn.Module, data: TensorData) -> dict[str, float]:
        return evaluate_classifier(model, data, device=self.device)


def local_update(
    task: Task, model: nn.Module, global_vec: np.ndarray, config: TrainConfig
) -> np.ndarray:
    """One peer's round: load ``global_vec``, train on ``task.train_data``, return
    the update ``local - global`` as a float64 vector.

    ``model`` is a scratch module of the task's architecture (reused across rounds to
    avoid rebuilding it); it is overwritten. The difference is taken in float64.
    """
    global_vec = np.asarray(global_vec, dtype=np.float32)
    vector_to_model(model, global_vec)
    trained = task.train(model, task.train_data, config)
    local = model_to_vector(trained)
    return local.astype(np.float64) - global_vec.astype(np.float64)
