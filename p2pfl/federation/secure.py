"""Secure group aggregation: the :mod:`mpc.secagg` machines behind ``GroupAggregation``.

Theory of operation
-------------------
For one (round, group), every member runs an :class:`mpc.secagg.Member`; a peer that
is also one of the group's aggregators runs an :class:`mpc.secagg.Aggregator` next to
it.  :class:`SecureAggregation` is the adapter between those sans-I/O machines and the
round machine (:mod:`p2pfl.federation.round`), which does not know the difference
from the plaintext backend:

* **Parties.**  Party index = position in ``group.members`` (sorted by peer id).
  Aggregators are group members in rank order, so their party index is their member
  index (``GroupConfig.aggregators``), and a peer's two machines share that index.
  Messages between a peer's own member and aggregator are delivered locally; the
  others are encoded with :mod:`p2pfl.federation._secure_wire` (tags 0x0401–0x0412)
  into the round's opaque payloads.  A received payload is routed by the message's
  ``TO_AGGREGATOR`` flag.
* **Signatures.**  The machines sign with the peer's Ed25519 identity under the
  domain ``p2pfl/secagg/1/<federation id hex>``; every transcript they sign also
  carries ``ctx.context`` (federation, round, group, schedule, base state).  A
  signature of party i verifies only against a public key (``ctx.public_key``) whose
  peer id *is* member i.
* **Input.**  The contribution ``(x, w, n)`` becomes one ring vector of ``dim + 4``
  coordinates: ``Q(w_q · x)`` (:func:`mpc.quant.quantize`: per-coordinate clip
  ``quant_range``, stochastic rounding, ``log2(group size)`` bits of headroom), then
  ``W = round(w · 2**kw)`` with ``w_q = W / 2**kw`` and ``kw`` the largest power such
  that ``group size · 2**kw < 2**32``, then ``n`` in three 16-bit limbs (``n`` is
  capped at ``2**48 - 1``).  So ``Σ w`` and ``Σ n`` over the *included* set come out
  of the protocol itself, like the sum: no member reports totals that others trust.
* **Deadlines** come from the federation: keys and shares ``max(stage, train / 3)``
  each (peers start a round when *they* learn the previous outcome, seconds apart),
  masked inputs until ``ctx.input_deadline`` (``start + train``), then consistency
  and unmasking ``2.5 * stage`` each, with a grace of ``2 * stage`` for members
  waiting on aggregators.  Members wait for every aggregator's announcement until the
  consistency deadline, then accept one (``GroupConfig.quorum = 1``) when the
  threshold is a strict majority: a dead replica does not abort the group, a primary
  that dies before its stage-2 decisions does, while
  losing the primary after the output is covered by the replica, which unmasks on
  its own and publishes after the round's failover delay.
* **Output.**  An aggregator's ``OutputReady`` becomes :class:`GroupSumReady`: the
  first ``dim`` coordinates dequantized to float64 (``Σ w_q x`` up to rounding), the
  weight and sample coordinates decoded exactly.  Both aggregators sum the same
  integers, so their events are bit-identical.  ``Aborted`` of the aggregator is
  :class:`GroupAborted`; evidence of either machine is :class:`AggregationEvidence`.
* **Co-signing** (:meth:`SecureAggregation.check_result`).  A member endorses a
  result only if its (included, dropped, excluded) sets are exactly those it signed in
  the consistency stage; a member that signed none endorses only results that leave
  it out unless it did send a masked input.  A replica also refuses any sum, weight or
  count that differs from its own output; plain members cannot check the sum (a
  forged sum over the right sets is reported by the replica, not prevented: that is
  the sketch stage's binding check).

Quantization error: each member's coordinates are within one step ``quant_range /
L`` of ``w_q x`` (``L = (2**(bits-1) - 1) // group size``), so ``update_sum`` is within
``m · quant_range / L`` of ``Σ w_q x`` over ``m`` included members, and ``|w - w_q|
<= 2**-(kw+1)``.  Malicious members can still put any value in their coordinates
(including the weight and count), bounded only by the ring: detection is the job of
the sketch stage, which this backend does not configure yet.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from mpc.quant import QuantParams, dequantize_sum, quantize
from mpc.secagg import (
    Aborted,
    Aggregator,
    ConsistencySig,
    EvidenceFound,
    GroupConfig,
    MaskedInput,
    Member,
    Message,
    OutputReady,
    ProtocolError,
    SketchConfig,
    SketchScore,
    Timeouts,
)
from mpc.sketch import SketchMap
from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.identity import verify_signature
from p2pfl.wire import PeerId

from ._secure_wire import decode_payload, encode_message
from .aggregation import (
    AggregationContext,
    AggregationEvent,
    AggregationEvidence,
    Contribution,
    GroupAborted,
    GroupSumReady,
    same_sum,
)
from .audit import detection_scores
from .messages import DetectionScores
from .policy import decide_exclusions

__all__ = [
    "EXTRA_COORDS",
    "SAMPLE_CAP",
    "SecureAggregation",
    "group_config",
    "signature_domain",
    "weight_bits",
]

SAMPLE_LIMBS: Final = 3
_LIMB_BITS: Final = 16
EXTRA_COORDS: Final = 1 + SAMPLE_LIMBS
"""Ring coordinates appended to the update: the weight, then the sample-count limbs."""
SAMPLE_CAP: Final = (1 << (_LIMB_BITS * SAMPLE_LIMBS)) - 1
"""Largest sample count carried through the protocol (larger counts are capped)."""
_MAX_TOTAL_SAMPLES: Final = 2**62  # ResultBody.total_samples bound
EXCLUDED_REASON: Final = "excluded by the group's scoring policy"
_RING_MAX: Final = 1 << 31  # |signed ring value| of any member input
_MAX_MEMO: Final = 1 << 14  # verified (party, transcript, signature) triples kept


def signature_domain(federation_id: bytes) -> bytes:
    """The Ed25519 domain of every signature made inside the secure-aggregation
    protocol of one federation."""
    return b"p2pfl/secagg/1/" + federation_id.hex().encode()


def weight_bits(group_size: int) -> int:
    """``kw``: weights are carried as ``round(w · 2**kw)``, the largest power of two
    for which ``group_size`` of them cannot exceed ``2**32 - 1``."""
    return ((2**32 - 1) // group_size).bit_length() - 1


def group_config(ctx: AggregationContext) -> GroupConfig:
    """The :class:`mpc.secagg.GroupConfig` of ``ctx``'s group (see the module docstring).

    Raises ``ValueError`` when the federation's parameters do not fit the protocol
    (e.g. a threshold above a SecAgg+ holder set of ``neighbours + 1``).
    """
    members = ctx.group.members
    t = ctx.federation.timeouts
    stage = t.stage
    window = ctx.input_deadline - ctx.start
    if window > 2 * stage:
        # peers start a round when *they* learn the previous one's outcome, so starts
        # differ by seconds (gossip repair, a restarted peer's pull): a window of a
        # third of the input window admits the keys of members that start late
        keys = shares = max(stage, window / 3)
    else:  # a federation configured for plaintext: keep the masked window open
        keys = shares = window / 4
    # ... and the grace covers an aggregator that starts late (members wait for its
    # relays until their own window's close plus the grace). The post-input budget
    # the federation guarantees is 5 * stage (config: timeouts.round), of which
    # consistency and unmasking take 2.5 each; the grace must stay below them.
    grace = 2 * stage
    post = 2.5 * stage
    k = ctx.federation.secagg.neighbours
    det = ctx.federation.detection
    sketch = None
    if det.enabled:
        bound = (ctx.dim * det.nnz * _RING_MAX) ** 2  # ||S x||^2 <= ||S x||_1^2, any ring input
        # norms and pairs open from 2 t_s - 1 validators: with t_s = ceil(t / 2) every
        # group that can unmask (t survivors) can also score
        sketch = SketchConfig(rows=det.rows, threshold=max(1, (ctx.threshold + 1) // 2),
                              with_reference=True, primes=SketchConfig.primes_for(bound),
                              pairwise=True)
    return GroupConfig(
        context=ctx.context,
        n=len(members),
        threshold=ctx.threshold,
        dim=ctx.dim + EXTRA_COORDS,
        aggregators=tuple(members.index(a) for a in ctx.group.aggregators),
        k=k if k > 0 else None,
        # Members wait for every aggregator's announcement until the consistency
        # deadline; past it, one suffices when the threshold is a strict majority:
        # two different survivor sets can then not both collect t member
        # signatures from honest members (each signs once), so a dead replica
        # no longer aborts the group.
        quorum=1 if 2 * ctx.threshold > len(members) else None,
        timeouts=Timeouts(keys=keys, shares=shares, masked=window - keys - shares,
                          sketch_shares=stage, scores=stage,
                          consistency=post, unmask=post, grace=grace),
        sketch=sketch,
    )


def _check(contribution: Contribution, dim: int) -> str | None:
    u = contribution.update
    if not isinstance(u, np.ndarray) or u.dtype != np.float32 or u.shape != (dim,):
        return f"update must be float32 of shape ({dim},)"
    if not np.isfinite(u).all():
        return "update has non-finite values"
    w = contribution.weight
    if not isinstance(w, int | float) or not math.isfinite(w) or not 0 <= w <= 1:
        return f"weight must be in [0, 1], got {w!r}"
    n = contribution.num_samples
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return f"num_samples must be an int >= 0, got {n!r}"
    return None


class SecureAggregation:
    """The secure :class:`~p2pfl.federation.aggregation.GroupAggregation` (see the
    module docstring).  Use the class itself as the round's ``aggregation`` factory."""

    def __init__(self, ctx: AggregationContext) -> None:
        if ctx.me not in ctx.group:
            raise LocalProtocolError("a group aggregation needs this peer to be a member")
        self.ctx = ctx
        members = ctx.group.members
        self._party: dict[PeerId, int] = {p: i for i, p in enumerate(members)}
        self.index = self._party[ctx.me]
        self.is_aggregator = ctx.me in ctx.group.aggregators
        self._domain = signature_domain(ctx.federation.id)
        self._keys: dict[int, bytes] = {}
        self._verified: set[tuple[int, bytes, bytes]] = set()
        self._outbox: list[tuple[PeerId, bytes]] = []
        self._events: list[AggregationEvent] = []
        self._submitted = False
        self._sent_input = False
        self._signed_sets: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._own: GroupSumReady | None = None
        self.member_outcome = ""
        self.aggregator_outcome = ""
        self.member: Member | None = None
        self.aggregator: Aggregator | None = None
        self._kw = weight_bits(len(members))
        try:
            self.cfg: GroupConfig | None = group_config(ctx)
            s = ctx.federation.secagg
            self._params = QuantParams(clip=s.quant_range, bits=s.quant_bits,
                                       max_summands=len(members))
        except ValueError as e:  # every peer of the group computes the same failure
            self.cfg = None
            self.member_outcome = self.aggregator_outcome = f"unusable configuration: {e}"
            if self.is_aggregator:
                self._events.append(GroupAborted(self.aggregator_outcome))
            return
        cfg = self.cfg
        self._sketch_q: np.ndarray | None = None  # the signed vector we sketch
        self._map: tuple[bytes, SketchMap] | None = None
        self._ref_q: np.ndarray | None = None
        self._ref_z: tuple[bytes, np.ndarray] | None = None
        self.reasons: dict[int, str] = {}  # excluded member -> why (aggregators)
        self.scores: dict[int, SketchScore | None] = {}
        self.detection: DetectionScores | None = None  # what the policy saw (aggregators)
        if cfg.sketch is not None:
            if ctx.reference is not None:
                ref = np.clip(np.asarray(ctx.reference, dtype=np.float64), -s.quant_range,
                              s.quant_range)
                self._ref_q = np.rint(ref * self._params.scale).astype(np.int64)
            self.member = Member(cfg, self.index, ctx.rng, self._sign, self._verify,
                                 start=ctx.start, sketch=self._sketch,
                                 reference=self._reference)
        else:
            self.member = Member(cfg, self.index, ctx.rng, self._sign, self._verify,
                                 start=ctx.start)
        if self.is_aggregator:
            # without a sketch stage the primary never removes an input; a replica keeps
            # inputs to follow the primary's survivor set, and with exclusions both do
            self.aggregator = Aggregator(
                cfg, self.index, self._sign, self._verify, start=ctx.start,
                retain_inputs=self.index != cfg.primary or cfg.sketch is not None,
                decide_exclusions=self._decide if cfg.sketch is not None else None)
        self._pump(ctx.start)

    # -- signatures ---------------------------------------------------------

    def _sign(self, data: bytes) -> bytes:
        return self.ctx.identity.sign(self._domain, data)

    def _verify(self, party: int, data: bytes, sig: bytes) -> bool:
        key = self._keys.get(party)
        if key is None:
            members = self.ctx.group.members
            if not 0 <= party < len(members):
                return False
            peer = members[party]
            found = self.ctx.public_key(peer)
            if found is None or PeerId.from_public_key(found) != peer:
                return False
            key = self._keys[party] = found
        memo = (party, data, sig)
        if memo in self._verified:  # relayed and echoed signatures arrive many times
            return True
        ok = verify_signature(key, self._domain, data, sig)
        if ok and len(self._verified) < _MAX_MEMO:
            self._verified.add(memo)
        return ok

    # -- the sketch stage ---------------------------------------------------

    def sketch_map(self, seed: bytes) -> SketchMap:
        """The sketch map S of this group (drawn from the seed the commitments fix)."""
        if self._map is None or self._map[0] != seed:
            det = self.ctx.federation.detection
            self._map = (seed, SketchMap.from_seed(seed, self.ctx.dim, det.rows, det.nnz))
        return self._map[1]

    def _sketch(self, seed: bytes) -> np.ndarray:
        q = self._sketch_q
        if q is None:  # cannot happen: the sketch request follows our masked input
            raise LocalProtocolError("sketch requested before the input was set")
        return self.sketch_map(seed).apply(q)

    def _reference(self, seed: bytes) -> np.ndarray:
        """z_ref = S · Q(reference), once per seed (our member and aggregator both use it)."""
        if self._ref_z is None or self._ref_z[0] != seed:
            z = (np.zeros(self.ctx.federation.detection.rows, dtype=np.int64)
                 if self._ref_q is None else self.sketch_map(seed).apply(self._ref_q))
            self._ref_z = (seed, z)
        return self._ref_z[1]

    def norm_bound2(self, peer: PeerId) -> float:
        """The largest ||z||^2 allowed to ``peer``: the sketch of any update of L2 norm
        at most ``clip_norm`` at its public weight factor (rounding adds at most 1 per
        coordinate), times ``(1 + norm_slack)^2 * nnz`` for the map's distortion."""
        fed = self.ctx.federation
        det = fed.detection
        w = min(1.0, max(0.0, float(self.ctx.weight_of(peer))))
        q = self._params.scale * fed.update.clip_norm * w + math.sqrt(self.ctx.dim)
        return ((1.0 + det.norm_slack) * q) ** 2 * det.nnz

    def _decide(self, scores: Mapping[int, SketchScore | None], seed: bytes | None) -> set[int]:
        members = self.ctx.group.members
        ref_norm2 = None
        if seed is not None and self._ref_q is not None:
            zr = self._reference(seed)
            ref_norm2 = sum(int(v) * int(v) for v in zr.tolist())
        self.scores = dict(scores)
        bounds2 = {u: self.norm_bound2(members[u]) for u in scores}
        self.reasons = decide_exclusions(
            scores, bounds2=bounds2, ref_norm2=ref_norm2, params=self.ctx.federation.detection,
            name={u: members[u].short() for u in scores})
        self.detection = detection_scores(scores, bounds2, ref_norm2)
        return set(self.reasons)

    # -- inputs -------------------------------------------------------------

    def submit(self, contribution: Contribution, now: float) -> None:
        """Quantize our contribution and hand it to our member machine.

        Raises :class:`LocalProtocolError` on a second call or a malformed input.
        """
        if self._submitted:
            raise LocalProtocolError("contribution already submitted")
        problem = _check(contribution, self.ctx.dim)
        if problem:
            raise LocalProtocolError(problem)
        self._submitted = True
        if self.member is None:
            return
        q = self.encode_input(contribution)
        if self.cfg is not None and self.cfg.sketch is not None:
            signed = q[: self.ctx.dim].view(np.int32).astype(np.int64)
            adv = self.ctx.adversary
            self._sketch_q = signed if adv is None else np.asarray(adv.sketch_input(signed),
                                                                   dtype=np.int64)
        self.member.set_input(q, now)
        self._pump(now)

    def encode_input(self, contribution: Contribution) -> np.ndarray:
        """The ring vector (uint32, ``dim + EXTRA_COORDS``) carrying ``contribution``;
        draws the rounding randomness from ``ctx.rng``."""
        d = self.ctx.dim
        q = np.empty(d + EXTRA_COORDS, dtype=np.uint32)
        scaled = round(float(contribution.weight) * (1 << self._kw))
        quantize(contribution.update, self._params, self.ctx.rng, out=q[:d],
                 weight=scaled / (1 << self._kw))
        q[d] = scaled
        n = min(int(contribution.num_samples), SAMPLE_CAP)
        for i in range(SAMPLE_LIMBS):
            q[d + 1 + i] = (n >> (_LIMB_BITS * i)) & ((1 << _LIMB_BITS) - 1)
        return q

    def decode_output(self, total: np.ndarray) -> tuple[np.ndarray, float, int]:
        """(Σ w x as float64, Σ w, Σ n) from a ring sum of :meth:`encode_input` vectors."""
        d = self.ctx.dim
        update_sum = dequantize_sum(total[:d], self._params)
        update_sum.flags.writeable = False
        extra = [int(v) for v in total[d:]]
        weight = extra[0] / (1 << self._kw)
        samples = sum(v << (_LIMB_BITS * i) for i, v in enumerate(extra[1:]))
        return update_sum, weight, min(samples, _MAX_TOTAL_SAMPLES)

    def receive(self, sender: PeerId, payload: bytes, now: float) -> None:
        """Feed a payload from a group member to the machine it is for.

        Raises :class:`RemoteProtocolError` naming ``sender`` for a payload that does
        not decode or check, or an aggregator message sent to a peer that does not
        aggregate.  Bad content that decodes is reported as
        :class:`AggregationEvidence` by the machines instead.
        """
        party = self._party.get(sender)
        if party is None or party == self.index:
            raise RemoteProtocolError("secure aggregation payload from a non-member", peer=sender)
        if self.cfg is None or self.member is None:
            return  # this group cannot run; every member knows it
        msg = decode_payload(self.cfg, payload, sender)
        if msg.TO_AGGREGATOR:
            if self.aggregator is None:
                raise RemoteProtocolError(
                    f"{type(msg).__name__} sent to a peer that does not aggregate", peer=sender)
            self.aggregator.receive(party, msg, now)
        else:
            self.member.receive(party, msg, now)
        self._pump(now)

    # -- time ---------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        for m in self._machines():
            m.handle_timer(now)
        self._pump(now)

    def next_deadline(self) -> float | None:
        """The machines' next deadline; ``ctx.start`` while payloads queued at
        construction (our round keys) wait to be collected, so that a driver polling
        deadlines sends them at once rather than at the next input."""
        if self._outbox:
            return self.ctx.start
        times = [d for m in self._machines() if (d := m.next_deadline()) is not None]
        return min(times) if times else None

    # -- plumbing -----------------------------------------------------------

    def _machines(self) -> list[Member | Aggregator]:
        out: list[Member | Aggregator] = []
        if self.member is not None:
            out.append(self.member)
        if self.aggregator is not None:
            out.append(self.aggregator)
        return out

    def _pump(self, now: float) -> None:
        """Move our machines' output: to ourselves locally, to others encoded; turn
        their events into aggregation events."""
        members = self.ctx.group.members
        local: deque[Message] = deque()
        encoded: dict[tuple[Any, ...], bytes] = {}
        while True:
            for m in self._machines():
                for party, msg in m.messages_to_send():
                    if m is self.member:
                        self._observe(msg)
                    if party == self.index:
                        local.append(msg)
                    elif 0 <= party < len(members):
                        self._outbox.append((members[party], self._encode(msg, encoded)))
                while (ev := m.next_event()) is not None:
                    self._on_event(m, ev)
            if not local:
                return
            while local:
                msg = local.popleft()
                target = self.aggregator if msg.TO_AGGREGATOR else self.member
                if target is not None:
                    target.receive(self.index, msg, now)

    @staticmethod
    def _encode(msg: Message, cache: dict[tuple[Any, ...], bytes]) -> bytes:
        # the masked input goes to every aggregator as equal messages around one array
        if not isinstance(msg, MaskedInput):
            return encode_message(msg)
        key = (id(msg.y), msg.signature)
        data = cache.get(key)
        if data is None:
            data = cache[key] = encode_message(msg)
        return data

    def _observe(self, msg: Message) -> None:
        """Remember what our member committed to: its masked input, its signed sets."""
        if isinstance(msg, MaskedInput):
            self._sent_input = True
        elif isinstance(msg, ConsistencySig) and msg.echoes and self._signed_sets is None:
            self._signed_sets = msg.echoes[0].sets

    def _on_event(self, machine: Member | Aggregator, ev: object) -> None:
        members = self.ctx.group.members
        mine = machine is self.aggregator
        if isinstance(ev, EvidenceFound):
            e = ev.evidence
            if 0 <= e.accused < len(members) and e.accused != self.index:
                self._events.append(AggregationEvidence(
                    members[e.accused],
                    f"secagg {e.kind.value} ({e.stage.name.lower()}): {e.detail}"[:256]))
        elif isinstance(ev, OutputReady) and mine:
            self._on_output(ev)
        elif isinstance(ev, Aborted | ProtocolError):
            why = ev.reason if isinstance(ev, Aborted) else f"local error: {ev.report}"
            if mine:
                self.aggregator_outcome = why
                self._events.append(GroupAborted(f"secure aggregation aborted: {why}"))
            else:
                self.member_outcome = why

    def binding_failure(self, ev: OutputReady) -> str | None:
        """None when S · (group sum) equals the opened sum of the included members'
        sketches exactly, else why not (the ``binding:`` abort reason)."""
        agg = self.aggregator
        if self.cfg is None or self.cfg.sketch is None:
            return None
        seed = agg.sketch_seed if agg is not None else None
        if seed is None or ev.sketch_sum is None:
            return "binding: the included members' sketch sum could not be opened"
        total = ev.total[: self.ctx.dim].view(np.int32).astype(np.int64)
        expected = self.sketch_map(seed).apply(total)
        got = np.asarray(ev.sketch_sum)
        if got.shape != expected.shape:
            return "binding: the opened sketch sum has the wrong length"
        bad = int(np.count_nonzero(got != expected))  # exact: int64 or Python ints
        if bad:
            return (f"binding: the group sum does not match the sum of the sketches "
                    f"({bad} of {len(expected)} rows differ)")
        return None

    def _on_output(self, ev: OutputReady) -> None:
        members = self.ctx.group.members
        failure = self.binding_failure(ev)
        if failure is not None:
            self.aggregator_outcome = failure
            self._events.append(GroupAborted(failure))
            return
        update_sum, weight, samples = self.decode_output(ev.total)
        self._own = GroupSumReady(
            update_sum,
            tuple(members[i] for i in sorted(ev.included)),
            weight,
            samples,
            tuple(members[i] for i in sorted(ev.dropped)),
            tuple((members[i], self.reasons.get(i, EXCLUDED_REASON)[:256])
                  for i in sorted(ev.excluded)),
            self.detection,
        )
        self.aggregator_outcome = "output"
        self._events.append(self._own)

    # -- results ------------------------------------------------------------

    def check_result(self, result: GroupSumReady) -> str | None:
        """None when this member may endorse ``result``, else why not."""
        members = self.ctx.group.members
        included = tuple(result.included)
        if self._signed_sets is None:
            if self.ctx.me in included and not self._sent_input:
                return "the result includes this peer, which sent no masked input"
            return None
        survivors, excluded = (set(s) for s in self._signed_sets)
        want_included = tuple(members[i] for i in sorted(survivors - excluded))
        want_dropped = tuple(p for i, p in enumerate(members) if i not in survivors)
        want_excluded = tuple(members[i] for i in sorted(excluded))
        if (included != want_included or tuple(result.dropped) != want_dropped
                or tuple(p for p, _ in result.excluded) != want_excluded):
            return "the result's member sets differ from those this member signed"
        own = self._own
        if own is None:
            return None
        same = same_sum(result, own.update_sum, own.total_weight, own.total_samples)
        if not same:
            return "the sum differs from this replica's own output"
        if own.detection is not None and result.detection != own.detection:
            return "the recorded scores differ from those this replica opened"
        return None

    def messages_to_send(self) -> list[tuple[PeerId, bytes]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> AggregationEvent | None:
        return self._events.pop(0) if self._events else None

    def send_failed(self, recipient: PeerId, now: float) -> None:
        """Nothing to do: the protocol's deadlines treat an unreachable peer as
        dropped (or, for an aggregator, as silent)."""

    def statistics(self) -> dict[str, Any]:
        """Introspection: machine states and outcomes."""
        return {
            "party": self.index,
            "member_state": None if self.member is None else self.member.state.value,
            "aggregator_state": None if self.aggregator is None else self.aggregator.state.value,
            "member_outcome": self.member_outcome,
            "aggregator_outcome": self.aggregator_outcome,
            "late_messages": sum(m.late_messages for m in self._machines()),
        }
