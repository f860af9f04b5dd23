"""The public names of p2pfl.federation are pinned: removing one is an API break."""

from __future__ import annotations

import p2pfl.federation as fed

EXPECTED = {
    "BROADCAST", "NO_LEDGER", "TRANSITIONS", "AbortBody", "AggregationContext",
    "AggregationEvent", "AggregationEvidence", "AggregationFactory", "CatchUp", "CaughtUp",
    "CheckpointError", "Contribution", "Detection", "Endorsement", "Federation", "LedgerParams", "GlobalState", "Group",
    "GroupAborted", "GroupAggregation", "GroupOutcome", "GroupPayload", "GroupResolved",
    "GroupSumReady", "Misbehaviour", "OutOfSync", "Outgoing", "PlaintextAggregation",
    "ResultBody", "RoundCompleted", "RoundEvent", "RoundFailed", "RoundMachine", "RoundRecord",
    "RoundSchedule", "RoundState", "RoundView", "SignRequest", "SignatureReply",
    "SignedGroupAbort", "SignedGroupResult", "StateRequest", "StateResponse", "StateSnapshot",
    "Threshold", "TrainRequested", "answer_state_request", "attested_state", "clip_update",
    "federation_from_dict", "initial_beacon", "load_checkpoint", "load_federation",
    "message_round", "next_beacon", "save_checkpoint", "schedule_round", "select_cohort",
    "split_groups", "verify_abort", "verify_result",
}


def test_public_names() -> None:
    assert set(fed.__all__) == EXPECTED
    assert all(hasattr(fed, name) for name in fed.__all__)


def test_wire_tags_stay_in_the_federation_range() -> None:
    from p2pfl.wire import registered_messages

    ours = {t for t, cls in registered_messages().items()
            if cls.__module__.startswith("p2pfl.federation")}
    secagg = {t for t, cls in registered_messages().items()  # mpc.secagg mirrors: 0x04xx
              if cls.__module__ == "p2pfl.federation._secure_wire"}
    assert ours - secagg and all(0x0500 <= t <= 0x05FF for t in ours - secagg)
    assert all(0x0400 <= t <= 0x04FF for t in secagg)
