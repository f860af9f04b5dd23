"""The two rules that keep unmasking safe, shared by members and aggregators.

* :class:`RevealLedger`: a member reveals, for any peer, its share of the self-mask
  seed b or its share of the mask key s_sk, never both. Revealing both would hand the
  aggregators x_v = y_v - PRG(b_v) - pairwise masks, the peer's update in clear.
* :func:`feasible`: given U2, the survivors U3, the excluded set E and the members
  that will respond, every secret that unmasking needs has at least ``threshold``
  responding holders. Members refuse to reveal anything otherwise, so an aborted
  round reveals nothing that can be used.
"""

from __future__ import annotations

from typing import Literal

from ._config import GroupConfig
from ._machine import LocalProtocolError

__all__ = ["RevealLedger", "feasible", "needed_secrets"]

Kind = Literal["b", "sk"]


class RevealLedger:
    """Which kind of share this member has revealed for each owner."""

    __slots__ = ("_kinds",)

    def __init__(self) -> None:
        self._kinds: dict[int, Kind] = {}

    def reveal(self, owner: int, kind: Kind) -> None:
        """Record that the ``kind`` share of ``owner`` is being revealed.

        Raises :class:`LocalProtocolError` if the other kind was revealed before
        (the caller must then reveal nothing).
        """
        prev = self._kinds.get(owner)
        if prev is not None and prev != kind:
            raise LocalProtocolError(
                f"refusing to reveal the {kind} share of member {owner}: "
                f"its {prev} share was already revealed"
            )
        self._kinds[owner] = kind

    def revealed(self) -> dict[int, Kind]:
        """A copy of owner -> kind revealed."""
        return dict(self._kinds)


def needed_secrets(
    cfg: GroupConfig, u2: frozenset[int], survivors: frozenset[int], excluded: frozenset[int]
) -> tuple[frozenset[int], frozenset[int]]:
    """(owners whose b is needed, owners whose s_sk is needed) for these sets."""
    included = survivors - excluded
    removed = (u2 - survivors) | excluded
    nb = cfg.plan.neighbours
    return included, frozenset(r for r in removed if nb[r] & included)


def feasible(
    cfg: GroupConfig,
    u2: frozenset[int],
    survivors: frozenset[int],
    excluded: frozenset[int],
    responders: frozenset[int],
) -> bool:
    """Can every needed secret be rebuilt from the shares of ``responders``?"""
    hold = cfg.plan.holders
    need_b, need_sk = needed_secrets(cfg, u2, survivors, excluded)
    return all(len(hold[v] & responders) >= cfg.threshold for v in need_b | need_sk)
