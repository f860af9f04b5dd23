"""Strategies: the global step, a pure function every peer applies identically.

One API for every strategy (Flower grew two parallel strategy trees; we keep one)::

    new_global, new_state = strategy.apply(global_vec, results, state)

* ``global_vec``: the current global model, 1-D float32 (D,).
* ``results``: the round's :class:`GroupResult` s. Each carries the **sum of weighted
  updates** of its accepted members, ``sum_u w_u * (local_u - global)`` as float64
  (D,), their total weight ``sum_u w_u``, their sample count, and a ``key`` chosen by
  the caller (e.g. the group index) that fixes the summation order.
* ``state``: a :class:`StrategyState` (server-optimizer moments and step count),
  a frozen dataclass of read-only numpy arrays that serializes with
  :meth:`StrategyState.to_arrays`. ``None`` means "initial state".

Every strategy first forms the weighted mean update
``delta = (sum_g S_g) / (sum_g W_g)`` (:func:`aggregate`), then:

* FedAvg / FedProx: ``x' = x + server_lr * delta`` (FedProx differs only in local
  training: its ``prox_mu`` goes into :class:`~p2pfl.learning.TrainConfig`).
* FedAdam / FedYogi, Reddi et al. 2021, "Adaptive Federated Optimization",
  Algorithm 2, exactly as written there (no bias correction, ``v_{-1} = tau^2``)::

      m = beta1 * m + (1 - beta1) * delta
      v = beta2 * v + (1 - beta2) * delta^2                        (Adam)
      v = v - (1 - beta2) * delta^2 * sign(v - delta^2)            (Yogi)
      x' = x + server_lr * m / (sqrt(v) + tau)

Determinism (all peers must get the same bits):

* Group sums are added in ascending ``key`` order, one ``np.add`` per group into a
  float64 accumulator: each element sees the same sequence of IEEE additions on
  every machine. We never reduce over a stacked 2-D array (``np.sum`` uses pairwise
  and SIMD-width-dependent orders) nor use BLAS, threads, or fused expressions.
* Everything after that is element-wise ``+ - * / sqrt`` and ``sign`` on float64, one
  numpy ufunc per operation, each correctly rounded by IEEE 754, so no FMA
  contraction and no libm (``pow``, ``exp``) whose last bit varies by platform; this
  is also why we follow the paper and omit Adam's bias correction (``beta ** t``).
  Scalars such as ``1 - beta1`` are Python floats (IEEE doubles).
* Total weights are summed with :func:`math.fsum` (correctly rounded, hence
  independent of order).
* The result is rounded once, to float32, at the end. Do not enable
  ``torch.set_flush_denormal`` in a peer: flushing subnormals would change bits.

An empty round (no group, or zero total weight) returns the global vector and the
state unchanged (the optimizer does not step).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol

import numpy as np

from p2pfl.errors import ConfigError

__all__ = [
    "Aggregate",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "GroupResult",
    "Strategy",
    "StrategyState",
    "aggregate",
    "hash_vector",
    "make_strategy",
]


def hash_vector(vec: np.ndarray) -> str:
    """BLAKE2b-256 hex digest of the little-endian float32 bytes of ``vec``.

    Raises ``TypeError`` unless ``vec`` is float32 (hashing another dtype would
    silently give a different model identity).
    """
    arr = np.asarray(vec)
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:  # float32, either byte order
        raise TypeError(f"hash_vector expects float32, got {arr.dtype}")
    data = np.ascontiguousarray(arr.reshape(-1), dtype="<f4").tobytes()
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class GroupResult:
    """One group's aggregated contribution to a round.

    ``update_sum`` (D,) is ``sum_u w_u * (local_u - global)`` over the group's
    accepted members, ``weight`` is ``sum_u w_u`` (for sample-weighted FedAvg,
    ``w_u = n_u`` times any reputation factor), ``num_samples`` is ``sum_u n_u``
    (reported, not used by the step). ``key`` orders the summation; keys of one
    round must be distinct and mutually comparable (ints, bytes, or str).
    """

    key: Hashable
    update_sum: np.ndarray
    weight: float
    num_samples: int = 0


@dataclass(frozen=True)
class Aggregate:
    """The weighted mean update of a round, float64 (D,), and its totals."""

    delta: np.ndarray
    weight: float
    num_samples: int
    num_groups: int


def aggregate(results: Sequence[GroupResult], dim: int) -> Aggregate | None:
    """Weighted mean of the group results in ascending ``key`` order.

    Returns ``None`` when there is nothing to aggregate (no result, or total weight
    0). Raises ``ValueError`` for duplicate or incomparable keys, wrong shapes,
    non-finite sums, or negative/non-finite weights.
    """
    keys = [r.key for r in results]
    if len(set(keys)) != len(keys):
        raise ValueError("group results have duplicate keys")
    try:
        ordered = sorted(results, key=lambda r: r.key)  # type: ignore[arg-type, return-value]
    except TypeError as e:
        raise ValueError(f"group result keys are not mutually comparable: {e}") from e
    acc = np.zeros(dim, dtype=np.float64)
    weights = []
    samples = 0
    for r in ordered:
        w = float(r.weight)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"group {r.key!r}: weight must be finite and >= 0, got {r.weight!r}")
        s = np.asarray(r.update_sum)
        if s.shape != (dim,) or not np.issubdtype(s.dtype, np.floating):
            raise ValueError(
                f"group {r.key!r}: update_sum must be a float array of shape ({dim},), "
                f"got {s.dtype} {s.shape}"
            )
        s = s.astype(np.float64, copy=False)  # exact for float32 input
        if not np.isfinite(s).all():
            raise ValueError(f"group {r.key!r}: update_sum has non-finite values")
        np.add(acc, s, out=acc)
        weights.append(w)
        samples += int(r.num_samples)
    total = math.fsum(weights)
    if not ordered or total == 0.0:
        return None
    np.divide(acc, total, out=acc)
    return Aggregate(_readonly(acc), total, samples, len(ordered))


@dataclass(frozen=True)
class StrategyState:
    """Server-side optimizer state: step count and, for adaptive strategies, the
    first and second moments (float64, read-only). FedAvg/FedProx keep ``m`` and
    ``v`` as ``None``."""

    step: int = 0
    m: np.ndarray | None = None
    v: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for a checkpoint or the wire (``step`` as a 0-d int64)."""
        out = {"step": np.array(self.step, dtype=np.int64)}
        if self.m is not None:
            out["m"] = self.m
        if self.v is not None:
            out["v"] = self.v
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> StrategyState:
        """Inverse of :meth:`to_arrays`; copies. Raises ``ValueError`` on bad input."""
        extra = set(arrays) - {"step", "m", "v"}
        if extra or "step" not in arrays:
            raise ValueError(f"bad strategy state keys: {sorted(arrays)}")
        step = int(np.asarray(arrays["step"]).reshape(()))
        moments = []
        for name in ("m", "v"):
            a = arrays.get(name)
            if a is not None:
                a = np.array(a, dtype=np.float64, copy=True)
                if a.ndim != 1:
                    raise ValueError(f"strategy state {name!r} must be 1-D, got {a.shape}")
                a = _readonly(a)
            moments.append(a)
        return cls(step, moments[0], moments[1])


