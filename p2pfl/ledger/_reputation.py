"""Reputation and credits: a deterministic, pure function of the chain.

Theory of operation
-------------------
A :class:`Standing` is the fold of the record bodies of a chain, from genesis::

    standing = Standing.initial(federation, params)
    for body in chain: standing = standing.apply(body)

``apply`` is pure (a new object; nothing else is read), so extending a standing by one
record equals recomputing it from scratch, and every peer that holds the same chain
holds the same standing, bit for bit.

**Evidence.**  Per peer, a Beta-reputation pair (Jøsang and Ismail, 2002) with
forgetting: positive evidence ``alpha`` and negative evidence, kept in two parts:
``beta`` for what a peer's own update or conduct proved (exclusions, violations,
equivocations) and ``beta_soft`` for what may be bad luck (dropouts, membership of a
group whose binding check failed: every member is charged, only one lied).  Round r
first decays every known peer (``alpha *= forgetting``, ``beta_soft *= forgetting``,
``beta *= negative_forgetting``: proven misbehaviour is forgotten more slowly, so an
excluded peer stays below the floor longer, while the honest members of a liar's
groups recover at the usual pace), then adds what record r says, all of it backed by
signatures:

* included in an accepted group result (signed by a quorum): ``+accepted`` to alpha;
* dropped in it: ``+dropout`` to beta_soft; excluded in it: ``+excluded``, or
  ``+violation`` when the reason's code (the text before ``:``) is a protocol
  violation (:data:`VIOLATION_CODES`), to beta;
* member of a group whose every aggregator signed an abort for a failed binding check
  (reason code ``binding``): ``+failed_group`` to beta_soft, for every member;
* the signer of a valid equivocation proof: ``+equivocation`` to beta, once per
  (round, group); a proven equivocation (deliberate, never an accident) also forfeits
  the peer's positive evidence (``equivocation_forfeits``), so it falls below the floor
  whatever its past.

**Score** ``s = (alpha + a0) / (alpha + beta + beta_soft + a0 + b0)`` in (0, 1): the
posterior mean of a Beta(a0, b0) prior; old evidence counts ``forgetting**k`` (proven
misbehaviour: ``negative_forgetting**k``), so a reformed peer recovers and an old good
record does not shield a new attack.

**Weights.**  ``weight_factor(p)`` (aggregation weight multiplier, in [0, 1]) is 0
below ``floor`` and otherwise ``min(1, s / full_weight_at)``, capped at
``newcomer_weight`` while a peer of an open federation has fewer than
``newcomer_rounds`` accepted contributions.  ``weight(p)`` (cohort selection, for
:func:`p2pfl.federation.schedule_round`) multiplies it by the credit priority
``1 + credit_priority * c / (c + credit_scale * sample_cap)``.

**Credits.**  An included member earns ``weight_factor × min(n̄, sample_cap)`` where
``weight_factor`` is its factor before the round and ``n̄`` its group's samples per
included member (individual counts are hidden by secure aggregation).  Excluded
(free riders: zero or stale updates), dropped or failed members earn nothing.
Credits are never forgotten.

**Determinism.**  Only ``+ * /`` and comparisons on IEEE doubles in a fixed order
(record order, then slot order, then proof order; no ``pow``, ``log``, ``exp``, whose
last bit differs between libms).  Evidence smaller than 2^-900 is set to 0, so no
subnormal number (flushed to zero on some configurations) ever occurs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from p2pfl.federation import RoundSchedule, schedule_round
from p2pfl.wire import PeerId

from ._messages import GroupStatus, Record, RecordBody
from ._params import LedgerParams

if TYPE_CHECKING:
    from p2pfl.federation import Federation

__all__ = [
    "BINDING_CODES",
    "FREE_RIDER_CODES",
    "VIOLATION_CODES",
    "PeerStanding",
    "Standing",
    "credits",
    "reason_code",
    "reputation",
    "schedule_of",
    "standing",
]

BINDING_CODES: Final = frozenset({"binding"})
VIOLATION_CODES: Final = frozenset({"violation", "malformed", "invalid", "protocol"})
FREE_RIDER_CODES: Final = frozenset({"zero", "stale", "freerider"})
_TINY: Final = 2.0**-900


def reason_code(reason: str) -> str:
    """The code of an exclusion or abort reason: lowercase text before the first ``:``."""
    return reason.split(":", 1)[0].strip().lower()


def schedule_of(federation: Federation, body: RecordBody) -> RoundSchedule:
    """The schedule of a record's round, recomputed from its cohort and beacon."""
    return schedule_round(federation, body.round, body.beacon, body.cohort)


@dataclass(frozen=True)
class PeerStanding:
    """One peer's evidence, counters and credits."""

    alpha: float = 0.0
    beta: float = 0.0
    beta_soft: float = 0.0
    credits: float = 0.0
    contributions: int = 0
    exclusions: int = 0
    dropouts: int = 0
    failed_groups: int = 0
    violations: int = 0
    equivocations: int = 0
    first_round: int = 0
    last_round: int = 0  # the last round it was in a cohort or charged


