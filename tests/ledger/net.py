"""Real federation rounds with a ledger on every peer (the reference wiring).

:class:`LedgerNet` reuses the synchronous federation harness and adds what a driver
must do with the ledger: weighted cohorts (``weight=ledger.weight``), aggregation
weights scaled by ``ledger.weight_factor`` (here through a backend wrapper, which is
what ``RoundMachine(weight_factor=...)`` does), and at ``RoundCompleted``:
``ledger.build`` → ``ledger.append`` → ``next_state(ledger.head)``.

``attackers`` are peers whose inputs the (test) scoring policy excludes: they send
nothing and every aggregator lists them as excluded with reason ``norm: ...``, with
the scores that reason follows from (the result audit re-runs the policy).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from typing import Any

from mpc.secagg import SketchScore
from p2pfl.federation import (
    AggregationContext,
    Contribution,
    Federation,
    GroupSumReady,
    PlaintextAggregation,
    RoundSchedule,
    schedule_round,
)
from p2pfl.federation.audit import detection_scores
from p2pfl.federation.messages import ABORT_DOMAIN, RESULT_DOMAIN, AbortBody, digest_of, endorse
from p2pfl.federation.policy import decide_exclusions
from p2pfl.identity import Identity
from p2pfl.ledger import (
    GroupSlot,
    GroupStatus,
    GroupWitness,
    Ledger,
    LedgerParams,
    Record,
    RecordBody,
    schedule_of,
)
from p2pfl.wire import PeerId
from tests.federation.harness import Net, Outcome, make_federation

__all__ = ["LedgerNet", "fed_for", "resign", "seeded", "to_abort"]


def fed_for(**over: Any) -> Federation:
    """An open plaintext federation with two groups for small n."""
    # one exclusion below the floor (the tests were written for excluded = 4.0)
    base: dict[str, Any] = {"cohort.group_size": 4, "cohort.min_group_size": 3,
                            "ledger.excluded": 4.0}
    base.update(over)
    return make_federation(**base)


class _Policy:
    """A backend plus a test exclusion policy (plaintext only) and the ledger weight."""

    def __init__(self, inner: Any, factor: float, attackers: frozenset[PeerId],
                 me: PeerId, ctx: AggregationContext) -> None:
        self._members = ctx.group.members
        self._detection = ctx.federation.detection
        self._inner = inner
        self._factor = factor
        self._attackers = attackers
        self._me = me

    def submit(self, c: Contribution, now: float) -> None:
        if self._me in self._attackers:
            return  # its (bad) update is "excluded": it never reaches a sum
        self._inner.submit(Contribution(c.update, c.weight * self._factor, c.num_samples), now)

    def _fix(self, ev: Any) -> Any:
        if isinstance(ev, GroupSumReady):
            bad = {p for p in ev.dropped if p in self._attackers}
            if not bad:
                return ev
            # scores as a sketch stage would open them: attackers at twice their bound
            members = self._members
            scores = {i: SketchScore(4 if p in bad else 1) for i, p in enumerate(members)
                      if p in bad or p in ev.included}
            bounds2 = dict.fromkeys(scores, 1.0)
            reasons = decide_exclusions(scores, bounds2=bounds2, ref_norm2=None,
                                        params=self._detection,
                                        name={i: members[i].short() for i in scores})
            ev = dataclasses.replace(
                ev, dropped=tuple(p for p in ev.dropped if p not in bad),
                excluded=tuple((members[i], reasons[i]) for i in sorted(reasons)),
                detection=detection_scores(scores, bounds2, None))
        return ev

    def next_event(self) -> Any:
        return self._fix(self._inner.next_event())

    def check_result(self, result: GroupSumReady) -> str | None:
        return self._inner.check_result(result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LedgerNet(Net):
    """N peers, each with its own :class:`Ledger`; see the module docstring."""

    def __init__(self, fed: Federation, n: int, params: LedgerParams | None = None, *,
                 attackers: Iterable[int] = (), backend: Any = PlaintextAggregation,
                 **kw: Any) -> None:
        super().__init__(fed, n, aggregation=self._backend, **kw)
        self.backend = backend
        self.params = params or fed.ledger
        self.ledgers = {p: Ledger(fed, self.params) for p in self.peers}
        self.attackers = frozenset(self.peers[i] for i in attackers)
        self.by_peer = {i.peer_id: i for i in self.ids}

    def _backend(self, ctx: AggregationContext) -> Any:
        factor = self.ledgers[ctx.me].weight_factor(ctx.me)
        return _Policy(self.backend(ctx), factor, self.attackers, ctx.me, ctx)

    def schedule(self, peer: PeerId, candidates: Iterable[PeerId] | None = None) -> RoundSchedule:
        st = self.states[peer]
        return schedule_round(self.fed, st.round, st.beacon, candidates or self.peers,
                              weight=self.ledgers[peer].weight)

    def step(self, **kw: Any) -> tuple[Outcome, dict[PeerId, Record]]:
        """One round; every completed peer builds and appends its record, then every
        ledger hears every other record (gossip)."""
        out = self.run_round(**kw)
        built: dict[PeerId, Record] = {}
        for p, ev in out.completed.items():
            rm = self.machines[p]
            rec = self.ledgers[p].build(ev, rm.schedule, rm.outcomes()[1])
            self.ledgers[p].append(rec)
            built[p] = rec
            self.states[p] = ev.next_state(self.ledgers[p].head)
        for p, rec in built.items():
            for q in built:
                if q != p:
                    self.ledgers[q].append(rec, p)
        return out, built

    def run(self, rounds: int, **kw: Any) -> list[dict[PeerId, Record]]:
        return [self.step(**kw)[1] for _ in range(rounds)]

    def ledger(self, i: int = 0) -> Ledger:
        return self.ledgers[self.peers[i]]


def resign(record: Record, ids: dict[PeerId, Identity], *, change: Any = None,
           drop: Iterable[int] = (), keep: int | None = None,
           fed: Federation | None = None) -> Record:
    """``record`` in header mode: every accepted header (after ``change(header)``)
    endorsed over its own digest by the original signers (with ``keep``: only that
    many, aggregators first, which needs ``fed``); slots in ``drop`` become MISSING."""
    sched = schedule_of(fed, record.body) if fed is not None else None
    wits = {w.index: w for w in record.witnesses}
    slots, out = [], []
    for s in record.body.groups:
        w = wits.get(s.index)
        if s.index in set(drop):
            slots.append(dataclasses.replace(s, status=GroupStatus.MISSING, header=None, aborts=()))
            continue
        if s.header is None or w is None:
            slots.append(s)
            if w is not None:
                out.append(w)
            continue
        h = change(s.header) if change is not None else s.header
        d = digest_of(h)
        signers = [e.signer for e in w.endorsements]
        if sched is not None:
            g = sched.groups[s.index]
            signers.sort(key=lambda p: (g.rank(p) is None, p.raw))
        signers = signers[:keep]
        ends = tuple(sorted((endorse(ids[p], RESULT_DOMAIN, d) for p in signers),
                            key=lambda e: e.public_key))
        slots.append(dataclasses.replace(s, header=h))
        out.append(GroupWitness(s.index, ends))
    body: RecordBody = dataclasses.replace(
        record.body, groups=tuple(slots),
        updated=any(s.status is GroupStatus.ACCEPTED for s in slots))
    return Record(body, tuple(out))


def seeded(tag: bytes, i: int) -> Identity:
    return Identity.from_seed(hashlib.blake2b(tag + bytes([i]), digest_size=32).digest())



def to_abort(record: Record, index: int, reason: str, ids: dict[PeerId, Identity],
             fed: Federation, *, signers: Iterable[PeerId] | None = None) -> Record:
    """``record`` with group ``index`` turned into an abort signed by ``signers`` (default:
    every aggregator of the group) with ``reason``; other slots keep their witnesses."""
    body = record.body
    group = schedule_of(fed, body).groups[index]
    who = sorted(signers if signers is not None else group.aggregators)
    ends = []
    for p in who:
        ab = AbortBody(body.federation, body.round, index, body.schedule, body.base_state, reason)
        ends.append(endorse(ids[p], ABORT_DOMAIN, digest_of(ab)))
    slots = list(body.groups)
    slots[index] = GroupSlot(index, GroupStatus.ABORTED, None, tuple((p, reason) for p in who))
    wits = [w for w in record.witnesses if w.index != index]
    wits.append(GroupWitness(index, abort_endorsements=tuple(ends)))
    new = dataclasses.replace(body, groups=tuple(slots),
                              updated=any(s.status is GroupStatus.ACCEPTED for s in slots))
    return Record(new, tuple(sorted(wits, key=lambda w: w.index)))
