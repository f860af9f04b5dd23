"""Auditing a group result's exclusions: re-run the policy on its recorded scores.

Theory of operation
-------------------
A group with a sketch stage excludes members by :func:`~.policy.decide_exclusions`,
a deterministic function of the scores its validators opened and of public inputs.
Its aggregators put those scores in the signed result body
(:class:`~.messages.DetectionScores`: per survivor ||z||^2, <z, z_ref> and its norm
bound, the opened pairwise products, ||z_ref||^2), so every peer that checks a result
-- and every ledger verifier, later -- re-runs the policy and refuses a result whose
exclusions do not follow from its scores:

* the scored members are exactly the survivors (``included`` plus ``excluded``), each
  once, in party order; pairs name two scored members, ``u < v``, once;
* ``excluded`` equals the policy's output on the recorded scores -- the same members,
  in party order, with the same reasons (reasons are formatted deterministically);
* a result without scores excludes nobody.

What this does *not* prove: that the scores are the true scores of the members'
sketches.  They are attested by the aggregator that proposed the body and by the
members' quorum (which signed the survivor and exclusion sets it was announced); a
replica aggregator refuses to endorse scores that differ from those it opened itself.
A recorded ``bound2`` is the proposer's statement of the member's norm bound; it is
not recomputed here (the member's weight factor comes from the ledger).

Checks are memoized (bounded) on the full content they read: every peer of a process
checks the same result bodies, and re-running the power iteration of round 0 for each
would cost more than the round itself in a thousand-peer simulation.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping

from mpc.secagg import SketchScore
from p2pfl.wire import PeerId

from .config import Detection
from .messages import DetectionScores, MemberScores, ResultBody, int_from_wire, int_to_wire
from .policy import decide_exclusions

__all__ = ["audit_exclusions", "detection_scores", "scores_of"]


def detection_scores(scores: Mapping[int, SketchScore | None], bounds2: Mapping[int, float],
                     ref_norm2: int | None) -> DetectionScores:
    """The wire form of what the policy saw (``scores``: survivor party -> opened scores
    or None; ``bounds2``: party -> norm bound)."""
    members = []
    pairs: dict[tuple[int, int], int] = {}
    for u in sorted(scores):
        s = scores[u]
        if s is None:
            members.append(MemberScores(u, float(bounds2[u])))
            continue
        members.append(MemberScores(u, float(bounds2[u]), int_to_wire(s.norm),
                                    None if s.dot is None else int_to_wire(s.dot)))
        for v, p in s.pairs.items():
            if v != u and scores.get(v) is not None:
                pairs.setdefault((min(u, v), max(u, v)), p)
    return DetectionScores(
        tuple(members), tuple((u, v, int_to_wire(p)) for (u, v), p in sorted(pairs.items())),
        None if ref_norm2 is None else int_to_wire(ref_norm2))


def scores_of(det: DetectionScores) -> tuple[dict[int, SketchScore | None], dict[int, float],
                                             int | None]:
    """(scores, bounds2, ref_norm2) as :func:`~.policy.decide_exclusions` takes them.

    Raises :class:`ValueError` for an inconsistent record (unsorted or repeated
    parties, a pair of unknown or unscored members, an empty integer).
    """
    parties = [m.party for m in det.members]
    if not all(a < b for a, b in itertools.pairwise(parties)):
        raise ValueError("scored members must be sorted and distinct")
    by_party = {m.party: m for m in det.members}
    partners: dict[int, dict[int, int]] = {u: {} for u in parties}
    for u, v, raw in det.pairs:
        mu, mv = by_party.get(u), by_party.get(v)
        if mu is None or mv is None or mu.norm is None or mv.norm is None or not u < v:
            raise ValueError(f"pair ({u}, {v}) does not name two scored members, u < v")
        if v in partners[u]:
            raise ValueError(f"pair ({u}, {v}) listed twice")
        partners[u][v] = partners[v][u] = _int(raw)
    scores: dict[int, SketchScore | None] = {}
    for m in det.members:
        scores[m.party] = None if m.norm is None else SketchScore(
            _int(m.norm), None if m.dot is None else _int(m.dot), partners[m.party])
    ref = None if det.ref_norm2 is None else _int(det.ref_norm2)
    return scores, {m.party: m.bound2 for m in det.members}, ref


def _int(raw: bytes) -> int:
    if not raw:
        raise ValueError("empty integer")
    return int_from_wire(raw)


def audit_exclusions(body: ResultBody, members: tuple[PeerId, ...], params: Detection) -> str | None:
    """None when ``body``'s exclusions follow from its recorded scores under ``params``
    (``members``: the group's members in party order), else what is wrong."""
    return _audit(body.detection, tuple(body.included), tuple(body.excluded), members, params)


@functools.lru_cache(maxsize=4096)
def _audit(det: DetectionScores | None, included: tuple[PeerId, ...],
           excluded: tuple[tuple[PeerId, str], ...], members: tuple[PeerId, ...],
           params: Detection) -> str | None:
    if det is None:
        return "members excluded without recorded scores" if excluded else None
    try:
        scores, bounds2, ref_norm2 = scores_of(det)
    except ValueError as e:
        return f"recorded scores: {e}"
    party = {p: i for i, p in enumerate(members)}
    survivors = {party.get(p, -1) for p in (*included, *(p for p, _ in excluded))}
    if survivors != set(scores):
        return "the scored members are not the included and excluded members"
    reasons = decide_exclusions(scores, bounds2=bounds2, ref_norm2=ref_norm2, params=params,
                                name={u: members[u].short() for u in scores})
    expected = tuple((members[u], reasons[u][:256]) for u in sorted(reasons))
    if expected != excluded:
        return (f"exclusions do not follow from the recorded scores: the policy excludes "
                f"{[p.short() for p, _ in expected]}, the result {[p.short() for p, _ in excluded]}")
    return None
