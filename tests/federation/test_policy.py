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
