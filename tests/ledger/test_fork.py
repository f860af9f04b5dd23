"""Witness merging, fork choice (signatures, then hash) and late-joiner sync."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from mpc.rand import SeededRng
from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import Outgoing, OutOfSync
from p2pfl.ledger import (
    AppendStatus,
    Ledger,
    LedgerRequest,
    LedgerResponse,
    LedgerSync,
    LedgerSynced,
    Record,
    SyncState,
    answer_ledger_request,
    verify_chain,
)
from p2pfl.wire import PeerId, decode, encode

from .net import LedgerNet, fed_for, resign


def _ledger(net: LedgerNet, records: Sequence[Record]) -> Ledger:
    led = Ledger(net.fed)
    for r in records:
        led.append(r)
    return led


def _trimmed(net: LedgerNet, rec: Record) -> Record:
    """The same body with only 3 endorsements per group (aggregators first)."""
    return resign(rec, net.by_peer, keep=3, fed=net.fed)


def test_more_endorsements_of_the_same_body_merge(net: LedgerNet) -> None:
    r0 = net.ledger().records[0]
    few = _trimmed(net, r0)
    full = resign(r0, net.by_peer)
    assert few.body == full.body == r0.body
    led = _ledger(net, [few])
    low = led.signatures(0)
    res = led.append(full)
    assert res.status is AppendStatus.MERGED and led.signatures(0) > low
    assert led.append(few).status is AppendStatus.MERGED and led.signatures(0) > low
    assert led.head == r0.hash


def test_the_record_with_more_signatures_wins(net: LedgerNet) -> None:
    r0, r1 = net.ledger().records[:2]
    lighter = resign(r1, net.by_peer, drop=[1])  # group 1's result went missing
    heavy = _ledger(net, [r0, r1])
    res = heavy.append(lighter)
    assert res.status is AppendStatus.STALE and heavy.head == r1.hash
    light = _ledger(net, [r0, lighter])
    res = light.append(r1)
    assert res.status is AppendStatus.SWITCHED and light.head == r1.hash
    assert verify_chain(light.records, net.fed).reputation() == light.standing.reputation()


def test_ties_are_broken_by_the_lower_hash(net: LedgerNet) -> None:
    r0, r1 = net.ledger().records[:2]
    a = resign(r1, net.by_peer, drop=[0], keep=2, fed=net.fed)
    b = resign(r1, net.by_peer, drop=[1], keep=2, fed=net.fed)
    la, lb = _ledger(net, [r0, a]), _ledger(net, [r0, b])
    assert la.signatures(1) == lb.signatures(1)
    la.append(b)
    lb.append(a)
    assert la.head == lb.head == min(a.hash, b.hash)


def test_a_heavier_longer_fork_replaces_the_tail(net: LedgerNet) -> None:
    r0, r1, r2 = net.ledger().records[:3]
    lighter = resign(r1, net.by_peer, drop=[1])
    led = _ledger(net, [r0, lighter])
    res = led.adopt(1, [r1, r2])
    assert res.status is AppendStatus.SWITCHED and led.height == 3 and led.head == r2.hash
    main = _ledger(net, [r0, r1, r2])
    assert main.adopt(1, [lighter]).status is AppendStatus.STALE
    assert main.adopt(0, [r0, r1]).status is AppendStatus.MERGED and main.height == 3


def test_gaps_and_broken_pages_are_refused(net: LedgerNet) -> None:
    r0, r1, r2 = net.ledger().records[:3]
    led = _ledger(net, [r0])
    with pytest.raises(OutOfSync):
        led.append(r2)
    with pytest.raises(RemoteProtocolError, match="consecutive"):
        led.adopt(1, [r1, r1])
    with pytest.raises(OutOfSync):
        led.adopt(3, [r2])


def _sync(joiner: Ledger, sources: dict[PeerId, Ledger], page: int,
          tamper: PeerId | None = None) -> tuple[list[LedgerSynced], list[PeerId]]:
    """Run a sync; ``tamper``'s pages have the model hash of their first record forged
    (caught by the next record's base state)."""
    sync = LedgerSync(joiner, list(sources), rng=SeededRng(b"sync"), page=page, overlap=1)
    sync.start(0.0)
    blamed: list[PeerId] = []
    for _ in range(1000):
        msgs = sync.messages_to_send()
        if not msgs:
            break
        for m in msgs:
            assert isinstance(m.recipient, PeerId)
            req = decode(encode(m.message))
            resp = answer_ledger_request(sources[m.recipient], req)
            if m.recipient == tamper and len(resp.records) > 1:
                bad = resp.records[0]
                body = dataclasses.replace(bad.body, model_hash=bytes(32))
                resp = LedgerResponse(resp.federation, resp.nonce, resp.start, resp.height,
                                      (Record(body, bad.witnesses), *resp.records[1:]))
            try:
                sync.receive(m.recipient, decode(encode(resp)), 0.0)
            except RemoteProtocolError as e:
                blamed.append(e.peer)  # type: ignore[arg-type]
    events = []
    while (ev := sync.next_event()) is not None:
        events.append(ev)
    assert sync.state is SyncState.DONE
    return events, blamed


def test_a_late_joiner_syncs_verifies_and_adopts(net: LedgerNet) -> None:
    src = net.ledger()
    liar, honest = net.peers[1], net.peers[2]
    joiner = Ledger(net.fed)
    events, blamed = _sync(joiner, {liar: src, honest: src}, page=2, tamper=liar)
    assert blamed == [liar]
    assert events == [LedgerSynced(src.height, src.head)]
    assert joiner.head == src.head
    assert joiner.standing.reputation() == src.standing.reputation()
    assert joiner.standing.credits() == src.standing.credits()


def _answer(src: Ledger, m: Outgoing) -> tuple[PeerId, LedgerResponse]:
    assert isinstance(m.recipient, PeerId) and isinstance(m.message, LedgerRequest)
    return m.recipient, answer_ledger_request(src, m.message)


def test_sync_moves_on_from_a_silent_neighbour(net: LedgerNet) -> None:
    src = net.ledger()
    joiner = Ledger(net.fed)
    sync = LedgerSync(joiner, [net.peers[3], net.peers[4]], rng=SeededRng(b"s"), timeout=5.0)
    sync.start(0.0)
    first = sync.messages_to_send()
    assert [m.recipient for m in first] == [net.peers[3]]
    assert sync.next_deadline() == 5.0
    sync.handle_timer(5.0)
    (m,) = sync.messages_to_send()
    assert m.recipient == net.peers[4]
    with pytest.raises(RemoteProtocolError, match="unsolicited"):
        sync.receive(net.peers[3], _answer(src, first[0])[1], 5.0)
    sync.receive(*_answer(src, m), 6.0)
    while sync.state is not SyncState.DONE:
        for m in sync.messages_to_send():
            sync.receive(*_answer(src, m), 6.0)
    assert joiner.head == src.head


def test_a_peer_keeps_its_own_model_and_observers_heal_next_round() -> None:
    net = LedgerNet(fed_for(), 8)
    net.run(2)
    own = net.ledger()
    r1 = own.records[1]
    forged = Record(dataclasses.replace(r1.body, model_hash=bytes(32)), r1.witnesses)
    with pytest.raises(RemoteProtocolError, match="another global model"):
        own.append(forged, net.peers[3])
    observer = _ledger(net, own.records)  # built nothing itself: a tie, decided by hash
    observer.append(forged)
    _, built = net.step()
    r2 = next(iter(built.values()))
    if observer.head == forged.hash:
        with pytest.raises(OutOfSync):
            observer.append(r2)  # links to the record it does not hold
        assert observer.adopt(1, [r1, r2]).status is AppendStatus.SWITCHED
    else:
        observer.append(r2)
    assert observer.head == net.ledger().head


def test_sync_backs_off_when_the_neighbour_forked_before_the_overlap(net: LedgerNet) -> None:
    src = net.ledger()
    r0, r1 = src.records[:2]
    joiner = _ledger(net, [r0, resign(r1, net.by_peer, drop=[1])])
    peer = net.peers[5]
    sync = LedgerSync(joiner, [peer], rng=SeededRng(b"b"), page=8, overlap=0)
    sync.start(0.0)
    starts = []
    while sync.state is not SyncState.DONE:
        for m in sync.messages_to_send():
            to, resp = _answer(src, m)
            starts.append(resp.start)
            sync.receive(to, resp, 0.0)
    assert starts == [2, 0]  # "links to a chain we do not hold" -> ask from further back
    assert joiner.head == src.head
