"""Ledger layer: signed, hash-chained round records; reputation and credits.

A driver keeps one :class:`Ledger` next to its rounds (see ``docs/ledger.md``)::

    ledger = Ledger.open(path, fed)                        # recovers and verifies
    sched = schedule_round(fed, state.round, state.beacon, candidates, weight=ledger.weight)
    rm = RoundMachine(fed, identity, state, sched,
                      weight_factor=ledger.weight_factor(identity.peer_id))
    ...
    # RoundCompleted ev:
    record = ledger.build(ev, sched, aborts=rm.outcomes()[1])
    ledger.append(record)                                  # verify + fsync
    publish(encode(record))
    state = ev.next_state(ledger.head)
    # a record heard from a peer: ledger.append(decode(payload), sender)
    #   OutOfSync -> run LedgerSync; RemoteProtocolError -> penalize e.peer

Reputation and credits are pure functions of the chain (:func:`reputation`,
:func:`credits`, :class:`Standing`); :func:`verify_chain` checks a chain from genesis.
"""

from ._binding import RoundLedger
from ._build import build_record, proof_id, state_digest, strategy_hash
from ._ledger import AppendResult, AppendStatus, Ledger, answer_ledger_request
from ._messages import (
    EquivocationProof,
    GroupHeader,
    GroupSlot,
    GroupStatus,
    GroupWitness,
    LedgerFileHeader,
    LedgerRequest,
    LedgerResponse,
    Record,
    RecordBody,
    SignedHeader,
    genesis_hash,
    header_of,
    record_hash,
    sum_hash,
)
from ._params import LedgerParams
from ._render import history_rows, ledger_rows, standing_rows
from ._reputation import (
    BINDING_CODES,
    FREE_RIDER_CODES,
    VIOLATION_CODES,
    PeerStanding,
    Standing,
    credits,
    reason_code,
    reputation,
    schedule_of,
    standing,
)
from ._store import LedgerError, LedgerStore
from ._sync import LedgerSync, LedgerSynced, SyncState
from ._verify import (
    VerifiedRecord,
    check_proof,
    collect_equivocations,
    find_equivocations,
    signed_headers,
    verify_chain,
    verify_record,
)

__all__ = [
    "BINDING_CODES",
    "FREE_RIDER_CODES",
    "VIOLATION_CODES",
    "AppendResult",
    "AppendStatus",
    "EquivocationProof",
    "GroupHeader",
    "GroupSlot",
    "GroupStatus",
    "GroupWitness",
    "Ledger",
    "LedgerError",
    "LedgerFileHeader",
    "LedgerParams",
    "LedgerRequest",
    "LedgerResponse",
    "LedgerStore",
    "LedgerSync",
    "LedgerSynced",
    "PeerStanding",
    "Record",
    "RecordBody",
    "RoundLedger",
    "SignedHeader",
    "Standing",
    "SyncState",
    "VerifiedRecord",
    "answer_ledger_request",
    "build_record",
    "check_proof",
    "collect_equivocations",
    "credits",
    "find_equivocations",
    "genesis_hash",
    "header_of",
    "history_rows",
    "ledger_rows",
    "proof_id",
    "reason_code",
    "record_hash",
    "reputation",
    "schedule_of",
    "signed_headers",
    "standing",
    "standing_rows",
    "state_digest",
    "strategy_hash",
    "sum_hash",
    "verify_chain",
    "verify_record",
]
