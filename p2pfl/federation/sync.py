"""Late joiners and restarted peers: fetch the current global state and verify it.

Theory of operation
-------------------
A peer that is behind (new, restarted from an old checkpoint, or a round machine
that ended FAILED out of sync) runs a :class:`CatchUp` machine instead of rounds:

1. It *listens*: every :class:`~p2pfl.federation.messages.SignedGroupResult` it hears
   names the base-state digest of its round.  Without the round's schedule it cannot
   yet check that the signers are the group's members, so it accepts a digest as
   *attested* when a result carries valid signatures from at least ``q`` distinct
   peers admitted by the membership policy, where ``q`` is the threshold of the
   smallest possible group (what an honest result always has).
2. It asks one neighbour at a time (:class:`StateRequest`, with a fresh nonce) for the
   state of the latest attested round r.  The neighbour answers with the snapshot
   and the group results and aborts of round r it has accepted so far
   (:func:`answer_state_request`).
3. The snapshot is accepted only if its :attr:`GlobalState.digest` is attested for
   round r; otherwise the neighbour is reported (RemoteProtocolError) and the next one
   is asked.  An unanswered request times out and moves on too.
4. :class:`CaughtUp` hands the driver the state plus every result/abort of round r
   known (heard or served).  The driver builds the round-r schedule and a
   :class:`~p2pfl.federation.round.RoundMachine` as an observer, feeds it those
   messages — which verifies them fully against the schedule — and from round r + 1
   on the peer is in sync.

Limits: attestation by signature count alone trusts that no coalition of ``q``
admitted peers forges a base state (for an open federation, Sybils can); full
verification of the hash-chained ledger replaces it when the ledger exists.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from mpc.rand import Rng
from p2pfl.errors import RemoteProtocolError
from p2pfl.wire import PeerId

from .config import Federation
from .events import Outgoing
from .messages import (
    RESULT_DOMAIN,
    SignedGroupAbort,
    SignedGroupResult,
    StateRequest,
    StateResponse,
    digest_of,
)
from .state import GlobalState

__all__ = ["CatchUp", "CatchUpState", "CaughtUp", "answer_state_request", "attested_state"]

_KEEP_ROUNDS = 4
_MAX_PER_ROUND = 1024


def attested_state(federation: Federation, msg: SignedGroupResult) -> tuple[int, bytes] | None:
    """``(round, base-state digest)`` a result attests, or None when it carries too
    few valid signatures of distinct admitted peers (see the module docstring)."""
    body = msg.body
    if body.federation != federation.id:
        return None
    digest = digest_of(body)
    signers: set[PeerId] = set()
    for e in msg.endorsements:
        who = e.signer
        if who not in signers and federation.membership.admits(who) and e.valid(RESULT_DOMAIN, digest):
            signers.add(who)
    if len(signers) < federation.threshold_for(federation.cohort.min_group_size):
        return None
    return body.round, body.base_state


def answer_state_request(
    federation: Federation,
    request: StateRequest,
    state: GlobalState | None,
    results: Sequence[SignedGroupResult] = (),
    aborts: Sequence[SignedGroupAbort] = (),
) -> StateResponse:
    """The reply to ``request``: ``state`` must be the state round ``request.round``
    started from (the driver keeps a few recent ones), with the round's known
    results and aborts (:meth:`RoundMachine.outcomes`); None when it is not held.

    Raises :class:`RemoteProtocolError` for a request from another federation.
    """
    if request.federation != federation.id:
        raise RemoteProtocolError("state request for another federation")
    if state is None or state.round != request.round:
        return StateResponse(federation.id, request.nonce, None)
    return StateResponse(federation.id, request.nonce, state.to_snapshot(), tuple(results),
                         tuple(aborts))


class CatchUpState(enum.Enum):
    LISTENING = "listening"
    REQUESTING = "requesting"
    DONE = "done"


@dataclass(frozen=True, eq=False)
class CaughtUp:
    """The verified state of round ``state.round`` and the round's known outcomes."""

    state: GlobalState
    results: tuple[SignedGroupResult, ...]
    aborts: tuple[SignedGroupAbort, ...]


