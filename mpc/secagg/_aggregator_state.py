"""The aggregator's states, their legal moves, and which state consumes what.

One table of legal transitions keyed by :class:`AggState` (as h11's ``_state.py``),
the protocol stage and deadline window of each state, and the routing rule of
:meth:`~mpc.secagg._machine.Machine._consumer`: which state consumes each message
from each sender (a message that arrives earlier is buffered, later is late, from a
sender that may never send it is evidence). Kept apart from
:class:`~mpc.secagg._aggregator.Aggregator` because it is data, not behaviour, and
because both the aggregator and its sketch stage
(:mod:`~mpc.secagg._aggregator_sketch`) move between these states.
"""

from __future__ import annotations

import enum

from ._config import GroupConfig, Phase, Stage
from ._messages import (
    Complaint,
    ConsistencySig,
    Decision,
    ForwardedInput,
    InputRequest,
    MaskedInput,
    Message,
    ScoreShares,
    ShareKeys,
    SignedKeys,
    SketchShares,
    UnmaskShares,
)

__all__ = ["PHASE", "STAGE", "TRANSITIONS", "AggState", "consumer"]


class AggState(enum.Enum):
    """States of :class:`~mpc.secagg._aggregator.Aggregator`, in protocol order."""

    KEYS = "keys"
    SHARES = "shares"
    MASKED = "masked"
    SKETCH = "sketch"
    SCORES = "scores"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"
    ERROR = "error"


A = AggState
_AB = frozenset({A.ABORTED})
TRANSITIONS: dict[AggState, frozenset[AggState]] = {
    A.KEYS: frozenset({A.SHARES}) | _AB,
    A.SHARES: frozenset({A.MASKED}) | _AB,
    A.MASKED: frozenset({A.SKETCH, A.CONSISTENCY}) | _AB,
    A.SKETCH: frozenset({A.SCORES}) | _AB,
    A.SCORES: frozenset({A.CONSISTENCY}) | _AB,
    A.CONSISTENCY: frozenset({A.UNMASK}) | _AB,
    A.UNMASK: frozenset({A.DONE}) | _AB,
}
STAGE = {
    A.KEYS: Stage.KEYS,
    A.SHARES: Stage.SHARES,
    A.MASKED: Stage.MASKED,
    A.SKETCH: Stage.SKETCH,
    A.SCORES: Stage.SKETCH,
    A.CONSISTENCY: Stage.CONSISTENCY,
    A.UNMASK: Stage.UNMASK,
    A.DONE: Stage.OUTPUT,
}
"""The protocol stage of each state (for evidence and ``StageReached``)."""
PHASE = {
    A.KEYS: Phase.KEYS,
    A.SHARES: Phase.SHARES,
    A.MASKED: Phase.MASKED,
    A.SKETCH: Phase.SKETCH_SHARES,
    A.SCORES: Phase.SCORES,
    A.CONSISTENCY: Phase.CONSISTENCY,
    A.UNMASK: Phase.UNMASK,
}
"""The deadline window of each state that has one."""
_PRIMARY_ONLY = {SignedKeys: A.KEYS, ShareKeys: A.SHARES, SketchShares: A.SKETCH}
_ALL = {
    MaskedInput: A.MASKED,
    ScoreShares: A.SCORES,
    ConsistencySig: A.CONSISTENCY,
    Complaint: A.CONSISTENCY,
    UnmaskShares: A.UNMASK,
}
_DECISION_STATE = {Stage.KEYS: A.KEYS, Stage.SHARES: A.SHARES, Stage.MASKED: A.MASKED}


def consumer(
    cfg: GroupConfig,
    primary: bool,
    state: AggState,
    u3_fixed: bool,
    sender: int,
    msg: Message,
) -> AggState | None:
    """The state in which an aggregator (the primary or not, now in ``state``, with U3
    fixed or not) consumes ``msg`` from ``sender``; None if it may never send it.

    Members' uplinks: keys, encrypted shares and sketch shares go to the primary only,
    the rest to every aggregator (score shares only with a sketch stage). Between
    aggregators: the primary's decisions and forwarded inputs go to replicas, input
    requests from replicas to the primary (answered once U3 is fixed).
    """
    if isinstance(msg, Decision):
        if primary or sender != cfg.primary:
            return None
        if msg.stage == Stage.OUTPUT:
            return state
        return _DECISION_STATE.get(Stage(msg.stage))
    if isinstance(msg, ForwardedInput):
        return None if primary or sender != cfg.primary else A.MASKED
    if isinstance(msg, InputRequest):
        if not primary or sender not in cfg.aggregators[1:]:
            return None
        return state if u3_fixed else A.SKETCH
    if not 0 <= sender < cfg.n:
        return None
    t = _PRIMARY_ONLY.get(type(msg))
    if t is not None:
        if not primary or (t is A.SKETCH and cfg.sketch is None):
            return None
        return t
    t = _ALL.get(type(msg))
    if t is A.SCORES and cfg.sketch is None:
        return None
    return t
