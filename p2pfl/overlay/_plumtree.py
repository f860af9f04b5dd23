"""Signed topic broadcast: Plumtree (Leitão, Pereira, Rodrigues, SRDS 2007), sans-I/O.

Theory of operation
-------------------
A publication is a :class:`Publication` (topic, origin timestamp, sequence
number, the origin's address or relays, payload) sealed in a
:class:`~p2pfl.identity.Signed` envelope by its origin, under the domain
``p2pfl/overlay/gossip/<network id>``.  Its **message id** is BLAKE2b-160 of
the envelope (signer ‖ signature ‖ body), so any change makes a new id and a
bad signature.

Every neighbour of the active view is either *eager* (tree link) or *lazy*:

``GOSSIP(envelope, hops)``  eager push.  The first copy is validated (size,
    signature, body, topic, age, the origin's rate), recorded in the seen-cache,
    delivered and pushed on: ``GOSSIP`` to the eager links, the id (batched
    every ``ihave_delay``) in ``IHAVE`` to the lazy ones.  A duplicate from an
    eager link is answered with ``PRUNE``: that link goes lazy, so the eager
    links converge to a spanning tree and each peer receives a payload about
    once.
``IHAVE(ids)``  lazy push.  An id we lack starts a timer (``graft_timeout``);
    when it fires we send ``GRAFT(id)`` to the first announcer (which becomes an
    eager link again: the tree repairs itself) and try the next announcer every
    ``graft_retry``.  A GRAFT is a *promise* check: if the message never arrives
    within ``promise_timeout``, the announcer is penalized (broken promise).
``GRAFT(ids)``  serve the stored messages, make the link eager.
``PRUNE``  make the link lazy.

All peers relay all topics (topics only select local delivery), so the tree is
shared by every topic and every origin.  Ids stay in the seen-cache for
``seen_ttl`` and publications older than ``max_message_age`` (by the origin's
clock, ± ``clock_skew``) are refused, so a replayed message can never be
delivered twice.  Validation failures penalize the neighbour that sent the
message -- an honest neighbour forwards only what it verified -- and the id is
remembered as rejected so other copies cost no second verification.

Checking the signature and decoding the body are pure functions of the envelope, which
its message id names (a hash of all of it).  Every peer of a process shares one bounded
memo, :data:`_OPENED`, of the envelopes that passed both, keyed by (signature domain,
size limit, message id): the first copy is verified and decoded, every later copy of
the same envelope -- at another simulated peer -- is answered with the same, immutable
envelope and publication, so N peers of one process also *hold* one copy of a
publication instead of N (their stores keep references).  Failures are never kept.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from p2pfl._lru import BoundedLru, IdentityMemo
from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.identity import Identity, Signed, seal, verify_signature
from p2pfl.wire import PeerId, decode_as

from ._config import OverlayConfig
from ._messages import (
    MAX_IDS,
    Gossip,
    Graft,
    IHave,
    PeerInfo,
    Prune,
    Publication,
    valid_address,
    valid_topic,
)
from ._scoring import Offense
from ._util import ExpiringSet, Outbox, TokenBucket

__all__ = ["BROADCAST_MESSAGES", "Broadcast", "Delivered", "message_id"]

BROADCAST_MESSAGES = (Gossip, IHave, Graft, Prune)
_BODY_OVERHEAD = 1024
_MAX_ANNOUNCERS = 8
_MAX_ORIGINS = 16384


_MAX_SIGNERS = 1 << 16


def _body_bytes(entry: tuple[Signed, object]) -> int:
    return len(entry[0].body)


# Envelopes that verified and decoded, by (domain, size limit, message id): a bounded
# (count and bytes), thread-safe memo shared by the peers of a process.
_OPENED: BoundedLru[tuple[bytes, int, bytes], tuple[Signed, Publication]] = BoundedLru(
    16384, max_weight=128 << 20, weigh=_body_bytes)


# Message ids by envelope object (immutable); bounded by count and bytes, thread-safe.
_MIDS: IdentityMemo[Signed, bytes] = IdentityMemo(4096, max_weight=32 << 20,
                                                  weigh=lambda env: len(env.body))


def message_id(env: Signed) -> bytes:
    """BLAKE2b-160 of the whole envelope (computed once per envelope object)."""
    mid = _MIDS.get(env)
    if mid is None:
        h = hashlib.blake2b(env.signer, digest_size=20)
        h.update(env.signature)
        h.update(env.body)
        mid = h.digest()
        _MIDS.put(env, mid)
    return mid


@dataclass(frozen=True, slots=True)
class Delivered:
    """A valid publication, delivered once per peer (``hops`` 0 for our own)."""

    topic: str
    origin: PeerId
    payload: bytes
    msg_id: bytes
    hops: int
    ts: float


@dataclass
class _Stored:
    env: Signed
    hops: int
    expires: float
    size: int


@dataclass
class _Missing:
    announcers: list[PeerId]
    deadline: float


def _no_penalty(peer: PeerId, offense: Offense, now: float) -> None:
    return None


class Broadcast:
    """The Plumtree state machine of one peer (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        config: OverlayConfig,
        rng: random.Random,
        *,
        address: str | None = None,
        outbox: Outbox | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.identity = identity
        self.local = identity.peer_id
        self.config = config
        self.rng = rng
        self.address = address
        self.wall_offset = wall_offset
        self.out = outbox if outbox is not None else Outbox()
        self.penalize: Callable[[PeerId, Offense, float], None] = _no_penalty
        self.reward: Callable[[PeerId, float], None] = lambda p, now: None
        self.on_origin: Callable[[PeerId, Publication, float], None] = lambda o, b, now: None
        self.relays: Callable[[], tuple[PeerInfo, ...]] = tuple
        self.eager: dict[PeerId, None] = {}
        self.lazy: dict[PeerId, None] = {}
        self.seen: ExpiringSet[bytes] = ExpiringSet(config.seen_ttl, config.seen_max)
        self.rejected: OrderedDict[bytes, bool] = OrderedDict()
        self.store: OrderedDict[bytes, _Stored] = OrderedDict()
        # origin -> its Ed25519 key, from verified publications (bounded, most recent)
        self.signers: OrderedDict[PeerId, bytes] = OrderedDict()
        self._store_bytes = 0
        self.missing: dict[bytes, _Missing] = {}
        self._missing_heap: list[tuple[float, bytes]] = []
        self._promises: list[tuple[float, bytes, PeerId]] = []
        self._ihave: dict[PeerId, list[bytes]] = {}
        self._ihave_at: float | None = None
        self._origins: OrderedDict[PeerId, TokenBucket] = OrderedDict()
        self._seqno = 0
        self.stats: dict[str, int] = {
            "published": 0,
            "delivered": 0,
            "duplicates": 0,
            "invalid": 0,
            "stale": 0,
            "over_rate": 0,
            "grafts_sent": 0,
            "served": 0,
            "broken_promises": 0,
        }

    # -- neighbours ----------------------------------------------------------------

    def neighbor_up(self, peer: PeerId, now: float) -> None:
        self.eager[peer] = None
        self.lazy.pop(peer, None)

    def neighbor_down(self, peer: PeerId, now: float) -> None:
        self.eager.pop(peer, None)
        self.lazy.pop(peer, None)
        self._ihave.pop(peer, None)

    # -- publishing ----------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, now: float) -> bytes:
        """Sign, deliver locally and push a publication; returns its message id.

        Raises :class:`LocalProtocolError` for a bad topic or an oversized payload.
        """
        if not isinstance(topic, str) or not valid_topic(topic):
            raise LocalProtocolError(f"invalid topic {topic!r}")
        if not isinstance(payload, bytes) or len(payload) > self.config.max_payload:
            raise LocalProtocolError(
                f"payload must be bytes of at most {self.config.max_payload} bytes"
            )
        self._seqno += 1
        relays = self.relays()[:4] if self.config.needs_relay(self.address) else ()
        body = Publication(topic, now + self.wall_offset, self._seqno, self.address, relays, payload)
        env = seal(self.identity, body, domain=self.config.gossip_domain)
        mid = message_id(env)
        self.stats["published"] += 1
        self._accept(None, env, mid, body, 0, now)
        return mid

    # -- messages --------------------------------------------------------------------

    def receive(self, sender: PeerId, msg: object, now: float) -> None:
        if isinstance(msg, Gossip):
            self._on_gossip(sender, msg, now)
        elif isinstance(msg, IHave):
            self._on_ihave(sender, msg, now)
        elif isinstance(msg, Graft):
            self._make_eager(sender)
            for mid in msg.ids:
                st = self.store.get(mid)
                if st is not None:
                    self.stats["served"] += 1
                    self.out.send(sender, Gossip(st.env, st.hops))
        elif isinstance(msg, Prune) and sender in self.eager:
            del self.eager[sender]
            self.lazy[sender] = None

    def _on_gossip(self, sender: PeerId, msg: Gossip, now: float) -> None:
        env = msg.envelope
        mid = message_id(env)
        if mid in self.seen:
            self.stats["duplicates"] += 1
            if sender in self.eager:
                del self.eager[sender]
                self.lazy[sender] = None
                self.out.send(sender, Prune())
            return
        verdict = self.rejected.get(mid)
        if verdict is not None:
            if verdict:
                self.penalize(sender, Offense.INVALID, now)
            return
        opened = self._validate(sender, env, mid, now)
        if opened is not None:
            self._accept(sender, opened[0], mid, opened[1], min(msg.hops + 1, 255), now)

    def _open(self, env: Signed, mid: bytes) -> tuple[Signed, Publication | None]:
        """The envelope (the shared copy when one exists) and its verified, decoded
        body, or None when the signature or the body is bad (see the module docstring)."""
        cfg = self.config
        limit = cfg.max_payload + _BODY_OVERHEAD
        if len(env.body) > limit:
            return env, None
        key = (cfg.gossip_domain, limit, mid)
        hit = _OPENED.get(key)
        if hit is not None:
            return hit
        if not verify_signature(env.signer, cfg.gossip_domain, env.body, env.signature):
            return env, None
        try:
            body = decode_as(env.body, Publication, max_size=limit)
        except RemoteProtocolError:
            return env, None
        _OPENED.put(key, (env, body))
        return env, body

    def _validate(self, sender: PeerId, env: Signed, mid: bytes,
                  now: float) -> tuple[Signed, Publication] | None:
        """The (shared) envelope and its body when the copy is valid and fresh."""
        cfg = self.config
        env, body = self._open(env, mid)
        if body is None or not (
            valid_topic(body.topic)
            and len(body.payload) <= cfg.max_payload
            and valid_address(body.addr)
            and all(valid_address(r.addr) for r in body.relays)
        ):
            self.stats["invalid"] += 1
            self._reject(mid, True)
            self.penalize(sender, Offense.INVALID, now)
            return None
        wall = now + self.wall_offset
        origin = env.peer_id
        if origin == self.local or not (
            wall - cfg.max_message_age <= body.ts <= wall + cfg.clock_skew
        ):
            self.stats["stale"] += 1  # a clock or a path too slow: not the sender's fault
            self._reject(mid, False)
            return None
        bucket = self._origins.get(origin)
        if bucket is None:
            bucket = self._origins[origin] = TokenBucket(cfg.origin_rate, cfg.origin_burst, now)
            while len(self._origins) > _MAX_ORIGINS:
                self._origins.popitem(last=False)
        if not bucket.take(now):
            self.stats["over_rate"] += 1
            self._reject(mid, False)
            if sender == origin:
                self.penalize(sender, Offense.FLOOD, now)
            return None
        return env, body

    def _reject(self, mid: bytes, guilty: bool) -> None:
        self.rejected[mid] = guilty
        while len(self.rejected) > self.config.rejected_max:
            self.rejected.popitem(last=False)

    def _accept(
        self, sender: PeerId | None, env: Signed, mid: bytes, body: Publication, hops: int, now: float
    ) -> None:
        cfg = self.config
        self.seen.add(mid, now)
        self.missing.pop(mid, None)
        size = len(env.body)
        self.store[mid] = _Stored(env, hops, now + cfg.store_ttl, size)
        self._store_bytes += size
        self._trim_store(now)
        if sender is not None:
            self.reward(sender, now)
            if sender in self.lazy:
                self._make_eager(sender)
            self.on_origin(env.peer_id, body, now)
        self.signers[env.peer_id] = env.signer
        self.signers.move_to_end(env.peer_id)
        if len(self.signers) > _MAX_SIGNERS:
            self.signers.popitem(last=False)
        self.stats["delivered"] += 1
        self.out.events.append(Delivered(body.topic, env.peer_id, body.payload, mid, hops, body.ts))
        g = Gossip(env, hops)
        for p in self.eager:
            if p != sender:
                self.out.send(p, g)
        for p in self.lazy:
            if p != sender:
                self._ihave.setdefault(p, []).append(mid)
                if self._ihave_at is None:
                    self._ihave_at = now + cfg.ihave_delay

    def _on_ihave(self, sender: PeerId, msg: IHave, now: float) -> None:
        cfg = self.config
        for mid in msg.ids:
            if mid in self.seen or mid in self.rejected:
                continue
            m = self.missing.get(mid)
            if m is None:
                if len(self.missing) >= cfg.max_missing:
                    continue
                m = self.missing[mid] = _Missing([sender], now + cfg.graft_timeout)
                heapq.heappush(self._missing_heap, (m.deadline, mid))
            elif sender not in m.announcers and len(m.announcers) < _MAX_ANNOUNCERS:
                m.announcers.append(sender)

    def _make_eager(self, peer: PeerId) -> None:
        if peer in self.lazy:
            del self.lazy[peer]
            self.eager[peer] = None

    # -- timers ----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = []
        if self._ihave_at is not None:
            ds.append(self._ihave_at)
        if self._missing_heap:
            ds.append(self._missing_heap[0][0])
        if self._promises:
            ds.append(self._promises[0][0])
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> None:
        cfg = self.config
        if self._ihave_at is not None and self._ihave_at <= now:
            self._ihave_at = None
            pending, self._ihave = self._ihave, {}
            for p, ids in pending.items():
                for i in range(0, len(ids), MAX_IDS):
                    self.out.send(p, IHave(tuple(ids[i : i + MAX_IDS])))
        grafts: dict[PeerId, list[bytes]] = {}
        heap = self._missing_heap
        while heap and heap[0][0] <= now:
            dl, mid = heapq.heappop(heap)
            m = self.missing.get(mid)
            if m is None or m.deadline != dl:
                continue
            if not m.announcers:
                del self.missing[mid]
                continue
            a = m.announcers.pop(0)
            grafts.setdefault(a, []).append(mid)
            heapq.heappush(self._promises, (now + cfg.promise_timeout, mid, a))
            m.deadline = now + cfg.graft_retry
            heapq.heappush(heap, (m.deadline, mid))
        for a, ids in grafts.items():
            self.stats["grafts_sent"] += len(ids)
            self._make_eager(a)
            for i in range(0, len(ids), MAX_IDS):
                self.out.send(a, Graft(tuple(ids[i : i + MAX_IDS])))
        while self._promises and self._promises[0][0] <= now:
            _, mid, a = heapq.heappop(self._promises)
            if mid not in self.seen and mid not in self.rejected:
                self.stats["broken_promises"] += 1
                self.penalize(a, Offense.BROKEN_PROMISE, now)
        self.seen.expire(now)
        self._trim_store(now)

    def _trim_store(self, now: float) -> None:
        cfg = self.config
        st = self.store
        while st:
            mid, s = next(iter(st.items()))
            if s.expires > now and len(st) <= cfg.store_max and self._store_bytes <= cfg.store_max_bytes:
                break
            del st[mid]
            self._store_bytes -= s.size
