"""The exclusion policy of the sketch stage: opened scores -> excluded members.

Theory of operation
-------------------
In a group with a sketch stage (``[detection] enabled``), the validators open, for
every survivor u, only scalars of its sketch ``z_u = S · q_u`` (``q_u`` its quantized,
weighted update, ``S`` the sparse ±1 sketch map drawn after the commitment deadline):

* ``norm``  = ||z_u||^2,
* ``dot``   = <z_u, z_ref> with the public reference ``z_ref = S · Q(ref)``, where
  ``ref`` is the global model's move over the last ``reference_rounds`` rounds (none in
  round 0),
* ``pairs`` = <z_u, z_v> for the other survivors v.

:func:`decide_exclusions` turns them into exclusions, deterministically (every
aggregator of the group must announce the same set, or the members abort): only exact
integer inputs, IEEE ``+ - * / sqrt`` in a fixed order, and sorted iteration.  Rules,
in order, each applied to the members the earlier ones left:

1. ``violation:`` -- the member's scores could not be opened (it sent no sketch, or
   inconsistent shares);
2. ``zero:`` -- ||z_u|| below ``zero_fraction`` of its bound: a zero (free-riding)
   update;
3. ``norm:`` -- ||z_u||^2 above its bound ``bounds2[u]``: the image under S of any
   update the federation's clipping allows, with ``norm_slack`` for the sketch's
   distortion (a boosted / model-replacement update);
4. ``stale:`` -- cos(z_u, z_ref) above ``stale_cos``: the previous global update
   replayed (a free rider);
5. ``clone:`` -- cos(z_u, z_v) above ``clone_cos`` for another remaining member v:
   both are excluded (Sybil identities submitting near-identical updates); honest
   non-IID updates measured on digits stay below 0.83;
6. ``direction:`` -- with a reference, c_u = cos(z_u, z_ref) below
   ``-max(direction_min, direction_ratio * m)``, ``m`` the median of c over the
   remaining members (clamped at 0): the threshold follows the group's own agreement
   with the reference.  When the group agrees with the reference (``m >=
   direction_agree``, 0.3: early rounds), the threshold is 0: pointing against it is
   enough (measured on digits, 30 peers, Dirichlet 0.5: honest members of such groups
   had c < 0 in 2 of 12 720 peer-rounds, min -0.026; it catches a reversed update
   that a poisoned first step of the reference brought close to 0).  The reference is
   the global model's move over the last ``reference_rounds`` rounds (5): measured on
   digits, honest updates have cos 0.3-0.7 with it early and ~0.1 late, below 0 in
   0.1 % of peer-rounds (with the single previous step as reference: 5.9 %, down to
   -0.2, and one poisoned step flips it).  Without a reference (round 0), the group is
   split in two by the signs of the top eigenvector of its cosine matrix (honest
   updates agree with each other, reversed ones with each other and against the
   honest); members of the smaller side whose cosine with the sum of the larger side's
   sketches is below ``-max(group_direction_min, direction_ratio * m)`` are excluded
   (``m``: the larger side's median).  A tie excludes nobody.
7. ``probation:`` -- with a reference, a member whose norm bound ``bounds2[u]`` is
   below the largest bound of its group must point *with* the reference: it is
   excluded unless ``c_u >= +direction_min``, rule 6's late-training margin with the
   sign flipped (not the median-scaled one: early in training an honest peer excluded
   once in round 0 is on probation in round 1, and a threshold of 0.25 x median, 0.13
   there, excluded two such peers at cos +0.11 and +0.12 and so put them below the
   floor; measured on all logged runs, +direction_min excluded 3 of 425 honest
   peer-rounds on probation and 330 of 438 malicious ones, the scaled margin 5 and
   333).  The bound grows with the member's public weight
   factor (the ledger's, ``min(1, score / full_weight_at)``), so a smaller bound means
   a weaker standing than the group's best: a peer excluded or charged recently, or a
   capped newcomer among established peers.  Reading it from ``bounds2`` keeps the
   rule a function of what every aggregator and every auditor
   (:mod:`p2pfl.federation.audit`) already has.  Why: a peer excluded twice falls
   below the selection floor, and forgetting lets it back later with a weight factor
   of about 0.4; a reversed update late in training has cos ~0 with the reference
   (honest ones ~+0.1), inside rule 6's margin, and one that slips through gains
   weight, is included at full weight and then pulls the reference itself (measured
   on digits, 30 peers, 30 % sign flips, before this rule: two attackers readmitted at
   round 18 with cos +0.003 and +0.005 were included for the rest of the run, after
   which 20 honest peer-rounds failed rule 6).  Honest peers rarely face the test:
   with a record of accepted rounds their weight factor is 1.

What this does not catch (docs/threat-model.md): updates that stay inside benign
statistics -- a small norm, a positive alignment, no clone -- such as ALIE-style or
constrained backdoor updates; their influence is bounded by clipping and weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from .config import Detection

__all__ = ["Scores", "cosine", "decide_exclusions"]


class Scores(Protocol):
    """The opened scores of one member (``mpc.secagg.SketchScore``)."""

    @property
    def norm(self) -> int: ...

    @property
    def dot(self) -> int | None: ...

    @property
    def pairs(self) -> Mapping[int, int]: ...


def cosine(dot: int, norm_a: int, norm_b: int) -> float:
    """``dot / sqrt(norm_a * norm_b)`` for exact integer scores (0 for a zero vector)."""
    if norm_a <= 0 or norm_b <= 0:
        return 0.0
    return float(dot) / (math.sqrt(float(norm_a)) * math.sqrt(float(norm_b)))


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[(len(s) - 1) // 2]


def decide_exclusions(
    scores: Mapping[int, Scores | None],
    *,
    bounds2: Mapping[int, float],
    ref_norm2: int | None,
    params: Detection,
    name: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Members to exclude, each with its reason (``code: detail``); see the module
    docstring.  ``bounds2[u]`` is the largest ||z_u||^2 the federation allows member u;
    ``ref_norm2`` is ||z_ref||^2 (None without a reference); ``name`` labels members in
    reasons (default: their index)."""
    label = (lambda u: name[u]) if name is not None else str
    out: dict[int, str] = {}
    live: dict[int, Scores] = {}
    for u in sorted(scores):
        s = scores[u]
        if s is None:
            out[u] = "violation: sketch scores could not be opened"
        else:
            live[u] = s
    for u in sorted(live):
        norm, bound2 = live[u].norm, float(bounds2[u])
        ratio = math.sqrt(float(norm) / bound2) if bound2 > 0 else math.inf
        if ratio <= params.zero_fraction:
            out[u] = f"zero: ||z|| is {ratio:.2e} of the bound"
        elif float(norm) > bound2:
            out[u] = f"norm: ||z|| is {ratio:.2f}x the bound"
    has_ref = ref_norm2 is not None and ref_norm2 > 0
    if has_ref:
        assert ref_norm2 is not None
        for u in sorted(live):
            d = live[u].dot
            if u not in out and d is not None:
                c = cosine(d, live[u].norm, ref_norm2)
                if c > params.stale_cos:
                    out[u] = f"stale: cos {c:.4f} with the reference (a replayed global update)"
    active = [u for u in sorted(live) if u not in out]
    clones: dict[int, str] = {}
    for i, u in enumerate(active):
        for v in active[i + 1:]:
            p = live[u].pairs.get(v)
            if p is None:
                continue
            c = cosine(p, live[u].norm, live[v].norm)
            if c > params.clone_cos:
                clones.setdefault(u, f"clone: cos {c:.4f} with {label(v)}")
                clones.setdefault(v, f"clone: cos {c:.4f} with {label(u)}")
    out.update(clones)
    active = [u for u in active if u not in clones]
    what = "the reference" if has_ref else "the rest of the group"
    if has_ref:
        assert ref_norm2 is not None
        cos = {u: cosine(live[u].dot or 0, live[u].norm, ref_norm2) for u in active
               if live[u].dot is not None}
        if cos:
            m = max(0.0, _median(list(cos.values())))
            theta = max(params.direction_min, params.direction_ratio * m)
            low = 0.0 if m >= params.direction_agree else -theta
            top = max(float(bounds2[u]) for u in scores)
            for u in sorted(cos):
                if cos[u] < low:
                    out[u] = f"direction: cos {cos[u]:+.3f} with {what} (threshold {low:+.3f})"
                elif float(bounds2[u]) < top and cos[u] < params.direction_min:
                    w = math.sqrt(float(bounds2[u]) / top)
                    out[u] = (f"probation: cos {cos[u]:+.3f} with {what} (threshold "
                              f"{params.direction_min:+.3f}, bound {w:.2f} of the group's largest)")
        return out
    # no reference (round 0): split the group in two by the sign pattern of the top
    # eigenvector of its cosine matrix (honest updates agree with each other, reversed
    # ones with each other and against the honest), then judge the minority side
    # against the sum of the majority side's sketches
    if len(active) < 3:
        return out
    side = _split(live, active)
    plus = [u for u in active if side[u]]
    minus = [u for u in active if not side[u]]
    if len(plus) == len(minus) or not plus or not minus:
        return out
    major, minor = (plus, minus) if len(plus) > len(minus) else (minus, plus)
    cos = {u: _cosine_with_sum(live, major, u) for u in active}
    theta = _threshold({u: cos[u] for u in major}, params.group_direction_min, params)
    for u in minor:
        if cos[u] < -theta:
            out[u] = f"direction: cos {cos[u]:+.3f} with the rest of the group (threshold {-theta:+.3f})"
    return out


