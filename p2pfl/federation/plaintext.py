"""Plaintext group aggregation: the baseline backend (no privacy, same rounds).

Theory of operation
-------------------
Every member sends its contribution (clipped float32 update, weight, sample count)
to every aggregator of its group; an aggregator that is itself a member adds its
own locally.  An aggregator closes its inputs at ``ctx.input_deadline``, or earlier
once every member's input is in; it then emits :class:`GroupSumReady` when at least
``ctx.threshold`` inputs arrived, else :class:`GroupAborted`.  The sum is taken in
the group's fixed member order (sorted peer ids), one float64 ``w * x`` product and
one ``np.add`` per member, so any two aggregators holding the same inputs produce
the same bits; the total weight uses :func:`math.fsum`.

Because replicas hold the same inputs, :meth:`check_result` lets a replica
cross-check the primary's claimed sum over the *claimed* included set, and lets a
plain member refuse a claim that includes it when it never sent anything.

State table (aggregator): OPEN → CLOSED (sum or abort emitted).  A member's machine
stays OPEN; it only sends.
"""

from __future__ import annotations

import enum
import math
from typing import Annotated

import numpy as np

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.wire import ArraySpec, MaxLen, PeerId, Range, decode_as, encode, message

from .aggregation import (
    AggregationContext,
    AggregationEvent,
    Contribution,
    GroupAborted,
    GroupSumReady,
    same_sum,
)

__all__ = ["PlainContribution", "PlaintextAggregation"]


@message(0x0520)
class PlainContribution:
    """A member's plaintext input, sent directly to each aggregator of its group."""

    context: Annotated[bytes, MaxLen(32, exact=True)]
    update: Annotated[np.ndarray, ArraySpec(dtypes=("f4",), ndim=1)]
    weight: Annotated[float, Range(0.0, 1.0)]
    num_samples: Annotated[int, Range(0, 2**53)]


class _Phase(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


def _check(contribution: Contribution, dim: int) -> str | None:
    u = contribution.update
    if not isinstance(u, np.ndarray) or u.dtype != np.float32 or u.shape != (dim,):
        return f"update must be float32 of shape ({dim},)"
    if not np.isfinite(u).all():
        return "update has non-finite values"
    w = contribution.weight
    if not isinstance(w, int | float) or not math.isfinite(w) or not 0 <= w <= 1:
        return f"weight must be in [0, 1], got {w!r}"
    n = contribution.num_samples
    if not isinstance(n, int) or not 0 <= n <= 2**53:
        return f"num_samples must be an int in [0, 2**53], got {n!r}"
    return None


class PlaintextAggregation:
    """The plaintext :class:`~p2pfl.federation.aggregation.GroupAggregation`."""

    def __init__(self, ctx: AggregationContext) -> None:
        if ctx.me not in ctx.group:
            raise LocalProtocolError("a group aggregation needs this peer to be a member")
        self.ctx = ctx
        self.is_aggregator = ctx.me in ctx.group.aggregators
        self._phase = _Phase.OPEN
        self._inputs: dict[PeerId, Contribution] = {}
        self._submitted = False
        self._outbox: list[tuple[PeerId, bytes]] = []
        self._events: list[AggregationEvent] = []

    # -- inputs -------------------------------------------------------------

    def submit(self, contribution: Contribution, now: float) -> None:
        """Send our input to the aggregators (and keep it, if we aggregate).

        Raises :class:`LocalProtocolError` on a second call or a malformed input.
        """
        if self._submitted:
            raise LocalProtocolError("contribution already submitted")
        problem = _check(contribution, self.ctx.dim)
        if problem:
            raise LocalProtocolError(problem)
        self._submitted = True
        me = self.ctx.me
        others = [a for a in self.ctx.group.aggregators if a != me]
        if others:
            payload = encode(PlainContribution(
                self.ctx.context, contribution.update, float(contribution.weight),
                contribution.num_samples,
            ))
            self._outbox.extend((a, payload) for a in others)
        if self.is_aggregator and self._phase is _Phase.OPEN:
            self._inputs[me] = contribution
            self._maybe_close(now, early=True)

    def receive(self, sender: PeerId, payload: bytes, now: float) -> None:
        """Accept a member's input. Raises :class:`RemoteProtocolError` when the
        sender is not a member, we do not aggregate, the input is malformed or a
        duplicate. Inputs after the close are ignored (the member counts as dropped)."""
        if sender not in self.ctx.group or sender == self.ctx.me:
            raise RemoteProtocolError("group payload from a non-member", peer=sender)
        if not self.is_aggregator:
            raise RemoteProtocolError("contribution sent to a peer that does not aggregate",
                                      peer=sender)
        msg = decode_as(payload, PlainContribution)
        if msg.context != self.ctx.context:
            raise RemoteProtocolError("contribution for another round or group", peer=sender)
        c = Contribution(msg.update, msg.weight, msg.num_samples)
        problem = _check(c, self.ctx.dim)
        if problem:
            raise RemoteProtocolError(f"bad contribution: {problem}", peer=sender)
        if sender in self._inputs:
            raise RemoteProtocolError("duplicate contribution", peer=sender)
        if self._phase is _Phase.CLOSED:
            return
        self._inputs[sender] = c
        self._maybe_close(now, early=True)

    # -- time ---------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        if self.is_aggregator and self._phase is _Phase.OPEN and now >= self.ctx.input_deadline:
            self._maybe_close(now, early=False)

    def next_deadline(self) -> float | None:
        if self.is_aggregator and self._phase is _Phase.OPEN:
            return self.ctx.input_deadline
        return None

    def _maybe_close(self, now: float, *, early: bool) -> None:
        if early and len(self._inputs) < len(self.ctx.group):
            return
        self._phase = _Phase.CLOSED
        included = tuple(p for p in self.ctx.group.members if p in self._inputs)
        if len(included) < self.ctx.threshold:
            self._events.append(GroupAborted(
                f"{len(included)} of {len(self.ctx.group)} inputs arrived; "
                f"threshold {self.ctx.threshold}"
            ))
            return
        total, weight, samples = self._sum(included)
        dropped = tuple(p for p in self.ctx.group.members if p not in self._inputs)
        self._events.append(GroupSumReady(total, included, weight, samples, dropped))

    def _sum(self, included: tuple[PeerId, ...]) -> tuple[np.ndarray, float, int]:
        acc = np.zeros(self.ctx.dim, dtype=np.float64)
        for p in included:  # fixed order: the group's sorted members
            c = self._inputs[p]
            np.add(acc, np.multiply(c.update.astype(np.float64), float(c.weight)), out=acc)
        acc.flags.writeable = False
        weight = math.fsum(float(self._inputs[p].weight) for p in included)
        return acc, weight, sum(self._inputs[p].num_samples for p in included)

    # -- results ------------------------------------------------------------

    def check_result(self, result: GroupSumReady) -> str | None:
        me = self.ctx.me
        if me in result.included and not self._submitted:
            return "the result includes this peer, which contributed nothing"
        if not self.is_aggregator or not all(p in self._inputs for p in result.included):
            return None  # nothing more we can verify
        total, weight, samples = self._sum(result.included)
        same = same_sum(result, total, weight, samples)
        return None if same else "the sum differs from this replica's sum over the same members"

    # -- plumbing -----------------------------------------------------------

    def messages_to_send(self) -> list[tuple[PeerId, bytes]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> AggregationEvent | None:
        return self._events.pop(0) if self._events else None

    def send_failed(self, recipient: PeerId, now: float) -> None:
        """Nothing to do: an aggregator we could not reach just misses our input."""
