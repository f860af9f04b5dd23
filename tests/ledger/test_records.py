"""Round records built from real rounds: round trips, hashes, agreement, verification."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from p2pfl.federation import ResultBody
from p2pfl.federation.messages import RESULT_DOMAIN, digest_of
from p2pfl.federation.secure import SecureAggregation
from p2pfl.ledger import (
    GroupHeader,
    GroupStatus,
    Ledger,
    LedgerParams,
    Record,
    genesis_hash,
    header_of,
    record_hash,
    state_digest,
    strategy_hash,
    verify_chain,
)
from p2pfl.wire import decode, encode
from tests.federation.harness import identities

from .net import LedgerNet, fed_for, resign


def test_records_round_trip_through_the_codec(net: LedgerNet) -> None:
    for rec in net.ledger().records:
        back = decode(encode(rec))
        assert isinstance(back, Record)
        assert encode(back) == encode(rec)
        assert back.hash == rec.hash == record_hash(rec.body)


def test_the_chain_links_from_genesis(net: LedgerNet) -> None:
    recs = net.ledger().records
    assert [r.round for r in recs] == list(range(len(recs)))
    assert recs[0].body.prev == genesis_hash(net.fed.id)
    for a, b in itertools.pairwise(recs):
        assert b.body.prev == a.hash


def test_every_peer_holds_the_same_chain_and_standing(net: LedgerNet) -> None:
    heads = {led.head for led in net.ledgers.values()}
    assert len(heads) == 1
    ref = net.ledger().standing.reputation()
    assert all(led.standing.reputation() == ref for led in net.ledgers.values())
    # every peer's state went through next_state(ledger.head)
    assert net.states_agree(net.peers)


def test_verify_chain_from_genesis_equals_the_incremental_standing(net: LedgerNet) -> None:
    st = verify_chain(net.ledger().records, net.fed)
    led = net.ledger().standing
    assert st.height == led.height
    assert {p: s.hex() for p, s in ((p, st.score(p)) for p in st.peers)} == {
        p: s.hex() for p, s in ((p, led.score(p)) for p in led.peers)}
    assert st.credits() == led.credits()


def test_header_mirrors_the_result_body() -> None:
    body_fields = [f.name for f in dataclasses.fields(ResultBody) if f.name != "update_sum"]
    header_fields = [f.name for f in dataclasses.fields(GroupHeader)]
    assert set(body_fields) <= set(header_fields)
    assert set(header_fields) - set(body_fields) == {"sum_hash", "aggregator"}


def test_endorsements_sign_the_recorded_header() -> None:
    """Results are signed over their header's digest: the record keeps the header and
    the endorsements, and no sum."""
    net = LedgerNet(fed_for(), 8)
    _, built = net.step()
    rm = next(iter(net.machines.values()))
    results, _ = rm.outcomes()
    assert results
    rec = next(iter(built.values()))
    wits = {w.index: w for w in rec.witnesses}
    for msg in results:
        slot = rec.body.groups[msg.body.group]
        assert slot.status is GroupStatus.ACCEPTED and slot.header == header_of(msg.body)
        assert digest_of(slot.header) == digest_of(msg.body)
        w = wits[msg.body.group]
        assert w.endorsements and all(e.valid(RESULT_DOMAIN, digest_of(slot.header))
                                      for e in w.endorsements)
        assert {e.public_key for e in w.endorsements} == {e.public_key for e in msg.endorsements}


def _arrays(obj: object) -> int:
    """The number of numpy arrays anywhere inside a message."""
    if isinstance(obj, np.ndarray):
        return 1
    if isinstance(obj, tuple):
        return sum(_arrays(x) for x in obj)
    if dataclasses.is_dataclass(obj):
        return sum(_arrays(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def test_record_size_does_not_depend_on_the_model_size() -> None:
    """A record built from real signed results carries no model-sized vector."""
    sizes = {}
    for dim in (6, 5000):
        net = LedgerNet(fed_for(), 8, dim=dim)
        _, built = net.step()
        rec = next(iter(built.values()))
        assert rec.body.updated and _arrays(rec) == 0
        sizes[dim] = len(encode(rec))
    # same peers, groups and signers; only hashes and float fields differ
    assert abs(sizes[5000] - sizes[6]) < 64 < 8 * 5000


def test_state_digest_restates_the_global_state(net: LedgerNet) -> None:
    led = net.ledger()
    st = net.states[net.peers[0]]
    last = led.records[-1].body
    assert st.round == led.height
    assert last.model_hash == st.model_hash
    assert last.strategy_hash == strategy_hash(st.strategy_state)
    assert state_digest(net.fed.id, st.round, st.beacon, st.model_hash,
                        strategy_hash(st.strategy_state)) == st.digest
    assert led.next_beacon() == st.beacon and led.state_digest() == st.digest
    assert Ledger(net.fed).state_digest() is None


def test_re_signing_the_headers_reproduces_the_record(net: LedgerNet) -> None:
    """The federation's endorsements are exactly signatures over the recorded headers
    (Ed25519 is deterministic: re-signing them gives the same record)."""
    first = net.ledger().records[0]
    again = resign(first, net.by_peer)
    assert encode(again) == encode(first)
    led = Ledger(net.fed)
    led.append(again)
    assert led.head == first.hash


def test_records_of_rounds_without_groups_keep_the_model() -> None:
    net = LedgerNet(fed_for(), 2)  # below min_group_size
    net.run(2)
    recs = net.ledger().records
    assert [r.body.updated for r in recs] == [False, False]
    assert recs[0].body.groups == () and recs[1].body.model_hash == recs[0].body.model_hash
    assert np.array_equal(net.states[net.peers[0]].model, net.states[net.peers[1]].model)


def test_secure_rounds_make_a_chain_within_the_fixed_point_weight_tolerance() -> None:
    """Weights summed in fixed point inside the MPC stay within the ledger's bound."""
    ids = identities(6)
    fed = fed_for(**{"secure": True, "update.clip_norm": 100.0, "update.weighting": "uniform",
                     "secagg.quant_range": 8.0, "timeouts.stage": 2.0,
                     "membership.policy": "permissioned",
                     "membership.members": [i.public_key.hex() for i in ids]})
    params = LedgerParams(full_weight_at=0.7)  # weight factor 5/7: not a dyadic fraction
    net = LedgerNet(fed, 6, params, backend=SecureAggregation)
    net.run(2)
    led = net.ledger()
    assert led.height == 2 and all(r.body.updated for r in led.records)
    assert verify_chain(led.records, fed, params).reputation() == led.standing.reputation()
    h = led.records[0].body.groups[0].header
    assert h is not None and h.total_weight != len(h.included) * (0.5 / 0.7)
