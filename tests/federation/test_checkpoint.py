"""Checkpoints: round trip, resume in sync, and refusal of damaged or foreign files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from p2pfl.federation import CheckpointError, GlobalState, load_checkpoint, save_checkpoint

from .harness import Net, make_federation

ADAM = {"strategy": {"name": "fedadam", "server_lr": 0.1}, "cohort.group_size": 4,
        "cohort.min_group_size": 2}


def _trained_net(rounds: int = 2) -> Net:
    net = Net(make_federation(**ADAM), 8)
    for _ in range(rounds):
        net.run_round()
    return net


def test_round_trip_keeps_every_bit(tmp_path: Path) -> None:
    net = _trained_net()
    st = net.states[net.peers[0]]
    path = tmp_path / "ck" / "state.ckpt"
    save_checkpoint(path, st)
    back = load_checkpoint(path, net.fed)
    assert back.digest == st.digest and back.round == 2 and back.beacon == st.beacon
    assert back.model.tobytes() == st.model.tobytes() and not back.model.flags.writeable
    assert back.strategy_state.step == 2
    assert st.strategy_state.m is not None and back.strategy_state.m is not None
    assert np.array_equal(back.strategy_state.m, st.strategy_state.m)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = path.read_bytes()
    assert data[0] == 0x83 and b"pickle" not in data  # a CBOR array, never pickle


def test_restarted_peer_resumes_in_sync(tmp_path: Path) -> None:
    net, twin = _trained_net(), _trained_net()
    victim = net.peers[3]
    save_checkpoint(tmp_path / "v.ckpt", net.states[victim])
    # the process dies; a new one loads the checkpoint
    net.states[victim] = GlobalState.initial(net.fed, np.zeros(6, np.float32))
    net.states[victim] = load_checkpoint(tmp_path / "v.ckpt", net.fed)
    for _ in range(2):
        out, ref = net.run_round(), twin.run_round()
        assert len(out.hashes()) == 1 and out.hashes() == ref.hashes()
    assert net.states[victim].digest == twin.states[victim].digest


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    net = _trained_net(1)
    st = net.states[net.peers[0]]
    path = tmp_path / "s.ckpt"
    save_checkpoint(path, st)
    data = path.read_bytes()

    with pytest.raises(CheckpointError, match=r"another federation|does not fit"):
        load_checkpoint(path, make_federation(name="other"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")

    at = data.index(st.model.tobytes())
    flipped = bytearray(data)
    flipped[at + 1] ^= 0x40
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)

    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a p2pfl checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"\x80\x04\x95garbage")  # a pickle header
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_overwrite_is_atomic(tmp_path: Path) -> None:
    net = _trained_net(1)
    path = tmp_path / "s.ckpt"
    save_checkpoint(path, net.states[net.peers[0]])
    net.run_round()
    save_checkpoint(path, net.states[net.peers[0]])
    assert load_checkpoint(path).round == 2
    assert [p.name for p in tmp_path.iterdir()] == ["s.ckpt"]  # no temporary left behind
