"""``keep_models``: a peer keeps the state of each of its last N rounds in
``checkpoint_dir/models/`` (what ``p2pfl sim --transport tcp`` evaluates)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import trio

from mpc.rand import SeededRng
from p2pfl.errors import ConfigError
from p2pfl.federation import GlobalState, load_checkpoint
from p2pfl.federation.driver import RoundStarted
from p2pfl.learning.strategy import hash_vector
from p2pfl.node import load_node_config
from p2pfl.peer import PeerConfig, model_path, open_peer, save_model
from p2pfl.transport import MemoryNetwork
from tests.federation.driver_cluster import DIM, QuadraticTask, identities, make_federation


def _states(n: int) -> list[GlobalState]:
    fed = make_federation(identities(3))
    state = GlobalState.initial(fed, np.zeros(DIM, dtype=np.float32))
    out = [state]
    for r in range(1, n):
        state = state.advance(np.full(DIM, r, dtype=np.float32), state.strategy_state)
        out.append(state)
    return out


def _rounds_on_disk(directory: Path) -> list[int]:
    return sorted(int(f.stem.rsplit("-", 1)[1]) for f in (directory / "models").iterdir())


def test_each_round_is_written_and_only_the_last_n_kept(tmp_path: Path) -> None:
    fed = make_federation(identities(3))
    states = _states(6)
    for s in states:
        save_model(tmp_path, fed, s, keep=3)
        assert _rounds_on_disk(tmp_path) == list(range(max(0, s.round - 2), s.round + 1))
    for s in states[-3:]:
        path = model_path(tmp_path, fed, s.round)
        assert path.stat().st_mode & 0o777 == 0o600
        back = load_checkpoint(path, fed)
        assert back.round == s.round and back.digest == s.digest
        assert hash_vector(back.model) == hash_vector(s.model)


def test_a_failed_write_leaves_the_kept_files_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = make_federation(identities(3))
    states = _states(3)
    for s in states[:2]:
        save_model(tmp_path, fed, s, keep=1)
    before = sorted(os.listdir(tmp_path / "models"))
    assert before == [model_path(tmp_path, fed, 1).name]

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        save_model(tmp_path, fed, states[2], keep=1)
    assert sorted(os.listdir(tmp_path / "models")) == before  # not pruned, nothing torn
    assert load_checkpoint(model_path(tmp_path, fed, 1), fed).digest == states[1].digest


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    from p2pfl.federation import CheckpointError

    fed = make_federation(identities(3))
    s = _states(1)[0]
    save_model(tmp_path, fed, s, keep=1)
    path = model_path(tmp_path, fed, 0)
    assert load_checkpoint(path, fed, max_size=path.stat().st_size).digest == s.digest
    with pytest.raises(CheckpointError, match="larger than"):
        load_checkpoint(path, fed, max_size=path.stat().st_size - 1)


async def test_a_peer_keeps_the_model_of_every_round(tmp_path: Path, autojump_clock: object) -> None:
    ids = identities(3)
    fed = make_federation(ids)
    net = MemoryNetwork(rng=random.Random(0), default_latency=0.005, jitter=0.002)
    rng = np.random.default_rng(0)
    keep = {0: 2, 1: 10, 2: 0}  # peer -> keep_models
    started: list[GlobalState] = []
    async with trio.open_nursery() as nursery:
        peers = []

        async def run(i: int, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            cfg = PeerConfig(identity=ids[i], federation=fed, bootstrap=("mem:n0",) if i else (),
                             train_inline=True, warmup=1.0, checkpoint_dir=tmp_path / f"p{i}",
                             keep_models=keep[i])
            task = QuadraticTask(rng.normal(size=DIM), 50)
            async with open_peer(cfg, task, transport=net.transport(ids[i], fed.id, name=f"n{i}"),
                                 rng=SeededRng(ids[i].peer_id.raw), overlay_rng=random.Random(i),
                                 wall_offset=0.0) as peer:
                peers.append(peer)
                events = peer.events()
                task_status.started()
                async for ev in events:
                    if i == 1 and isinstance(ev, RoundStarted):
                        started.append(ev.state)

        for i in range(3):
            await nursery.start(run, i)
        with trio.fail_after(600):
            for p in peers:
                await p.wait_round(3)
        await trio.sleep(0.01)  # the writer task runs after the event
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "p2" / "models").exists()
    last = started[-1].round
    assert last >= 4 and [s.round for s in started] == list(range(last + 1))
    assert _rounds_on_disk(tmp_path / "p1") == list(range(last + 1))
    assert _rounds_on_disk(tmp_path / "p0")[-1] >= last - 1
    assert len(_rounds_on_disk(tmp_path / "p0")) == 2
    for s in started:
        back = load_checkpoint(model_path(tmp_path / "p1", fed, s.round), fed)
        assert back.digest == s.digest and hash_vector(back.model) == hash_vector(s.model)


async def test_open_peer_refuses_keep_models_without_a_checkpoint_dir() -> None:
    ids = identities(1)
    cfg = PeerConfig(identity=ids[0], federation=make_federation(ids), keep_models=3)
    with pytest.raises(ConfigError, match=r"^keep_models: "):
        async with open_peer(cfg, QuadraticTask(np.zeros(DIM), 10)):
            pass  # pragma: no cover


def _node_config(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "p.key").write_bytes(b"")
    (tmp_path / "federation.toml").write_text("")
    path = tmp_path / "node.toml"
    path.write_text(f'key = "p.key"\nfederation = "federation.toml"\n{extra}\n')
    return path


def test_the_node_key_keep_models(tmp_path: Path) -> None:
    assert load_node_config(_node_config(tmp_path, "")).keep_models == 0
    cfg = load_node_config(_node_config(tmp_path, 'checkpoint_dir = "s"\nkeep_models = 5'))
    assert cfg.keep_models == 5 and cfg.checkpoint_dir == tmp_path / "s"


@pytest.mark.parametrize(("extra", "why"), [
    ('checkpoint_dir = "s"\nkeep_models = -1', "must be in"),
    ('checkpoint_dir = "s"\nkeep_models = "5"', "must be an integer"),
    ('checkpoint_dir = "s"\nkeep_models = 2.0', "must be an integer"),
    ("keep_models = 2", "needs a checkpoint_dir"),
])
def test_a_bad_keep_models_is_refused_by_name(tmp_path: Path, extra: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"^keep_models: {why}"):
        load_node_config(_node_config(tmp_path, extra))
