"""Plumtree broadcast with signed publications, one machine at a time (no network)."""

from __future__ import annotations

import random

from p2pfl.identity import Identity, Signed, seal
from p2pfl.overlay import Delivered, Offense, OverlayConfig, Send, message_id
from p2pfl.overlay._messages import Gossip, Graft, IHave, PeerInfo, Prune, Publication
from p2pfl.overlay._plumtree import Broadcast
from p2pfl.wire import PeerId

CFG = OverlayConfig(network_id=b"plum", origin_rate=1.0, origin_burst=3.0)


def ident(i: int) -> Identity:
    return Identity.from_seed(bytes([i]) * 32)


ME = ident(0)
N1, N2, N3 = (ident(i).peer_id for i in (1, 2, 3))


class Env:
    def __init__(self) -> None:
        self.b = Broadcast(ME, CFG, random.Random(0), address="mem:0")
        self.penalties: list[tuple[PeerId, Offense]] = []
        self.b.penalize = lambda p, o, now: self.penalties.append((p, o))
        for p in (N1, N2, N3):
            self.b.neighbor_up(p, 0.0)

    def sends(self) -> list[Send]:
        out = [c for c in self.b.out.commands if isinstance(c, Send)]
        self.b.out.commands.clear()
        return out

    def delivered(self) -> list[Delivered]:
        out = [e for e in self.b.out.events if isinstance(e, Delivered)]
        self.b.out.events.clear()
        return out

    def tick(self, until: float) -> list[Send]:
        out = []
        while (dl := self.b.next_deadline()) is not None and dl <= until:
            self.b.handle_timer(dl)
            out += self.sends()
        return out


def envelope(origin: Identity, payload: bytes = b"x", ts: float = 0.0, topic: str = "t") -> Signed:
    return seal(origin, Publication(topic, ts, 1, None, (), payload), domain=CFG.gossip_domain)


def test_publish_delivers_locally_and_pushes_to_eager_links() -> None:
    e = Env()
    mid = e.b.publish("t", b"hello", 1.0)
    (d,) = e.delivered()
    assert d.msg_id == mid and d.origin == ME.peer_id and d.hops == 0 and d.payload == b"hello"
    out = e.sends()
    assert {s.peer for s in out} == {N1, N2, N3}
    assert all(isinstance(s.msg, Gossip) and message_id(s.msg.envelope) == mid for s in out)


def test_first_copy_forwarded_duplicate_prunes_the_link() -> None:
    e = Env()
    env = envelope(ident(9), ts=0.0)
    e.b.receive(N1, Gossip(env, 2), 0.0)
    (d,) = e.delivered()
    assert d.hops == 3 and d.origin == ident(9).peer_id
    out = e.sends()
    assert {s.peer for s in out} == {N2, N3} and all(s.msg == Gossip(env, 3) for s in out)
    e.b.receive(N2, Gossip(env, 5), 0.1)
    assert e.sends() == [Send(N2, Prune())]
    assert N2 in e.b.lazy and N2 not in e.b.eager
    assert not e.delivered()


def test_lazy_links_get_batched_ihaves() -> None:
    e = Env()
    e.b.receive(N2, Prune(), 0.0)
    e.b.receive(N3, Prune(), 0.0)
    m1 = e.b.publish("t", b"1", 0.0)
    m2 = e.b.publish("t", b"2", 0.001)
    assert [s.peer for s in e.sends()] == [N1, N1]
    out = e.tick(1.0)
    assert sorted((s.peer.raw, s.msg.ids) for s in out) == sorted(  # type: ignore[union-attr]
        [(N2.raw, (m1, m2)), (N3.raw, (m1, m2))]
    )


def test_ihave_for_missing_message_grafts_then_tries_next_announcer_and_penalizes() -> None:
    e = Env()
    env = envelope(ident(9))
    mid = message_id(env)
    e.b.receive(N1, IHave((mid,)), 0.0)
    e.b.receive(N2, IHave((mid,)), 0.01)
    out = e.tick(CFG.graft_timeout)
    assert out == [Send(N1, Graft((mid,)))]
    out = e.tick(CFG.graft_timeout + CFG.graft_retry)
    assert out == [Send(N2, Graft((mid,)))]
    e.tick(CFG.graft_timeout + CFG.promise_timeout + 0.01)
    assert (N1, Offense.BROKEN_PROMISE) in e.penalties
    e.b.receive(N2, Gossip(env, 0), 2.5)  # N2 keeps its promise
    assert e.delivered()
    e.tick(10.0)
    assert (N2, Offense.BROKEN_PROMISE) not in e.penalties


def test_graft_is_served_from_the_store_and_makes_the_link_eager() -> None:
    e = Env()
    e.b.receive(N3, Prune(), 0.0)
    mid = e.b.publish("t", b"p", 0.0)
    e.sends()
    e.b.receive(N3, Graft((mid, b"\0" * 20)), 0.5)
    (s,) = e.sends()
    assert s.peer == N3 and isinstance(s.msg, Gossip) and message_id(s.msg.envelope) == mid
    assert N3 in e.b.eager


