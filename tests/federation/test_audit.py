"""The exclusion audit: a result's exclusions must follow from the scores it records.

Unit tests of :mod:`p2pfl.federation.audit` on hand-made scores, then whole secure
rounds with the sketch stage: honest results carry their scores and pass every
peer's audit; a quorum that re-signs a body excluding an honest member is refused by
every peer, naming the sender.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from mpc.secagg import SketchScore
from p2pfl.federation import SignedGroupResult
from p2pfl.federation.audit import audit_exclusions, detection_scores, scores_of
from p2pfl.federation.config import Detection
from p2pfl.federation.messages import (
    RESULT_DOMAIN,
    DetectionScores,
    MemberScores,
    ResultBody,
    digest_of,
    endorse,
    int_from_wire,
    int_to_wire,
)
from p2pfl.federation.policy import decide_exclusions
from p2pfl.federation.secure import SecureAggregation
from p2pfl.wire import PeerId, decode, encode

from .harness import Net
from .test_secure import N, groups, secure_fed

PARAMS = Detection(enabled=True)
MEMBERS = tuple(sorted(PeerId(bytes([i]) * 20) for i in range(1, 6)))
BIG = 3 ** 90  # scores are exact integers far beyond 64 bits


def _scores() -> dict[int, SketchScore | None]:
    """Party 3 has 4x the norm of the others (excluded: ``norm``), party 4 sent no
    sketch (excluded: ``violation``); the others agree pairwise."""
    pairs = {(0, 1): BIG // 2, (0, 2): BIG // 3, (1, 2): BIG // 4, (0, 3): -5, (1, 3): 7}
    def partners(u: int) -> dict[int, int]:
        return {b if a == u else a: v for (a, b), v in pairs.items() if u in (a, b)}
    s: dict[int, SketchScore | None] = {
        u: SketchScore(BIG * (16 if u == 3 else 1), None, partners(u)) for u in range(4)}
    s[4] = None
    return s


def _body(scores: dict[int, SketchScore | None], bounds2: dict[int, float],
          excluded: dict[int, str] | None = None, *, record: bool = True) -> ResultBody:
    reasons = excluded if excluded is not None else decide_exclusions(
        scores, bounds2=bounds2, ref_norm2=None, params=PARAMS,
        name={u: MEMBERS[u].short() for u in scores})
    z = bytes(32)
    return ResultBody(z, 0, 0, z, z, tuple(MEMBERS[u] for u in sorted(scores) if u not in reasons),
                      (), tuple((MEMBERS[u], reasons[u]) for u in sorted(reasons)),
                      np.zeros(1), 1.0, 1,
                      detection_scores(scores, bounds2, None) if record else None)


BOUNDS = dict.fromkeys(range(5), float(2 * BIG))


@pytest.mark.parametrize("v", [0, 1, -1, 127, 128, -128, -129, BIG, -BIG, 2**158, -(2**159)])
def test_integers_round_trip_the_wire(v: int) -> None:
    assert int_from_wire(int_to_wire(v)) == v


def test_integers_beyond_the_wire_bound_are_refused() -> None:
    with pytest.raises(OverflowError):
        int_to_wire(2**159)


def test_recorded_scores_round_trip_and_the_policy_output_passes() -> None:
    scores = _scores()
    body = _body(scores, BOUNDS)
    assert [p for p, _ in body.excluded] == [MEMBERS[3], MEMBERS[4]]
    back = decode(encode(body))
    assert back == body
    s, b, ref = scores_of(back.detection)
    assert s == scores and b == BOUNDS and ref is None
    assert audit_exclusions(back, MEMBERS, PARAMS) is None


@pytest.mark.parametrize("forge", ["extra", "spared", "reason", "unscored", "no-scores"])
def test_exclusions_that_do_not_follow_from_the_scores_are_refused(forge: str) -> None:
    scores, honest = _scores(), _body(_scores(), BOUNDS)
    reasons = dict(honest.excluded)
    why = {MEMBERS.index(p): r for p, r in reasons.items()}
    if forge == "extra":  # an honest member excluded on a made-up reason
        body = _body(scores, BOUNDS, {**why, 0: "direction: cos -0.900"})
    elif forge == "spared":  # the boosted update kept
        body = _body(scores, BOUNDS, {4: why[4]})
    elif forge == "reason":
        body = _body(scores, BOUNDS, {**why, 3: "norm: ||z|| is 9.99x the bound"})
    elif forge == "unscored":  # a scored survivor is missing from the sets
        body = dataclasses.replace(honest, included=honest.included[1:])
    else:
        body = _body(scores, BOUNDS, record=False)
    problem = audit_exclusions(body, MEMBERS, PARAMS)
    assert problem is not None and ("scores" in problem or "scored" in problem)


def test_a_result_without_exclusions_needs_no_scores() -> None:
    scores = {u: SketchScore(BIG) for u in range(3)}
    assert audit_exclusions(_body(scores, BOUNDS, record=False), MEMBERS, PARAMS) is None


@pytest.mark.parametrize("bad", [
    DetectionScores((MemberScores(1, 1.0, b"\x01"), MemberScores(0, 1.0, b"\x01"))),
    DetectionScores((MemberScores(0, 1.0, b"\x01"), MemberScores(0, 1.0, b"\x01"))),
    DetectionScores((MemberScores(0, 1.0, b"\x01"), MemberScores(1, 1.0)), ((0, 1, b"\x01"),)),
    DetectionScores((MemberScores(0, 1.0, b"\x01"), MemberScores(1, 1.0, b"\x01")),
                    ((1, 0, b"\x01"),)),
    DetectionScores((MemberScores(0, 1.0, b"\x01"), MemberScores(1, 1.0, b"\x01")),
                    ((0, 1, b"\x01"), (0, 1, b"\x02"))),
    DetectionScores((MemberScores(0, 1.0, b""),)),
], ids=["unsorted", "repeated", "pair-unscored", "pair-order", "pair-twice", "empty-int"])
def test_inconsistent_score_records_are_refused(bad: DetectionScores) -> None:
    with pytest.raises(ValueError):
        scores_of(bad)


# ---------------------------------------------------------------------- whole rounds


def _detecting_fed() -> Any:
    return secure_fed(**{"detection.enabled": True, "detection.rows": 256})


def test_secure_results_carry_the_scores_their_exclusions_follow_from() -> None:
    fed = _detecting_fed()
    net = Net(fed, N, aggregation=SecureAggregation)
    gs = groups(net)
    out = net.run_round()
    assert len(out.completed) == N and len(out.hashes()) == 1
    seen = [m for m in out.broadcasts if isinstance(m, SignedGroupResult)]
    assert seen
    for msg in seen:
        det = msg.body.detection
        assert det is not None and len(det.members) == len(msg.body.included) + len(
            msg.body.excluded)
        g = gs[msg.body.group]
        assert audit_exclusions(msg.body, g.members, fed.detection) is None


def test_a_quorum_that_excludes_an_honest_member_is_refused_by_every_peer() -> None:
    """The whole group colludes (every member re-signs a body that moves an honest
    member from included to excluded, scores unchanged): the sets and signatures are
    valid, only the audit can tell -- and every receiving peer refuses it."""
    fed = _detecting_fed()
    net = Net(fed, N, aggregation=SecureAggregation)
    g0, _ = groups(net)
    primary = g0.aggregators[0]
    forged: dict[str, Any] = {}

    def intercept(sender: PeerId, to: PeerId | None, msg: Any) -> Any:
        if sender == primary and isinstance(msg, SignedGroupResult) and msg.body.group == 0:
            b = msg.body
            victim = b.included[0]
            body = dataclasses.replace(
                b, included=b.included[1:],
                excluded=tuple(sorted((*b.excluded, (victim, "direction: cos -0.900")),
                                      key=lambda e: e[0].raw)))
            ends = tuple(sorted((endorse(net.identity(p), RESULT_DOMAIN, digest_of(body))
                                 for p in g0.members), key=lambda e: e.public_key))
            forged["body"] = body
            return SignedGroupResult(body, ends)
        return msg

    out = net.run_round(intercept=intercept)
    assert forged, "the primary never published"
    refused = {by for by, sender, why in out.rejected
               if sender == primary and "do not follow from the recorded scores" in why}
    assert refused >= set(net.peers) - set(g0.members)
    for c in out.completed.values():
        assert c.record.groups[0].digest != digest_of(forged["body"])
