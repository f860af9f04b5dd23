"""Run a whole federation in one process: N real peers over the memory network.

Theory of operation
-------------------
:func:`run_simulation` builds N peers (keys, data shards, one permissioned federation
from their keys) and runs each with :func:`p2pfl.peer.open_peer` -- the production
composition root: overlay, federation driver, round machines, the chosen aggregation
backend -- over one :class:`~p2pfl.transport.MemoryNetwork`, inside
``trio.run(..., clock=MockClock(autojump_threshold=0))``.  Time is virtual: when every
task waits, the clock jumps to the next deadline, so latencies and timeouts cost no
wall time.  Peers train with ``train_inline=True``: training runs on the event loop and
virtual time stands still meanwhile (see :mod:`p2pfl.federation.driver`).

Peers come up one after another, ``_JOIN_SPACING`` (2 ms) apart, each joining the
overlay through peer 0 and the peers just before it, and all start round 0 at the same
moment, ``max(_WARMUP, N * _JOIN_SPACING + _SETTLE)``.  Not all at one instant: N
simultaneous HyParView joins through the same contacts leave the overlay split into
components that know nothing of each other (measured: 1000 peers at once, 106
components at 3 s; 500 peers, 12 components, merged only after ~40 s by the bootstrap
refresh), and a broadcast reaches only its own component -- the cause of the failed
1000-peer runs before.  Staggered by 2 ms, 1000 peers form one component within 2 s.

Nothing is assumed, everything is observed: every peer's ``RoundStarted`` events report
the state it really holds after each round, and ``RoundCompleted`` the round records;
the summary (:mod:`p2pfl.sim._report`) is computed from them after the run.

Dropouts (``dropout`` F > 0): for round r the plan draws ``round(F * |cohort|)`` cohort
members from a generator seeded by (seed, r), each with a stage: ``round_start`` (dies
before training) or ``submitted`` (dies right after handing its update to the overlay).
The peer stops acting at once; its network goes down one second later, so what it had
already issued (its update, a previous round's result) is delivered, as bytes already
written to a socket would be -- and gossip repair (IHAVE/GRAFT) can still fetch its last
broadcast from it.  A crashed peer comes back when the
first other peer starts round r + 1: same key and address, resuming from the state it
held at the start of round r (its checkpoint), so it must catch up.  ``corrupt`` uses
the same restart path with one flipped bit in the model.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio
import trio.testing

from mpc.rand import SeededRng
from p2pfl.federation import Federation, GlobalState, RoundCompleted
from p2pfl.federation.adversary import Adversary
from p2pfl.federation.driver import RoundStarted, Synced, SyncStarted
from p2pfl.identity import Identity
from p2pfl.ledger import Ledger
from p2pfl.peer import Peer, PeerConfig, open_peer, resolve_aggregation
from p2pfl.transport import MemoryNetwork
from p2pfl.wire import PeerId

from ._config import SimConfig, build_federation, sim_identities
from ._report import Observations, Summary, build_summary, write_outputs
from .attacks import choose_malicious, make_attack, poison_task

__all__ = ["run_simulation"]

STAGES = ("round_start", "submitted")
_CRASH_DELAY = 1.0
_WARMUP = 3.0  # round 0 starts then (at the earliest)
_JOIN_SPACING = 0.002  # peer i comes up at i * _JOIN_SPACING
_SETTLE = 1.0  # from the last peer up to round 0
_RESTART_WARMUP = 0.5


@dataclass(eq=False)
class _Node:
    index: int
    ident: Identity
    task: Any
    peer: Peer | None = None
    scope: trio.CancelScope | None = None
    alive: bool = False
    last_state: GlobalState | None = None
    crashed_in: int | None = None
    incarnation: object = None
    ledger: Ledger | None = None  # survives restarts, like the ledger file on disk
    adversary: Adversary | None = None

    @property
    def id(self) -> PeerId:
        return self.ident.peer_id


def _load_tasks(cfg: SimConfig) -> list[Any]:
    if cfg.task is not None:
        from p2pfl.learning import call_task_factory, load_task_factory

        factory = load_task_factory(cfg.task, path=".")
        return [call_task_factory(factory, peer_index=i, n_peers=cfg.peers, seed=cfg.seed,
                                  partition=cfg.partition, device=cfg.device)
                for i in range(cfg.peers)]
    from p2pfl.learning import digits_tasks

    return list(digits_tasks(cfg.peers, seed=cfg.seed, partition=cfg.partition,
                             model=cfg.model, device=cfg.device))


def _training_table(cfg: SimConfig) -> dict[str, Any] | None:
    if cfg.task is not None:
        return None
    from p2pfl.learning import DIGITS_TRAIN_CONFIG as c

    return {"epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr, "momentum": c.momentum,
            "weight_decay": c.weight_decay}


def _corrupted(state: GlobalState) -> GlobalState:
    model = np.array(state.model, dtype=np.float32)
    model.view(np.uint32)[0] ^= 1  # one flipped bit
    return GlobalState(state.federation_id, state.round, state.beacon, model, state.strategy_state)


class _Simulation:
    def __init__(self, cfg: SimConfig, fed: Federation, ids: list[Identity], tasks: list[Any],
                 on_round: Callable[[int], None]) -> None:
        self.cfg = cfg
        self.fed = fed
        self.net = MemoryNetwork(rng=random.Random(cfg.seed), default_latency=cfg.latency,
                                 jitter=cfg.jitter)
        self.nodes = [_Node(i, ident, task, ledger=Ledger(fed))
                      for i, (ident, task) in enumerate(zip(ids, tasks, strict=True))]
        self.obs = Observations(peers=[n.id for n in self.nodes])
        self.malicious: list[int] = []
        if cfg.attack is not None:
            attack = make_attack(cfg.attack, cohort=fed.cohort.size)
            self.malicious = choose_malicious(cfg.peers, cfg.malicious, cfg.seed)
            for i in self.malicious:
                node = self.nodes[i]
                node.adversary = attack.adversary(i)
                if attack.poisons_data:
                    node.task = poison_task(node.task)
        self.obs.malicious = [self.nodes[i].id for i in self.malicious]
        honest = [n for n in self.nodes if n.index not in set(self.malicious)]
        self.observer = honest[0] if honest else self.nodes[0]
        self.on_round = on_round
        self.plans: dict[int, dict[PeerId, str]] = {}
        self.restart_at: dict[int, list[_Node]] = {}  # restart when someone starts round r
        self.corrupt = {(p, r) for p, r in cfg.corrupt}
        self.top_round = 0
        self.round0_at = max(_WARMUP, len(self.nodes) * _JOIN_SPACING + _SETTLE)
        self.done = trio.Event()
        self.nursery: trio.Nursery | None = None

    # -- peers ---------------------------------------------------------------

    async def start(self, node: _Node, state: GlobalState | None = None) -> None:
        assert self.nursery is not None
        await self.nursery.start(self._run_peer, node, state)

    async def _run_peer(self, node: _Node, state: GlobalState | None,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        n = len(self.nodes)
        boot = tuple(f"mem:p{j}" for j in ((node.index + k) % n for k in (-1, -2, -3))
                     if j != node.index) if node.index > 0 else ()
        if node.index > 0 and "mem:p0" not in boot:
            boot = ("mem:p0", *boot)
        transport = self.net.transport(node.ident, self.fed.id, name=f"p{node.index}")
        # a restarted peer knows its neighbours' addresses: it rejoins within a few
        # latencies, so a long warm-up would only make it start the next round late
        # (seconds behind its group, past the secure stages' grace)
        warmup = (max(self.round0_at - trio.current_time(), 0.0) if state is None
                  else _RESTART_WARMUP)
        candidates = (tuple(n.id for n in self.nodes)
                      if self.fed.membership.policy == "open" else None)
        config = PeerConfig(identity=node.ident, federation=self.fed, bootstrap=boot[:3],
                            device=self.cfg.device, train_inline=True, warmup=warmup,
                            candidates=candidates)
        seed = hashlib.blake2b(f"{self.cfg.seed}/{node.index}/{trio.current_time()}".encode(),
                               digest_size=32).digest()
        incarnation = object()
        with trio.CancelScope() as scope:
            node.scope = scope
            node.incarnation = incarnation
            async with open_peer(config, node.task, transport=transport, state=state,
                                 rng=SeededRng(seed), overlay_rng=random.Random(seed),
                                 wall_offset=0.0, fault=self._fault_hook(node),
                                 ledger=node.ledger, adversary=node.adversary) as peer:
                node.peer = peer
                node.alive = True
                events = peer.events(buffer=100_000)
                task_status.started()
                async for ev in events:
                    self._observe(node, ev)
        if node.incarnation is incarnation:  # not a newer incarnation's flag
            node.alive = False

    def _crash(self, node: _Node) -> None:
        if not node.alive:
            return
        node.alive = False
        self.net.crash(node.ident)
        assert node.scope is not None
        node.scope.cancel()
        if self._finished():
            self.done.set()

    async def _crash_later(self, node: _Node, delay: float) -> None:
        await trio.sleep(delay)
        self._crash(node)

    # -- faults --------------------------------------------------------------

    def _plan(self, r: int, cohort: tuple[PeerId, ...]) -> dict[PeerId, str]:
        plan = self.plans.get(r)
        if plan is None:
            rng = random.Random(f"p2pfl-sim/dropout/{self.cfg.seed}/{r}")
            k = round(self.cfg.dropout * len(cohort))
            victims = rng.sample(sorted(cohort), k) if r < self.cfg.rounds else []
            plan = self.plans[r] = {p: rng.choice(STAGES) for p in victims}
        return plan

    def _fault_hook(self, node: _Node) -> Callable[[str, int], bool]:
        def fault(stage: str, r: int) -> bool:
            if self.cfg.dropout <= 0 or node.peer is None or node.crashed_in == r:
                return False
            rm = node.peer.driver.round_machine
            if rm is None or rm.round != r:
                return False
            if self._plan(r, rm.schedule.cohort).get(node.id) != stage:
                return False
            node.crashed_in = r
            node.last_state = node.peer.driver.state  # what its checkpoint holds now
            self.obs.dropouts.setdefault(r, []).append(node.id)
            self.restart_at.setdefault(r + 1, []).append(node)
            assert self.nursery is not None
            self.nursery.start_soon(self._crash_later, node, _CRASH_DELAY)
            return True

        return fault

    # -- observation ---------------------------------------------------------

    def _observe(self, node: _Node, ev: object) -> None:
        now = trio.current_time()
        if isinstance(ev, RoundStarted):
            node.last_state = ev.state
            self.obs.record_state(node.id, ev.state)
            r = ev.round
            if r > self.top_round:
                self.top_round = r
                self.obs.time_by_round[r - 1] = (now, time.perf_counter())
                self.on_round(r)
            for other in self.restart_at.pop(r, []):
                if r < self.cfg.rounds:
                    assert self.nursery is not None
                    self.nursery.start_soon(self._restart, other)
            if (node.index, r) in self.corrupt:
                self.corrupt.discard((node.index, r))
                self._crash(node)
                assert self.nursery is not None
                self.nursery.start_soon(self._restart, node, _corrupted(ev.state))
            if self._finished():
                self.done.set()
        elif isinstance(ev, RoundCompleted):
            self.obs.record_round(node.id, ev)
            if node is self.observer and node.ledger is not None:
                st = node.ledger.standing
                self.obs.reputation_by_round[ev.record.round] = {
                    str(p): s for p, s in st.reputation().items()}
                self.obs.weight_by_round[ev.record.round] = {
                    str(n.id): st.weight_factor(n.id) for n in self.nodes}
        elif isinstance(ev, SyncStarted):
            self.obs.syncs += 1
        elif isinstance(ev, Synced):
            self.obs.record_state(node.id, ev.state)

    async def _restart(self, node: _Node, state: GlobalState | None = None) -> None:
        while node.alive:  # a "submitted" crash may still be pending
            await trio.sleep(_CRASH_DELAY)
        await trio.sleep(0)
        await self.start(node, state if state is not None else node.last_state)

    def _finished(self) -> bool:
        return all(n.last_state is not None and n.last_state.round >= self.cfg.rounds
                   for n in self.nodes if n.alive)

    # -- the run -------------------------------------------------------------

    async def main(self) -> None:
        limit = self.round0_at + self.cfg.rounds * self.fed.timeouts.round * 4 + 60
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for node in self.nodes:
                await trio.sleep_until(node.index * _JOIN_SPACING)
                await self.start(node)
            gc.freeze()  # the peers' long-lived state: out of the collector's scans
            with trio.move_on_after(limit):
                await self.done.wait()
            # stragglers that are catching up get one more round length
            with trio.move_on_after(self.fed.timeouts.round):
                while not self._finished():
                    await trio.sleep(1.0)
            self.obs.virtual_s = trio.current_time()
            self.obs.lagging = [n.id for n in self.nodes if n.alive and (
                n.last_state is None or n.last_state.round < self.cfg.rounds)]
            self.obs.down = [n.id for n in self.nodes if not n.alive]
            if self.observer.ledger is not None:
                final = self.observer.ledger.standing
                self.obs.reputation = {str(p): s for p, s in sorted(final.reputation().items())}
                self.obs.credits = {str(p): c for p, c in sorted(final.credits().items())}
            stats = self.net.statistics()
            self.obs.bytes_sent = {p: s.bytes_sent for p, s in stats.peers.items()}
            for node in self.nodes:
                if node.peer is not None and node.alive:
                    st = node.peer.statistics()
                    self.obs.offences += st.offences
            nursery.cancel_scope.cancel()


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Peers train tiny models one after another on the event loop: torch's intra-op
    threads only add contention (measured 5-13x slower on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _collector_for_many_objects() -> Iterator[None]:
    """N peers in one process are tens of millions of long-lived objects, and CPython's
    full collections scan them all: with the default thresholds they took 30 % of a
    500-peer run (46 of 156 s).  Collect young objects less often and freeze the
    peers' state once they are up (``main``); restored afterwards.  Cyclic garbage is
    still collected, later."""
    before = gc.get_threshold()
    gc.set_threshold(10_000, 50, 50)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def run_simulation(cfg: SimConfig) -> Summary:
    """Run the simulation ``cfg`` and return its :class:`Summary`; with ``cfg.out``, also
    write ``summary.json``, ``metrics.jsonl`` and the plots there.

    Raises :class:`~p2pfl.errors.ConfigError` for invalid options (before running).
    ``transport = "tcp"`` runs one ``p2pfl node`` process per peer instead
    (:func:`p2pfl.sim._processes.run_process_simulation`).
    """
    cfg.validate()
    if cfg.transport == "tcp":
        from ._processes import run_process_simulation

        return run_process_simulation(cfg)
    t0 = time.perf_counter()
    tasks = _load_tasks(cfg)
    ids = sim_identities(cfg.peers, cfg.seed)
    cap = max(int(t.num_samples) for t in tasks)
    fed = build_federation(cfg, ids, sample_cap=cap, training=_training_table(cfg))
    resolve_aggregation(None, fed)  # an unavailable backend fails here, not in every peer
    from ._report import progress_bar

    with progress_bar(cfg) as advance, _one_torch_thread(), _collector_for_many_objects():
        sim = _Simulation(cfg, fed, ids, tasks, advance)
        sim.obs.wall_start = t0
        trio.run(sim.main, clock=trio.testing.MockClock(autojump_threshold=0))
    wall = time.perf_counter() - t0
    summary = build_summary(cfg, fed, tasks, sim.obs, wall_s=wall)
    if cfg.reference:
        summary = _with_references(cfg, summary)
    if cfg.out is not None:
        write_outputs(summary, cfg.out)
    return summary


def _with_references(cfg: SimConfig, summary: Summary) -> Summary:
    extra: dict[str, Any] = {}
    if cfg.task is None:
        from ._report import centralized_accuracy

        extra["centralized_accuracy"] = centralized_accuracy(cfg)
    if cfg.secure:
        plain = run_simulation(dataclasses.replace(cfg, secure=False, reference=False, out=None,
                                                   quiet=True, progress=False))
        extra["plaintext_accuracy"] = plain.data["final_accuracy"]
        extra["plaintext_accuracy_by_round"] = plain.data["accuracy_by_round"]
        extra["plaintext_wall_s"] = plain.data["wall_s"]
    data = {**summary.data, "references": extra}
    return dataclasses.replace(summary, data=data)
