"""A synchronous in-memory driver for one group (h11's ConnectionPair, for n parties).

Not a transport: a list of machines, a queue of messages in flight and a fake clock.
``run()`` delivers messages (per-link FIFO, links interleaved in an order drawn from
``reorder`` when given), and when nothing is in flight advances the clock to the
earliest deadline. Faults are injected by rules: a party can crash before or after
sending a given message kind (or in the middle: after its first copy), a link can drop messages, a ``tamper`` function can
rewrite any message (a malicious party), and ``garbage`` messages can be injected.
Every delivered message is appended to ``transcript`` for audits.

Used by the tests and benchmarks; simulations may use it for a whole group in
one process.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mpc.rand import Rng, SeededRng

from ._aggregator import Aggregator, ExclusionHook
from ._config import GroupConfig
from ._events import Event, OutputReady
from ._member import Member, ReferenceFn, SketchFn
from ._messages import Message, UnmaskShares

__all__ = ["Delivery", "FakeIdentities", "Harness", "build_group", "random_inputs", "ring_sum"]


class FakeIdentities:
    """Identity signatures for tests: HMAC-SHA256 under a per-party key from a seed.

    ``signer(p)`` signs as party p; ``verify(p, data, sig)`` checks it. Not a
    signature scheme (anyone holding the seed can forge): a stand-in for the
    identity layer's Ed25519, with the same interface.
    """

    def __init__(self, seed: bytes = b"identities") -> None:
        self._seed = seed

    def _key(self, party: int) -> bytes:
        return hashlib.sha256(self._seed + party.to_bytes(4, "big")).digest()

    def signer(self, party: int) -> Callable[[bytes], bytes]:
        """The ``sign`` callable of ``party``."""
        key = self._key(party)
        return lambda data: hmac.new(key, data, hashlib.sha256).digest()

    def verify(self, party: int, data: bytes, sig: bytes) -> bool:
        """True iff ``sig`` is ``party``'s signature of ``data``."""
        if not isinstance(sig, bytes) or not 0 <= party < 1 << 16:
            return False
        good = hmac.new(self._key(party), data, hashlib.sha256).digest()
        return hmac.compare_digest(good, sig)


@dataclass(frozen=True, eq=False)
class Delivery:
    """One message as it crossed the (fake) network."""

    time: float
    sender: int
    recipient: int
    msg: Message


Tamper = Callable[[int, int, Message], Message | None]
"""(sender, recipient, msg) -> replacement message, or None to drop it."""


