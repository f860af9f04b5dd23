"""One round of federated learning on one peer, as a sans-I/O state machine.

Theory of operation
-------------------
A :class:`RoundMachine` is built from the agreed inputs of round r — the federation,
the :class:`~p2pfl.federation.state.GlobalState` the round starts from and the
:class:`~p2pfl.federation.schedule.RoundSchedule` — plus this peer's identity and a
group-aggregation backend.  It never trains, sleeps or sends by itself: the driver
feeds it ``start``, ``training_done``, ``receive``, ``handle_timer`` and collects
``messages_to_send`` (direct or :data:`BROADCAST`) and ``next_event``.

States (:class:`RoundState`, legal moves in :data:`TRANSITIONS`; any other move is a
bug: the machine goes to FAILED and raises :class:`~p2pfl.errors.LocalProtocolError`)::

    WAITING ──start──▶ TRAINING ──training_done / input deadline──▶ AGGREGATING
       │                  │                                              │
       │ (not in cohort)  └──────── our group resolved ─────────┐        │ our group resolved
       └──────────────────────────────────────────────────────▶ COMBINING ◀┘
                                  all groups resolved / round deadline ──▶ DONE | FAILED

* **TRAINING.**  ``start`` emits :class:`TrainRequested`; the driver trains off the
  event loop and calls ``training_done(update, num_samples, now)`` with
  ``update = w_local − w_global``.  The machine clips it to ``update.clip_norm``,
  weighs it (``samples``: ``min(n, cap)/cap``; ``uniform``: 1; times the peer's
  ``weight_factor`` from reputation/newcomer caps) and submits it to the group's
  :class:`~p2pfl.federation.aggregation.GroupAggregation`.  The sub-machine runs from
  ``start`` on, so an aggregator collects its members' inputs while it trains.
* **AGGREGATING.**  When the sub-machine of an aggregator of rank i emits
  :class:`~p2pfl.federation.aggregation.GroupSumReady`, the aggregator builds a
  :class:`~p2pfl.federation.messages.ResultBody`, endorses it and — at once for the
  primary, after ``i * (sign + failover)`` for rank i unless a valid result for the
  group was seen — asks the members to endorse it (:class:`SignRequest`).  Members
  endorse after ``check_result`` of their own sub-machine agrees, and at most one
  body per aggregator (a second, different request is equivocation: refused).
  After ``sign`` seconds, or as soon as every included member signed, the
  aggregator broadcasts the :class:`SignedGroupResult` when it has a quorum (the
  group threshold) of signers, else a :class:`SignedGroupAbort`.  A sub-machine abort is broadcast the
  same way (a backup waits its turn).  A member that hears its primary's request
  postpones its own takeover.
* **COMBINING.**  Every peer (cohort or not) verifies every result and abort it
  receives (:mod:`p2pfl.federation.results`).  A group is *resolved* by a valid
  result (a result endorsed by a lower-ranked aggregator replaces one of a higher
  rank; equal bodies merge their endorsements) or by aborts from all its
  aggregators.  When all groups are resolved, or at the round deadline, the
  strategy is applied to the accepted results in group-index order: every honest
  peer that accepted the same results computes the same model, bit for bit
  (:mod:`p2pfl.learning.strategy`).  Unresolved groups are skipped; a round without
  results keeps the model.  If nothing was accepted but results for another
  schedule/base state were seen, the peer is out of sync: FAILED, and the driver
  resyncs (:mod:`p2pfl.federation.sync`).

Messages of a round that arrive before ``start`` are buffered and replayed.
"""

from __future__ import annotations

import enum
import math
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from mpc.rand import Rng, SystemRng
from p2pfl._lru import BoundedLru
from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.federation.schedule import hash_parts
from p2pfl.identity import Identity
from p2pfl.learning.strategy import GroupResult, hash_vector
from p2pfl.wire import PeerId

