"""Ledger pages are byte-bounded, and sync gets through the bound."""

from __future__ import annotations

import pytest

from mpc.rand import SeededRng
from p2pfl.errors import RemoteProtocolError
from p2pfl.ledger import (
    Ledger,
    LedgerRequest,
    LedgerResponse,
    LedgerSync,
    LedgerSynced,
    Record,
    SyncState,
    answer_ledger_request,
)
from p2pfl.ledger._messages import PAGE_MAX_BYTES
from p2pfl.wire import PeerId, decode, encode

from .net import LedgerNet, fed_for


def _request(led: Ledger, start: int, limit: int = 64) -> LedgerRequest:
    return LedgerRequest(led.federation.id, start, limit, b"n")


def _with(resp: LedgerResponse, *more: Record) -> int:
    return len(encode(LedgerResponse(resp.federation, resp.nonce, resp.start, resp.height,
                                      (*resp.records, *more))))


def test_a_page_is_the_longest_prefix_that_fits(net: LedgerNet) -> None:
    src = net.ledger()
    sizes = [len(encode(r)) for r in src.records]
    empty = len(encode(LedgerResponse(src.federation.id, b"n", 0, src.height)))
    for bound in (empty + sizes[0], empty + sizes[0] + sizes[1] + 16, empty + sum(sizes) + 16,
                  PAGE_MAX_BYTES):
        for start in range(src.height):
            resp = answer_ledger_request(src, _request(src, start), max_bytes=bound)
            assert len(encode(resp)) <= bound
            assert (resp.start, resp.height) == (start, src.height)
            n = len(resp.records)
            assert resp.records == src.records[start:start + n]
            if start + n < src.height:  # the next record would not have fitted
                assert _with(resp, src.records[start + n]) > bound
    limited = answer_ledger_request(src, _request(src, 0, limit=2))
    assert len(limited.records) == 2


def test_a_record_too_large_for_the_bound_gives_an_empty_page(net: LedgerNet) -> None:
    src = net.ledger()
    resp = answer_ledger_request(src, _request(src, 1), max_bytes=len(encode(src.records[1])))
    assert resp.records == () and resp.height > resp.start == 1
    assert answer_ledger_request(src, _request(src, 1), max_bytes=0).records == ()
    with pytest.raises(RemoteProtocolError, match="another federation"):
        answer_ledger_request(src, LedgerRequest(bytes(32), 0, 1, b"n"))


def _sync(joiner: Ledger, sources: dict[PeerId, tuple[Ledger, int]], *,
          overlap: int = 4) -> tuple[list[LedgerSynced], list[PeerId], list[LedgerResponse]]:
    """Run a sync where each source answers with its own byte bound."""
    sync = LedgerSync(joiner, list(sources), rng=SeededRng(b"pages"), overlap=overlap)
    sync.start(0.0)
    blamed: list[PeerId] = []
    answers: list[LedgerResponse] = []
    for _ in range(1000):
        msgs = sync.messages_to_send()
        if not msgs:
            break
        for m in msgs:
            assert isinstance(m.recipient, PeerId) and isinstance(m.message, LedgerRequest)
            src, bound = sources[m.recipient]
            resp = answer_ledger_request(src, decode(encode(m.message)), max_bytes=bound)
            assert len(encode(resp)) <= bound
            answers.append(resp)
            try:
                sync.receive(m.recipient, decode(encode(resp)), 0.0)
            except RemoteProtocolError as e:
                blamed.append(e.peer)  # type: ignore[arg-type]
    assert sync.state is SyncState.DONE
    events = []
    while (ev := sync.next_event()) is not None:
        events.append(ev)
    return events, blamed, answers


def test_an_empty_page_is_no_offence(net: LedgerNet) -> None:
    """A neighbour whose next record exceeds its bound answers an empty page: the joiner
    asks the next one, blames nobody, and does not loop."""
    src = net.ledger()
    tight, roomy = net.peers[1], net.peers[2]
    joiner = Ledger(net.fed)
    events, blamed, answers = _sync(joiner, {tight: (src, 200), roomy: (src, PAGE_MAX_BYTES)})
    assert blamed == []
    assert answers[0].records == () and len(answers) == 2
    assert events == [LedgerSynced(src.height, src.head)] and joiner.head == src.head


def test_sync_of_model_sized_rounds_completes_through_the_bound() -> None:
    """Many rounds of a large model: records stay small (no sums), every page fits the
    bound, and a joiner that already holds part of the chain gets through pages that
    only cover records it holds (the overlap is longer than a page)."""
    net = LedgerNet(fed_for(), 9, dim=50_000)  # a sum is 400 kB: two would overflow a page
    net.run(10)
    src = net.ledger()
    assert all(len(encode(r)) < 16 << 10 for r in src.records)
    assert len(encode(answer_ledger_request(src, _request(src, 0)))) <= PAGE_MAX_BYTES
    bound = 2 * max(len(encode(r)) for r in src.records) + 200  # two records a page
    joiner = Ledger(net.fed)
    for r in src.records[:6]:
        joiner.append(r)
    events, blamed, answers = _sync(joiner, {net.peers[3]: (src, bound)}, overlap=5)
    assert blamed == [] and events == [LedgerSynced(src.height, src.head)]
    assert joiner.head == src.head
    assert [a.start for a in answers] == [1, 3, 5, 7, 9]
    late = Ledger(net.fed)
    events, blamed, _ = _sync(late, {net.peers[4]: (src, bound)})
    assert blamed == [] and late.head == src.head
