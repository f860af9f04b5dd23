"""The aggregator's sketch stage: relay sketch shares, open scores and the sketch sum.

Scoring (stage 3): every validator returns, per owner it holds a sketch of, its
shares of ||z_u||^2 (and <z_u, ref>) modulo each prime of ``SketchConfig.moduli``,
and with ``pairwise`` its shares of <z_u, z_v> per pair. Each residue is opened
with the threshold of its degree (``2 t - 1`` for products, ``t`` for linear
scores), scalars with the same holders decoded together so one decode names a
lying validator; the residues of one value are recombined by the Chinese remainder
theorem into an exact signed integer (:class:`SketchScore`). The exclusion hook then
sees the scores and the sketch seed. At unmask, the members' shares of the included
members' sketch sum are opened per prime and recombined the same way
(``OutputReady.sketch_sum``, for the binding check).

A mixin of :class:`~mpc.secagg._aggregator.Aggregator`, whose state it shares: split
out because it is the one part of the aggregator that does residue arithmetic
(threshold openings modulo several primes, CRT), and it exists only with a sketch
stage; the rest of the aggregator collects, relays and unmasks.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from numpy.typing import NDArray

from . import _crypto as cx
from ._aggregator_state import AggState
from ._events import EvidenceKind, SketchScore
from ._machine import Machine, RemoteError
from ._messages import ScoreShares, SketchRelay, SketchShares, UnmaskShares
from ._opening import exact, exact_array, open_many, open_mod

__all__ = ["SketchStage"]

K = TypeVar("K", bound=Hashable)
A = AggState


class SketchStage(Machine[AggState]):
    """Stage 3 (sketch shares in, scores out) and the sketch sum at unmask; mixed into
    :class:`~mpc.secagg._aggregator.Aggregator`, whose state it shares."""

    u3: frozenset[int] | None
    _sketch_cts: dict[int, dict[int, bytes]]
    # validator -> (owner -> score shares, (u, v) -> pair shares)
    _score_shares: dict[
        int, tuple[dict[int, tuple[int, ...]], dict[tuple[int, int], tuple[int, ...]]]
    ]
    _unmask: dict[int, UnmaskShares]

    if TYPE_CHECKING:  # the aggregator's, used here

        def _close(self) -> None: ...
        def _announce_sets(self, scores: dict[int, SketchScore | None]) -> None: ...

    def _on_sketch_shares(self, sender: int, msg: SketchShares) -> None:
        assert self.u3 is not None and self.cfg.sketch is not None
        if sender not in self.u3 or sender in self._sketch_cts:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "sketch shares")
        if {v for v, _ in msg.ciphertexts} != self.u3 - {sender}:
            raise RemoteError(sender, EvidenceKind.MALFORMED, "sketch shares: wrong holders")
        size = cx.sketch_ciphertext_bytes(self.cfg.sketch, len(self.u3))
        if any(len(ct) != size for _, ct in msg.ciphertexts):
            raise RemoteError(sender, EvidenceKind.MALFORMED, "sketch shares: wrong length")
        self._sketch_cts[sender] = dict(msg.ciphertexts)
        if len(self._sketch_cts) == len(self.u3):
            self._close()

    def _close_sketch(self) -> None:
        assert self.u3 is not None
        owners = sorted(self._sketch_cts)
        for v in sorted(self.u3):
            cts = tuple((u, self._sketch_cts[u][v]) for u in owners if u != v)
            self._send(v, SketchRelay(cts))
        self._sketch_cts.clear()
        self._goto(A.SCORES)

    def _on_score_shares(self, sender: int, msg: ScoreShares) -> None:
        assert self.u3 is not None
        if sender not in self.u3 or sender in self._score_shares:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "score shares")
        owners = {u for u, _ in msg.scores}
        if not owners <= self.u3:
            raise RemoteError(sender, EvidenceKind.MALFORMED, "scores of non-survivors")
        if any(u not in owners or v not in owners for u, v, _ in msg.pairs):
            raise RemoteError(sender, EvidenceKind.MALFORMED, "pair scores of unscored owners")
        self._score_shares[sender] = (dict(msg.scores), {(u, v): s for u, v, s in msg.pairs})
        if len(self._score_shares) == len(self.u3):
            self._close()

    def _open_exact(
        self,
        entries: dict[K, list[tuple[int, tuple[int, ...]]]],
        offset: int,
        threshold: int,
        what: str,
    ) -> dict[K, int]:
        """Open residue ``offset + i`` modulo the i-th prime of each key's points,
        name the holders of bad shares, and recombine: exact value of each key whose
        residues all opened."""
        sk = self.cfg.sketch
        assert sk is not None
        per_prime: list[dict[K, int]] = []
        for i, p in enumerate(sk.moduli):
            pts = {key: [(x, s[offset + i]) for x, s in got] for key, got in entries.items()}
            values, bad = open_many(pts, threshold, p)
            for x in sorted(bad):
                self._blame(x - 1, EvidenceKind.INCONSISTENT_SHARE, f"{what} share (mod {p})")
            per_prime.append(values)
        return {
            key: exact([v[key] for v in per_prime], sk.moduli)
            for key in entries
            if all(key in v for v in per_prime)
        }

    def _close_scores(self) -> None:
        sk = self.cfg.sketch
        assert self.u3 is not None and sk is not None
        validators = sorted(self._score_shares.items())
        owner_pts: dict[int, list[tuple[int, tuple[int, ...]]]] = {
            u: [(v + 1, sh[u]) for v, (sh, _) in validators if u in sh] for u in sorted(self.u3)
        }
        deg2 = 2 * sk.threshold - 1
        norms = self._open_exact(owner_pts, 0, deg2, "norm")
        dots: dict[int, int] = {}
        if sk.with_reference:
            dots = self._open_exact(owner_pts, sk.primes, sk.threshold, "dot")
        pair_vals: dict[tuple[int, int], int] = {}
        if sk.pairwise:
            pair_pts: dict[tuple[int, int], list[tuple[int, tuple[int, ...]]]] = {}
            for v, (_, pairs) in validators:
                for key, shares in pairs.items():
                    pair_pts.setdefault(key, []).append((v + 1, shares))
            pair_vals = self._open_exact(dict(sorted(pair_pts.items())), 0, deg2, "pair")
        partners: dict[int, dict[int, int]] = {u: {} for u in self.u3}
        for (u, v), val in pair_vals.items():
            partners[u][v] = val
            partners[v][u] = val
        scores: dict[int, SketchScore | None] = {}
        for u in sorted(self.u3):
            norm, dot = norms.get(u), dots.get(u)
            ok = norm is not None and (dot is not None or not sk.with_reference)
            scores[u] = SketchScore(norm, dot, partners[u]) if ok and norm is not None else None
        self._score_shares.clear()
        self._goto(A.CONSISTENCY)
        self._announce_sets(scores)

    def _open_sketch_sum(self) -> NDArray[np.int64] | NDArray[np.object_] | None:
        sk = self.cfg.sketch
        if sk is None:
            return None
        got = [(w + 1, m.sketch_sum) for w, m in sorted(self._unmask.items()) if m.sketch_sum]
        xs = [x for x, _ in got]
        rows = sk.rows
        residues: list[NDArray[np.int64]] = []
        for i, p in enumerate(sk.moduli):
            ys = np.array([s[i * rows : (i + 1) * rows] for _, s in got], dtype=np.int64)
            value, bad = open_mod(xs, ys.reshape(len(xs), rows), sk.threshold, p)
            for x in sorted(bad):
                self._blame(x - 1, EvidenceKind.INCONSISTENT_SHARE, f"sketch-sum share (mod {p})")
            if value is None:
                return None
            residues.append(value)
        return exact_array(residues, sk.moduli)
