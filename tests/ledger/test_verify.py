"""Forged, tampered, unsigned and wrong-chain records are refused with a clear error,
and the ledger is left as it was."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import OutOfSync, next_beacon
from p2pfl.federation.messages import RESULT_DOMAIN, Endorsement, digest_of, endorse
from p2pfl.ledger import (
    EquivocationProof,
    GroupHeader,
    GroupWitness,
    Ledger,
    LedgerParams,
    Record,
    SignedHeader,
    Standing,
    genesis_hash,
    record_hash,
    schedule_of,
    verify_chain,
    verify_record,
)
from p2pfl.wire import PeerId

from .net import LedgerNet, fed_for, resign, seeded, to_abort

Mutation = Callable[[Record, LedgerNet], Record]


def _body(**kw: object) -> Mutation:
    return lambda r, net: Record(dataclasses.replace(r.body, **kw), r.witnesses)  # type: ignore[arg-type]


def _wit(f: Callable[[GroupWitness, LedgerNet], GroupWitness]) -> Mutation:
    def m(r: Record, net: LedgerNet) -> Record:
        return Record(r.body, (f(r.witnesses[0], net), *r.witnesses[1:]))
    return m


def _header(**kw: object) -> Mutation:
    """Change group 0's header without re-signing it."""
    def m(r: Record, net: LedgerNet) -> Record:
        slots = list(r.body.groups)
        h = slots[0].header
        assert h is not None
        slots[0] = dataclasses.replace(slots[0], header=dataclasses.replace(h, **kw))  # type: ignore[arg-type]
        return Record(dataclasses.replace(r.body, groups=tuple(slots)), r.witnesses)
    return m


def _resigned(**kw: object) -> Mutation:
    """Change group 0's header and re-sign it with its original signers (header mode)."""
    return lambda r, net: resign(r, net.by_peer, change=lambda h: (
        dataclasses.replace(h, **kw) if h.group == 0 else h))


def _outsider_endorsement(w: GroupWitness, net: LedgerNet) -> GroupWitness:
    e = w.endorsements[0]
    forged = Endorsement(seeded(b"outsider", 0).public_key, e.signature)
    return dataclasses.replace(w, endorsements=(*w.endorsements[1:], forged))


def _flip(e: Endorsement) -> Endorsement:
    return Endorsement(e.public_key, bytes([e.signature[0] ^ 1]) + e.signature[1:])


def _outsider() -> PeerId:
    return seeded(b"outsider", 1).peer_id


