"""Gossip overlay simulation: N peers over the memory transport under a mock clock.

    python sims/gossip.py --peers 1000 --crash 0.3 --out runs/gossip

Phases (simulated time; the wall time is what it costs to compute):

1. **join** -- peer 0 starts, every other peer joins through it, one every
   ``--join-interval`` seconds;
2. **converge** -- until every live peer has a (nearly) full active view and
   the active-view graph is connected: ``membership_convergence_s``;
3. **crash** (``--crash F``) -- a fraction F of the peers crashes at once;
   ``repair_s`` is the time until no live peer has a crashed neighbour and the
   graph is connected again;
4. **broadcast** -- ``--broadcasts`` publications from random live peers,
   one every ``--interval`` seconds, with optional churn (``--churn R``:
   R peers per second crash and R new peers join), link ``--loss`` and
   ``--latency``/``--jitter``.

``DIR/summary.json`` holds the delivery ratio over live peers (per broadcast
and overall), hop and latency percentiles, messages and bytes per peer per
broadcast (all overlay traffic, and the broadcast protocol alone), the
convergence and repair times, how many peers ended up graylisted (should be 0:
every peer here is honest), and ``cost_by_phase`` (CPU seconds, messages and
CPU µs per message of each phase, links per peer, trio tasks).  A peer counts for a broadcast when it had joined before the
publication and stayed alive until ``--deadline`` seconds after it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pfl.identity import Identity
from p2pfl.overlay import Overlay, OverlayConfig, open_overlay
from p2pfl.transport import MemoryNetwork
from p2pfl.wire import PeerId

TOPIC = "sim"
NETWORK = b"gossip-sim"
BROADCAST_TYPES = ("Gossip", "IHave", "Graft", "Prune")


@dataclass
class Peer:
    index: int
    ident: Identity
    joined_at: float
    scope: trio.CancelScope | None = None
    ov: Overlay | None = None
    dead_at: float = math.inf
    got: dict[bytes, tuple[float, int]] = field(default_factory=dict)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]


def percentiles(xs: list[float]) -> dict[str, float | None]:
    return {"p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "max": pct(xs, 100)}


class Sim:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.net = MemoryNetwork(
            rng=random.Random(args.seed + 1),
            default_latency=args.latency,
            jitter=args.jitter,
            loss=args.loss,
        )
        self.config = OverlayConfig(network_id=NETWORK, active_size=args.active_size)
        self.peers: dict[PeerId, Peer] = {}
        self.next_index = 0
        self.nursery: trio.Nursery | None = None
        self.phases: dict[str, object] = {}
        self._t = time.process_time()
        self._m = 0

    def phase(self, name: str) -> None:
        now = time.process_time()
        msgs = self.net.statistics().messages_sent
        links = sum(p.ov.statistics().links for p in self.live() if p.ov)
        tasks = trio.lowlevel.current_statistics().tasks_living
        self.phases[name] = {
            "cpu_s": round(now - self._t, 2),
            "messages": msgs - self._m,
            "us_per_message": round((now - self._t) / max(1, msgs - self._m) * 1e6, 1),
            "links_per_peer": round(links / max(1, len(self.live())), 1),
            "tasks": tasks,
        }
        self._t, self._m = now, msgs

    # -- peers -----------------------------------------------------------------------

    async def start_peer(self, bootstrap: list[str]) -> Peer:
        i = self.next_index
        self.next_index += 1
        ident = Identity.from_seed(self.args.seed.to_bytes(8, "big") + i.to_bytes(24, "big"))
        p = Peer(i, ident, trio.current_time())
        self.peers[ident.peer_id] = p
        assert self.nursery is not None
        await self.nursery.start(self._run_peer, p, bootstrap)
        return p

    async def _run_peer(
        self, p: Peer, bootstrap: list[str], task_status: trio.TaskStatus[None]
    ) -> None:
        transport = self.net.transport(p.ident, NETWORK, name=f"p{p.index}")
        with trio.CancelScope() as scope:
            p.scope = scope
            async with open_overlay(
                transport, p.ident, self.config, bootstrap=bootstrap,
                rng=random.Random(self.rng.getrandbits(64)), wall_offset=0.0,
            ) as ov:
                p.ov = ov
                ch = ov.subscribe_delivered(TOPIC, buffer=4096)
                task_status.started()
                async for ev in ch:
                    p.got[ev.msg_id] = (trio.current_time(), ev.hops)

    def crash(self, p: Peer) -> None:
        p.dead_at = trio.current_time()
        self.net.crash(p.ident)
        if p.scope is not None:
            p.scope.cancel()

    def live(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.dead_at == math.inf and p.ov is not None]

    # -- convergence -------------------------------------------------------------------

    def converged(self, full: int) -> bool:
        live = self.live()
        alive = {p.ident.peer_id for p in live}
        for p in live:
            assert p.ov is not None
            act = p.ov.neighbors()
            if len(act) < full or any(q not in alive for q in act):
                return False
        return self.connected(live)

    def connected(self, live: list[Peer]) -> bool:
        if not live:
            return True
        alive = {p.ident.peer_id: p for p in live}
        start = live[0].ident.peer_id
        seen = {start}
        todo = deque([start])
        while todo:
            ov = alive[todo.popleft()].ov
            assert ov is not None
            for q in ov.neighbors():
                if q in alive and q not in seen:
                    seen.add(q)
                    todo.append(q)
        return len(seen) == len(alive)

    async def wait_converged(self, full: int, limit: float) -> float | None:
        t0 = trio.current_time()
        while trio.current_time() - t0 < limit:
            if self.converged(full):
                return trio.current_time() - t0
            await trio.sleep(0.25)
        return None

    # -- counters ----------------------------------------------------------------------

    def sent_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.peers.values():
            if p.ov is not None:
                for k, v in p.ov.protocol.out.sent.items():
                    out[k] = out.get(k, 0) + v
        return out

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> dict[str, object]:
        a = self.args
        out: dict[str, object] = {}
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            boot = await self.start_peer([])
            boot_addr = [f"mem:p{boot.index}"]
            for _ in range(1, a.peers):
                await trio.sleep(a.join_interval)
                await self.start_peer(boot_addr)
            joined = trio.current_time()
            self.phase("joined")
            full = (a.active_size + 1) // 2
            out["membership_convergence_s"] = await self.wait_converged(full, a.settle)
            settled_at = trio.current_time()
            self.phase("converged")
            await trio.sleep(2.0)

            if a.crash > 0:
                victims = self.rng.sample(self.live(), int(a.crash * len(self.live())))
                for p in victims:
                    self.crash(p)
                out["crashed"] = len(victims)
                out["repair_s"] = await self.wait_converged(1, a.settle)
                await trio.sleep(2.0)

            self.phase("crash/repair")
            sent0 = self.sent_by_type()
            stats0 = self.net.statistics()
            live0 = len(self.live())
            mids: list[tuple[bytes, float, PeerId]] = []
            churn_left = 0.0
            for _ in range(a.broadcasts):
                origin = self.rng.choice([p for p in self.live() if p.joined_at <= settled_at])
                assert origin.ov is not None
                mid = await origin.ov.publish(TOPIC, self.rng.randbytes(a.payload))
                mids.append((mid, trio.current_time(), origin.ident.peer_id))
                await trio.sleep(a.interval)
                churn_left += a.churn * a.interval
                while churn_left >= 1:
                    churn_left -= 1
                    cands = [p for p in self.live() if p is not origin and p is not boot]
                    self.crash(self.rng.choice(cands))
                    await self.start_peer(boot_addr)
            await trio.sleep(a.deadline)
            self.phase("broadcast")
            stats1 = self.net.statistics()
            sent1 = self.sent_by_type()
            nursery.cancel_scope.cancel()

        ratios, hops, lats = [], [], []
        for mid, t, origin in mids:
            eligible = [
                p for p in self.peers.values()
                if (p.joined_at <= settled_at or p.joined_at < t - a.join_grace)
                and p.dead_at > t + a.deadline
                and p.ident.peer_id != origin
            ]
            got = [p for p in eligible if mid in p.got]
            ratios.append(len(got) / max(1, len(eligible)))
            for p in got:
                at, h = p.got[mid]
                hops.append(h)
                lats.append(at - t)
        nb = max(1, a.broadcasts)
        d_sent = {k: sent1.get(k, 0) - sent0.get(k, 0) for k in sent1}
        bmsgs = sum(d_sent.get(k, 0) for k in BROADCAST_TYPES)
        out.update(
            {
                "peers": a.peers,
                "live_peers": live0,
                "broadcasts": a.broadcasts,
                "delivery_ratio": sum(ratios) / max(1, len(ratios)),
                "delivery_ratio_min": min(ratios) if ratios else None,
                "delivery_ratio_per_broadcast": ratios,
                "hops": percentiles([float(h) for h in hops]),
                "latency_s": percentiles(lats),
                "messages_per_peer_per_broadcast": (stats1.messages_sent - stats0.messages_sent)
                / live0 / nb,
                "bytes_per_peer_per_broadcast": (stats1.bytes_sent - stats0.bytes_sent) / live0 / nb,
                "broadcast_messages_per_peer_per_broadcast": bmsgs / live0 / nb,
                "messages_by_type_per_peer_per_broadcast": {
                    k: v / live0 / nb for k, v in sorted(d_sent.items()) if v
                },
                "honest_graylisted": sum(
                    p.ov.protocol.scores.graylisted_total for p in self.peers.values() if p.ov
                ),
                "config": {
                    "active_size": a.active_size,
                    "crash": a.crash,
                    "churn_per_s": a.churn,
                    "loss": a.loss,
                    "latency_s": a.latency,
                    "jitter_s": a.jitter,
                    "payload_bytes": a.payload,
                    "interval_s": a.interval,
                    "seed": a.seed,
                },
                "sim_s": trio.current_time(),
                "cost_by_phase": self.phases,
                "joined_at_s": joined,
            }
        )
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=100)
    ap.add_argument("--crash", type=float, default=0.0, help="fraction crashed at once")
    ap.add_argument("--churn", type=float, default=0.0, help="peers replaced per second")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--latency", type=float, default=0.02, help="one-way seconds")
    ap.add_argument("--jitter", type=float, default=0.01)
    ap.add_argument("--broadcasts", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--payload", type=int, default=256)
    ap.add_argument("--deadline", type=float, default=5.0)
    ap.add_argument("--join-interval", type=float, default=0.005)
    ap.add_argument("--join-grace", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=60.0)
    ap.add_argument("--active-size", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    summary = trio.run(Sim(args).run, clock=trio.testing.MockClock(autojump_threshold=0))
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    brief = {k: summary[k] for k in ("delivery_ratio", "hops", "messages_per_peer_per_broadcast",
                                      "broadcast_messages_per_peer_per_broadcast",
                                      "membership_convergence_s", "wall_s")}
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