def _split(live: Mapping[int, Scores], active: list[int]) -> dict[int, bool]:
    """Sign of each member in the top eigenvector of the group's cosine matrix, by power
    iteration in a fixed order (bit-identical on every IEEE machine)."""
    c = [[1.0 if u == v else cosine(live[u].pairs.get(v, 0), live[u].norm, live[v].norm)
          for v in active] for u in active]
    n = len(active)
    x = [1.0 + 1e-3 * i for i in range(n)]
    for _ in range(100):
        y = [sum(c[i][j] * x[j] for j in range(n)) for i in range(n)]
        norm = math.sqrt(sum(v * v for v in y))
        if norm == 0.0:
            break
        x = [v / norm for v in y]
    return {u: x[i] >= 0.0 for i, u in enumerate(active)}


def _cosine_with_sum(live: Mapping[int, Scores], group: list[int], u: int) -> float:
    """cos(z_u, sum of z_v over ``group`` without u), from exact scores."""
    su = live[u]
    others = [v for v in group if v != u]
    dot = sum(su.pairs.get(v, 0) for v in others)
    total = 0
    for i, a in enumerate(others):
        total += live[a].norm
        for b in others[i + 1:]:
            total += 2 * live[a].pairs.get(b, 0)
    return cosine(dot, su.norm, total)


def _threshold(cos: Mapping[int, float], floor: float, params: Detection) -> float:
    m = max(0.0, _median(list(cos.values())))
    return max(floor, params.direction_ratio * m)
