"""Reputation and credit parameters (one frozen dataclass, documented defaults).

Every peer of a federation must use the *same* parameters, or they compute different
cohort weights and split the network: they belong in the federation file (a
``[ledger]`` table, see ``docs/ledger.md``) and so in the federation id.  The newcomer
cap (``membership.newcomer_rounds`` / ``newcomer_weight``) and the sample cap
(``update.sample_cap``) are read from the :class:`~p2pfl.federation.Federation` itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from p2pfl.errors import ConfigError

__all__ = ["LedgerParams"]


@dataclass(frozen=True)
class LedgerParams:
    """Parameters of reputation, credits and record checks.

    Reputation is a Beta score ``s = (alpha + prior_alpha) / (alpha + beta + prior_alpha +
    prior_beta)`` over evidence counts decayed by ``forgetting`` each round (see
    :mod:`p2pfl.ledger._reputation`).  Evidence weights (all >= 0):

    ========================  =======  ===============================================
    field                     default  evidence, charged per round
    ========================  =======  ===============================================
    ``accepted``              1.0      positive: included in an accepted group result
    ``dropout``               0.25     negative: listed as dropped (mild: churn)
    ``excluded``              2.0      negative: excluded by the scoring policy (two
                                       exclusions in a row put a peer below the floor;
                                       one false positive does not)
    ``failed_group``          1.0      negative: member of a group whose binding check
                                       failed (every member: the liar is the one common
                                       to the failed groups)
    ``violation``             4.0      negative: excluded for a protocol violation
    ``equivocation``          10.0     negative: a valid equivocation proof
    ========================  =======  ===============================================

    * ``forgetting`` (0.95): alpha (positive evidence) is multiplied by it every round,
      so evidence k rounds old counts ``forgetting**k``; honest evidence saturates at
      ``accepted / (1 - forgetting)`` (20).
    * ``negative_forgetting`` (0.98): the same for the negative evidence a peer's own
      conduct proved (exclusions, violations, equivocations); dropouts and failed
      groups -- possibly bad luck: every member of a failed group is charged, one
      lied -- decay by ``forgetting``.  Slower on purpose: a peer below the floor is
      never selected, so it earns no evidence of either kind and only forgetting lets
      it back (redemption).  With 0.95 a peer excluded twice returns after 6 rounds,
      and a sign flipper readmitted late in training looks like an honest peer with
      little to add (its cos with the reference is ~0), so every return is a fresh
      chance to slip through.  With 0.98 it returns after 14 rounds, on probation
      (its weight factor is below 1: see :mod:`p2pfl.federation.policy`, rule 7), and
      one more exclusion keeps it out for 25 more.  One false positive of an
      established honest peer (alpha near 20) still costs little: its score stays
      above 0.8.
    * ``prior_alpha``, ``prior_beta`` (1, 1): the score of a peer with no evidence (0.5).
    * ``floor`` (0.2): a score below it gives weight 0 (never selected, weight factor 0).
    * ``full_weight_at`` (0.5): the aggregation weight factor is
      ``min(1, s / full_weight_at)``: a peer with no bad evidence gets full weight;
      below, weight falls linearly.  Newcomers (open federations, fewer than
      ``membership.newcomer_rounds`` accepted contributions) are capped at
      ``membership.newcomer_weight``.
    * ``credit_priority`` (0.5), ``credit_scale`` (10.0): the selection weight is the
      weight factor times ``1 + credit_priority * c / (c + credit_scale * sample_cap)``
      where ``c`` is the peer's credits: contributors are drawn up to 1.5x as often.
    * ``enforce_floor`` (True): a record whose cohort holds a peer of weight 0 (below the
      floor, or not admitted) is refused.  ``enforce_weights`` (True): a group's total
      weight must not exceed the sum of its included members' weight factors (plus
      ``weight_tolerance`` (1e-5) per member: secure aggregation carries weights in fixed
      point with at least 17 fractional bits, i.e. an error below 2^-18 each).
    * ``equivocation_forfeits`` (True): a proven equivocation also resets the peer's
      positive evidence to 0 (with the default weights its score drops to 1/12).
    * ``evidence_window`` (64): an equivocation proof must be about one of the last
      ``evidence_window`` rounds.
    """

    forgetting: float = 0.95
    negative_forgetting: float = 0.98
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    accepted: float = 1.0
    dropout: float = 0.25
    excluded: float = 2.0
    failed_group: float = 1.0
    violation: float = 4.0
    equivocation: float = 10.0
    floor: float = 0.2
    full_weight_at: float = 0.5
    credit_priority: float = 0.5
    credit_scale: float = 10.0
    enforce_floor: bool = True
    enforce_weights: bool = True
    equivocation_forfeits: bool = True
    weight_tolerance: float = 1e-5
    evidence_window: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            v: Any = getattr(self, f.name)
            if f.type in ("bool", bool):
                if type(v) is not bool:
                    raise ValueError(f"ledger.{f.name}: must be true or false, got {v!r}")
                continue
            if f.name == "evidence_window":
                if type(v) is not int or v < 1:
                    raise ValueError(f"ledger.evidence_window: must be an integer >= 1, got {v!r}")
                continue
            if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"ledger.{f.name}: must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, f.name, float(v))
        for name in ("forgetting", "negative_forgetting"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"ledger.{name}: must be in (0, 1], got {v}")
        if self.prior_alpha <= 0 or self.prior_beta <= 0:
            raise ValueError("ledger.prior_alpha and ledger.prior_beta: must be > 0")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"ledger.floor: must be in [0, 1), got {self.floor}")
        if not 0.0 < self.full_weight_at <= 1.0:
            raise ValueError(f"ledger.full_weight_at: must be in (0, 1], got {self.full_weight_at}")
        if self.credit_scale <= 0:
            raise ValueError("ledger.credit_scale: must be > 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerParams:
        """Parameters from a ``[ledger]`` table (missing keys take their defaults).

        Raises :class:`~p2pfl.errors.ConfigError` naming the key (``ledger.floor: ...``)
        for an unknown key or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        for k in sorted(data):
            if k not in known:
                raise ConfigError(f"ledger.{k}: unknown key")
        try:
            return cls(**dict(data))
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        """The parameters as TOML-compatible data (``LedgerParams(**d)`` round-trips)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