CASES: dict[str, tuple[Mutation, str]] = {
    "wrong federation": (_body(federation=bytes(32)), "another federation"),
    "wrong prev": (_body(prev=bytes(32)), "links to a chain this ledger does not hold"),
    "wrong beacon": (_body(beacon=bytes(32)), "beacon does not follow"),
    "wrong base state": (_body(base_state=bytes(32)), "base state"),
    "unsorted cohort": (lambda r, n: _body(cohort=r.body.cohort[::-1])(r, n), "sorted"),
    "extra cohort member": (lambda r, n: _body(cohort=tuple(sorted((*r.body.cohort, _outsider()))))(r, n),
                            "schedule"),
    "missing cohort member": (lambda r, n: _body(cohort=r.body.cohort[1:])(r, n), "schedule"),
    "a slot removed": (lambda r, n: _body(groups=r.body.groups[:-1])(r, n), "one slot per group"),
    "updated lie": (_body(updated=False), "updated must say"),
    "unsigned": (_wit(lambda w, n: dataclasses.replace(w, endorsements=())), "not signed by any"),
    "below quorum": (lambda r, n: _wit(lambda w, _: dataclasses.replace(w, endorsements=tuple(
        e for e in w.endorsements
        if e.signer == schedule_of(n.fed, r.body).groups[0].aggregators[0])))(r, n),
        "signatures, quorum"),
    "bad signature": (_wit(lambda w, n: dataclasses.replace(
        w, endorsements=(_flip(w.endorsements[0]), *w.endorsements[1:]))), "bad signature"),
    "repeated signer": (_wit(lambda w, n: dataclasses.replace(
        w, endorsements=(*w.endorsements, w.endorsements[0]))), "endorses twice"),
    "outsider signature": (_wit(_outsider_endorsement), "not a group member"),
    "tampered sum": (_header(sum_hash=bytes(32)), "bad signature"),
    "tampered header": (_header(total_samples=1), "bad signature"),
    "tampered included": (lambda r, n: _header(included=r.body.groups[0].header.included[1:])(r, n),  # type: ignore[union-attr]
                          "bad signature"),
    "no witness": (lambda r, n: Record(r.body, r.witnesses[1:]), "needs a header and endorsements"),
    "witness twice": (lambda r, n: Record(r.body, (r.witnesses[0], *r.witnesses)), "witnesses must be sorted"),
    "inflated weight (signed)": (_resigned(total_weight=3.5), "exceeds the members' ledger weight"),
    "proposer not an aggregator": (lambda r, n: _resigned(
        aggregator=next(p for p in schedule_of(n.fed, r.body).groups[0].members
                        if schedule_of(n.fed, r.body).groups[0].rank(p) is None))(r, n),
        "proposer is not an aggregator"),
    "bogus evidence": (lambda r, n: _body(evidence=(EquivocationProof(()),))(r, n), "two endorsed headers"),
    "forged abort": (lambda r, n: to_abort(r, 0, "binding: mismatch", n.by_peer, n.fed, signers=[
        next(p for p in schedule_of(n.fed, r.body).groups[0].members
             if schedule_of(n.fed, r.body).groups[0].rank(p) is None)]), "aggregator"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_records_are_refused(net: LedgerNet, case: str) -> None:
    mutate, why = CASES[case]
    recs = net.ledger().records
    led = Ledger(net.fed)
    for r in recs[:2]:
        led.append(r)
    before = (led.height, led.head)
    bad = mutate(recs[2], net)
    with pytest.raises(RemoteProtocolError, match=why) as info:
        led.append(bad, net.peers[5])
    assert info.value.peer == net.peers[5]
    assert (led.height, led.head) == before
    led.append(recs[2])  # the genuine record still goes in
    assert led.head == recs[2].hash


def test_wrong_round_or_link_is_out_of_sync_or_refused(net: LedgerNet) -> None:
    recs = net.ledger().records
    led = Ledger(net.fed)
    led.append(recs[0])
    with pytest.raises(OutOfSync):
        led.append(recs[2])  # a gap: sync first
    with pytest.raises(OutOfSync, match="links to a chain"):
        led.append(_body(round=1)(recs[2], net))  # another chain (or a lie): sync to decide
    first = Record(dataclasses.replace(recs[1].body, prev=genesis_hash(net.fed.id)), recs[1].witnesses)
    with pytest.raises(RemoteProtocolError, match="expected round 0"):
        verify_record(first, net.fed, Standing.initial(net.fed), None)
    zero = Record(dataclasses.replace(recs[1].body, round=0, prev=genesis_hash(net.fed.id)),
                  recs[1].witnesses)
    with pytest.raises(RemoteProtocolError, match="beacon is not the federation's initial"):
        verify_record(zero, net.fed, Standing.initial(net.fed), None)


def test_the_model_hash_is_attested_by_the_next_round(net: LedgerNet) -> None:
    """Rewriting record r's model hash (and re-linking r+1) breaks r+1's base state."""
    recs = list(net.ledger().records)
    fake = dataclasses.replace(recs[1].body, model_hash=bytes(32))
    h = record_hash(fake)
    nxt = dataclasses.replace(recs[2].body, prev=h,
                              beacon=next_beacon(fake.beacon, fake.model_hash, h))
    chain = [recs[0], Record(fake, recs[1].witnesses), Record(nxt, recs[2].witnesses)]
    with pytest.raises(RemoteProtocolError, match="base state"):
        verify_chain(chain, net.fed)


def test_round_without_results_must_keep_the_model(net: LedgerNet) -> None:
    recs = net.ledger().records
    empty = resign(recs[1], net.by_peer, drop=[0, 1])
    assert not empty.body.updated
    led = Ledger(net.fed)
    led.append(recs[0])
    with pytest.raises(RemoteProtocolError, match="keep the model"):
        led.append(empty)
    kept = Record(dataclasses.replace(empty.body, model_hash=recs[0].body.model_hash,
                                      strategy_hash=recs[0].body.strategy_hash), ())
    led.append(kept)
    assert led.height == 2


def test_cohort_below_the_selection_floor_is_refused(net: LedgerNet) -> None:
    strict = LedgerParams(floor=0.6)  # above the newcomer prior: nobody may be selected
    with pytest.raises(RemoteProtocolError, match="below the selection floor"):
        Ledger(net.fed, strict).append(net.ledger().records[0])
    lax = LedgerParams(floor=0.6, enforce_floor=False, enforce_weights=False)
    Ledger(net.fed, lax).append(net.ledger().records[0])


def test_permissioned_cohort_must_be_members() -> None:
    ids = [seeded(b"perm", i) for i in range(7)]
    fed = fed_for(**{"membership.policy": "permissioned",
                     "membership.members": [i.public_key.hex() for i in ids[:6]]})
    net = LedgerNet(fed, 7)
    net.ids[:] = ids
    net.peers[:] = [i.peer_id for i in ids]
    net.by_peer = {i.peer_id: i for i in ids}
    net.states = {p: next(iter(net.states.values())) for p in net.peers}
    net.targets = dict(zip(net.peers, net.targets.values(), strict=True))
    net.samples = dict(zip(net.peers, net.samples.values(), strict=True))
    net.ledgers = {p: Ledger(fed) for p in net.peers}
    net.run(1)
    rec = net.ledger().records[0]
    assert ids[6].peer_id not in rec.body.cohort
    bad = _body(cohort=tuple(sorted((*rec.body.cohort, ids[6].peer_id))))(rec, net)
    with pytest.raises(RemoteProtocolError, match="not admitted"):
        Ledger(fed).append(bad)


def test_aborts_must_be_signed_by_the_named_aggregators(net: LedgerNet) -> None:
    recs = net.ledger().records
    aborted = to_abort(recs[2], 1, "binding: sum of sketches differs", net.by_peer, net.fed)
    led = Ledger(net.fed)
    for r in recs[:2]:
        led.append(r)
    w = next(x for x in aborted.witnesses if x.index == 1)
    swapped = dataclasses.replace(w, abort_endorsements=w.abort_endorsements[::-1])
    wits = tuple(swapped if x.index == 1 else x for x in aborted.witnesses)
    if len(w.abort_endorsements) > 1:
        with pytest.raises(RemoteProtocolError, match="another aggregator"):
            led.append(Record(aborted.body, wits))
    led.append(aborted)
    assert led.standing.peers[schedule_of(net.fed, aborted.body).groups[1].members[0]].failed_groups == 1


def test_proof_with_a_wrong_signature_is_refused(net: LedgerNet) -> None:
    rec = net.ledger().records[0]
    h = rec.body.groups[0].header
    assert h is not None
    signer = net.by_peer[rec.witnesses[0].endorsements[0].signer]
    h2 = dataclasses.replace(h, total_samples=h.total_samples + 1)
    good = SignedHeader(h, endorse(signer, RESULT_DOMAIN, digest_of(h)))
    bad = SignedHeader(h2, _flip(endorse(signer, RESULT_DOMAIN, digest_of(h2))))
    led = Ledger(net.fed)
    with pytest.raises(RemoteProtocolError, match="bad signature"):
        led.add_evidence([EquivocationProof((good, bad))])
    assert np.isfinite(led.standing.score(signer.peer_id))


def _forge_exclusions(r: Record, net: LedgerNet, how: str) -> Record:
    """Re-sign (with the original signers) the header of the group that excluded the
    attacker, with exclusions its recorded scores do not support."""
    def change(h: GroupHeader) -> GroupHeader:
        if not h.excluded:
            return h
        if how == "no scores":
            return dataclasses.replace(h, detection=None)
        victim = h.included[0]  # an honest member, excluded on a made-up reason
        return dataclasses.replace(h, included=h.included[1:], excluded=tuple(sorted(
            (*h.excluded, (victim, "direction: cos -0.900")), key=lambda e: e[0].raw)))
    return resign(r, net.by_peer, change=change)


@pytest.mark.parametrize("how, why", [("honest excluded", "do not follow from the recorded"),
                                      ("no scores", "excluded without recorded scores")])
def test_exclusions_must_follow_from_the_recorded_scores(net: LedgerNet, how: str,
                                                         why: str) -> None:
    """A quorum can sign anything; the policy re-run on the recorded scores cannot be
    argued with (``p2pfl.federation.audit``)."""
    r0 = net.ledger().records[0]
    assert any(s.header is not None and s.header.excluded for s in r0.body.groups)
    honest = resign(r0, net.by_peer)
    Ledger(net.fed).append(honest)  # re-signing alone is fine
    with pytest.raises(RemoteProtocolError, match=why):
        Ledger(net.fed).append(_forge_exclusions(r0, net, how), net.peers[5])