class Strategy(Protocol):
    """The one strategy interface. Implementations are frozen dataclasses whose
    fields are the hyper-parameters; ``apply`` is a pure function."""

    name: ClassVar[str]

    @property
    def prox_mu(self) -> float:
        """FedProx coefficient for local training (0 = off)."""
        ...

    def init_state(self, dim: int) -> StrategyState: ...

    def apply(
        self,
        global_vec: np.ndarray,
        results: Sequence[GroupResult],
        state: StrategyState | None = None,
    ) -> tuple[np.ndarray, StrategyState]: ...

    def to_config(self) -> dict[str, Any]: ...


def _check_global(global_vec: np.ndarray) -> np.ndarray:
    g = np.asarray(global_vec)
    if g.dtype.kind != "f" or g.dtype.itemsize != 4 or g.ndim != 1:
        raise ValueError(f"global vector must be 1-D float32, got {g.dtype} {g.shape}")
    return g.astype(np.float32, copy=False)  # native byte order


def _positive(name: str, v: float) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")


def _unit(name: str, v: float) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {v!r}")


class _Base:
    """Shared plumbing: config round trip and the plain (FedAvg) step."""

    name: ClassVar[str]

    @property
    def prox_mu(self) -> float:
        return 0.0

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}  # type: ignore[call-overload]

    def init_state(self, dim: int) -> StrategyState:
        return StrategyState()


