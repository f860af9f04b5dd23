"""The federation driver over the memory network (real overlay, virtual time): every
peer holds the same model after every round, crashes mid-round, late joiners,
restarts from checkpoints, hostile input, the backend registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio

from p2pfl.errors import ConfigError
from p2pfl.federation import PlaintextAggregation, RoundCompleted, load_checkpoint
from p2pfl.federation.driver import Presence, RoundStarted, Synced
from p2pfl.peer import checkpoint_path, register_aggregation, resolve_aggregation
from p2pfl.sim import SimConfig, build_federation
from p2pfl.wire import encode

from .driver_cluster import LR, Cluster, Node, completed_hashes, identities, make_federation


def _states(nodes: list[Node]) -> set[bytes]:
    return {n.peer.state.digest for n in nodes if n.peer is not None}


def _held(node: Node) -> dict[int, set[str]]:
    """Round r -> hashes of the model this node held after round r (from RoundStarted)."""
    out: dict[int, set[str]] = {}
    for e in node.events:
        if isinstance(e, RoundStarted | Synced):
            out.setdefault(e.state.round - 1, set()).add(e.state.model_hash.hex())
    return out


async def test_every_peer_holds_the_same_model_every_round(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 6)
        for i in range(6):
            await c.start(i)
        await c.wait_all(2)
        await trio.sleep(0.1)  # let the last events reach the collectors
        for r in range(3):
            assert len({h for n in c.nodes for h in _held(n).get(r, ())}) == 1, r
            assert len({completed_hashes(n).get(r) for n in c.nodes}) == 1, r
        # round 0 is textbook FedAvg: w + sum(w_u * x_u) / sum(w_u), w_u = n_u / sample_cap
        start = next(e.state for e in c.nodes[0].events if isinstance(e, RoundStarted))
        w = start.model.astype(np.float64)
        num = sum((min(n.task.n, 1000) / 1000) * (-LR * (w - n.task.target.astype(np.float32)))
                  for n in c.nodes)
        den = sum(min(n.task.n, 1000) / 1000 for n in c.nodes)
        after0 = next(e.state for e in c.nodes[0].events
                      if isinstance(e, RoundStarted) and e.round == 1)
        np.testing.assert_allclose(after0.model, w + num / den, rtol=0, atol=1e-5)
        assert all(n.peer is not None and n.peer.statistics().offences == 0 for n in c.nodes)
        nursery.cancel_scope.cancel()


async def test_an_aggregator_crashing_mid_round_does_not_stop_the_round(
        autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 8)
        victim: list[Node] = []

        def fault_for(node: Node):  # type: ignore[no-untyped-def]
            def fault(stage: str, r: int) -> bool:
                assert node.peer is not None
                rm = node.peer.driver.round_machine
                if stage != "submitted" or r != 1 or rm is None or victim:
                    return False
                if node.id != rm.schedule.groups[0].aggregators[0]:
                    return False
                victim.append(node)
                nursery.start_soon(_crash_soon, c, node)
                return True
            return fault

        for i in range(8):
            await c.start(i, fault=fault_for(c.nodes[i]))
        with trio.fail_after(600):
            while not victim:
                await trio.sleep(1)
        survivors = [n for n in c.nodes if n is not victim[0]]
        await c.wait_all(2, survivors)  # they finish rounds 1 and 2 without it
        assert not victim[0].alive
        assert len(_states(survivors)) == 1
        rec = next(e for e in survivors[0].events
                   if isinstance(e, RoundCompleted) and e.record.round == 1)
        assert all(g.status == "accepted" for g in rec.record.groups)
        assert victim[0].id in {p for g in rec.record.groups for p in g.included}  # it submitted
        assert len({completed_hashes(n).get(1) for n in survivors}) == 1
        nursery.cancel_scope.cancel()


async def _crash_soon(c: Cluster, node: Node) -> None:
    await trio.sleep(0.5)  # its update is on the wire when it dies
    c.crash(node)


async def test_a_late_joiner_catches_up(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 6, **{"cohort.group_size": 3})
        for i in range(5):
            await c.start(i)
        await c.wait_all(2, c.nodes[:5])
        late = await c.start(5)  # a member of the federation that starts at round 0
        await c.wait_all(5, c.nodes[:5])
        await c.wait_all(5, [late])
        assert late.peer is not None and late.peer.round >= 6
        assert len(_states(c.nodes)) == 1
        assert late.peer.round == c.nodes[0].peer.round  # type: ignore[union-attr]
        # it fetched the records of the rounds it missed (LedgerSync) and verified them:
        # the same chain as everyone (the head goes into every beacon)
        heads = {tuple(r.hash for r in n.peer.ledger.records[:5])  # type: ignore[union-attr]
                 for n in c.nodes}
        assert len(heads) == 1 and len(next(iter(heads))) == 5
        nursery.cancel_scope.cancel()


async def test_a_restarted_peer_resumes_from_its_checkpoint(autojump_clock: object,
                                                            tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 5)
        dirs = [tmp_path / f"p{i}" for i in range(5)]
        for i in range(5):
            await c.start(i, checkpoint_dir=dirs[i])
        await c.wait_all(1)
        node = c.nodes[2]
        c.crash(node)
        await trio.sleep(0.1)
        saved = load_checkpoint(checkpoint_path(dirs[2], c.fed), c.fed)
        assert saved.round >= 2
        await c.wait_all(saved.round + 2, [n for n in c.nodes if n is not node])
        node.events.clear()
        await c.start(2, checkpoint_dir=dirs[2])  # no state given: from the checkpoint file
        first = await _first_round_started(node)
        assert first.state.digest == saved.digest
        await c.wait_all(saved.round + 4)
        assert len(_states(c.nodes)) == 1
        on_disk = load_checkpoint(checkpoint_path(dirs[2], c.fed), c.fed)
        assert on_disk.round > saved.round
        nursery.cancel_scope.cancel()


async def _first_round_started(node: Node) -> RoundStarted:
    while True:
        for e in node.events:
            if isinstance(e, RoundStarted):
                return e
        await trio.sleep(0.1)


async def test_garbage_is_an_offence_and_rounds_go_on(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 4)
        for i in range(4):
            await c.start(i)
        await c.wait_all(0)
        a, b = c.nodes[0].peer, c.nodes[1].peer
        assert a is not None and b is not None
        await a.overlay.send_direct(b.peer_id, b"\xff not cbor")
        await a.overlay.send_direct(b.peer_id, encode(Presence(c.fed.id, 0)))  # wrong channel
        await c.wait_all(a.round + 1)
        assert b.statistics().offences == 2
        assert b.overlay.statistics().penalties.get("invalid") == 2
        assert len(_states(c.nodes)) == 1
        nursery.cancel_scope.cancel()


async def test_rounds_without_groups_do_not_spin(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 2, **{"cohort.min_group_size": 3, "cohort.group_size": 3,
                                   "cohort.aggregators": 2})
        for i in range(2):
            await c.start(i)
        await trio.sleep(100)
        peer = c.nodes[0].peer
        assert peer is not None
        assert 2 <= peer.round <= 4  # one round per timeouts.round (40 s), none updated
        nursery.cancel_scope.cancel()


def test_aggregation_backends_are_resolved_by_name() -> None:
    ids = identities(3)
    plain = make_federation(ids)
    assert resolve_aggregation(None, plain) is PlaintextAggregation
    assert resolve_aggregation("plaintext", plain) is PlaintextAggregation
    with pytest.raises(ConfigError, match="contradicts"):
        resolve_aggregation("secure", plain)
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_aggregation("carrier-pigeon", plain)
    register_aggregation("toy", PlaintextAggregation)
    assert resolve_aggregation("toy", plain) is PlaintextAggregation
    secure = build_federation(SimConfig(peers=3, secure=True), ids, sample_cap=10)
    assert resolve_aggregation(None, secure) is not PlaintextAggregation
    with pytest.raises(ConfigError, match="contradicts"):
        resolve_aggregation("plaintext", secure)


async def test_only_aggregators_announce_and_no_member_is_left_out(autojump_clock: object) -> None:
    """Permissioned: a peer announces its address (Presence) only in a round where it
    aggregates -- group traffic is a star, members write first -- and still every
    member of every group is included."""
    from p2pfl.federation.driver import federation_topic
    from p2pfl.wire import decode

    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 9, **{"cohort.group_size": 3})
        watched = []
        for i in range(9):
            node = await c.start(i, warmup=2.0)
            assert node.peer is not None
            watched.append(node.peer.overlay.subscribe(federation_topic(c.fed), buffer=1000))
        await c.wait_all(0)
        await trio.sleep(0.1)
        sched = next(e.schedule for e in c.nodes[0].events if isinstance(e, RoundStarted))
        aggregators = {a for g in sched.groups for a in g.aggregators}
        assert len(aggregators) == 6 and len(sched.cohort) == 9
        announced = set()
        for ch in watched:
            while True:
                try:
                    origin, payload = ch.receive_nowait()
                except trio.WouldBlock:
                    break
                msg = decode(payload)
                if isinstance(msg, Presence) and msg.round == 0:  # (round 1 has begun)
                    announced.add(origin)
        assert announced == aggregators
        done = next(e for e in c.nodes[0].events if isinstance(e, RoundCompleted))
        assert [len(g.included) for g in done.record.groups] == [3, 3, 3]
        nursery.cancel_scope.cancel()
