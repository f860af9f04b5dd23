"""The public names of p2pfl.ledger are pinned; its wire tags stay in 0x0600–0x06FF."""

from __future__ import annotations

import p2pfl.ledger as ledger
from p2pfl.wire import registered_messages

EXPECTED = {
    "BINDING_CODES", "FREE_RIDER_CODES", "VIOLATION_CODES", "AppendResult", "AppendStatus",
    "EquivocationProof", "GroupHeader", "GroupSlot", "GroupStatus", "GroupWitness", "Ledger",
    "LedgerError", "LedgerFileHeader", "LedgerParams", "LedgerRequest", "LedgerResponse",
    "LedgerStore", "LedgerSync", "LedgerSynced", "PeerStanding", "Record", "RecordBody", "RoundLedger",
    "SignedHeader", "Standing", "SyncState", "VerifiedRecord", "answer_ledger_request",
    "build_record", "check_proof", "collect_equivocations", "credits",
    "find_equivocations", "genesis_hash", "header_of", "history_rows", "ledger_rows",
    "proof_id", "reason_code", "record_hash", "reputation", "schedule_of",
    "signed_headers", "standing", "standing_rows", "state_digest", "strategy_hash", "sum_hash",
    "verify_chain", "verify_record",
}


def test_public_names() -> None:
    assert set(ledger.__all__) == EXPECTED
    assert all(hasattr(ledger, name) for name in ledger.__all__)


def test_wire_tags_stay_in_the_ledger_range() -> None:
    ours = {t for t, cls in registered_messages().items() if cls.__module__.startswith("p2pfl.ledger")}
    assert len(ours) == 9 and all(0x0600 <= t <= 0x06FF for t in ours)
    assert 0x0601 not in registered_messages()  # retired (the header with witness sums)


def test_the_group_header_is_the_federations_result_header() -> None:
    from p2pfl.federation.messages import ResultHeader, result_header, sum_hash

    assert ledger.GroupHeader is ResultHeader
    assert ledger.header_of is result_header and ledger.sum_hash is sum_hash
