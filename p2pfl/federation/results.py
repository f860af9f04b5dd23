"""Verification of group results and aborts against a peer's own view of the round.

Theory of operation
-------------------
A group result is accepted only when everything it claims is consistent with what
*this* peer computed for the round (:class:`RoundView`):

* the federation, round, schedule digest and base-state digest match (a mismatch of
  the last two raises :class:`OutOfSync`: either side may be behind, so the driver
  should resync rather than only penalize the sender);
* the group exists; ``included``, ``dropped`` and the excluded peers are sorted,
  disjoint group members, with at least the group's threshold included;
* the sum has the model's length and is finite, the totals are in range;
* the exclusions follow from the scores recorded in the body
  (:func:`~p2pfl.federation.audit.audit_exclusions`: the policy re-run);
* endorsements come from distinct group members, every signature verifies, at least
  one signer is an aggregator of the group, and there are at least ``quorum``
  signers (the group's threshold: the members that vouch for the result).

An abort must be signed by an aggregator of its group.  Nothing here mutates state;
:mod:`p2pfl.federation.round` decides what to keep.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from p2pfl.errors import RemoteProtocolError
from p2pfl.wire import PeerId

from .audit import audit_exclusions
from .config import Federation
from .messages import (
    ABORT_DOMAIN,
    RESULT_DOMAIN,
    AbortBody,
    Endorsement,
    ResultBody,
    SignedGroupAbort,
    SignedGroupResult,
    digest_of,
)
from .schedule import Group, RoundSchedule

__all__ = ["OutOfSync", "RoundView", "VerifiedResult", "check_body", "verify_abort",
           "verify_endorsements", "verify_result"]


class OutOfSync(RemoteProtocolError):
    """A message about this round refers to another schedule or base state."""


@dataclass(frozen=True)
class RoundView:
    """What this peer knows of a round: enough to verify any message about it."""

    federation: Federation
    schedule: RoundSchedule
    base_state: bytes
    dim: int

    @property
    def round(self) -> int:
        return self.schedule.round

    def quorum(self, group: Group) -> int:
        return self.federation.threshold_for(len(group))


@dataclass(frozen=True)
class VerifiedResult:
    """A result that passed :func:`verify_result`."""

    msg: SignedGroupResult
    group: Group
    digest: bytes
    signers: frozenset[PeerId]
    rank: int  # best (lowest) aggregator rank among the signers


def _header(view: RoundView, body: ResultBody | AbortBody, sender: PeerId | None) -> Group:
    if body.federation != view.federation.id:
        raise RemoteProtocolError("message for another federation", peer=sender)
    if body.round != view.round:
        raise RemoteProtocolError(f"message for round {body.round}, not {view.round}", peer=sender)
    if body.schedule != view.schedule.digest or body.base_state != view.base_state:
        raise OutOfSync(
            f"round {body.round} group {body.group}: "
            f"{'schedule' if body.schedule != view.schedule.digest else 'base state'} differs",
            peer=sender,
        )
    if body.group >= len(view.schedule.groups):
        raise RemoteProtocolError(f"no group {body.group} in round {body.round}", peer=sender)
    return view.schedule.groups[body.group]


def _sorted_members(peers: tuple[PeerId, ...], group: Group, what: str, sender: PeerId | None) -> None:
    if not all(a < b for a, b in itertools.pairwise(peers)):
        raise RemoteProtocolError(f"{what} must be sorted and distinct", peer=sender)
    if not all(p in group for p in peers):
        raise RemoteProtocolError(f"{what} names a peer outside the group", peer=sender)


def check_body(view: RoundView, body: ResultBody, sender: PeerId | None = None) -> Group:
    """Check a result body (not its signatures); returns its group.

    Raises :class:`OutOfSync` or :class:`RemoteProtocolError`.
    """
    group = _header(view, body, sender)
    _sorted_members(body.included, group, "included", sender)
    _sorted_members(body.dropped, group, "dropped", sender)
    excluded = tuple(p for p, _ in body.excluded)
    _sorted_members(excluded, group, "excluded", sender)
    sets = [set(body.included), set(body.dropped), set(excluded)]
    if sum(map(len, sets)) != len(set().union(*sets)):
        raise RemoteProtocolError("included, dropped and excluded overlap", peer=sender)
    if len(body.included) < view.quorum(group):
        raise RemoteProtocolError(
            f"result covers {len(body.included)} members, below the threshold "
            f"{view.quorum(group)}", peer=sender,
        )
    s = body.update_sum
    if s.shape != (view.dim,) or not np.isfinite(s).all():
        raise RemoteProtocolError(f"update sum must be finite of shape ({view.dim},)", peer=sender)
    if not math.isfinite(body.total_weight) or body.total_weight > len(body.included):
        raise RemoteProtocolError("total weight exceeds the number of included members",
                                  peer=sender)
    problem = audit_exclusions(body, group.members, view.federation.detection)
    if problem is not None:
        raise RemoteProtocolError(problem, peer=sender)
    return group


def verify_endorsements(
    endorsements: tuple[Endorsement, ...], digest: bytes, group: Group, domain: bytes,
    sender: PeerId | None = None,
) -> frozenset[PeerId]:
    """Signers of ``endorsements``: distinct group members with valid signatures.

    Raises :class:`RemoteProtocolError` on any invalid, foreign or repeated signer.
    """
    signers: set[PeerId] = set()
    for e in endorsements:
        who = e.signer
        if who in signers:
            raise RemoteProtocolError(f"{who.short()} endorses twice", peer=sender)
        if who not in group:
            raise RemoteProtocolError(f"endorsement by {who.short()}, not a group member",
                                      peer=sender)
        if not e.valid(domain, digest):
            raise RemoteProtocolError(f"bad signature by {who.short()}", peer=sender)
        signers.add(who)
    return frozenset(signers)


def verify_result(view: RoundView, msg: SignedGroupResult, sender: PeerId | None = None) -> VerifiedResult:
    """Fully verify a broadcast group result (see the module docstring).

    Raises :class:`OutOfSync` or :class:`RemoteProtocolError`.
    """
    group = check_body(view, msg.body, sender)
    digest = digest_of(msg.body)
    signers = verify_endorsements(msg.endorsements, digest, group, RESULT_DOMAIN, sender)
    ranks = [r for r in (group.rank(p) for p in signers) if r is not None]
    if not ranks:
        raise RemoteProtocolError("group result not signed by any of its aggregators", peer=sender)
    if len(signers) < view.quorum(group):
        raise RemoteProtocolError(
            f"group result has {len(signers)} signatures, quorum is {view.quorum(group)}",
            peer=sender,
        )
    return VerifiedResult(msg, group, digest, signers, min(ranks))


def verify_abort(view: RoundView, msg: SignedGroupAbort, sender: PeerId | None = None) -> tuple[Group, PeerId]:
    """Verify an abort; returns its group and the aggregator that signed it.

    Raises :class:`OutOfSync` or :class:`RemoteProtocolError`.
    """
    group = _header(view, msg.body, sender)
    signer = msg.endorsement.signer
    if group.rank(signer) is None:
        raise RemoteProtocolError("abort not signed by an aggregator of the group", peer=sender)
    if not msg.endorsement.valid(ABORT_DOMAIN, digest_of(msg.body)):
        raise RemoteProtocolError("bad signature on a group abort", peer=sender)
    return group, signer
