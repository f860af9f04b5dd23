"""Built-in attacks for simulations (``p2pfl sim --attack NAME --malicious F``).

Each attack is an :class:`~p2pfl.federation.adversary.Adversary` run by every
malicious peer (the data poisoning of ``labelflip`` is applied to its task instead).
Malicious peers follow the protocol -- keys, shares, signatures, deadlines -- and lie
about content only; they never clip unless the attack says so.

==============  ===========================================================================
``signflip``    submits ``-clip(update)``: the honest update reversed, at an honest norm
``scale``       model replacement: ``gamma * clip(update)``, ``gamma`` = the cohort size
                (``scale:G`` sets it)
``noise``       Gaussian noise of L2 norm just under the clipping bound (the strongest
                noise that passes the norm rule): ``noise:S`` sets the norm to ``S * B``
``labelflip``   trains on labels ``C - 1 - y`` (data poisoning), then behaves honestly
``freerider``   a zero update (``freerider:stale``: the public reference -- the global
                model's recent move -- replayed as its own update)
``sybil``       every malicious identity submits the same vector (the first sybil's
                reversed update) plus noise of 1/1000 of its norm
``sketchliar``  masks ``gamma * clip(update)`` (as ``scale``) but sketches the honest
                quantized vector: the group sum does not bind to the sketches
``module:fn``   ``fn(update, ctx) -> update`` of a user module: ``ctx`` is an
                :class:`~p2pfl.federation.adversary.AttackContext`
==============  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from p2pfl.errors import ConfigError
from p2pfl.federation.adversary import Adversary, AttackContext
from p2pfl.federation.events import clip_update

__all__ = ["ATTACKS", "Attack", "choose_malicious", "make_attack", "poison_task"]

ATTACKS: Final = ("signflip", "scale", "noise", "labelflip", "freerider", "sybil", "sketchliar")


def choose_malicious(n: int, fraction: float, seed: int) -> list[int]:
    """The indices of the malicious peers: ``round(fraction * n)`` of them, drawn with a
    seeded generator (the same for every attack, so runs compare like for like)."""
    k = round(fraction * n)
    return sorted(random.Random(f"p2pfl-sim/malicious/{seed}").sample(range(n), k))


@dataclass
class Attack:
    """One attack of a simulation: ``adversary(index)`` for each malicious peer."""

    name: str
    param: float | None = None
    user: Callable[[np.ndarray, AttackContext], np.ndarray] | None = None
    cohort: int = 1
    shared: dict[int, np.ndarray] = field(default_factory=dict)  # sybil: round -> vector

    def adversary(self, index: int) -> Adversary:
        return _Adversary(self, index)

    @property
    def poisons_data(self) -> bool:
        return self.name == "labelflip"


class _Adversary:
    def __init__(self, attack: Attack, index: int) -> None:
        self.attack = attack
        self.index = index
        self.divisor = 1

    def update(self, honest: np.ndarray, ctx: AttackContext) -> np.ndarray:
        a = self.attack
        clipped = clip_update(honest, ctx.clip_norm).astype(np.float64)
        name = a.name
        if name == "signflip":
            return -clipped
        if name in ("scale", "sketchliar"):
            gamma = a.param if a.param is not None else float(a.cohort)
            self.divisor = max(1, round(gamma))
            return gamma * clipped
        if name == "noise":
            noise: np.ndarray = ctx.rng.standard_normal(size=(int(honest.shape[0]),))
            scale = a.param if a.param is not None else 0.99
            return noise * (scale * ctx.clip_norm / float(np.linalg.norm(noise)))
        if name == "labelflip":
            return clipped
        if name == "freerider":
            if a.param == 1.0 and ctx.reference is not None:  # stale
                return np.asarray(ctx.reference, dtype=np.float64)
            return np.zeros_like(clipped)
        if name == "sybil":
            common = a.shared.get(ctx.round)
            if common is None:
                common = a.shared[ctx.round] = -clipped
                for r in [r for r in a.shared if r < ctx.round - 2]:
                    del a.shared[r]
            jitter: np.ndarray = ctx.rng.standard_normal(size=(int(common.shape[0]),))
            size = 1e-3 * float(np.linalg.norm(common)) / float(np.linalg.norm(jitter))
            return np.asarray(common + jitter * size, dtype=np.float64)
        assert a.user is not None
        out: np.ndarray = np.asarray(a.user(honest, ctx), dtype=np.float64)
        return out

    def sketch_input(self, q: np.ndarray) -> np.ndarray:
        if self.attack.name == "sketchliar":  # the sketch of the unboosted vector
            lied: np.ndarray = np.floor_divide(q, self.divisor)
            return lied
        return q


def make_attack(spec: str, *, cohort: int) -> Attack:
    """Parse ``--attack``: a built-in name (optionally ``name:param``) or
    ``module:function``.  Raises :class:`ConfigError`."""
    name, _, arg = spec.partition(":")
    if name in ATTACKS:
        param: float | None = None
        if arg:
            if name == "freerider":
                if arg not in ("zero", "stale"):
                    raise ConfigError(f"--attack freerider:{arg}: use freerider:zero or :stale")
                param = 1.0 if arg == "stale" else None
            else:
                try:
                    param = float(arg)
                except ValueError:
                    raise ConfigError(f"--attack {spec}: parameter must be a number") from None
        return Attack(name, param, cohort=cohort)
    if not arg:
        raise ConfigError(f"--attack: unknown attack {spec!r} (built in: {', '.join(ATTACKS)}; "
                          "or module:function)")
    try:
        fn = getattr(importlib.import_module(name), arg)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--attack {spec}: cannot load: {e}") from None
    if not callable(fn):
        raise ConfigError(f"--attack {spec}: not callable")
    return Attack("user", user=fn, cohort=cohort)


def poison_task(task: Any, classes: int | None = None) -> Any:
    """A copy of a classification task whose training labels are flipped to
    ``C - 1 - y`` (``C``: ``classes``, default max label + 1)."""
    from p2pfl.learning.task import TensorData

    y = task.train_data.y
    c = int(y.max()) + 1 if classes is None else classes
    flipped = TensorData(task.train_data.x, (c - 1) - y)
    return dataclasses.replace(task, train_data=flipped)
