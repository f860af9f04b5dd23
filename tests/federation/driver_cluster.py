"""A cluster of real peers (``open_peer``) over the memory network, for driver tests.

The task is a quadratic toy: the model is one parameter vector w (D,), local training
is k gradient steps on f_u(w) = 1/2 ||w - c_u||^2, so FedAvg's behaviour is known in
closed form and every training takes microseconds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import trio
from torch import nn

from mpc.rand import SeededRng
from p2pfl.federation import Federation, GlobalState, federation_from_dict
from p2pfl.federation.driver import DriverEvent, FaultHook
from p2pfl.identity import Identity
from p2pfl.learning.task import TrainConfig
from p2pfl.peer import Peer, PeerConfig, open_peer
from p2pfl.transport import MemoryNetwork
from p2pfl.wire import PeerId

DIM = 8
LR = 0.5


class Vec(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(DIM, generator=g))


@dataclass(eq=False)
class QuadraticTask:
    """A Task whose local optimum is ``target``."""

    target: np.ndarray
    n: int
    train_data: Any = None
    val_data: Any = None

    @property
    def num_samples(self) -> int:
        return self.n

    def model_factory(self, seed: int = 0) -> nn.Module:
        return Vec(seed)

    def train(self, model: nn.Module, data: Any, config: TrainConfig) -> nn.Module:
        with torch.no_grad():
            t = torch.as_tensor(self.target, dtype=torch.float32)
            model.w -= LR * (model.w - t)  # type: ignore[operator]
        return model

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        return {"accuracy": 0.0, "loss": 0.0, "num_samples": 0.0}


def identities(n: int, tag: bytes = b"drv") -> list[Identity]:
    return [Identity.from_seed(hashlib.blake2b(tag + bytes([i]), digest_size=32).digest())
            for i in range(n)]


def make_federation(ids: list[Identity], **over: Any) -> Federation:
    d: dict[str, Any] = {
        "name": "driver-test", "task": "quadratic", "secure": False,
        "update": {"clip_norm": 1e6, "sample_cap": 1000},
        "cohort": {"size": 100, "group_size": 4, "min_group_size": 2, "aggregators": 2},
        "secagg": {"threshold": 0.5},
        "timeouts": {"train": 10.0, "sign": 2.0, "failover": 2.0, "round": 40.0},
        "membership": {"policy": "permissioned", "members": [i.public_key.hex() for i in ids]},
    }
    for k, v in over.items():
        table, key = k.split(".")
        d.setdefault(table, {})[key] = v  # "table.key"
    return federation_from_dict(d)


@dataclass(eq=False)
class Node:
    index: int
    ident: Identity
    task: QuadraticTask
    peer: Peer | None = None
    scope: trio.CancelScope | None = None
    events: list[DriverEvent] = field(default_factory=list)
    alive: bool = False

    @property
    def id(self) -> PeerId:
        return self.ident.peer_id


class Cluster:
    def __init__(self, nursery: trio.Nursery, n: int, *, seed: int = 0, **fed: Any) -> None:
        self.nursery = nursery
        self.ids = identities(n)
        self.fed = make_federation(self.ids, **fed)
        self.net = MemoryNetwork(rng=random.Random(seed), default_latency=0.005, jitter=0.002)
        rng = np.random.default_rng(seed)
        self.nodes = [Node(i, ident, QuadraticTask(rng.normal(size=DIM), int(rng.integers(20, 200))))
                      for i, ident in enumerate(self.ids)]

    async def start(self, i: int, *, state: GlobalState | None = None,
                    fault: FaultHook | None = None, checkpoint_dir: Any = None,
                    warmup: float = 1.0) -> Node:
        node = self.nodes[i]
        await self.nursery.start(self._run, node, state, fault, checkpoint_dir, warmup)
        return node

    async def _run(self, node: Node, state: GlobalState | None, fault: FaultHook | None,
                   checkpoint_dir: Any, warmup: float,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        transport = self.net.transport(node.ident, self.fed.id, name=f"n{node.index}")
        boot = () if node.index == 0 else ("mem:n0",)
        cfg = PeerConfig(identity=node.ident, federation=self.fed, bootstrap=boot,
                         train_inline=True, warmup=warmup, checkpoint_dir=checkpoint_dir)
        with trio.CancelScope() as scope:
            node.scope = scope
            async with open_peer(cfg, node.task, transport=transport, state=state,
                                 rng=SeededRng(node.ident.peer_id.raw),
                                 overlay_rng=random.Random(node.index), wall_offset=0.0,
                                 fault=fault) as peer:
                node.peer = peer
                node.alive = True
                events = peer.events(buffer=10_000)
                task_status.started()
                async for ev in events:
                    node.events.append(ev)
        node.alive = False

    def crash(self, node: Node) -> None:
        self.net.crash(node.ident)
        assert node.scope is not None
        node.scope.cancel()
        node.alive = False

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    async def wait_all(self, r: int, nodes: list[Node] | None = None, timeout: float = 600) -> None:
        """Wait (virtual time) until every node in ``nodes`` finished round ``r``."""
        with trio.fail_after(timeout):
            for n in nodes if nodes is not None else self.live():
                assert n.peer is not None
                await n.peer.wait_round(r)


def completed_hashes(node: Node) -> dict[int, bytes]:
    from p2pfl.federation import RoundCompleted

    return {e.record.round: e.record.model_hash for e in node.events if isinstance(e, RoundCompleted)}
