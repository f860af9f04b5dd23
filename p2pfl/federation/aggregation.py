"""The group-aggregation interface: how a round delegates "sum the group's updates".

Theory of operation
-------------------
The round machine (:mod:`p2pfl.federation.round`) knows *that* a group sums its
members' updates, not *how*.  For every group it belongs to, each peer builds one
:class:`GroupAggregation` sub-machine from an :class:`AggregationContext` through an
:data:`AggregationFactory`; the plaintext backend
(:class:`~p2pfl.federation.plaintext.PlaintextAggregation`) and the secure backend
(wrapping :mod:`mpc.secagg`) are two such factories, and the round machine does not
change when one replaces the other.

A sub-machine has the sans-I/O shape of every protocol here:

* ``submit(contribution, now)``: this peer's own input, at most once (never, when
  local training missed its deadline: the backend treats the peer as dropped).
* ``receive(sender, payload, now)``: an opaque payload from a group peer (the round
  machine wraps payloads in :class:`~p2pfl.federation.messages.GroupPayload` for the
  wire, so a backend defines and validates its own message formats).  Raises
  :class:`~p2pfl.errors.RemoteProtocolError` for bad input and stays usable.
* ``handle_timer(now)`` / ``next_deadline()``: its own deadlines, absolute, derived
  from ``ctx.start`` and ``ctx.input_deadline`` (inputs due).
* ``messages_to_send()``: ``(recipient, payload)`` pairs, direct to group peers.
* ``next_event()``: :class:`GroupSumReady` (on an aggregator that computed the sum),
  :class:`GroupAborted` (this peer knows the group cannot complete) or
  :class:`AggregationEvidence` (a peer misbehaved; informational).  A plain member
  needs to emit nothing: it learns the outcome from the signed group result.
* ``check_result(result)``: asked before this peer signs a group result that an
  aggregator proposes; returns None to sign or a reason to refuse.  The plaintext
  backend refuses claims that include it without its input and, on a replica
  aggregator, sums that differ from its own recomputation; the secure backend checks
  the included set against the consistency announcement it signed.
* ``send_failed(recipient, now)``: a payload to ``recipient`` could not be sent.

Inputs and outputs are floats: a contribution is the member's L2-clipped update x_u
(float32) and its weight ``0 <= w_u <= 1``; the output is ``Σ w_u x_u`` over the
included members in float64, with ``Σ w_u`` and ``Σ n_u``.  A secure backend quantizes
``x_u`` into Z_2^32 itself (:mod:`mpc.quant`, weight folded in, bounds from
``ctx.federation.secagg``) and dequantizes the sum: quantization is the backend's
business because it needs the backend's randomness and its summand bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mpc.rand import Rng
from p2pfl.wire import PeerId

if TYPE_CHECKING:
    from p2pfl.identity import Identity

    from .adversary import Adversary
    from .config import Federation
    from .messages import DetectionScores
    from .schedule import Group

__all__ = [
    "AggregationContext",
    "AggregationEvent",
    "AggregationEvidence",
    "AggregationFactory",
    "Contribution",
    "GroupAborted",
    "GroupAggregation",
    "GroupSumReady",
]


@dataclass(frozen=True, eq=False)
class Contribution:
    """A member's input: ``update`` (D,) float32, L2-clipped; ``weight`` in [0, 1];
    ``num_samples`` its local training set size (reported, summed)."""

    update: np.ndarray
    weight: float
    num_samples: int


@dataclass(frozen=True, eq=False)
class GroupSumReady:
    """The group's aggregate: ``update_sum`` (D,) float64 = Σ w_u x_u over ``included``
    (sorted by peer id); ``dropped``: members whose input did not arrive;
    ``excluded``: members left out by policy, with reasons (secure backend scoring);
    ``detection``: the scores behind them (:class:`~.messages.DetectionScores`)."""

    update_sum: np.ndarray
    included: tuple[PeerId, ...]
    total_weight: float
    total_samples: int
    dropped: tuple[PeerId, ...] = ()
    excluded: tuple[tuple[PeerId, str], ...] = ()
    detection: DetectionScores | None = None


def same_sum(result: GroupSumReady, update_sum: np.ndarray, total_weight: float,
             total_samples: int) -> bool:
    """True when ``result`` carries exactly (bit for bit) this sum, weight and count.

    Replicas use it in ``check_result`` to co-sign only what they computed themselves.
    """
    claimed = np.asarray(result.update_sum)
    return (
        claimed.shape == update_sum.shape
        and np.array_equal(claimed.astype(np.float64, copy=False).view(np.uint64),
                           update_sum.view(np.uint64))
        and float(result.total_weight) == total_weight
        and int(result.total_samples) == total_samples
    )


@dataclass(frozen=True)
class GroupAborted:
    """The group cannot produce a sum this round (nothing was revealed)."""

    reason: str


@dataclass(frozen=True)
class AggregationEvidence:
    """``peer`` misbehaved inside the group protocol (the message was ignored)."""

    peer: PeerId
    reason: str


AggregationEvent = GroupSumReady | GroupAborted | AggregationEvidence


@dataclass(frozen=True, eq=False)
class AggregationContext:
    """Everything a backend needs to run one group of one round.

    ``context`` is 32 bytes binding every key, share, mask and signature of the
    protocol to (federation, round, group, schedule, base state); ``threshold`` is
    the group's resolved threshold (the fewest inputs a sum may cover); ``start`` the
    round start and ``input_deadline`` the time inputs are due (both absolute, in the
    clock the machine is driven with); ``rng`` the randomness source;
    ``public_key(peer)`` the Ed25519 identity key of a peer when known (to verify
    signatures made inside the protocol), else None.  A member's party index is its
    position in ``group.members``.  ``reference``: the previous round's global update
    (public; None in round 0), the sketch stage's reference direction; ``weight_of``:
    a member's public weight factor (its largest possible weight, from the ledger);
    ``adversary``: this peer's simulated misbehaviour (None: honest).
    """

    federation: Federation
    round: int
    group: Group
    me: PeerId
    identity: Identity
    context: bytes
    threshold: int
    dim: int
    start: float
    input_deadline: float
    rng: Rng
    public_key: Callable[[PeerId], bytes | None]
    reference: np.ndarray | None = None
    weight_of: Callable[[PeerId], float] = lambda peer: 1.0
    adversary: Adversary | None = None


class GroupAggregation(Protocol):
    """One peer's part in one group's aggregation (see the module docstring)."""

    def submit(self, contribution: Contribution, now: float) -> None: ...

    def receive(self, sender: PeerId, payload: bytes, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def messages_to_send(self) -> list[tuple[PeerId, bytes]]: ...

    def next_event(self) -> AggregationEvent | None: ...

    def check_result(self, result: GroupSumReady) -> str | None: ...

    def send_failed(self, recipient: PeerId, now: float) -> None: ...


AggregationFactory = Callable[[AggregationContext], GroupAggregation]
