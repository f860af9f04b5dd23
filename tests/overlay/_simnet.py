"""A synchronous discrete-event network for the sans-I/O overlay protocol (no trio).

h11's ``ConnectionPair`` grown to N peers: a heap of timed events, links as
unordered pairs with a fixed one-way latency (so every link is FIFO), every
message encoded and decoded by the real codec.  Partitions and crashes are
sets; a crash breaks every link of the peer at once, as the memory transport
does.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pfl.errors import RemoteProtocolError
from p2pfl.identity import Identity
from p2pfl.overlay import OverlayConfig
from p2pfl.overlay._plumtree import Delivered
from p2pfl.overlay._protocol import OverlayProtocol
from p2pfl.overlay._util import Close, Connect, Send
from p2pfl.wire import PeerId, decode, encode


def identity(i: int, tag: bytes = b"p") -> Identity:
    return Identity.from_seed((tag + i.to_bytes(4, "big")).ljust(32, b"\x00"))


@dataclass
class Node:
    proto: OverlayProtocol
    address: str | None
    delivered: dict[bytes, Delivered] = field(default_factory=dict)
    direct: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    timer_version: int = 0


class SimNet:
    def __init__(self, *, latency: float = 0.01, seed: int = 0, config: OverlayConfig | None = None):
        self.latency = latency
        self.rng = random.Random(seed)
        self.config = config or OverlayConfig()
        self.now = 0.0
        self.nodes: dict[PeerId, Node] = {}
        self.by_addr: dict[str, PeerId] = {}
        self.links: set[frozenset[PeerId]] = set()
        self.crashed: set[PeerId] = set()
        self.blocked: Callable[[PeerId, PeerId], bool] = lambda a, b: False
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.messages = 0
        self.bytes = 0
        self.tamper: Callable[[PeerId, PeerId, bytes], bytes] | None = None

    # -- building ----------------------------------------------------------------

    def add(
        self, ident: Identity, *, bootstrap: Iterable[str] = (), listen: bool = True,
        config: OverlayConfig | None = None,
    ) -> Node:
        addr = f"sim:{len(self.nodes)}" if listen else None
        proto = OverlayProtocol(
            ident, config or self.config, rng=random.Random(self.rng.getrandbits(64)),
            address=addr, bootstrap=list(bootstrap),
        )
        node = Node(proto, addr)
        self.nodes[ident.peer_id] = node
        if addr is not None:
            self.by_addr[addr] = ident.peer_id
        proto.start(self.now)
        self._pump(ident.peer_id)
        return node

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn))

    def run(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            t, _, fn = heapq.heappop(self._heap)
            self.now = max(self.now, t)
            fn()
        self.now = max(self.now, until)

    def run_for(self, dt: float) -> None:
        self.run(self.now + dt)

    # -- faults -----------------------------------------------------------------------

    def crash(self, peer: PeerId) -> None:
        self.crashed.add(peer)
        for link in [lk for lk in self.links if peer in lk]:
            self._break(link)

    def partition(self, side: set[PeerId]) -> None:
        self.blocked = lambda a, b: (a in side) != (b in side)
        for link in [lk for lk in self.links if len({p in side for p in lk}) == 2]:
            self._break(link)

    def heal(self) -> None:
        self.blocked = lambda a, b: False

    def alive(self) -> list[PeerId]:
        return [p for p in self.nodes if p not in self.crashed]

    def _break(self, link: frozenset[PeerId]) -> None:
        self.links.discard(link)
        for p in link:
            if p not in self.crashed:
                other = next(iter(link - {p})) if len(link) == 2 else p
                self.nodes[p].proto.link_down(other, self.now)
                self._pump(p)

    # -- the machinery -------------------------------------------------------------------

    def _reachable(self, a: PeerId, b: PeerId) -> bool:
        return a not in self.crashed and b not in self.crashed and not self.blocked(a, b)

    def _pump(self, peer: PeerId) -> None:
        node = self.nodes[peer]
        proto = node.proto
        while True:
            cmds = proto.messages_to_send()
            if not cmds:
                break
            for c in cmds:
                if isinstance(c, Send):
                    self._send(peer, c)
                elif isinstance(c, Connect):
                    self._connect(peer, c.address)
                elif isinstance(c, Close):
                    link = frozenset((peer, c.peer))
                    if link in self.links:
                        self.at(self.now + self.latency, lambda lk=link: self._close(lk))
        while (ev := proto.next_event()) is not None:
            if isinstance(ev, Delivered):
                node.delivered[ev.msg_id] = ev
            else:
                node.events.append(ev)
        dl = proto.next_deadline()
        if dl is not None:
            node.timer_version += 1
            v = node.timer_version
            self.at(max(dl, self.now), lambda: self._timer(peer, v))

    def _timer(self, peer: PeerId, version: int) -> None:
        node = self.nodes[peer]
        if peer in self.crashed or version != node.timer_version:
            return
        node.proto.handle_timer(self.now)
        self._pump(peer)

    def _close(self, link: frozenset[PeerId]) -> None:
        if link in self.links:
            self._break(link)

    def _connect(self, src: PeerId, address: str) -> None:
        dst = self.by_addr.get(address)

        def done() -> None:
            if src in self.crashed:
                return
            if dst is None or not self._reachable(src, dst):
                self.nodes[src].proto.connect_failed(address, self.now)
                self._pump(src)
                return
            self._open(src, dst, address)

        self.at(self.now + 2 * self.latency, done)

    def _open(self, src: PeerId, dst: PeerId, address: str | None) -> bool:
        link = frozenset((src, dst))
        if link not in self.links:
            if not self.nodes[dst].proto.link_up(src, self.now):
                self._pump(dst)
                self.nodes[src].proto.send_failed(dst, self.now)
                self._pump(src)
                return False
            self.links.add(link)
            self._pump(dst)
        if not self.nodes[src].proto.link_up(dst, self.now, address):
            self._break(link)
            return False
        self._pump(src)
        return True

    def _send(self, src: PeerId, cmd: Send) -> None:
        dst = cmd.peer
        data = encode(cmd.msg)
        link = frozenset((src, dst))
        if link in self.links:
            self._deliver_later(src, dst, data)
            return
        if cmd.address is None or self.by_addr.get(cmd.address) != dst:
            self.at(self.now, lambda: self._failed(src, dst, [cmd.msg]))
            return

        def dial() -> None:
            if src in self.crashed:
                return
            if link in self.links:
                self._deliver_later(src, dst, data)
            elif not self._reachable(src, dst):
                self._failed(src, dst, [cmd.msg])
            else:
                # open the link without a Join (only bootstrap dials join)
                if dst not in self.nodes or not self.nodes[dst].proto.link_up(src, self.now):
                    self._failed(src, dst, [cmd.msg])
                    return
                self.links.add(link)
                self._pump(dst)
                self.nodes[src].proto.link_up(dst, self.now)
                self._pump(src)
                self._deliver_later(src, dst, data)

        self.at(self.now + 2 * self.latency, dial)

    def _failed(self, src: PeerId, dst: PeerId, msgs: list[object]) -> None:
        if src in self.crashed:
            return
        self.nodes[src].proto.send_failed(dst, self.now, msgs)
        self._pump(src)

    def _deliver_later(self, src: PeerId, dst: PeerId, data: bytes) -> None:
        self.messages += 1
        self.bytes += len(data)
        if self.tamper is not None:
            data = self.tamper(src, dst, data)
        link = frozenset((src, dst))

        def deliver() -> None:
            if link not in self.links or dst in self.crashed:
                return
            proto = self.nodes[dst].proto
            try:
                msg = decode(data)
            except RemoteProtocolError as e:
                proto.receive_malformed(src, e, self.now)
            else:
                proto.receive(src, msg, self.now, len(data))
            self._pump(dst)

        self.at(self.now + self.latency, deliver)

    # -- helpers for tests -----------------------------------------------------------

    def publish(self, peer: PeerId, topic: str, payload: bytes) -> bytes:
        mid = self.nodes[peer].proto.publish(topic, payload, self.now)
        self._pump(peer)
        return mid

    def send_direct(self, peer: PeerId, to: PeerId, payload: bytes) -> None:
        self.nodes[peer].proto.send_direct(to, payload, self.now)
        self._pump(peer)

    def reached(self, mid: bytes, peers: Iterable[PeerId] | None = None) -> float:
        ps = list(peers) if peers is not None else self.alive()
        return sum(mid in self.nodes[p].delivered for p in ps) / max(1, len(ps))

    def active_symmetric(self) -> bool:
        for p in self.alive():
            for q in self.nodes[p].proto.membership.active:
                if q not in self.crashed and p not in self.nodes[q].proto.membership.active:
                    return False
        return True