@dataclass
class Harness:
    """Moves messages between the machines of one group; see the module docstring."""

    cfg: GroupConfig
    members: dict[int, Member]
    aggregators: dict[int, Aggregator]
    now: float = 0.0
    reorder: random.Random | None = None
    crash_before: dict[int, type[Message]] = field(default_factory=dict)
    crash_after: dict[int, type[Message]] = field(default_factory=dict)
    crash_mid: dict[int, type[Message]] = field(default_factory=dict)
    tamper: Tamper | None = None
    garbage: list[tuple[int, int, object]] = field(default_factory=list)
    garbage_rate: float = 0.0
    transcript: list[Delivery] = field(default_factory=list)
    events: dict[tuple[str, int], list[Event]] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    on_flush: Callable[[str, int, float], None] | None = None

    def __post_init__(self) -> None:
        self._links: dict[tuple[int, int], deque[Message]] = {}
        self._collect_all()

    # ------------------------------------------------------------ running

    def machines(self) -> list[tuple[str, int, Member | Aggregator]]:
        """All machines as (role, party, machine)."""
        out: list[tuple[str, int, Member | Aggregator]] = [
            ("member", p, m) for p, m in sorted(self.members.items())
        ]
        out += [("aggregator", p, a) for p, a in sorted(self.aggregators.items())]
        return out

    def crash(self, party: int) -> None:
        """Party stops: it receives nothing more and its queued output is lost."""
        self.dead.add(party)
        for key in [k for k in self._links if k[0] == party]:
            del self._links[key]

    def run(self, max_steps: int = 1_000_000) -> None:
        """Deliver and tick until every live machine finished or nothing can happen."""
        for _ in range(max_steps):
            if self.step():
                continue
            live = [m for _, p, m in self.machines() if p not in self.dead and not m.finished]
            deadlines = [d for m in live if (d := m.next_deadline()) is not None]
            if not deadlines:
                return
            self.now = max(self.now, min(deadlines))
            for role, p, m in self.machines():
                if p not in self.dead and not m.finished:
                    m.handle_timer(self.now)
                    self._collect(role, p, m)
        raise RuntimeError("harness did not settle")

    def step(self) -> bool:
        """Deliver one message in flight; False when none is."""
        links = [k for k, q in self._links.items() if q]
        if not links:
            return False
        key = self.reorder.choice(links) if self.reorder is not None else min(links)
        msg = self._links[key].popleft()
        sender, recipient = key
        if recipient in self.dead:
            return True
        self.transcript.append(Delivery(self.now, sender, recipient, msg))
        for role, machine in self._targets(recipient, msg):
            machine.receive(sender, msg, self.now)
            self._collect(role, recipient, machine)
        return True

    def _targets(self, party: int, msg: object) -> list[tuple[str, Member | Aggregator]]:
        to_agg = getattr(msg, "TO_AGGREGATOR", None)
        out: list[tuple[str, Member | Aggregator]] = []
        if to_agg is not False and party in self.aggregators:
            out.append(("aggregator", self.aggregators[party]))
        if to_agg is not True and party in self.members:
            out.append(("member", self.members[party]))
        return out

    def inject(self, sender: int, recipient: int, msg: object) -> None:
        """Deliver ``msg`` now, outside any link (garbage, replays)."""
        for role, machine in self._targets(recipient, msg):
            machine.receive(sender, msg, self.now)
            self._collect(role, recipient, machine)

    def collect(self, party: int) -> None:
        """Pick up what a party's machines queued outside ``receive`` (``set_input``)."""
        for role, p, m in self.machines():
            if p == party:
                self._collect(role, p, m)

    def _collect_all(self) -> None:
        for role, p, m in self.machines():
            self._collect(role, p, m)

    def _collect(self, role: str, party: int, m: Member | Aggregator) -> None:
        evs = self.events.setdefault((role, party), [])
        while (ev := m.next_event()) is not None:
            evs.append(ev)
        out = m.messages_to_send()
        if self.on_flush is not None:
            self.on_flush(role, party, self.now)
        if party in self.dead:
            return
        kinds = {type(msg) for _, msg in out}
        if self.crash_before.get(party) in kinds:
            self.dead.add(party)  # this flush is lost; earlier ones are on the wire
            return
        mid = self.crash_mid.get(party)
        for to, msg in out:
            if party in self.dead:
                break
            if mid is not None and isinstance(msg, mid):
                self.dead.add(party)  # delivered to this recipient only, then crash
            if self.tamper is not None:
                new = self.tamper(party, to, msg)
                if new is None:
                    continue
                msg = new
            self._links.setdefault((party, to), deque()).append(msg)
            if (
                self.garbage
                and self.reorder is not None
                and (self.reorder.random() < self.garbage_rate)
            ):
                g_sender, g_to, g_msg = self.reorder.choice(self.garbage)
                self.inject(g_sender, g_to, g_msg)
        if self.crash_after.get(party) in kinds:
            self.dead.add(party)

    # ------------------------------------------------------------ results

    def outputs(self) -> dict[int, OutputReady]:
        """The OutputReady event of each aggregator that produced one."""
        out: dict[int, OutputReady] = {}
        for (role, p), evs in self.events.items():
            for ev in evs:
                if role == "aggregator" and isinstance(ev, OutputReady):
                    out[p] = ev
        return out

    def reveals(self) -> dict[int, dict[str, set[int]]]:
        """owner -> {"b": members that revealed a b-share of it, "sk": ... s_sk-share}."""
        out: dict[int, dict[str, set[int]]] = {}
        for d in self.transcript:
            if isinstance(d.msg, UnmaskShares):
                for owner, _ in d.msg.b_shares:
                    out.setdefault(owner, {"b": set(), "sk": set()})["b"].add(d.sender)
                for owner, _ in d.msg.sk_shares:
                    out.setdefault(owner, {"b": set(), "sk": set()})["sk"].add(d.sender)
        return out

    def sent(self, kind: type[Message]) -> list[Delivery]:
        """Delivered messages of one kind."""
        return [d for d in self.transcript if isinstance(d.msg, kind)]


def build_group(
    cfg: GroupConfig,
    inputs: Sequence[NDArray[np.uint32] | None],
    *,
    seed: bytes = b"group",
    start: float = 0.0,
    ids: FakeIdentities | None = None,
    sketches: Sequence[SketchFn] | None = None,
    reference: NDArray[np.int64] | ReferenceFn | None = None,
    decide_exclusions: ExclusionHook | None = None,
    rng_factory: Callable[[bytes], Rng] = SeededRng,
    **harness_args: object,
) -> Harness:
    """Members 0..n-1 with ``inputs[u]`` (None: given later) and every aggregator.

    Randomness is seeded per party from ``seed``; signatures are :class:`FakeIdentities`.
    """
    ids = ids if ids is not None else FakeIdentities(seed)
    members = {
        u: Member(
            cfg,
            u,
            rng_factory(seed + b"/member/" + str(u).encode()),
            ids.signer(u),
            ids.verify,
            start=start,
            x=inputs[u],
            sketch=None if sketches is None else sketches[u],
            reference=reference,
        )
        for u in range(cfg.n)
    }
    aggs = {
        a: Aggregator(
            cfg, a, ids.signer(a), ids.verify, start=start, decide_exclusions=decide_exclusions
        )
        for a in cfg.aggregators
    }
    return Harness(cfg, members, aggs, now=start, **harness_args)  # type: ignore[arg-type]


def random_inputs(n: int, dim: int, seed: int) -> list[NDArray[np.uint32]]:
    """``n`` uniformly random ring vectors of length ``dim`` (seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 2**32, dim, dtype=np.uint32) for _ in range(n)]


def ring_sum(xs: Sequence[NDArray[np.uint32]], members: frozenset[int], dim: int) -> NDArray[np.uint32]:
    """The wrapping uint32 sum of ``xs[u]`` over ``members``: what the group must output."""
    acc = np.zeros(dim, dtype=np.uint32)
    for u in sorted(members):
        acc += xs[u]
    return acc
