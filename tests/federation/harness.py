"""A synchronous, deterministic network of RoundMachines (h11 ConnectionPair style).

Messages are encoded and decoded with the wire codec on every hop (so every test
also exercises strict decoding); broadcasts go to every live peer but the sender;
the clock jumps to the next deadline or training completion when nothing is in
flight.  Local training is a gradient step on f_u(w) = 1/2 ||w - c_u||^2, so
FedAvg's fixed point is the weighted mean of the c_u.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpc.rand import SeededRng
from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import (
    Federation,
    GlobalState,
    GroupResolved,
    Misbehaviour,
    PlaintextAggregation,
    RoundCompleted,
    RoundFailed,
    RoundMachine,
    RoundState,
    TrainRequested,
    federation_from_dict,
    schedule_round,
)
from p2pfl.federation.aggregation import AggregationFactory
from p2pfl.identity import Identity
from p2pfl.wire import PeerId, decode, encode

LR = 0.5


def make_federation(**over: Any) -> Federation:
    """A plaintext test federation; ``over`` maps 'table.key' (or 'key') to values."""
    d: dict[str, Any] = {
        "name": "test",
        "task": "quadratic",
        "secure": False,
        "strategy": {"name": "fedavg"},
        "update": {"clip_norm": 1e6, "sample_cap": 1000},
        "cohort": {"size": 100, "group_size": 100, "min_group_size": 2, "aggregators": 2},
        "secagg": {"threshold": 0.5},
        "timeouts": {"train": 10.0, "sign": 2.0, "failover": 2.0, "round": 40.0},
    }
    for k, v in over.items():
        if "." in k:
            table, key = k.split(".")
            d.setdefault(table, {})[key] = v
        else:
            d[k] = v
    return federation_from_dict(d)


def identities(n: int, tag: bytes = b"peer") -> list[Identity]:
    return [Identity.from_seed(hashlib.blake2b(tag + bytes([i, n % 256]), digest_size=32).digest())
            for i in range(n)]


def fake_update(global_vec: np.ndarray, target: np.ndarray) -> np.ndarray:
    """One gradient step on 1/2 ||w - c||^2: delta = -lr (w - c), float64."""
    delta: np.ndarray = -LR * (global_vec.astype(np.float64) - target)
    return delta


@dataclass
class Outcome:
    completed: dict[PeerId, RoundCompleted] = field(default_factory=dict)
    failed: dict[PeerId, RoundFailed] = field(default_factory=dict)
    resolved: dict[PeerId, list[GroupResolved]] = field(default_factory=dict)
    misbehaviour: list[tuple[PeerId, Misbehaviour]] = field(default_factory=list)
    rejected: list[tuple[PeerId, PeerId, str]] = field(default_factory=list)  # (receiver, sender, why)
    broadcasts: list[Any] = field(default_factory=list)
    end_time: float = 0.0

    def hashes(self) -> set[bytes]:
        return {c.record.model_hash for c in self.completed.values()}


class Net:
    """N peers running rounds over an in-memory, lossless, zero-latency network."""

    def __init__(self, fed: Federation, n: int, *, dim: int = 6, seed: int = 0,
                 aggregation: AggregationFactory = PlaintextAggregation) -> None:
        self.fed = fed
        self.ids = identities(n)
        self.peers = [i.peer_id for i in self.ids]
        rng = np.random.default_rng(seed)
        self.targets = {p: rng.normal(size=dim) for p in self.peers}
        self.samples = {p: int(rng.integers(20, 200)) for p in self.peers}
        init = rng.normal(size=dim).astype(np.float32)
        self.states = {p: GlobalState.initial(fed, init) for p in self.peers}
        self.aggregation = aggregation
        self.now = 0.0
        self.machines: dict[PeerId, RoundMachine] = {}

    def identity(self, peer: PeerId) -> Identity:
        return self.ids[self.peers.index(peer)]

    def schedule(self, peer: PeerId, candidates: Iterable[PeerId] | None = None) -> Any:
        st = self.states[peer]
        return schedule_round(self.fed, st.round, st.beacon, candidates or self.peers)

    def run_round(
        self,
        *,
        crash: dict[PeerId, str] | None = None,
        train_time: dict[PeerId, float] | None = None,
        candidates: list[PeerId] | None = None,
        intercept: Callable[[PeerId, PeerId | None, Any], Any] | None = None,
        extra: dict[PeerId, RoundMachine] | None = None,
    ) -> Outcome:
        """Run one round on every peer.

        ``crash`` maps a peer to when it dies: ``"start"`` (never trains nor answers),
        ``"after_submit"`` (after handing in its update), ``"before_publish"`` (when it
        first tries to send a SignRequest or a result). ``intercept(sender, recipient,
        msg)`` may return a replacement message or None to drop it.
        """
        crash = dict(crash or {})
        dead: set[PeerId] = {p for p, when in crash.items() if when == "start"}
        train_time = train_time or {}
        out = Outcome()
        start = self.now
        self.machines = {}
        for i, p in zip(self.ids, self.peers, strict=True):
            sched = self.schedule(p, candidates)
            self.machines[p] = RoundMachine(self.fed, i, self.states[p], sched,
                                            aggregation=self.aggregation,
                                            rng=SeededRng(p.raw + bytes(4)))
        self.machines.update(extra or {})
        queue: deque[tuple[PeerId, PeerId | None, bytes]] = deque()
        trainings: list[tuple[float, PeerId, np.ndarray]] = []

        def drain(p: PeerId) -> None:
            m = self.machines[p]
            for o in m.messages_to_send():
                if crash.get(p) == "before_publish" and type(o.message).__name__ in (
                    "SignRequest", "SignedGroupResult", "SignedGroupAbort"
                ):
                    dead.add(p)
                if p in dead:
                    continue
                to = o.recipient if isinstance(o.recipient, PeerId) else None
                msg = o.message if intercept is None else intercept(p, to, o.message)
                if msg is None:
                    continue
                if to is None:
                    out.broadcasts.append(msg)
                queue.append((p, to, encode(msg)))
            while (ev := m.next_event()) is not None:
                if isinstance(ev, TrainRequested):
                    if p in self.targets and p not in dead:
                        delta = fake_update(ev.global_vector, self.targets[p])
                        trainings.append((self.now + train_time.get(p, 1.0), p, delta))
                elif isinstance(ev, RoundCompleted):
                    out.completed[p] = ev
                elif isinstance(ev, RoundFailed):
                    out.failed[p] = ev
                elif isinstance(ev, GroupResolved):
                    out.resolved.setdefault(p, []).append(ev)
                elif isinstance(ev, Misbehaviour):
                    out.misbehaviour.append((p, ev))

        def deliver(sender: PeerId, to: PeerId, data: bytes) -> None:
            if to in dead or to not in self.machines:
                return
            try:
                self.machines[to].receive(sender, decode(data), self.now)
            except RemoteProtocolError as e:
                out.rejected.append((to, sender, str(e)))
            drain(to)

        for p, m in self.machines.items():
            m.start(start)
            drain(p)
        for _ in range(100_000):
            while queue:
                sender, to, data = queue.popleft()  # already on the wire: delivered
                targets = [to] if to is not None else [q for q in self.machines if q != sender]
                for q in targets:
                    deliver(sender, q, data)
            live = [p for p in self.machines if p not in dead]
            if all(self.machines[p].finished for p in live):
                break
            times = [t for t, p, _ in trainings if p not in dead]
            times += [d for p in live if (d := self.machines[p].next_deadline()) is not None]
            if not times:
                break
            self.now = max(self.now, min(times))
            due = [t for t in trainings if t[0] <= self.now]
            trainings = [t for t in trainings if t[0] > self.now]
            for _, p, delta in due:
                if p in dead:
                    continue
                self.machines[p].training_done(delta, self.samples[p], self.now)
                if crash.get(p) == "after_submit":
                    drain(p)
                    dead.add(p)
                    continue
                drain(p)
            for p in live:
                m = self.machines[p]
                d = m.next_deadline()
                if p not in dead and d is not None and d <= self.now:
                    m.handle_timer(self.now)
                    drain(p)
        else:  # pragma: no cover
            raise AssertionError("round did not converge")
        out.end_time = self.now
        for p, c in out.completed.items():
            if p in self.states:
                self.states[p] = c.next_state()
        return out

    def states_agree(self, peers: Iterable[PeerId]) -> bool:
        return len({self.states[p].digest for p in peers}) == 1


def oracle_fedavg(fed: Federation, state: GlobalState, contributors: dict[PeerId, tuple[np.ndarray, int]]) -> np.ndarray:
    """Textbook FedAvg (server_lr 1) over ``contributors``: peer -> (target, samples)."""
    w = state.model.astype(np.float64)
    cap = fed.update.sample_cap
    num = np.zeros_like(w)
    den = 0.0
    for target, n in contributors.values():
        x = fake_update(state.model, target).astype(np.float32).astype(np.float64)
        weight = min(n, cap) / cap
        num += weight * x
        den += weight
    return (w + num / den).astype(np.float32)


def machine_state(net: Net, p: PeerId) -> RoundState:
    return net.machines[p].state
