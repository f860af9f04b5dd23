"""Local peer scoring and graylisting (gossipsub v1.1 as the anchor).

Theory of operation
-------------------
Every peer keeps, for each peer that talked to it, a few *counters* of bad
behaviour it observed first-hand: invalid broadcasts (bad signature, bad body,
stale or oversized), malformed frames (undecodable, unknown or misplaced
messages), broken promises (IHAVE announced, GRAFT sent, message never came) and
floods (messages above the link's token bucket).  Counters decay exponentially
with a half-life, so old mistakes are forgiven.  The score is::

    reward * min(first_deliveries, cap)
      - w_invalid * invalid²  - w_malformed * malformed²
      - w_promise * broken²   - w_flood * flood

Squared counters (gossipsub's P4/P7) make a single accident cheap and a habit
expensive.  The positive term is small and capped: it can never shield a peer
that misbehaves more than a couple of times.

When the score falls below ``graylist_threshold`` the peer is *graylisted* for
``graylist_duration`` seconds: the caller disconnects it and drops everything
it sends, refuses its links and joins, and never dials it.  Scores are local
opinions: they are never gossiped (a gossiped score would be a new attack
surface).  The table is bounded; the least recently touched entries go first.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from dataclasses import dataclass

from p2pfl.wire import PeerId

from ._config import ScoreParams

__all__ = ["Offense", "PeerScore", "Scoreboard"]


class Offense(enum.Enum):
    INVALID = "invalid"
    MALFORMED = "malformed"
    BROKEN_PROMISE = "broken_promise"
    FLOOD = "flood"


@dataclass
class PeerScore:
    """Decaying counters of one peer (as of ``updated``)."""

    invalid: float = 0.0
    malformed: float = 0.0
    broken: float = 0.0
    flood: float = 0.0
    first: float = 0.0
    updated: float = 0.0


class Scoreboard:
    """Scores and the graylist of one peer's neighbours."""

    def __init__(self, params: ScoreParams) -> None:
        self.params = params
        self._scores: OrderedDict[PeerId, PeerScore] = OrderedDict()
        self._graylist: dict[PeerId, float] = {}  # peer -> until
        self.graylisted_total = 0

    # -- queries -----------------------------------------------------------------

    def score(self, peer: PeerId, now: float) -> float:
        s = self._scores.get(peer)
        if s is None:
            return 0.0
        self._decay(s, now)
        p = self.params
        return (
            p.reward * min(s.first, p.reward_cap)
            - p.invalid_weight * s.invalid**2
            - p.malformed_weight * s.malformed**2
            - p.broken_promise_weight * s.broken**2
            - p.flood_weight * s.flood
        )

    def is_graylisted(self, peer: PeerId, now: float) -> bool:
        until = self._graylist.get(peer)
        if until is None:
            return False
        if until <= now:
            del self._graylist[peer]
            return False
        return True

    def graylist(self) -> dict[PeerId, float]:
        """Graylisted peers and until when (a copy)."""
        return dict(self._graylist)

    def snapshot(self, now: float) -> dict[PeerId, float]:
        return {p: self.score(p, now) for p in list(self._scores)}

    # -- updates -----------------------------------------------------------------

    def penalize(self, peer: PeerId, offense: Offense, now: float, n: float = 1.0) -> bool:
        """Record ``n`` offenses; True when the peer has *just* become graylisted."""
        s = self._entry(peer, now)
        if offense is Offense.INVALID:
            s.invalid += n
        elif offense is Offense.MALFORMED:
            s.malformed += n
        elif offense is Offense.BROKEN_PROMISE:
            s.broken += n
        else:
            s.flood += n
        if self.score(peer, now) < self.params.graylist_threshold and not self.is_graylisted(
            peer, now
        ):
            self._graylist[peer] = now + self.params.graylist_duration
            self.graylisted_total += 1
            return True
        return False

    def reward(self, peer: PeerId, now: float) -> None:
        """A first delivery of a valid broadcast from ``peer``."""
        s = self._entry(peer, now)
        s.first += 1.0

    def forget_expired(self, now: float) -> None:
        for p in [p for p, until in self._graylist.items() if until <= now]:
            del self._graylist[p]

    # -- internals ---------------------------------------------------------------

    def _entry(self, peer: PeerId, now: float) -> PeerScore:
        s = self._scores.get(peer)
        if s is None:
            s = PeerScore(updated=now)
            self._scores[peer] = s
            while len(self._scores) > self.params.max_tracked:
                self._scores.popitem(last=False)
        else:
            self._scores.move_to_end(peer)
            self._decay(s, now)
        return s

    def _decay(self, s: PeerScore, now: float) -> None:
        dt = now - s.updated
        if dt <= 0:
            return
        p = self.params
        f = math.exp2(-dt / p.half_life) if p.half_life > 0 else 0.0
        ff = math.exp2(-dt / p.flood_half_life) if p.flood_half_life > 0 else 0.0
        s.invalid *= f
        s.malformed *= f
        s.broken *= f
        s.first *= f
        s.flood *= ff
        s.updated = now