@dataclass(frozen=True)
class FedAvg(_Base):
    """Weighted mean of updates, scaled by ``server_lr`` (McMahan et al. 2017)."""

    name: ClassVar[str] = "fedavg"
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        _positive(f"{self.name}.server_lr", self.server_lr)

    def apply(
        self,
        global_vec: np.ndarray,
        results: Sequence[GroupResult],
        state: StrategyState | None = None,
    ) -> tuple[np.ndarray, StrategyState]:
        g = _check_global(global_vec)
        state = state if state is not None else self.init_state(g.shape[0])
        agg = aggregate(results, g.shape[0])
        if agg is None:
            return g.copy(), state
        x = g.astype(np.float64)
        step = np.multiply(agg.delta, float(self.server_lr))
        np.add(x, step, out=x)
        return x.astype(np.float32), StrategyState(state.step + 1)


@dataclass(frozen=True)
class FedProx(FedAvg):
    """FedAvg aggregation; local training adds ``mu/2 * ||w - w_global||^2``
    (Li et al. 2020). The federation passes :attr:`prox_mu` to ``TrainConfig``."""

    name: ClassVar[str] = "fedprox"
    mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.mu, (int, float)) or not math.isfinite(self.mu) or self.mu < 0:
            raise ConfigError(f"fedprox.mu must be a finite number >= 0, got {self.mu!r}")

    @property
    def prox_mu(self) -> float:
        return float(self.mu)


@dataclass(frozen=True)
class FedAdam(_Base):
    """Server Adam on the mean update (Reddi et al. 2021, Algorithm 2)."""

    name: ClassVar[str] = "fedadam"
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _positive(f"{self.name}.server_lr", self.server_lr)
        _unit(f"{self.name}.beta1", self.beta1)
        _unit(f"{self.name}.beta2", self.beta2)
        _positive(f"{self.name}.tau", self.tau)

    def init_state(self, dim: int) -> StrategyState:
        tau = float(self.tau)
        return StrategyState(
            0,
            _readonly(np.zeros(dim, dtype=np.float64)),
            _readonly(np.full(dim, tau * tau, dtype=np.float64)),
        )

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        # v = beta2 * v + (1 - beta2) * delta^2
        a = np.multiply(v, float(self.beta2))
        b = np.multiply(d2, 1.0 - float(self.beta2))
        out: np.ndarray = np.add(a, b)
        return out

    def apply(
        self,
        global_vec: np.ndarray,
        results: Sequence[GroupResult],
        state: StrategyState | None = None,
    ) -> tuple[np.ndarray, StrategyState]:
        g = _check_global(global_vec)
        dim = g.shape[0]
        state = state if state is not None else self.init_state(dim)
        if state.m is None or state.v is None or state.m.shape != (dim,) or state.v.shape != (dim,):
            raise ValueError(f"{self.name} state does not match a model of {dim} parameters")
        agg = aggregate(results, dim)
        if agg is None:
            return g.copy(), state
        delta = agg.delta  # (D,) float64
        m = np.add(
            np.multiply(state.m, float(self.beta1)), np.multiply(delta, 1.0 - float(self.beta1))
        )
        d2 = np.multiply(delta, delta)
        v = self._second_moment(state.v, d2)
        denom = np.add(np.sqrt(v), float(self.tau))
        step = np.multiply(np.divide(m, denom), float(self.server_lr))
        x = np.add(g.astype(np.float64), step)
        return x.astype(np.float32), StrategyState(state.step + 1, _readonly(m), _readonly(v))


@dataclass(frozen=True)
class FedYogi(FedAdam):
    """Server Yogi on the mean update (Reddi et al. 2021, Algorithm 2)."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        # v = v - (1 - beta2) * delta^2 * sign(v - delta^2)
        s = np.sign(np.subtract(v, d2))
        out: np.ndarray = np.subtract(v, np.multiply(np.multiply(d2, 1.0 - float(self.beta2)), s))
        return out


_STRATEGIES: dict[str, type[Any]] = {c.name: c for c in (FedAvg, FedProx, FedAdam, FedYogi)}


def make_strategy(name: str, **hparams: Any) -> Strategy:
    """Build a strategy by name (``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi``;
    case-insensitive) with keyword hyper-parameters.

    Raises :class:`~p2pfl.errors.ConfigError` for an unknown name, an unknown
    hyper-parameter, or a bad value.
    """
    cls = _STRATEGIES.get(str(name).strip().lower())
    if cls is None:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(_STRATEGIES))}"
        )
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ConfigError(
            f"strategy {cls.name!r} has no hyper-parameter {', '.join(map(repr, unknown))}; "
            f"it accepts {', '.join(allowed)}"
        )
    strategy: Strategy = cls(**hparams)
    return strategy
