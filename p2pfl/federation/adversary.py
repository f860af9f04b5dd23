"""Hooks through which a simulated malicious peer deviates (simulations and tests).

An honest peer has no adversary.  A malicious one gets an :class:`Adversary` from the
simulation (:mod:`p2pfl.sim.attacks`): the round machine hands it the honest local
update and submits what it returns *without clipping* (an attacker does not clip), and
the secure backend sketches what :meth:`Adversary.sketch_input` returns instead of the
vector it masked (a sketch liar).  Everything else -- keys, shares, signatures -- the
peer does by the protocol: attacks here are on the *content* of updates, the threat
the sketch stage and the ledger exist for (protocol-level misbehaviour is covered by
the adversarial tests of :mod:`mpc.secagg`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from p2pfl.wire import PeerId

__all__ = ["Adversary", "AttackContext"]


@dataclass(frozen=True, eq=False)
class AttackContext:
    """What an attack may look at: ``global_model`` the round's starting model,
    ``reference`` the sketch stage's public reference (the global model's move over the
    last rounds; None in round 0), ``clip_norm`` the
    federation's bound, ``rng`` a generator seeded per (peer, round)."""

    round: int
    peer: PeerId
    global_model: np.ndarray
    reference: np.ndarray | None
    num_samples: int
    clip_norm: float
    rng: np.random.Generator


class Adversary(Protocol):
    """A malicious peer's behaviour (see the module docstring)."""

    def update(self, honest: np.ndarray, ctx: AttackContext) -> np.ndarray:
        """The update to submit (float, shape of ``honest``; not clipped)."""
        ...

    def sketch_input(self, q: np.ndarray) -> np.ndarray:
        """The signed int64 quantized vector to sketch, given the one masked."""
        ...
