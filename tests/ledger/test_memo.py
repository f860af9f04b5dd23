"""The process-wide ledger memo: shared work, never a shared mistake.

Every ledger of a simulation builds and verifies the same records; the memo does that
once.  These tests pin that a hit is exactly what the functions would return, and that
nothing changed -- another endorsement, a tampered record, a writeable array -- is ever
answered from it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import RoundCompleted
from p2pfl.ledger import Ledger, Record
from p2pfl.ledger import _ledger as ledger_mod
from p2pfl.ledger._memo import frozen, memo
from p2pfl.wire import decode, encode

from .net import LedgerNet, fed_for


def _wire(x: object) -> object:
    """What a peer holds after receiving ``x``: decoded, arrays read-only."""
    return decode(encode(x))


def _completed(net: LedgerNet) -> tuple[RoundCompleted, object, tuple]:
    """A RoundCompleted of the next round whose results came off the wire."""
    out = net.run_round()
    p, ev = next(iter(out.completed.items()))
    rm = net.machines[p]
    ev = dataclasses.replace(ev, results=tuple(_wire(m) for m in ev.results))
    return ev, rm.schedule, rm.outcomes()[1]


def test_frozen_knows_what_cannot_change() -> None:
    ro = np.frombuffer(b"\x00" * 16, dtype=np.float64)
    assert frozen((1, "a", b"b", None, 2.0, ro))
    assert not frozen(np.zeros(2)) and not frozen([1]) and not frozen({"a": 1})
    assert not frozen((1, np.zeros(2)))

    @dataclasses.dataclass
    class Mutable:
        x: int

    assert not frozen(Mutable(1))


def test_build_is_shared_only_between_equal_inputs() -> None:
    net = LedgerNet(fed_for(), 6)
    net.run(1)
    ev, sched, aborts = _completed(net)
    a, b = Ledger(net.fed), Ledger(net.fed)
    for led in (a, b):
        for rec in net.ledger(0).records:
            led.append(rec)
    r1 = a.build(ev, sched, aborts)
    r2 = b.build(ev, sched, aborts)
    assert r1 is r2 and frozen(r1)
    # one endorsement fewer: another record, built afresh and equal to a fresh build
    m0 = ev.results[0]
    fewer = dataclasses.replace(m0, endorsements=m0.endorsements[1:])
    ev2 = dataclasses.replace(ev, results=(fewer, *ev.results[1:]))
    r3 = b.build(ev2, sched, aborts)
    assert r3 is not r1
    memo.clear()
    assert encode(r3) == encode(Ledger.build(b, ev2, sched, aborts))
    assert encode(r1) == encode(Ledger.build(a, ev, sched, aborts))


def test_verification_is_shared_and_a_tampered_record_is_always_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net = LedgerNet(fed_for(), 6)
    net.run(3)
    records = [_wire(r) for r in net.ledger(0).records]
    assert all(frozen(r) for r in records)
    calls: list[int] = []
    real = ledger_mod.verify_record

    def counting(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger_mod, "verify_record", counting)
    memo.clear()
    first, second = Ledger(net.fed), Ledger(net.fed)
    for rec in records:
        first.append(rec)
    assert len(calls) == len(records)
    for rec in records:
        second.append(rec)
    assert len(calls) == len(records)  # every verification answered from the memo
    assert second.head == first.head and second.standing is first.standing
    # a copy with one signature flipped is another object: verified, refused, every time
    last = records[-1]
    w0 = last.witnesses[0]
    e0 = w0.endorsements[0]
    bad_e = dataclasses.replace(e0, signature=bytes([e0.signature[0] ^ 1]) + e0.signature[1:])
    bad = _wire(Record(last.body, (dataclasses.replace(w0, endorsements=(bad_e, *w0.endorsements[1:])),
                                   *last.witnesses[1:])))
    for _ in range(2):
        third = Ledger(net.fed)
        for rec in records[:-1]:
            third.append(rec)
        before = len(calls)
        with pytest.raises(RemoteProtocolError):
            third.append(bad)
        assert len(calls) == before + 1
        assert third.height == len(records) - 1


def test_weights_are_the_standing_weights() -> None:
    net = LedgerNet(fed_for(), 6, attackers=[1])
    net.run(3)
    led = net.ledger(0)
    for p in net.peers:
        assert led.weight(p) == led.standing.weight(p)
