"""The global state a round starts from, its digest, and its wire form.

Theory of operation
-------------------
Between rounds a peer holds one :class:`GlobalState`: the federation id, the round
about to run, its beacon, the global model (float32) and the strategy state (server
optimizer moments).  Its :attr:`~GlobalState.digest` commits to all of it::

    digest = H("state/1" ‖ federation id ‖ round ‖ beacon ‖ model hash ‖ H(strategy state))

Group results name the digest of the state their round started from, so a peer can
tell whether it is in sync, and a late joiner can check a state fetched from a
neighbour against results signed by a quorum of group members.  The same
:class:`StateSnapshot` message serves the wire (:mod:`~p2pfl.federation.sync`) and
checkpoints (:mod:`~p2pfl.federation.checkpoint`); it is CBOR, never pickle.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Annotated

import numpy as np

from p2pfl.errors import RemoteProtocolError
from p2pfl.learning.strategy import StrategyState, hash_vector
from p2pfl.wire import ArraySpec, MaxLen, Range, encode, message

from .schedule import NO_LEDGER, initial_beacon, next_beacon

if TYPE_CHECKING:
    from .config import Federation

__all__ = ["GlobalState", "StateSnapshot", "StrategySnapshot"]

B32 = Annotated[bytes, MaxLen(32, exact=True)]
F4Vec = Annotated[np.ndarray, ArraySpec(dtypes=("f4",), ndim=1)]
F8Vec = Annotated[np.ndarray, ArraySpec(dtypes=("f8",), ndim=1)]


@message(0x0530)
class StrategySnapshot:
    """Wire form of :class:`~p2pfl.learning.strategy.StrategyState`."""

    step: Annotated[int, Range(0, 2**62)]
    m: F8Vec | None
    v: F8Vec | None


@message(0x0531)
class StateSnapshot:
    """Wire form of a :class:`GlobalState`."""

    federation: B32
    round: Annotated[int, Range(0, 2**62)]
    beacon: B32
    model: F4Vec
    strategy: StrategySnapshot


def _ro(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class GlobalState:
    """The state round ``round`` starts from; immutable (arrays are read-only)."""

    federation_id: bytes
    round: int
    beacon: bytes
    model: np.ndarray  # (D,) float32
    strategy_state: StrategyState

    def __post_init__(self) -> None:
        m = np.asarray(self.model)
        if m.dtype != np.float32 or m.ndim != 1:
            raise ValueError(f"model must be a 1-D float32 vector, got {m.dtype} {m.shape}")
        if m.flags.writeable:
            m = _ro(m.copy())
        object.__setattr__(self, "model", m)
        if len(self.federation_id) != 32 or len(self.beacon) != 32 or self.round < 0:
            raise ValueError("federation id and beacon must be 32 bytes and round >= 0")

    @classmethod
    def initial(cls, federation: Federation, model: np.ndarray) -> GlobalState:
        """Round 0: the model built from the federation's init seed, fresh strategy state."""
        vec = np.asarray(model, dtype=np.float32)
        return cls(federation.id, 0, initial_beacon(federation.id), vec,
                   federation.strategy.init_state(vec.shape[0]))

    @property
    def dim(self) -> int:
        return int(self.model.shape[0])

    @cached_property
    def model_hash(self) -> bytes:
        """BLAKE2b-256 of the model's float32 bytes (:func:`p2pfl.learning.strategy.hash_vector`)."""
        return bytes.fromhex(hash_vector(self.model))

    @cached_property
    def strategy_snapshot(self) -> StrategySnapshot:
        s = self.strategy_state
        return StrategySnapshot(int(s.step), s.m, s.v)

    @cached_property
    def digest(self) -> bytes:
        """Commitment to the whole state (see the module docstring)."""
        h = hashlib.blake2b(digest_size=32)
        sh = hashlib.blake2b(encode(self.strategy_snapshot), digest_size=32).digest()
        for part in (b"p2pfl/state/1", self.federation_id, struct.pack("<Q", self.round),
                     self.beacon, self.model_hash, sh):
            h.update(part)
        return h.digest()

    def advance(
        self, model: np.ndarray, strategy_state: StrategyState, ledger_head: bytes = NO_LEDGER
    ) -> GlobalState:
        """The state of the next round, after this round produced ``model``."""
        vec = np.asarray(model, dtype=np.float32)
        beacon = next_beacon(self.beacon, bytes.fromhex(hash_vector(vec)), ledger_head)
        return GlobalState(self.federation_id, self.round + 1, beacon, vec, strategy_state)

    def to_snapshot(self) -> StateSnapshot:
        return StateSnapshot(self.federation_id, self.round, self.beacon, self.model,
                             self.strategy_snapshot)

    @classmethod
    def from_snapshot(cls, snap: StateSnapshot, federation_id: bytes | None = None) -> GlobalState:
        """Rebuild a state; raises :class:`RemoteProtocolError` when it is inconsistent
        (another federation, moments of the wrong length)."""
        if federation_id is not None and snap.federation != federation_id:
            raise RemoteProtocolError("state snapshot belongs to another federation")
        s = snap.strategy
        for name, a in (("m", s.m), ("v", s.v)):
            if a is not None and a.shape != snap.model.shape:
                raise RemoteProtocolError(f"strategy state {name} does not match the model size")
        moments = [None if a is None else _ro(np.array(a, dtype=np.float64)) for a in (s.m, s.v)]
        state = StrategyState(s.step, moments[0], moments[1])
        return cls(snap.federation, snap.round, snap.beacon,
                   _ro(np.array(snap.model, dtype=np.float32)), state)
