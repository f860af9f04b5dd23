"""The ledger file: durability, torn-write recovery, corruption, merges and rewrites."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.ledger import AppendStatus, Ledger, LedgerError, LedgerStore

from .net import LedgerNet, fed_for, resign


def _fill(path: Path, net: LedgerNet, k: int | None = None) -> Ledger:
    led = Ledger.open(path, net.fed)
    for r in net.ledger().records[:k]:
        led.append(r)
    return led


def test_records_survive_a_restart(net: LedgerNet, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    led = _fill(path, net)
    led.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = Ledger.open(path, net.fed)
    src = net.ledger()
    assert back.head == src.head and back.height == src.height
    assert back.standing.reputation() == src.standing.reputation()
    assert back.standing.credits() == src.standing.credits()
    back.close()


def _frame_ends(path: Path) -> list[int]:
    data = path.read_bytes()
    ends, off = [], 0
    while off < len(data):
        off += 12 + int.from_bytes(data[off:off + 4], "big")
        ends.append(off)
    return ends


@given(st.data())
def test_a_torn_last_record_is_cut_off(net: LedgerNet, data: st.DataObject) -> None:
    """A crash anywhere inside the last append loses only that record."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.bin"
        _fill(path, net).close()
        ends = _frame_ends(path)
        cut = data.draw(st.integers(ends[-2], ends[-1] - 1), label="cut")
        with open(path, "r+b") as f:
            f.truncate(cut)
        led = Ledger.open(path, net.fed)
        recs = net.ledger().records
        assert led.height == len(recs) - 1 and led.head == recs[-2].hash
        assert path.stat().st_size == ends[-2]
        led.append(recs[-1])  # and the chain goes on
        led.close()
        assert Ledger.open(path, net.fed).head == recs[-1].hash


@given(st.data())
def test_a_garbled_last_frame_is_cut_off(net: LedgerNet, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.bin"
        _fill(path, net).close()
        ends = _frame_ends(path)
        pos = data.draw(st.integers(ends[-2] + 4, ends[-1] - 1), label="byte")
        raw = bytearray(path.read_bytes())
        raw[pos] ^= 0xFF
        path.write_bytes(bytes(raw))
        led = Ledger.open(path, net.fed)
        assert led.height == net.ledger().height - 1
        led.close()


def test_corruption_before_the_last_frame_is_an_error(net: LedgerNet, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    _fill(path, net).close()
    ends = _frame_ends(path)
    raw = bytearray(path.read_bytes())
    raw[ends[1] + 20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(LedgerError, match="corrupt"):
        Ledger.open(path, net.fed)


def test_foreign_and_garbage_files_are_refused(net: LedgerNet, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    _fill(path, net, 1).close()
    with pytest.raises(LedgerError, match="another federation"):
        Ledger.open(path, fed_for(name="other"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a ledger at all, but a file someone cares about")
    with pytest.raises(LedgerError, match="not a p2pfl ledger"):
        Ledger.open(junk, net.fed)
    assert junk.read_bytes().startswith(b"not a ledger")  # never clobbered


def test_records_that_do_not_verify_refuse_to_load(net: LedgerNet, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    store, _ = LedgerStore.open(path, net.fed.id)
    recs = net.ledger().records
    store.append(recs[0])
    store.append(recs[2])  # a hole in the chain
    store.close()
    with pytest.raises(LedgerError, match="out of order"):
        Ledger.open(path, net.fed)


def test_merges_and_fork_switches_persist(net: LedgerNet, tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    r0, r1, r2 = net.ledger().records[:3]
    led = Ledger.open(path, net.fed)
    led.append(resign(r0, net.by_peer, keep=3, fed=net.fed))
    assert led.append(r0).status is AppendStatus.MERGED  # witness mode: more signatures
    led.append(lighter := resign(r1, net.by_peer, drop=[1]))
    assert led.head == lighter.hash
    assert led.adopt(1, [r1, r2]).status is AppendStatus.SWITCHED
    weights = [led.signatures(i) for i in range(led.height)]
    led.close()
    back = Ledger.open(path, net.fed)
    assert back.head == r2.hash and [back.signatures(i) for i in range(back.height)] == weights
    size = path.stat().st_size
    back.compact()
    back.close()
    assert path.stat().st_size <= size and Ledger.open(path, net.fed).head == r2.hash


def test_a_new_ledger_file_is_created_atomically(net: LedgerNet, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.bin"
    led = Ledger.open(path, net.fed)
    assert led.height == 0 and path.exists()
    led.close()
    assert [p.name for p in path.parent.iterdir()] == ["ledger.bin"]
    assert os.path.getsize(path) > 0