@dataclass
class _Delta:
    pos: float = 0.0
    neg: float = 0.0
    soft: float = 0.0
    credit: float = 0.0
    contributions: int = 0
    exclusions: int = 0
    dropouts: int = 0
    failed_groups: int = 0
    violations: int = 0
    equivocations: int = 0


def _decay(x: float, f: float) -> float:
    y = x * f
    return 0.0 if y < _TINY else y


class Standing:
    """Reputation and credits after ``height`` records (immutable; see the module
    docstring).  Build with :meth:`initial` and :meth:`apply`, or :func:`standing`."""

    __slots__ = ("_charged", "_peers", "federation", "height", "params")

    def __init__(self, federation: Federation, params: LedgerParams, height: int,
                 peers: Mapping[PeerId, PeerStanding],
                 charged: frozenset[tuple[int, int, PeerId]]) -> None:
        self.federation = federation
        self.params = params
        self.height = height
        self._peers = MappingProxyType(dict(peers))
        self._charged = charged

    @classmethod
    def initial(cls, federation: Federation, params: LedgerParams | None = None) -> Standing:
        """The standing of the empty chain."""
        return cls(federation, params or federation.ledger, 0, {}, frozenset())

    @property
    def peers(self) -> Mapping[PeerId, PeerStanding]:
        """Every peer the chain has seen (read-only)."""
        return self._peers

    def charged(self, round: int, group: int, peer: PeerId) -> bool:
        """True when ``peer`` was already charged for equivocating in (round, group)."""
        return (round, group, peer) in self._charged

    def get(self, peer: PeerId) -> PeerStanding:
        return self._peers.get(peer) or PeerStanding(first_round=self.height, last_round=self.height)

    # -- the public functions of the chain ------------------------------------

    def score(self, peer: PeerId) -> float:
        """The Beta score in (0, 1) (``prior_alpha / (prior_alpha + prior_beta)`` for a
        peer without evidence)."""
        p, s = self.params, self._peers.get(peer)
        a, b = (s.alpha, s.beta + s.beta_soft) if s is not None else (0.0, 0.0)
        return (a + p.prior_alpha) / (a + b + p.prior_alpha + p.prior_beta)

    def is_newcomer(self, peer: PeerId) -> bool:
        """True while the newcomer cap applies (open federations only)."""
        m = self.federation.membership
        if m.policy != "open":
            return False
        s = self._peers.get(peer)
        return (s.contributions if s is not None else 0) < m.newcomer_rounds

    def weight_factor(self, peer: PeerId) -> float:
        """The aggregation weight multiplier in [0, 1] (``RoundMachine(weight_factor=)``)."""
        if not self.federation.membership.admits(peer):
            return 0.0
        p = self.params
        s = self.score(peer)
        if s < p.floor:
            return 0.0
        f = min(1.0, s / p.full_weight_at)
        if self.is_newcomer(peer):
            f = min(f, self.federation.membership.newcomer_weight)
        return f

    def weight(self, peer: PeerId) -> float:
        """The cohort selection weight (>= 0; 0: never selected), for
        ``schedule_round(..., weight=standing.weight)``."""
        f = self.weight_factor(peer)
        if f == 0.0:
            return 0.0
        s = self._peers.get(peer)
        c = s.credits if s is not None else 0.0
        p = self.params
        scale = p.credit_scale * float(self.federation.update.sample_cap)
        return f * (1.0 + p.credit_priority * (c / (c + scale)))

    def reputation(self) -> dict[PeerId, float]:
        """Score of every peer the chain has seen."""
        return {peer: self.score(peer) for peer in sorted(self._peers)}

    def credits(self) -> dict[PeerId, float]:
        """Credits of every peer the chain has seen."""
        return {peer: s.credits for peer, s in sorted(self._peers.items())}

    # -- the fold -------------------------------------------------------------

    def evidence(self, body: RecordBody, schedule: RoundSchedule | None = None) -> dict[PeerId, _Delta]:
        """What record ``body`` charges or credits, per peer (assumes a verified body)."""
        p = self.params
        cap = float(self.federation.update.sample_cap)
        out: dict[PeerId, _Delta] = {}

        def d(peer: PeerId) -> _Delta:
            x = out.get(peer)
            if x is None:
                x = out[peer] = _Delta()
            return x

        for slot in body.groups:
            h = slot.header
            if slot.status is GroupStatus.ACCEPTED and h is not None:
                per = float(h.total_samples) / len(h.included) if h.included else 0.0
                for u in h.included:
                    x = d(u)
                    x.pos += p.accepted
                    x.contributions += 1
                    x.credit += self.weight_factor(u) * min(per, cap)
                for u in h.dropped:
                    x = d(u)
                    x.soft += p.dropout
                    x.dropouts += 1
                for u, reason in h.excluded:
                    x = d(u)
                    if reason_code(reason) in VIOLATION_CODES:
                        x.neg += p.violation
                        x.violations += 1
                    else:
                        x.neg += p.excluded
                        x.exclusions += 1
            elif slot.status is GroupStatus.ABORTED and _binding_failure(self.federation, body,
                                                                          slot.index, schedule):
                sched = schedule or schedule_of(self.federation, body)
                for u in sched.groups[slot.index].members:
                    x = d(u)
                    x.soft += p.failed_group
                    x.failed_groups += 1
        seen: set[tuple[int, int, PeerId]] = set()
        for proof in body.evidence:
            first = proof.items[0]
            key = (first.header.round, first.header.group, first.endorsement.signer)
            if key in seen or key in self._charged:
                continue
            seen.add(key)
            x = d(key[2])
            x.neg += p.equivocation
            x.equivocations += 1
        return out

    def apply(self, body: RecordBody, schedule: RoundSchedule | None = None) -> Standing:
        """The standing after record ``body`` (the next one: ``body.round == height``).

        Pure; ``schedule`` (the round's, as :func:`schedule_of`) only saves recomputing
        it.  Raises ``ValueError`` for a record of another round.
        """
        if body.round != self.height:
            raise ValueError(f"record of round {body.round} applied at height {self.height}")
        f, fn = self.params.forgetting, self.params.negative_forgetting
        deltas = self.evidence(body, schedule)
        r = body.round
        peers: dict[PeerId, PeerStanding] = {}
        for peer, s in self._peers.items():
            peers[peer] = replace(s, alpha=_decay(s.alpha, f), beta=_decay(s.beta, fn),
                                  beta_soft=_decay(s.beta_soft, f))
        for peer in body.cohort:
            old = peers.get(peer)
            peers[peer] = (PeerStanding(first_round=r, last_round=r) if old is None
                           else replace(old, last_round=r))
        for peer in sorted(deltas):
            x = deltas[peer]
            s = peers.get(peer) or PeerStanding(first_round=r)
            forfeit = x.equivocations > 0 and self.params.equivocation_forfeits
            peers[peer] = PeerStanding(
                alpha=0.0 if forfeit else s.alpha + x.pos, beta=s.beta + x.neg,
                beta_soft=s.beta_soft + x.soft,
                credits=s.credits + x.credit,
                contributions=s.contributions + x.contributions,
                exclusions=s.exclusions + x.exclusions, dropouts=s.dropouts + x.dropouts,
                failed_groups=s.failed_groups + x.failed_groups,
                violations=s.violations + x.violations,
                equivocations=s.equivocations + x.equivocations,
                first_round=s.first_round, last_round=r,
            )
        horizon = r + 1 - self.params.evidence_window
        charged = frozenset(
            k for k in self._charged | {
                (pr.items[0].header.round, pr.items[0].header.group, pr.items[0].endorsement.signer)
                for pr in body.evidence
            } if k[0] >= horizon
        )
        return Standing(self.federation, self.params, r + 1, peers, charged)

    def __repr__(self) -> str:
        return f"Standing(height={self.height}, peers={len(self._peers)})"