class CatchUp:
    """Sans-I/O catch-up machine (see the module docstring)."""

    def __init__(self, federation: Federation, neighbours: Sequence[PeerId], *, rng: Rng,
                 timeout: float | None = None) -> None:
        self.federation = federation
        self._neighbours = list(dict.fromkeys(neighbours))
        self._rng = rng
        self._timeout = timeout if timeout is not None else federation.timeouts.sign * 2
        self._state = CatchUpState.LISTENING
        self._attested: dict[int, set[bytes]] = {}
        self._heard: dict[int, list[SignedGroupResult | SignedGroupAbort]] = {}
        self._asked: list[PeerId] = []
        self._asked_round = -1
        self._pending: tuple[PeerId, bytes, int, float] | None = None  # peer, nonce, round, deadline
        self._outbox: list[Outgoing] = []
        self._events: list[CaughtUp] = []

    @property
    def state(self) -> CatchUpState:
        return self._state

    def add_neighbour(self, peer: PeerId, now: float) -> None:
        """Another peer we may ask (e.g. a new overlay neighbour)."""
        if peer not in self._neighbours:
            self._neighbours.append(peer)
            self._maybe_request(now)

    def receive(self, sender: PeerId, msg: object, now: float) -> None:
        """Feed broadcasts and replies. Raises :class:`RemoteProtocolError` for an
        invalid or unattested state response (``peer`` names the sender)."""
        if self._state is CatchUpState.DONE:
            return
        if isinstance(msg, SignedGroupResult | SignedGroupAbort):
            self._hear(msg, now)
        elif isinstance(msg, StateResponse):
            self._on_response(sender, msg, now)

    def _hear(self, msg: SignedGroupResult | SignedGroupAbort, now: float) -> None:
        r = msg.body.round
        heard = self._heard.setdefault(r, [])
        if len(heard) < _MAX_PER_ROUND:
            heard.append(msg)
        if isinstance(msg, SignedGroupResult) and (att := attested_state(self.federation, msg)):
            self._attested.setdefault(att[0], set()).add(att[1])
        for old in sorted(set(self._heard) | set(self._attested))[:-_KEEP_ROUNDS]:
            self._heard.pop(old, None)
            self._attested.pop(old, None)
        self._maybe_request(now)

    def _target(self) -> int | None:
        return max(self._attested) if self._attested else None

    def _maybe_request(self, now: float) -> None:
        target = self._target()
        if target is None or self._pending is not None:
            return
        if target != self._asked_round:
            self._asked_round, self._asked = target, []
        peer = next((p for p in self._neighbours if p not in self._asked), None)
        if peer is None:
            return  # everyone was asked for this round: wait for a newer attested round
        self._asked.append(peer)
        nonce = self._rng.random_bytes(16)
        self._pending = (peer, nonce, target, now + self._timeout)
        self._state = CatchUpState.REQUESTING
        self._outbox.append(Outgoing(peer, StateRequest(self.federation.id, target, nonce)))

    def _reject(self, sender: PeerId, reason: str, now: float) -> RemoteProtocolError:
        self._maybe_request(now)  # ask the next neighbour
        return RemoteProtocolError(reason, peer=sender)

    def _on_response(self, sender: PeerId, msg: StateResponse, now: float) -> None:
        pending = self._pending
        if pending is None or sender != pending[0] or msg.nonce != pending[1]:
            raise RemoteProtocolError("unsolicited state response", peer=sender)
        self._pending = None
        self._state = CatchUpState.LISTENING
        if msg.snapshot is None:
            self._maybe_request(now)
            return
        try:
            state = GlobalState.from_snapshot(msg.snapshot, self.federation.id)
        except (ValueError, RemoteProtocolError) as e:
            raise self._reject(sender, f"malformed state snapshot: {e}", now) from e
        if state.round != pending[2] or state.digest not in self._attested.get(state.round, ()):
            raise self._reject(sender, "state response does not match any attested state", now)
        heard = self._heard.get(state.round, [])
        results = (*msg.results, *(m for m in heard if isinstance(m, SignedGroupResult)))
        aborts = (*msg.aborts, *(m for m in heard if isinstance(m, SignedGroupAbort)))
        self._state = CatchUpState.DONE
        self._events.append(CaughtUp(state, results, aborts))

    def handle_timer(self, now: float) -> None:
        if self._pending is not None and now >= self._pending[3]:
            self._pending = None
            self._state = CatchUpState.LISTENING
            self._maybe_request(now)

    def next_deadline(self) -> float | None:
        return self._pending[3] if self._pending is not None else None

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> CaughtUp | None:
        return self._events.pop(0) if self._events else None

    def __repr__(self) -> str:
        return f"CatchUp({self._state.name}, attested rounds {sorted(self._attested)})"
