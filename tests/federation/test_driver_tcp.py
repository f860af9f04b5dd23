"""open_peer in production mode: loopback TCP (handshakes, AEAD), secure aggregation,
training in worker threads, checkpoints written off the event loop; real time."""

from __future__ import annotations

import hashlib
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from p2pfl.federation import load_checkpoint
from p2pfl.federation.driver import RoundStarted
from p2pfl.identity import Identity
from p2pfl.learning import digits_tasks
from p2pfl.peer import PeerConfig, checkpoint_path, open_peer
from p2pfl.sim import SimConfig, build_federation

ONE_EPOCH = {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}


async def test_three_peers_over_tcp_agree(tmp_path: Path) -> None:
    ids = [Identity.from_seed(hashlib.blake2b(b"tcp" + bytes([i]), digest_size=32).digest())
           for i in range(3)]
    for i, ident in enumerate(ids):
        ident.save(tmp_path / f"p{i}.key")
    fed = build_federation(SimConfig(peers=3, secure=True), ids, sample_cap=500,
                           training=ONE_EPOCH)
    tasks = digits_tasks(3, device="cpu")
    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            peers = []
            for i in range(3):
                boot = (peers[0].address,) if peers else ()
                cfg = PeerConfig(identity=tmp_path / f"p{i}.key", federation=fed,
                                 listen="tcp:127.0.0.1:0", bootstrap=boot, warmup=1.0,
                                 device="cpu", checkpoint_dir=tmp_path / f"p{i}")
                peers.append(await stack.enter_async_context(open_peer(cfg, tasks[i])))
            events = [p.events() for p in peers]
            for p in peers:
                await p.wait_round(0)
            after_round_0 = set()
            for ch in events:  # the state each peer started round 1 from
                async for ev in ch:
                    if isinstance(ev, RoundStarted) and ev.round == 1:
                        after_round_0.add(ev.state.digest)
                        break
            assert len(after_round_0) == 1
            assert all(p.statistics().trainings >= 1 for p in peers)
            assert all(p.global_model().round >= 1 for p in peers)
    saved = load_checkpoint(checkpoint_path(tmp_path / "p0", fed), fed)
    assert saved.round >= 1