def _binding_failure(federation: Federation, body: RecordBody, index: int,
                     schedule: RoundSchedule | None) -> bool:
    """Every aggregator of the group signed an abort for a failed binding check."""
    slot = body.groups[index]
    if not slot.aborts or any(reason_code(r) not in BINDING_CODES for _, r in slot.aborts):
        return False
    sched = schedule or schedule_of(federation, body)
    if index >= len(sched.groups):
        return False
    return {a for a, _ in slot.aborts} >= set(sched.groups[index].aggregators)


def _bodies(chain: Iterable[Record | RecordBody]) -> Iterable[RecordBody]:
    for item in chain:
        yield item.body if isinstance(item, Record) else item


def standing(chain: Iterable[Record | RecordBody], federation: Federation,
             params: LedgerParams | None = None) -> Standing:
    """The standing after ``chain`` (records or bodies from genesis, in order; assumed
    verified, see :func:`p2pfl.ledger.verify_chain`)."""
    st = Standing.initial(federation, params)
    for body in _bodies(chain):
        st = st.apply(body)
    return st


def reputation(chain: Iterable[Record | RecordBody], federation: Federation,
               params: LedgerParams | None = None) -> dict[PeerId, float]:
    """``peer -> score`` as a pure function of the chain."""
    return standing(chain, federation, params).reputation()


def credits(chain: Iterable[Record | RecordBody], federation: Federation,
            params: LedgerParams | None = None) -> dict[PeerId, float]:
    """``peer -> credits`` as a pure function of the chain."""
    return standing(chain, federation, params).credits()
