"""Synthetic record bodies (no signatures) for the pure reputation function.

:meth:`Standing.apply` trusts a verified body, so its properties can be explored on
bodies built directly: a cohort and a beacon (the groups follow from them), and per
group an outcome with roles for its members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from p2pfl.federation import Endorsement, Federation
from p2pfl.ledger import (
    EquivocationProof,
    GroupHeader,
    GroupSlot,
    GroupStatus,
    RecordBody,
    SignedHeader,
    schedule_of,
)
from p2pfl.wire import PeerId

from .net import fed_for, seeded

Z = bytes(32)
FED: Federation = fed_for()
IDS = [seeded(b"rep", i) for i in range(10)]
PEERS = [i.peer_id for i in IDS]
ROLES = ("in", "drop", "excl", "viol", "zero")
REASONS = {"excl": "norm: above the bound", "viol": "violation: bad share", "zero": "zero: update"}
OUTCOMES = ("accepted", "binding", "binding-one", "aborted", "missing")


@dataclass
class GroupPlan:
    outcome: str = "accepted"
    roles: dict[PeerId, str] = field(default_factory=dict)  # default "in"
    samples: int = 100


def fake_proof(round: int, group: int, signer: int) -> EquivocationProof:
    """An (unsigned) proof shape: apply() reads only who and where."""
    h = GroupHeader(FED.id, round, group, Z, Z, (), (), (), Z, 0.0, 0)
    e = Endorsement(IDS[signer].public_key, bytes(64))
    return EquivocationProof((SignedHeader(h, e), SignedHeader(h, e)))


def body(round: int, cohort: Sequence[PeerId], plans: Sequence[GroupPlan] = (), *,
         beacon: bytes = Z, evidence: Sequence[EquivocationProof] = (),
         fed: Federation = FED) -> RecordBody:
    """A body of ``round``; ``plans[i]`` says how group i ended (default: accepted,
    everyone included)."""
    tmp = RecordBody(fed.id, round, Z, beacon, Z, Z, tuple(sorted(set(cohort))), (), Z, Z, False)
    sched = schedule_of(fed, tmp)
    slots = []
    for g in sched.groups:
        plan = plans[g.index] if g.index < len(plans) else GroupPlan()
        if plan.outcome == "accepted":
            role = {p: plan.roles.get(p, "in") for p in g.members}
            inc = tuple(p for p in g.members if role[p] == "in")
            drop = tuple(p for p in g.members if role[p] == "drop")
            excl = tuple((p, REASONS[role[p]]) for p in g.members if role[p] in REASONS)
            h = GroupHeader(fed.id, round, g.index, sched.digest, Z, inc, drop, excl, Z, 0.0,
                            plan.samples)
            slots.append(GroupSlot(g.index, GroupStatus.ACCEPTED, h))
        elif plan.outcome == "missing":
            slots.append(GroupSlot(g.index, GroupStatus.MISSING))
        else:
            aggs = sorted(g.aggregators)[:1] if plan.outcome == "binding-one" else sorted(g.aggregators)
            reason = "timeout: too few inputs" if plan.outcome == "aborted" else "binding: mismatch"
            slots.append(GroupSlot(g.index, GroupStatus.ABORTED, None, tuple((a, reason) for a in aggs)))
    return RecordBody(fed.id, round, Z, beacon, sched.digest, Z, tuple(sorted(sched.cohort)),
                      tuple(slots), Z, Z, any(s.status is GroupStatus.ACCEPTED for s in slots),
                      tuple(evidence))


@st.composite
def chains(draw: st.DrawFn, max_rounds: int = 10) -> list[RecordBody]:
    """Random chains over 10 peers: cohorts, outcomes, roles, equivocation proofs."""
    out: list[RecordBody] = []
    for r in range(draw(st.integers(1, max_rounds))):
        members = draw(st.lists(st.sampled_from(PEERS), max_size=10, unique=True))
        beacon = draw(st.binary(min_size=32, max_size=32))
        plans = [
            GroupPlan(draw(st.sampled_from(OUTCOMES)),
                      {p: draw(st.sampled_from(ROLES)) for p in members},
                      draw(st.integers(0, 3000)))
            for _ in range(4)
        ]
        proofs = [fake_proof(draw(st.integers(max(0, r - 3), r)), draw(st.integers(0, 2)),
                             draw(st.integers(0, 9)))
                  for _ in range(draw(st.integers(0, 2)))]
        out.append(body(r, members, plans, beacon=beacon, evidence=proofs))
    return out
