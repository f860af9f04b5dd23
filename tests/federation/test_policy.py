"""The exclusion policy on exact scores computed in the clear from known sketches."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from p2pfl.federation import Detection
from p2pfl.federation.policy import cosine, decide_exclusions
from p2pfl.ledger import FREE_RIDER_CODES, VIOLATION_CODES, reason_code

ROWS = 256
P = Detection(enabled=True)


@dataclass(frozen=True)
class S:
    norm: int
    dot: int | None = None
    pairs: dict[int, int] = field(default_factory=dict)


def scores(z: list[np.ndarray], ref: np.ndarray | None) -> dict[int, S]:
    zi = [[int(x) for x in v] for v in z]
    out = {}
    for u, a in enumerate(zi):
        pairs = {v: sum(x * y for x, y in zip(a, b, strict=True)) for v, b in enumerate(zi) if v != u}
        dot = None if ref is None else sum(x * int(y) for x, y in zip(a, ref, strict=True))
        out[u] = S(sum(x * x for x in a), dot, pairs)
    return out


def honest(n: int, rng: np.random.Generator, base: np.ndarray, spread: float = 1.0) -> list[np.ndarray]:
    return [np.rint(base + spread * rng.standard_normal(ROWS) * 1000).astype(np.int64) for _ in range(n)]


def decide(sc: dict[int, S], ref: np.ndarray | None, bound: float = 1e14) -> dict[int, str]:
    rn = None if ref is None else int(sum(int(x) * int(x) for x in ref))
    return decide_exclusions(sc, bounds2=dict.fromkeys(sc, bound), ref_norm2=rn, params=P)


def test_honest_group_keeps_everyone() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(ROWS) * 1000
    z = honest(10, rng, base)
    assert decide(scores(z, None), None) == {}
    assert decide(scores(z, np.rint(base).astype(np.int64)), np.rint(base).astype(np.int64)) == {}


@pytest.mark.parametrize("with_ref", [False, True])
def test_sign_flips_are_excluded_for_direction(with_ref: bool) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal(ROWS) * 1000
    z = honest(10, rng, base)
    for u in (2, 5, 7):
        z[u] = -z[u]
    ref = np.rint(base).astype(np.int64) if with_ref else None
    out = decide(scores(z, ref), ref)
    assert set(out) == {2, 5, 7}
    assert all(reason_code(r) == "direction" for r in out.values())


def test_norm_zero_stale_clone_and_unopened() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal(ROWS) * 1000
    ref = np.rint(base).astype(np.int64)
    z = honest(10, rng, base, spread=3.0)
    bound = 4.0 * max(float(v @ v) for v in z)
    z[1] = z[1] * 30  # boosted
    z[2] = np.zeros(ROWS, dtype=np.int64)  # free rider
    z[3] = ref.copy()  # stale: the previous global update replayed
    z[4] = z[5] + 1  # clones
    sc = scores(z, ref)
    sc[9] = None  # type: ignore[assignment]
    out = decide_exclusions(sc, bounds2=dict.fromkeys(sc, bound), ref_norm2=int(ref @ ref),
                            params=P)
    codes = {u: reason_code(r) for u, r in out.items()}
    assert codes == {1: "norm", 2: "zero", 3: "stale", 4: "clone", 5: "clone", 9: "violation"}
    assert {"zero", "stale"} <= FREE_RIDER_CODES and "violation" in VIOLATION_CODES


def test_decisions_are_deterministic_and_order_free() -> None:
    rng = np.random.default_rng(3)
    z = honest(8, rng, rng.standard_normal(ROWS) * 500, spread=2.0)
    z[0] = -z[0]
    sc = scores(z, None)
    a = decide(sc, None)
    b = decide(dict(reversed(list(sc.items()))), None)
    assert a == b and 0 in a


def test_cosine_of_exact_integers() -> None:
    assert cosine(0, 0, 5) == 0.0
    assert cosine(6, 4, 9) == pytest.approx(1.0)
    big = 2**80
    assert cosine(-big, big, big) == pytest.approx(-1.0)


def _toward(ref: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A vector whose cosine with ``ref`` is ``cos`` (up to rounding), norm ~ ||ref||."""
    r = ref.astype(np.float64)
    e = rng.standard_normal(ROWS)
    e -= (e @ r) / (r @ r) * r
    v = cos * r / np.linalg.norm(r) + np.sqrt(1.0 - cos * cos) * e / np.linalg.norm(e)
    return np.rint(v * np.linalg.norm(r)).astype(np.int64)


def test_members_on_probation_must_point_with_the_reference() -> None:
    """Rule 7: a bound below the group's largest (a weight factor below the best) flips
    the sign of the direction threshold.  Member 3 (cos +0.02) passes the direction
    test; on probation it is excluded, while member 4 on probation with an honest
    alignment (+0.2) is kept."""
    rng = np.random.default_rng(5)
    ref = np.rint(rng.standard_normal(ROWS) * 1000).astype(np.int64)
    z = [_toward(ref, 0.2, rng) for _ in range(8)]
    z[3] = _toward(ref, 0.02, rng)
    sc = scores(z, ref)
    rn = int(ref @ ref)
    full = dict.fromkeys(sc, 1e14)
    assert decide_exclusions(sc, bounds2=full, ref_norm2=rn, params=P) == {}
    low = {**full, 3: 0.16e14, 4: 0.16e14}  # weight factor ~0.4
    out = decide_exclusions(sc, bounds2=low, ref_norm2=rn, params=P)
    assert set(out) == {3} and reason_code(out[3]) == "probation"
    c3 = cosine(sc[3].dot or 0, sc[3].norm, rn)
    assert 0.0 < c3 < 0.05 and "threshold +0.050, bound 0.40 of the group's largest" in out[3]
    # everyone equally weak (e.g. newcomers of an open federation): nobody is on probation
    assert decide_exclusions(sc, bounds2=dict.fromkeys(sc, 0.16e14), ref_norm2=rn, params=P) == {}
    # without a reference there is nothing to point with: the rule is off
    assert decide_exclusions(scores(z, None), bounds2=low, ref_norm2=None, params=P) == {}


def test_a_group_that_agrees_with_the_reference_excludes_any_member_against_it() -> None:
    """Rule 6 with ``direction_agree``: median cos >= 0.3 makes the threshold 0, so a
    member at cos -0.03 (inside the -0.1 margin of a less aligned group) is excluded."""
    rng = np.random.default_rng(6)
    ref = np.rint(rng.standard_normal(ROWS) * 1000).astype(np.int64)
    rn = int(ref @ ref)
    bounds = dict.fromkeys(range(8), 1e14)
    for agree, median in ((True, 0.5), (False, 0.2)):
        z = [_toward(ref, median, rng) for _ in range(8)]
        z[2] = _toward(ref, -0.03, rng)
        sc = scores(z, ref)
        c2 = cosine(sc[2].dot or 0, sc[2].norm, rn)
        assert -0.05 < c2 < 0.0
        out = decide_exclusions(sc, bounds2=bounds, ref_norm2=rn, params=P)
        assert out == ({2: out[2]} if agree else {})
        if agree:
            assert reason_code(out[2]) == "direction" and "threshold +0.000" in out[2]
    off = Detection(enabled=True, direction_agree=1.0)
    z = [_toward(ref, 0.5, rng) for _ in range(8)]
    z[2] = _toward(ref, -0.03, rng)
    assert decide_exclusions(scores(z, ref), bounds2=bounds, ref_norm2=rn, params=off) == {}