def test_bad_signature_wrong_domain_and_tampering_are_penalized_and_not_forwarded() -> None:
    e = Env()
    good = envelope(ident(9), b"payload")
    tampered = Signed(good.signer, good.body.replace(b"payload", b"PAYLOAD"), good.signature)
    other_net = seal(ident(9), Publication("t", 0.0, 1, None, (), b"p"), domain=b"elsewhere")
    stolen_key = Signed(ident(8).public_key, good.body, good.signature)
    for env in (tampered, other_net, stolen_key):
        e.b.receive(N1, Gossip(env, 0), 0.0)
    assert not e.sends() and not e.delivered()
    assert e.penalties == [(N1, Offense.INVALID)] * 3
    e.b.receive(N2, Gossip(tampered, 0), 0.1)  # known bad: no second verification, still a penalty
    assert e.penalties[-1] == (N2, Offense.INVALID)
    assert e.b.stats["invalid"] == 3


def test_signed_garbage_body_is_invalid() -> None:
    e = Env()
    o = ident(9)
    env = Signed(o.public_key, b"\x83\x01", o.sign(CFG.gossip_domain, b"\x83\x01"))
    e.b.receive(N1, Gossip(env, 0), 0.0)
    assert e.penalties == [(N1, Offense.INVALID)]


def test_stale_and_future_publications_are_dropped_without_penalty() -> None:
    e = Env()
    e.b.receive(N1, Gossip(envelope(ident(9), ts=0.0), 0), CFG.max_message_age + 1)
    e.b.receive(N1, Gossip(envelope(ident(9), ts=100.0), 0), 0.0)
    assert not e.delivered() and not e.penalties and e.b.stats["stale"] == 2


def test_replay_after_the_seen_cache_expired_is_refused() -> None:
    e = Env()
    env = envelope(ident(9), ts=0.0)
    e.b.receive(N1, Gossip(env, 0), 0.0)
    assert e.delivered()
    e.tick(1.0)
    e.b.handle_timer(CFG.seen_ttl + 1)  # caches expire on any timer tick
    assert message_id(env) not in e.b.seen
    e.b.receive(N1, Gossip(env, 0), CFG.seen_ttl + 1)
    assert not e.delivered()  # too old now


def test_origin_rate_limit_penalizes_only_the_flooding_origin() -> None:
    e = Env()
    flooder = ident(1)  # N1 is the origin itself
    for k in range(6):
        e.b.receive(N1, Gossip(envelope(flooder, bytes([k])), 0), 0.0)
    assert len(e.delivered()) == 3 and e.b.stats["over_rate"] == 3
    assert e.penalties == [(N1, Offense.FLOOD)] * 3
    other = ident(9)  # N2 forwards someone else's burst: dropped, N2 not blamed
    for k in range(5):
        e.b.receive(N2, Gossip(envelope(other, bytes([k])), 0), 0.0)
    assert all(p == N1 for p, _ in e.penalties)


def test_addressless_origin_lists_relays() -> None:
    b = Broadcast(ME, CFG, random.Random(0), address=None)
    b.relays = lambda: (PeerInfo(N1, "mem:1"),)
    b.neighbor_up(N2, 0.0)
    b.publish("t", b"x", 0.0)
    (s,) = [c for c in b.out.commands if isinstance(c, Send)]
    env = s.msg.envelope  # type: ignore[union-attr]
    from p2pfl.wire import decode_as

    body = decode_as(env.body, Publication)
    assert body.addr is None and body.relays == (PeerInfo(N1, "mem:1"),)


def test_neighbor_down_forgets_the_link() -> None:
    e = Env()
    e.b.neighbor_down(N1, 0.0)
    e.b.publish("t", b"x", 0.0)
    assert {s.peer for s in e.sends()} == {N2, N3}


def test_peers_of_a_process_share_opened_envelopes_but_never_a_tampered_one() -> None:
    """The second peer to receive an envelope gets the first one's verified, decoded
    copy (the same objects: one copy held per process); any changed byte is another
    message id: verified afresh and refused, before and after the good one was seen."""
    from p2pfl.overlay import _plumtree

    good = envelope(ident(9), b"payload")
    tampered = Signed(good.signer, good.body.replace(b"payload", b"PAYLOAD"), good.signature)
    a, b, c = Env(), Env(), Env()
    a.b.receive(N1, Gossip(tampered, 0), 0.0)
    assert a.penalties == [(N1, Offense.INVALID)]
    a.b.receive(N1, Gossip(good, 0), 0.0)
    copy = Signed(bytes(bytearray(good.signer)), bytes(bytearray(good.body)),
                  bytes(bytearray(good.signature)))
    hits = _plumtree._OPENED.hits
    b.b.receive(N2, Gossip(copy, 0), 0.0)
    assert _plumtree._OPENED.hits == hits + 1
    (da,), (db,) = a.delivered(), b.delivered()
    assert da.payload is db.payload == b"payload"  # one object for both peers
    assert b.b.store[db.msg_id].env is a.b.store[da.msg_id].env
    c.b.receive(N3, Gossip(tampered, 0), 0.0)
    assert c.penalties == [(N3, Offense.INVALID)] and not c.delivered()