from .adversary import Adversary, AttackContext
from .aggregation import (
    AggregationContext,
    AggregationEvidence,
    AggregationFactory,
    Contribution,
    GroupAborted,
    GroupAggregation,
    GroupSumReady,
)
from .config import Federation
from .events import (
    BROADCAST,
    GroupOutcome,
    GroupResolved,
    Misbehaviour,
    Outgoing,
    RoundCompleted,
    RoundEvent,
    RoundFailed,
    RoundRecord,
    TrainRequested,
    clip_update,
)
from .messages import (
    ABORT_DOMAIN,
    RESULT_DOMAIN,
    AbortBody,
    Endorsement,
    GroupPayload,
    ResultBody,
    SignatureReply,
    SignedGroupAbort,
    SignedGroupResult,
    SignRequest,
    digest_of,
    endorse,
)
from .plaintext import PlaintextAggregation
from .results import OutOfSync, RoundView, VerifiedResult, check_body, verify_abort, verify_result
from .schedule import Group, RoundSchedule
from .state import GlobalState

__all__ = ["TRANSITIONS", "RoundMachine", "RoundState"]

_MAX_BUFFER: Final = 4096
_VERIFIED_MAX: Final = 1024  # verified results remembered per process (a few rounds' worth)
_VerifiedEntry = tuple[SignedGroupResult, RoundView, VerifiedResult]
_VERIFIED: BoundedLru[tuple[int, int, bytes, int, int], _VerifiedEntry] = BoundedLru(_VERIFIED_MAX)


def verify_result_once(view: RoundView, msg: SignedGroupResult,
                       sender: PeerId | None = None) -> VerifiedResult:
    """:func:`~p2pfl.federation.results.verify_result`, remembered per process for an
    immutable message object.

    A broadcast result is decoded once per process (the driver's decode memo), so the
    N peers of a simulation hand the very same object here; verifying it is a pure
    function of the message and the view (federation, schedule, base state, dimension),
    and the sender only names the culprit of a failure.  A success is kept, keyed on
    the identities of the message, schedule and federation, which the entry holds (so
    that an id cannot be reused while it is in the memo); failures are recomputed every
    time.  Only messages whose sum cannot change (read-only, as the codec builds them)
    are kept.
    """
    key = (id(msg), id(view.schedule), view.base_state, view.dim, id(view.federation))
    e = _VERIFIED.get(key)
    if e is not None and e[0] is msg and e[1].schedule is view.schedule and (
            e[1].federation is view.federation):
        return e[2]
    vr = verify_result(view, msg, sender)
    if not msg.body.update_sum.flags.writeable:
        _VERIFIED.put(key, (msg, view, vr))
    return vr


class RoundState(enum.Enum):
    WAITING = "waiting"
    TRAINING = "training"
    AGGREGATING = "aggregating"
    COMBINING = "combining"
    DONE = "done"
    FAILED = "failed"


