"""Equivocation: portable proofs, detection from conflicting records, charging."""

from __future__ import annotations

import dataclasses

import pytest

from p2pfl.errors import RemoteProtocolError
from p2pfl.federation.messages import RESULT_DOMAIN, digest_of, endorse
from p2pfl.identity import Identity
from p2pfl.ledger import (
    EquivocationProof,
    GroupHeader,
    Ledger,
    Record,
    SignedHeader,
    check_proof,
    collect_equivocations,
    find_equivocations,
    schedule_of,
)
from p2pfl.wire import PeerId, decode, encode

from .net import LedgerNet, fed_for, resign


def _setup(net: LedgerNet) -> tuple[GroupHeader, Identity, PeerId, PeerId]:
    rec = net.ledger().records[0]
    h = rec.body.groups[0].header
    assert h is not None
    g = schedule_of(net.fed, rec.body).groups[0]
    signer = net.by_peer[g.members[0]]
    return h, signer, g.aggregators[0], g.aggregators[1]


def _signed(h: GroupHeader, who: Identity, **kw: object) -> SignedHeader:
    h2 = dataclasses.replace(h, **kw)  # type: ignore[arg-type]
    return SignedHeader(h2, endorse(who, RESULT_DOMAIN, digest_of(h2)))


def test_two_bodies_of_one_proposer_signed_by_one_key_convict_it(net: LedgerNet) -> None:
    h, x, primary, _ = _setup(net)
    a = _signed(h, x, aggregator=primary)
    b = _signed(h, x, aggregator=primary, total_samples=h.total_samples + 1)
    proof = EquivocationProof((a, b))
    assert check_proof(proof, net.fed) == x.peer_id
    assert decode(encode(proof)) == proof  # portable: both signed bodies travel


def test_what_an_honest_peer_may_sign_is_no_proof(net: LedgerNet) -> None:
    h, x, primary, backup = _setup(net)
    one_each = EquivocationProof((_signed(h, x, aggregator=primary),
                                  _signed(h, x, aggregator=backup, total_samples=1)))
    unknown = EquivocationProof((_signed(h, x), _signed(h, x, total_samples=1)))
    for proof in (one_each, unknown):
        with pytest.raises(RemoteProtocolError, match="honest peer may sign"):
            check_proof(proof, net.fed)
    # more different bodies than there are aggregators: an offence even without proposers
    three = EquivocationProof(tuple(_signed(h, x, total_samples=i) for i in range(3)))
    assert check_proof(three, net.fed) == x.peer_id


def test_malformed_proofs_are_refused(net: LedgerNet) -> None:
    h, x, primary, _ = _setup(net)
    y = net.by_peer[net.peers[1]] if net.peers[1] != x.peer_id else net.by_peer[net.peers[2]]
    a = _signed(h, x, aggregator=primary)
    cases = {
        "two endorsed headers": (a,),
        "mixes signers": (a, _signed(h, y, aggregator=primary, total_samples=1)),
        "mixes groups": (a, _signed(h, x, aggregator=primary, group=1)),
        "repeats a header": (a, a),
    }
    for why, items in cases.items():
        with pytest.raises(RemoteProtocolError, match=why):
            check_proof(EquivocationProof(items), net.fed)
    other = fed_for(name="another")
    with pytest.raises(RemoteProtocolError, match="mixes groups"):
        check_proof(EquivocationProof((a, _signed(h, x, aggregator=primary, total_samples=1))), other)


def test_collect_from_a_pool_of_heard_endorsements(net: LedgerNet) -> None:
    h, x, primary, backup = _setup(net)
    honest = [_signed(h, x, aggregator=primary), _signed(h, x, aggregator=backup, total_samples=1)]
    assert collect_equivocations(honest, net.fed) == []
    forged = SignedHeader(dataclasses.replace(h, aggregator=primary, total_samples=7),
                          honest[0].endorsement)  # a signature that does not match: ignored
    assert collect_equivocations([*honest, forged], net.fed) == []
    bad = _signed(h, x, aggregator=primary, total_samples=2)
    proofs = collect_equivocations([*honest, bad, bad], net.fed)
    assert len(proofs) == 1 and check_proof(proofs[0], net.fed) == x.peer_id


def test_conflicting_records_of_a_round_yield_proofs_against_every_common_signer(net: LedgerNet) -> None:
    rec = net.ledger().records[0]
    sched = schedule_of(net.fed, rec.body)

    def variant(k: int) -> object:
        return lambda h: dataclasses.replace(h, aggregator=sched.groups[h.group].aggregators[0],
                                             total_samples=h.total_samples + k)

    ra, rb = (resign(rec, net.by_peer, change=variant(k)) for k in (1, 2))
    proofs = find_equivocations([ra, rb], net.fed)
    signers = {e.signer for w in rec.witnesses for e in w.endorsements}
    assert {check_proof(p, net.fed) for p in proofs} == signers
    led = Ledger(net.fed)
    led.append(ra)
    res = led.append(rb)  # a fork of equal weight; the comparison finds the proofs
    assert len(res.evidence) == len(proofs) and len(led.pending_evidence) == len(proofs)


def test_evidence_in_the_chain_charges_the_offender_once() -> None:
    net = LedgerNet(fed_for(), 9)
    net.run(2)
    h, x, primary, _ = _setup(net)
    proof = EquivocationProof((_signed(h, x, aggregator=primary),
                               _signed(h, x, aggregator=primary, total_samples=99)))
    for led in net.ledgers.values():  # heard during round 2 (gossip)
        assert led.add_evidence([proof]) == (proof,)
    _, built = net.step()  # round 2's record: only evidence heard before round 2 started
    assert next(iter(built.values())).body.evidence == ()
    _, built = net.step()
    rec = next(iter(built.values()))
    assert rec.body.evidence == (proof,)
    led = net.ledger()
    assert led.height == 4 and led.pending_evidence == ()
    s = led.standing.get(x.peer_id)
    assert s.equivocations == 1 and led.standing.score(x.peer_id) < led.params.floor
    assert led.weight(x.peer_id) == 0.0
    assert led.add_evidence([proof]) == ()  # already charged
    _, built = net.step()  # the offender is no longer drawn
    nxt = next(iter(built.values()))
    assert x.peer_id not in nxt.body.cohort
    fresh = Ledger(net.fed)
    for r in net.ledger().records[:4]:
        fresh.append(r)
    dup = Record(dataclasses.replace(nxt.body, evidence=(proof,)), nxt.witnesses)
    with pytest.raises(RemoteProtocolError, match="already charged"):
        fresh.append(dup)
    fresh.append(nxt)
