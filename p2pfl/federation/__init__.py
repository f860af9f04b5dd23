"""Federation layer: the federation file, the round schedule, the round machine.

A driver runs round r on every peer like this (all sans-I/O; see ``docs/federation.md``)::

    fed = load_federation("federation.toml")
    state = GlobalState.initial(fed, model_vector)          # or load_checkpoint(...)
    sched = schedule_round(fed, state.round, state.beacon, candidates)
    rm = RoundMachine(fed, identity, state, sched)          # aggregation=PlaintextAggregation
    rm.start(now)
    # loop: TrainRequested -> train off the event loop -> rm.training_done(update, n, now)
    #       rm.receive(sender, msg, now); rm.handle_timer(now) at rm.next_deadline()
    #       send rm.messages_to_send() (Outgoing.recipient is a PeerId or BROADCAST)
    # RoundCompleted -> state = event.next_state(ledger_head); save_checkpoint(path, state)
"""

from .aggregation import (
    AggregationContext,
    AggregationEvent,
    AggregationEvidence,
    AggregationFactory,
    Contribution,
    GroupAborted,
    GroupAggregation,
    GroupSumReady,
)
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Detection, Federation, Threshold, federation_from_dict, load_federation
from .events import (
    BROADCAST,
    GroupOutcome,
    GroupResolved,
    Misbehaviour,
    Outgoing,
    RoundCompleted,
    RoundEvent,
    RoundFailed,
    RoundRecord,
    TrainRequested,
    clip_update,
)
from .ledger_params import LedgerParams
from .messages import (
    AbortBody,
    Endorsement,
    GroupPayload,
    ResultBody,
    SignatureReply,
    SignedGroupAbort,
    SignedGroupResult,
    SignRequest,
    StateRequest,
    StateResponse,
    message_round,
)
from .plaintext import PlaintextAggregation
from .results import OutOfSync, RoundView, verify_abort, verify_result
from .round import TRANSITIONS, RoundMachine, RoundState
from .schedule import (
    NO_LEDGER,
    Group,
    RoundSchedule,
    initial_beacon,
    next_beacon,
    schedule_round,
    select_cohort,
    split_groups,
)
from .state import GlobalState, StateSnapshot
from .sync import CatchUp, CaughtUp, answer_state_request, attested_state

__all__ = [
    "BROADCAST",
    "NO_LEDGER",
    "TRANSITIONS",
    "AbortBody",
    "AggregationContext",
    "AggregationEvent",
    "AggregationEvidence",
    "AggregationFactory",
    "CatchUp",
    "CaughtUp",
    "CheckpointError",
    "Contribution",
    "Detection",
    "Endorsement",
    "Federation",
    "GlobalState",
    "Group",
    "GroupAborted",
    "GroupAggregation",
    "GroupOutcome",
    "GroupPayload",
    "GroupResolved",
    "GroupSumReady",
    "LedgerParams",
    "Misbehaviour",
    "OutOfSync",
    "Outgoing",
    "PlaintextAggregation",
    "ResultBody",
    "RoundCompleted",
    "RoundEvent",
    "RoundFailed",
    "RoundMachine",
    "RoundRecord",
    "RoundSchedule",
    "RoundState",
    "RoundView",
    "SignRequest",
    "SignatureReply",
    "SignedGroupAbort",
    "SignedGroupResult",
    "StateRequest",
    "StateResponse",
    "StateSnapshot",
    "Threshold",
    "TrainRequested",
    "answer_state_request",
    "attested_state",
    "clip_update",
    "federation_from_dict",
    "initial_beacon",
    "load_checkpoint",
    "load_federation",
    "message_round",
    "next_beacon",
    "save_checkpoint",
    "schedule_round",
    "select_cohort",
    "split_groups",
    "verify_abort",
    "verify_result",
]