S = RoundState
TRANSITIONS: Final[dict[RoundState, frozenset[RoundState]]] = {
    S.WAITING: frozenset({S.TRAINING, S.COMBINING, S.FAILED}),
    S.TRAINING: frozenset({S.AGGREGATING, S.COMBINING, S.FAILED}),
    S.AGGREGATING: frozenset({S.COMBINING, S.FAILED}),
    S.COMBINING: frozenset({S.DONE, S.FAILED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
}


@dataclass
class _Slot:
    """This peer's knowledge of one group's outcome."""

    group: Group
    result: VerifiedResult | None = None
    aborts: dict[PeerId, str] = field(default_factory=dict)
    abort_msgs: list[SignedGroupAbort] = field(default_factory=list)
    announced: bool = False

    @property
    def resolved(self) -> bool:
        return self.result is not None or set(self.aborts) >= set(self.group.aggregators)


@dataclass
class _Publication:
    """An aggregator's own result (or abort) on its way to a broadcast."""

    body: ResultBody | None
    abort_reason: str
    digest: bytes
    act_at: float  # when to start (takeover time for rank > 0)
    sigs: dict[PeerId, Endorsement] = field(default_factory=dict)
    sign_deadline: float | None = None  # set while collecting signatures
    done: bool = False


class RoundMachine:
    """One peer's round ``state.round`` (see the module docstring)."""

    def __init__(
        self,
        federation: Federation,
        identity: Identity,
        state: GlobalState,
        schedule: RoundSchedule,
        *,
        aggregation: AggregationFactory = PlaintextAggregation,
        rng: Rng | None = None,
        weight_factor: float = 1.0,
        public_key: Callable[[PeerId], bytes | None] | None = None,
        reference: np.ndarray | None = None,
        weight_of: Callable[[PeerId], float] | None = None,
        adversary: Adversary | None = None,
    ) -> None:
        if state.federation_id != federation.id:
            raise LocalProtocolError("global state belongs to another federation")
        if schedule.round != state.round or schedule.beacon != state.beacon:
            raise LocalProtocolError("schedule was computed for another round or beacon")
        if not 0.0 <= weight_factor <= 1.0:
            raise LocalProtocolError(f"weight_factor must be in [0, 1], got {weight_factor}")
        self.federation = federation
        self.identity = identity
        self.me = identity.peer_id
        self.base = state
        self.schedule = schedule
        self.view = RoundView(federation, schedule, state.digest, state.dim)
        self.group = schedule.group_of(self.me)
        self.rank = self.group.rank(self.me) if self.group else None
        self._factory = aggregation
        self._rng = rng if rng is not None else SystemRng()
        self._weight_factor = float(weight_factor)
        self._reference = reference
        self._weight_of = weight_of if weight_of is not None else (lambda peer: 1.0)
        self._adversary = adversary
        self._public_key = public_key if public_key is not None else self._listed_key
        self._signed: dict[PeerId, bytes] = {}  # aggregator -> digest we endorsed for it
        self._state = RoundState.WAITING
        self._sub: GroupAggregation | None = None
        self._slots = {g.index: _Slot(g) for g in schedule.groups}
        self._pub: _Publication | None = None
        self._buffer: list[tuple[PeerId, object]] = []
        self._outbox: list[Outgoing] = []
        self._events: list[RoundEvent] = []
        self._out_of_sync: list[str] = []
        self._input_deadline = math.inf
        self._round_deadline = math.inf
        self.result: RoundCompleted | None = None

    # -- introspection ------------------------------------------------------

    @property
    def state(self) -> RoundState:
        return self._state

    @property
    def round(self) -> int:
        return self.schedule.round

    @property
    def finished(self) -> bool:
        return self._state in (RoundState.DONE, RoundState.FAILED)

    def _goto(self, new: RoundState) -> None:
        if new not in TRANSITIONS[self._state]:
            old, self._state = self._state, RoundState.FAILED
            self._events.append(RoundFailed(self.round, f"illegal transition {old.name} -> {new.name}"))
            raise LocalProtocolError(f"illegal round transition {old.name} -> {new.name}")
        self._state = new

    # -- inputs from the driver ---------------------------------------------

    def start(self, now: float) -> None:
        """Begin the round at ``now``: deadlines count from here."""
        t = self.federation.timeouts
        self._input_deadline = now + t.train
        self._round_deadline = now + t.round
        if self.group is None:
            self._goto(RoundState.COMBINING)
        else:
            self._goto(RoundState.TRAINING)
            ctx = AggregationContext(
                federation=self.federation, round=self.round, group=self.group, me=self.me,
                identity=self.identity, context=self.context(self.group.index),
                threshold=self.federation.threshold_for(len(self.group)), dim=self.base.dim,
                start=now, input_deadline=self._input_deadline, rng=self._rng,
                public_key=self._public_key, reference=self._reference,
                weight_of=self._weight_of, adversary=self._adversary,
            )
            self._sub = self._factory(ctx)
            self._pump(now)  # a backend may queue messages at construction (round keys)
            seed = int.from_bytes(hash_parts(self.base.beacon, b"train", self.me.raw)[:8], "little") >> 1
            self._events.append(
                TrainRequested(self.round, self.base.model, seed, self.federation.strategy.prox_mu)
            )
        buffered, self._buffer = self._buffer, []
        for sender, msg in buffered:
            try:
                self.receive(sender, msg, now)
            except RemoteProtocolError as e:
                self._events.append(Misbehaviour(sender, str(e)))
        self._maybe_finish(now)

    def _listed_key(self, peer: PeerId) -> bytes | None:
        if peer == self.me:
            return self.identity.public_key
        return self.federation.membership.public_key(peer)

    def context(self, group_index: int) -> bytes:
        """The 32-byte context binding a group's protocol to this round's inputs."""
        return hash_parts(b"p2pfl/group-ctx/1", self.federation.id, struct.pack("<QQ", self.round, group_index),
                  self.schedule.digest, self.view.base_state)

    def weight(self, num_samples: int) -> float:
        """This peer's aggregation weight in [0, 1] for ``num_samples`` local samples."""
        u = self.federation.update
        base = 1.0 if u.weighting == "uniform" else min(num_samples, u.sample_cap) / u.sample_cap
        return base * self._weight_factor

    def training_done(self, update: np.ndarray, num_samples: int, now: float) -> bool:
        """Hand in the local update ``w_local − w_global`` (D,). Returns False when it
        came too late (the round moved on without it).

        Raises :class:`LocalProtocolError` when this peer is not in the cohort, was
        not asked to train, or the update is malformed.
        """
        if self.group is None or self._state is RoundState.WAITING:
            raise LocalProtocolError("training_done without a TrainRequested")
        if self._state is not RoundState.TRAINING:
            return False
        u = np.asarray(update)
        if u.shape != (self.base.dim,) or not np.issubdtype(u.dtype, np.floating) or not np.isfinite(u).all():
            raise LocalProtocolError(f"update must be a finite float vector of shape ({self.base.dim},)")
        try:
            num_samples = operator.index(num_samples)
        except TypeError:
            raise LocalProtocolError(f"num_samples must be an int, got {num_samples!r}") from None
        if num_samples < 0:
            raise LocalProtocolError(f"num_samples must be >= 0, got {num_samples}")
        if self._adversary is not None:  # a simulated attacker: submits without clipping
            seed = hash_parts(self.base.beacon, b"attack", self.me.raw)
            actx = AttackContext(self.round, self.me, self.base.model, self._reference,
                                 num_samples, self.federation.update.clip_norm,
                                 np.random.default_rng(int.from_bytes(seed[:16], "little")))
            x = np.asarray(self._adversary.update(u, actx), dtype=np.float32)
            if x.shape != u.shape or not np.isfinite(x).all():
                raise LocalProtocolError("the adversary returned a malformed update")
        else:
            x = clip_update(u, self.federation.update.clip_norm)
        assert self._sub is not None
        self._sub.submit(Contribution(x, self.weight(num_samples), num_samples), now)
        self._goto(RoundState.AGGREGATING)
        self._pump(now)
        self._maybe_finish(now)
        return True

    def receive(self, sender: PeerId, msg: object, now: float) -> None:
        """Feed a message from ``sender`` (authenticated by the link or overlay).

        Raises :class:`RemoteProtocolError` (or its subclass :class:`OutOfSync`) for
        invalid input; the machine stays consistent and usable.
        """
        if self._state is RoundState.WAITING:
            if len(self._buffer) < _MAX_BUFFER:
                self._buffer.append((sender, msg))
            return
        if self.finished:
            return
        try:
            if isinstance(msg, GroupPayload):
                self._on_payload(sender, msg, now)
            elif isinstance(msg, SignRequest):
                self._on_sign_request(sender, msg, now)
            elif isinstance(msg, SignatureReply):
                self._on_signature(sender, msg, now)
            elif isinstance(msg, SignedGroupResult):
                self._on_result(sender, msg, now)
            elif isinstance(msg, SignedGroupAbort):
                self._on_abort(sender, msg, now)
            else:
                raise RemoteProtocolError(f"unexpected {type(msg).__name__} in a round", peer=sender)
        except OutOfSync as e:
            self._out_of_sync.append(str(e))
            raise
        finally:
            self._maybe_finish(now)

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that is due at ``now``."""
        if self._state is RoundState.WAITING or self.finished:
            return
        if self._sub is not None:
            self._sub.handle_timer(now)
            self._pump(now)
        if self._state is RoundState.TRAINING and now >= self._input_deadline:
            self._goto(RoundState.AGGREGATING)
        pub = self._pub
        if pub is not None and not pub.done:
            if pub.sign_deadline is None and now >= pub.act_at:
                self._act(now)
            elif pub.sign_deadline is not None and now >= pub.sign_deadline:
                self._publish(now)
        if now >= self._round_deadline:
            self._finalize(now)
        else:
            self._maybe_finish(now)

    def next_deadline(self) -> float | None:
        """The earliest time ``handle_timer`` has something to do, or None."""
        if self._state is RoundState.WAITING or self.finished:
            return None
        times = [self._round_deadline]
        if self._sub is not None and (d := self._sub.next_deadline()) is not None:
            times.append(d)
        if self._state is RoundState.TRAINING:
            times.append(self._input_deadline)
        pub = self._pub
        if pub is not None and not pub.done:
            times.append(pub.act_at if pub.sign_deadline is None else pub.sign_deadline)
        return min(times)

    def send_failed(self, recipient: PeerId, now: float) -> None:
        """A direct message to ``recipient`` could not be delivered."""
        if self._sub is not None and not self.finished:
            self._sub.send_failed(recipient, now)
            self._pump(now)

    def outcomes(self) -> tuple[tuple[SignedGroupResult, ...], tuple[SignedGroupAbort, ...]]:
        """The best result of each group and every abort accepted so far (what a
        neighbour serves a late joiner with the state, see :mod:`.sync`)."""
        slots = [self._slots[i] for i in sorted(self._slots)]
        results = tuple(s.result.msg for s in slots if s.result is not None)
        return results, tuple(m for s in slots for m in s.abort_msgs)

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> RoundEvent | None:
        return self._events.pop(0) if self._events else None

    # -- the group sub-machine ----------------------------------------------

    def _on_payload(self, sender: PeerId, msg: GroupPayload, now: float) -> None:
        if msg.federation != self.federation.id or msg.round != self.round:
            raise RemoteProtocolError("group payload for another federation or round", peer=sender)
        if self.group is None or msg.group != self.group.index or sender not in self.group:
            raise RemoteProtocolError("group payload from outside our group", peer=sender)
        assert self._sub is not None
        try:
            self._sub.receive(sender, msg.payload, now)
        finally:
            self._pump(now)

    def _pump(self, now: float) -> None:
        sub = self._sub
        if sub is None or self.group is None:
            return
        fid, r, g = self.federation.id, self.round, self.group.index
        for to, payload in sub.messages_to_send():
            self._outbox.append(Outgoing(to, GroupPayload(fid, r, g, payload)))
        while (ev := sub.next_event()) is not None:
            if isinstance(ev, GroupSumReady):
                self._on_sum_ready(ev, now)
            elif isinstance(ev, GroupAborted):
                self._on_sub_abort(ev.reason, now)
            elif isinstance(ev, AggregationEvidence):
                self._events.append(Misbehaviour(ev.peer, ev.reason))

    def _body(self, ev: GroupSumReady) -> ResultBody:
        assert self.group is not None
        return ResultBody(
            self.federation.id, self.round, self.group.index, self.schedule.digest,
            self.view.base_state, tuple(ev.included), tuple(ev.dropped), tuple(ev.excluded),
            np.asarray(ev.update_sum, dtype=np.float64), float(ev.total_weight),
            int(ev.total_samples), ev.detection,
        )

    def _delay(self) -> float:
        t = self.federation.timeouts
        return (self.rank or 0) * (t.sign + t.failover)

    def _on_sum_ready(self, ev: GroupSumReady, now: float) -> None:
        if self.rank is None or self._pub is not None:
            return  # only an aggregator publishes, once
        body = self._body(ev)
        try:
            check_body(self.view, body)
        except RemoteProtocolError as e:
            self._on_sub_abort(f"backend produced an invalid result: {e}", now)
            return
        digest = digest_of(body)
        self._pub = _Publication(body, "", digest, now + self._delay())
        self._pub.sigs[self.me] = endorse(self.identity, RESULT_DOMAIN, digest)
        if self.rank == 0:
            self._act(now)

    def _on_sub_abort(self, reason: str, now: float) -> None:
        if self.rank is None or self._pub is not None:
            return
        self._pub = _Publication(None, reason, b"", now + self._delay())
        if self.rank == 0:
            self._act(now)

    def _our_slot(self) -> _Slot | None:
        return self._slots[self.group.index] if self.group is not None else None

    def _act(self, now: float) -> None:
        """Our turn as aggregator: ask for signatures, or announce the abort."""
        pub, slot = self._pub, self._our_slot()
        assert pub is not None and slot is not None and self.group is not None
        if slot.result is not None:
            pub.done = True  # someone with a better rank already published
            return
        if pub.body is None:
            self._broadcast_abort(pub.abort_reason, now)
            return
        pub.sign_deadline = now + self.federation.timeouts.sign
        req = SignRequest(pub.body, pub.sigs[self.me])
        for p in self.group.members:
            if p != self.me:
                self._outbox.append(Outgoing(p, req))
        if set(pub.body.included) <= set(pub.sigs):
            self._publish(now)

    def _publish(self, now: float) -> None:
        pub, slot = self._pub, self._our_slot()
        assert pub is not None and pub.body is not None and slot is not None
        pub.done = True
        quorum = self.view.quorum(slot.group)
        if len(pub.sigs) < quorum:
            self._broadcast_abort(f"{len(pub.sigs)} member signatures, quorum {quorum}", now)
            return
        ends = tuple(sorted(pub.sigs.values(), key=lambda e: e.public_key))
        msg = SignedGroupResult(pub.body, ends)
        self._outbox.append(Outgoing(BROADCAST, msg))
        self._on_result(self.me, msg, now)

    def _broadcast_abort(self, reason: str, now: float) -> None:
        assert self.group is not None and self._pub is not None
        self._pub.done = True
        body = AbortBody(self.federation.id, self.round, self.group.index, self.schedule.digest,
                         self.view.base_state, reason[:256])
        msg = SignedGroupAbort(body, endorse(self.identity, ABORT_DOMAIN, digest_of(body)))
        self._outbox.append(Outgoing(BROADCAST, msg))
        self._on_abort(self.me, msg, now)

    # -- signatures ---------------------------------------------------------

    def _on_sign_request(self, sender: PeerId, msg: SignRequest, now: float) -> None:
        group = check_body(self.view, msg.body, sender)
        if self.group is None or group.index != self.group.index:
            raise RemoteProtocolError("sign request for a group we are not in", peer=sender)
        digest = digest_of(msg.body)
        e = msg.endorsement
        sender_rank = group.rank(sender)
        if e.signer != sender or sender_rank is None or not e.valid(RESULT_DOMAIN, digest):
            raise RemoteProtocolError("sign request not endorsed by a group aggregator", peer=sender)
        pub = self._pub
        if (pub is not None and not pub.done and pub.sign_deadline is None and self.rank is not None
                and sender_rank < self.rank):
            pub.act_at = max(pub.act_at, now + self._delay_after_request())
        earlier = self._signed.get(sender)
        if earlier is not None and earlier != digest:
            raise RemoteProtocolError("aggregator asked to sign two different results", peer=sender)
        assert self._sub is not None
        b = msg.body
        reason = self._sub.check_result(GroupSumReady(
            b.update_sum, b.included, b.total_weight, b.total_samples, b.dropped, b.excluded,
            b.detection))
        if reason is not None:
            self._events.append(Misbehaviour(sender, f"refused to sign: {reason}"))
            return
        self._signed[sender] = digest
        mine = endorse(self.identity, RESULT_DOMAIN, digest)
        self._outbox.append(Outgoing(sender, SignatureReply(
            self.federation.id, self.round, group.index, digest, mine)))

    def _delay_after_request(self) -> float:
        t = self.federation.timeouts
        return t.sign + t.failover

    def _on_signature(self, sender: PeerId, msg: SignatureReply, now: float) -> None:
        if msg.federation != self.federation.id or msg.round != self.round:
            raise RemoteProtocolError("signature for another federation or round", peer=sender)
        pub = self._pub
        if pub is None or pub.body is None or pub.done or msg.digest != pub.digest:
            return  # late or for a body we no longer publish: harmless
        e = msg.endorsement
        group = self.group
        if group is None or e.signer != sender or sender not in group or not e.valid(
            RESULT_DOMAIN, pub.digest
        ):
            raise RemoteProtocolError("invalid result signature", peer=sender)
        pub.sigs[sender] = e
        if set(pub.body.included) <= set(pub.sigs):
            self._publish(now)

    # -- results and aborts -------------------------------------------------

    def _on_result(self, sender: PeerId, msg: SignedGroupResult, now: float) -> None:
        vr = verify_result_once(self.view, msg, sender)
        slot = self._slots[vr.group.index]
        old = slot.result
        if old is not None and old.digest == vr.digest:
            merged = {e.public_key: e for e in (*old.msg.endorsements, *msg.endorsements)}
            ends = tuple(merged[k] for k in sorted(merged))
            slot.result = VerifiedResult(SignedGroupResult(msg.body, ends), vr.group, vr.digest,
                                         old.signers | vr.signers, min(old.rank, vr.rank))
        elif old is None or vr.rank < old.rank:
            slot.result = vr
        else:
            return
        self._cross_check(vr)
        self._resolved(slot, now)

    def _cross_check(self, vr: VerifiedResult) -> None:
        pub = self._pub
        if self.group is None or vr.group.index != self.group.index or pub is None:
            return
        if not pub.done:
            pub.done = True  # stand down: a result for our group is out
        if pub.body is not None and pub.digest != vr.digest and self._sub is not None:
            b = vr.msg.body
            reason = self._sub.check_result(GroupSumReady(
                b.update_sum, b.included, b.total_weight, b.total_samples, b.dropped, b.excluded,
                b.detection))
            if reason is not None:
                for p in vr.signers:
                    if vr.group.rank(p) is not None:
                        self._events.append(Misbehaviour(p, f"published group result: {reason}"))

    def _on_abort(self, sender: PeerId, msg: SignedGroupAbort, now: float) -> None:
        group, signer = verify_abort(self.view, msg, sender)
        slot = self._slots[group.index]
        if signer not in slot.aborts:
            slot.aborts[signer] = msg.body.reason
            slot.abort_msgs.append(msg)
        self._resolved(slot, now)

    def _resolved(self, slot: _Slot, now: float) -> None:
        if not slot.resolved:
            return
        if not slot.announced:
            slot.announced = True
            reason = "" if slot.result is not None else "; ".join(sorted(set(slot.aborts.values())))
            self._events.append(GroupResolved(self.round, slot.group.index,
                                              slot.result is not None, reason))
        if self.group is not None and slot.group.index == self.group.index and self._state in (
            RoundState.TRAINING, RoundState.AGGREGATING
        ):
            self._goto(RoundState.COMBINING)

    # -- the global step ----------------------------------------------------

    def _maybe_finish(self, now: float) -> None:
        if self._state is RoundState.COMBINING and all(s.resolved for s in self._slots.values()):
            self._finalize(now)

    def _finalize(self, now: float) -> None:
        if self.finished:
            return
        if self._state in (RoundState.TRAINING, RoundState.AGGREGATING):
            self._goto(RoundState.COMBINING)
        accepted = [self._slots[i].result for i in sorted(self._slots)]
        chosen = [r for r in accepted if r is not None]
        if not chosen and self._out_of_sync:
            self._fail(f"out of sync: {self._out_of_sync[0]}")
            return
        results = [GroupResult(r.group.index, r.msg.body.update_sum, r.msg.body.total_weight,
                               r.msg.body.total_samples) for r in chosen]
        try:
            model, sstate = self.federation.strategy.apply(
                self.base.model, results, self.base.strategy_state)
        except ValueError as e:
            self._fail(f"strategy step failed: {e}")
            return
        model.flags.writeable = False
        outcomes = tuple(self._outcome(s) for _, s in sorted(self._slots.items()))
        record = RoundRecord(self.round, self.base.beacon, self.schedule.digest, self.view.base_state,
                             outcomes, bytes.fromhex(hash_vector(model)), bool(chosen))
        self.result = RoundCompleted(record, model, sstate, tuple(r.msg for r in chosen), self.base)
        self._goto(RoundState.DONE)
        self._events.append(self.result)

    def _outcome(self, slot: _Slot) -> GroupOutcome:
        r = slot.result
        if r is not None:
            b = r.msg.body
            return GroupOutcome(slot.group.index, "accepted", r.digest, b.included, b.dropped,
                                b.total_weight, b.total_samples, tuple(sorted(r.signers)))
        if slot.aborts:
            return GroupOutcome(slot.group.index, "aborted",
                                reason="; ".join(sorted(set(slot.aborts.values()))))
        return GroupOutcome(slot.group.index, "missing", reason="no result before the round deadline")

    def _fail(self, reason: str) -> None:
        self._goto(RoundState.FAILED)
        self._events.append(RoundFailed(self.round, reason))
