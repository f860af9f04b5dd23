"""``p2pfl ledger`` rows: reputation, credits and history as text."""

from __future__ import annotations

from p2pfl.ledger import history_rows, ledger_rows, standing_rows

from .net import LedgerNet


def test_rows_show_every_peer_and_every_round(net: LedgerNet) -> None:
    led = net.ledger()
    rows = ledger_rows(led, last=None)
    text = "\n".join(rows)
    assert rows[0].startswith(f"federation {net.fed.id_hex[:16]}  height {led.height}")
    assert all(str(p) in text for p in led.standing.peers)
    hist = history_rows(led.records, last=None)
    assert len(hist) == led.height + 1 and all(r.lstrip().split()[0] == str(i) for i, r in
                                               enumerate(hist[1:]))
    assert all(r == r.rstrip() for r in rows)


def test_standings_are_ranked_best_first_and_can_be_limited(net: LedgerNet) -> None:
    st = net.ledger().standing
    rows = standing_rows(st)
    scores = [float(r.split()[1]) for r in rows[1:]]
    assert scores == sorted(scores, reverse=True)
    attacker = net.peers[2]
    assert rows[-1].startswith(str(attacker))  # excluded whenever drawn: the lowest
    assert len(standing_rows(st, limit=3)) == 4
    assert len(history_rows(net.ledger().records, last=2)) == 3
