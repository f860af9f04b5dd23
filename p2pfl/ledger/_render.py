"""Text rows for ``p2pfl ledger``: reputation, credits and history.

Pure formatting of a :class:`~p2pfl.ledger.Standing` and of records; the CLI prints
the rows (one ``str`` per line, fixed-width columns, no trailing spaces).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._ledger import Ledger
from ._messages import GroupStatus, Record, record_hash
from ._reputation import Standing

__all__ = ["history_rows", "ledger_rows", "standing_rows"]


def standing_rows(standing: Standing, *, limit: int | None = None) -> list[str]:
    """One row per peer, best score first (ties by peer id)."""
    rows = [
        f"{'peer':<32}  {'score':>6}  {'factor':>6}  {'weight':>6}  {'credits':>10}  "
        f"{'contrib':>7}  {'excl':>4}  {'drop':>4}  {'fail':>4}  {'viol':>4}  {'equiv':>5}  "
        f"{'since':>5}  {'last':>5}"
    ]
    peers = sorted(standing.peers.items(), key=lambda kv: (-standing.score(kv[0]), kv[0].raw))
    for peer, s in peers[:limit] if limit is not None else peers:
        flag = "*" if standing.is_newcomer(peer) else " "
        rows.append(
            f"{peer!s:<32}  {standing.score(peer):>6.3f}  {standing.weight_factor(peer):>6.3f}  "
            f"{standing.weight(peer):>6.3f}  {s.credits:>10.1f}  {s.contributions:>6}{flag}  "
            f"{s.exclusions:>4}  {s.dropouts:>4}  {s.failed_groups:>4}  {s.violations:>4}  "
            f"{s.equivocations:>5}  {s.first_round:>5}  {s.last_round:>5}"
        )
    return rows


def history_rows(records: Sequence[Record], *, last: int | None = 20,
                 signatures: Sequence[int] | None = None) -> list[str]:
    """One row per record (the last ``last``), oldest first."""
    rows = [
        f"{'round':>5}  {'record':<16}  {'cohort':>6}  {'groups a/x/m':>12}  {'incl':>5}  "
        f"{'drop':>5}  {'excl':>5}  {'sigs':>5}  {'model':<16}  evidence"
    ]
    start = 0 if last is None else max(0, len(records) - last)
    for i in range(start, len(records)):
        b = records[i].body
        acc = [s for s in b.groups if s.status is GroupStatus.ACCEPTED and s.header is not None]
        ab = sum(s.status is GroupStatus.ABORTED for s in b.groups)
        miss = len(b.groups) - len(acc) - ab
        incl = sum(len(s.header.included) for s in acc if s.header is not None)
        drop = sum(len(s.header.dropped) for s in acc if s.header is not None)
        excl = sum(len(s.header.excluded) for s in acc if s.header is not None)
        sigs = signatures[i] if signatures is not None else sum(
            len(w.endorsements) + len(w.abort_endorsements) for w in records[i].witnesses)
        groups = f"{len(acc)}/{ab}/{miss}"
        model = b.model_hash.hex()[:16] if b.updated else "(unchanged)"
        rows.append(
            f"{b.round:>5}  {record_hash(b).hex()[:16]:<16}  {len(b.cohort):>6}  {groups:>12}  "
            f"{incl:>5}  {drop:>5}  {excl:>5}  {sigs:>5}  {model:<16}  {len(b.evidence)}"
        )
    return rows


def ledger_rows(ledger: Ledger, *, last: int | None = 20, limit: int | None = None) -> list[str]:
    """Everything ``p2pfl ledger`` shows: a summary line, the standings, the history."""
    st = ledger.standing
    total = sum(s.credits for s in st.peers.values())
    rows = [f"federation {ledger.federation.id_hex[:16]}  height {ledger.height}  "
            f"head {ledger.head.hex()[:16]}  peers {len(st.peers)}  credits {total:.1f}", ""]
    rows += standing_rows(st, limit=limit)
    rows.append("")
    rows += history_rows(ledger.records, last=last,
                         signatures=[ledger.signatures(i) for i in range(ledger.height)])
    return rows
