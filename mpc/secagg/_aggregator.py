"""The aggregator's side: collect, relay, decide the sets, unmask, output.

Theory of operation
-------------------
The *primary* (``cfg.aggregators[0]``) runs the star topology of Bonawitz et al.:
it collects each window (keys, encrypted shares, masked inputs, sketch shares,
score shares, consistency signatures, unmask shares) until everything expected
arrived or the window's absolute deadline, then fixes the set of that stage
(U1, U2, U3, ...) and relays. A *replica* does the same work from the same member
uplinks (masked inputs, score shares, signatures, unmask shares go to every
aggregator) but takes U1, U2 and U3 from the primary's signed ``Decision`` so that
honest aggregators never diverge because of timing; it opens the scores and calls
the exclusion hook itself, announces its own signed (U3, E), collects its own
consistency signatures and unmasks independently, so the outputs can be
cross-checked. Members refuse to reveal unless every (quorum of) aggregator
announced the same sets; signed announcements echoed back by members let an honest
aggregator prove that another one equivocated.

State order: KEYS -> SHARES -> MASKED -> SKETCH -> SCORES -> CONSISTENCY -> UNMASK
-> DONE (SKETCH and SCORES only with a sketch stage; a replica passes SKETCH at
once). Survivors U3 are exactly the members whose masked input the primary got in
time: a member that drops after sending it is a survivor, and its self-mask is
removed with the shares of its holders.

Scoring (stage 3, :mod:`~mpc.secagg._aggregator_sketch`): validators' shares of each
survivor's sketch scores are opened modulo several primes and recombined into exact
integers for the exclusion hook; at unmask the included members' sketch sum is
opened the same way (``OutputReady.sketch_sum``, for the binding check). The states
and which state consumes each message are one table
(:mod:`~mpc.secagg._aggregator_state`).

Unmasking reconstructs each needed seed from exactly ``threshold`` shares, checks
every extra share, names holders whose shares are off the polynomial (and decodes
around them when the redundancy allows), checks each rebuilt s_sk against its
public key, then removes all masks in one fused pass over the accumulator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from mpc.prg import MaskExpander

from . import _crypto as cx
from ._aggregator_sketch import SketchStage
from ._aggregator_state import PHASE, STAGE, TRANSITIONS, AggState, consumer
from ._config import GroupConfig, Stage
from ._events import Evidence, EvidenceKind, OutputReady, SketchScore, StageReached
from ._machine import LocalProtocolError, RemoteError, Sign, Verify
from ._messages import (
    AbortNotice,
    Announce,
    Complaint,
    ConsistencySig,
    Decision,
    ForwardedInput,
    InputRequest,
    KeyBundle,
    MaskedInput,
    Message,
    ScoreShares,
    ShareKeys,
    ShareRelay,
    SigBundle,
    SignedKeys,
    SketchRequest,
    SketchShares,
    UnmaskShares,
    consistency_bytes,
    transcript,
)
from ._opening import open_seed
from ._reveal import feasible, needed_secrets

__all__ = ["AggState", "Aggregator", "ExclusionHook"]

ExclusionHook = Callable[
    [Mapping[int, SketchScore | None], bytes | None], "set[int] | frozenset[int]"
]
"""Policy: ``(scores, sketch_seed) -> members to exclude``. ``scores`` maps every
survivor to its opened :class:`SketchScore` (None: no sketch stage, or its scores
could not be opened); ``sketch_seed`` is the public seed of the sketch map (None
without a sketch stage), from which the policy can rebuild S and the reference."""

A = AggState


def _no_exclusions(
    scores: Mapping[int, SketchScore | None], sketch_seed: bytes | None
) -> frozenset[int]:
    return frozenset()


class Aggregator(SketchStage):
    """One aggregator of a group (``party`` in ``cfg.aggregators``).

    ``decide_exclusions`` is the exclusion policy (default: exclude nobody, see
    :data:`ExclusionHook`); it gets every survivor's opened scores (``None`` when
    there is no sketch stage or a score could not be opened) and the sketch seed, and
    must be deterministic, since every aggregator calls it. ``sketch_seed`` is set
    once U3 is fixed (with a sketch stage). ``retain_inputs=False`` adds masked inputs into the accumulator and
    forgets them (saves memory): a member that must then be removed from the sum
    (excluded, or outside the primary's U3 at a replica) aborts the round.
    """

    TRANSITIONS = TRANSITIONS
    TERMINAL = frozenset({A.DONE, A.ABORTED, A.ERROR})
    ERROR = A.ERROR
    ABORTED = A.ABORTED

    def __init__(
        self,
        cfg: GroupConfig,
        party: int,
        sign: Sign,
        verify: Verify,
        *,
        start: float,
        decide_exclusions: ExclusionHook | None = None,
        retain_inputs: bool = True,
        expander: MaskExpander | None = None,
    ) -> None:
        if party not in cfg.aggregators:
            raise ValueError("party is not an aggregator of this group")
        super().__init__(cfg, party, sign, verify, A.KEYS)
        self.primary = party == cfg.primary
        self._start = start
        self._now = start
        self._hook = decide_exclusions if decide_exclusions is not None else _no_exclusions
        self._retain = retain_inputs
        self._expander = expander if expander is not None else MaskExpander()
        self._keys: dict[int, SignedKeys] = {}
        self.u1: frozenset[int] = frozenset()
        self.u2: frozenset[int] = frozenset()
        self.u3: frozenset[int] | None = None
        self.excluded: frozenset[int] = frozenset()
        self._share_cts: dict[int, dict[int, bytes]] = {}
        self._acc: NDArray[np.uint32] | None = None
        self._in_acc: set[int] = set()
        self._inputs: dict[int, NDArray[np.uint32]] = {}
        self._commit: dict[int, tuple[bytes, bytes]] = {}
        self._sketch_cts: dict[int, dict[int, bytes]] = {}
        # validator -> (owner -> score shares, (u, v) -> pair shares)
        self._score_shares: dict[
            int, tuple[dict[int, tuple[int, ...]], dict[tuple[int, int], tuple[int, ...]]]
        ] = {}
        self.scores: dict[int, SketchScore | None] = {}
        self.sketch_seed: bytes | None = None
        self._announce: Announce | None = None
        self._seen: dict[int, dict[tuple[tuple[int, ...], tuple[int, ...]], Announce]] = {}
        self._u3_decision: Decision | None = None
        self._sigs: dict[int, bytes] = {}
        self.u4: frozenset[int] = frozenset()
        self._unmask: dict[int, UnmaskShares] = {}
        self._emit_stage_now(Stage.KEYS)

    # ------------------------------------------------------------ public API

    def next_deadline(self) -> float | None:
        """Absolute time at which the current window closes, or None when finished."""
        phase = PHASE.get(self._state)
        if phase is None:
            return None
        d = self.cfg.deadline(self._start, phase)
        waiting_decision = not self.primary and self._state in (A.KEYS, A.SHARES, A.MASKED)
        return d + self.cfg.timeouts.grace if waiting_decision else d

    @property
    def output_ready(self) -> bool:
        """True once the group sum was output."""
        return self._state is A.DONE

    # ------------------------------------------------------------ machine hooks

    def _emit_stage_now(self, stage: Stage) -> None:
        self._emit(StageReached(stage))

    def _stage_of(self, state: AggState) -> Stage | None:
        return STAGE.get(state)

    def _current_stage(self) -> Stage:
        return STAGE.get(self._state, Stage.OUTPUT)

    def _consumer(self, sender: int, msg: Message) -> AggState | None:
        return consumer(self.cfg, self.primary, self._state, self.u3 is not None, sender, msg)

    def _handle(self, sender: int, msg: Message) -> None:
        handler = {
            SignedKeys: self._on_keys,
            ShareKeys: self._on_share_keys,
            MaskedInput: self._on_masked,
            SketchShares: self._on_sketch_shares,
            ScoreShares: self._on_score_shares,
            ConsistencySig: self._on_consistency,
            Complaint: self._on_complaint,
            UnmaskShares: self._on_unmask,
            Decision: self._on_decision,
            InputRequest: self._on_input_request,
            ForwardedInput: self._on_forwarded_input,
        }.get(type(msg))
        if handler is None:  # pragma: no cover - _consumer admits nothing else
            raise LocalProtocolError(f"no handler for {type(msg).__name__}")
        handler(sender, msg)  # type: ignore[operator]
        self._replay_buffer()

    def _on_deadline(self) -> None:
        s = self._state
        if not self.primary and s in (A.KEYS, A.SHARES, A.MASKED):
            why = (
                "primary sent no decision"
                if self.u3 is None or s is not A.MASKED
                else ("masked inputs of the primary's U3 never arrived here")
            )
            ev = self._blame(self.cfg.primary, EvidenceKind.SILENT, why)
            return self._abort(why, (ev,))
        self._close()
        self._replay_buffer()

    def _on_abort(self) -> None:
        cfg = self.cfg
        if self._state is A.KEYS and not self.u1:
            targets: frozenset[int] = frozenset()
        else:
            targets = self.u1
        for u in sorted(targets):
            self._send(u, AbortNotice("aggregator aborted"))
        if self.primary:
            d = Decision(int(Stage.OUTPUT), (), b"")
            sig = self._sign(d.signed_bytes(cfg.context))
            for a in cfg.aggregators[1:]:
                self._send(a, Decision(int(Stage.OUTPUT), (), sig))
        self._inputs.clear()
        self._acc = None

    def _may_flush(self, msg: Message) -> bool:
        return isinstance(msg, AbortNotice | Decision)

    def _stop(self, reason: str, evidence: tuple[Evidence, ...] = ()) -> None:
        self._abort(reason, evidence)

    # ------------------------------------------------------------ closing windows

    def _close(self) -> None:
        """The current window closed (deadline, or everything expected arrived)."""
        s = self._state
        if s is A.KEYS:
            self._close_keys()
        elif s is A.SHARES:
            self._close_shares()
        elif s is A.MASKED:
            self._close_masked()
        elif s is A.SKETCH:
            self._close_sketch()
        elif s is A.SCORES:
            self._close_scores()
        elif s is A.CONSISTENCY:
            self._close_consistency()
        elif s is A.UNMASK:
            self._close_unmask()

    def _decide(
        self, stage: Stage, members: frozenset[int], keys: tuple[SignedKeys, ...] = ()
    ) -> None:
        d = Decision(int(stage), tuple(sorted(members)), b"", keys)
        sig = self._sign(d.signed_bytes(self.cfg.context))
        for a in self.cfg.aggregators[1:]:
            self._send(a, Decision(d.stage, d.members, sig, keys))

    def _enough(self, count: int) -> bool:
        return count >= max(self.cfg.threshold, self.cfg.min_sum)

    # stage 0 --------------------------------------------------------------

    def _on_keys(self, sender: int, msg: SignedKeys) -> None:
        if msg.member != sender:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "keys for another member")
        if not self._verify(sender, msg.signed_bytes(self.cfg.context), msg.signature):
            raise RemoteError(sender, EvidenceKind.BAD_SIGNATURE, "round keys")
        old = self._keys.get(sender)
        if old is not None:
            if old != msg:
                raise RemoteError(
                    sender, EvidenceKind.EQUIVOCATION, "two signed key sets", (old, msg)
                )
            return
        if not (cx.valid_public(msg.c_pk) and cx.valid_public(msg.s_pk)):
            raise RemoteError(sender, EvidenceKind.MALFORMED, "low-order public key")
        self._keys[sender] = msg
        if len(self._keys) == self.cfg.n:
            self._close()

    def _close_keys(self) -> None:
        pks = [k.c_pk for k in self._keys.values()] + [k.s_pk for k in self._keys.values()]
        if len(set(pks)) != len(pks):  # a member reused another's key: drop both
            seen: dict[bytes, int] = {}
            for u, k in sorted(self._keys.items()):
                for pk in (k.c_pk, k.s_pk):
                    if pk in seen:
                        self._blame(u, EvidenceKind.UNEXPECTED, "reused a public key")
                        self._keys.pop(seen[pk], None)
                        self._keys.pop(u, None)
                    seen[pk] = u
        if not self._enough(len(self._keys)):
            return self._stop("too few members sent keys")
        self.u1 = frozenset(self._keys)
        bundle = tuple(self._keys[u] for u in sorted(self.u1))
        for u in sorted(self.u1):
            self._send(u, KeyBundle(bundle))
        self._decide(Stage.KEYS, self.u1, bundle)
        self._goto(A.SHARES)

    # stage 1 --------------------------------------------------------------

    def _on_share_keys(self, sender: int, msg: ShareKeys) -> None:
        if sender not in self.u1 or sender in self._share_cts:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "share keys")
        expected = (self.cfg.plan.holders[sender] & self.u1) - {sender}
        if {v for v, _ in msg.ciphertexts} != expected:
            raise RemoteError(sender, EvidenceKind.MALFORMED, "shares for the wrong holders")
        self._share_cts[sender] = dict(msg.ciphertexts)
        if len(self._share_cts) == len(self.u1):
            self._close()

    def _close_shares(self) -> None:
        u2 = frozenset(self._share_cts)
        if not self._enough(len(u2)):
            return self._stop("too few members shared their keys")
        self.u2 = u2
        order = sorted(u2)
        for v in order:
            cts = tuple(
                (u, self._share_cts[u][v]) for u in order if u != v and v in self._share_cts[u]
            )
            self._send(v, ShareRelay(tuple(order), cts))
        self._share_cts.clear()
        self._decide(Stage.SHARES, u2)
        self._goto(A.MASKED)

    # stage 2 --------------------------------------------------------------

    def _on_masked(self, sender: int, msg: MaskedInput) -> None:
        if sender not in self.u2 or sender in self._commit:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "masked input")
        if self.u3 is not None and sender not in self.u3:
            self.late_messages += 1
            return
        digest = cx.commitment(msg.y)
        if not self._verify(
            sender, transcript("masked", self.cfg.context, sender, digest), msg.signature
        ):
            raise RemoteError(sender, EvidenceKind.BAD_SIGNATURE, "masked input commitment")
        self._commit[sender] = (digest, msg.signature)
        if self._acc is None:
            self._acc = np.zeros(self.cfg.dim, dtype=np.uint32)
        np.add(self._acc, msg.y, out=self._acc)
        self._in_acc.add(sender)
        if self._retain:
            self._inputs[sender] = msg.y
        if self.primary and len(self._commit) == len(self.u2):
            self._close()
        elif not self.primary and self.u3 is not None and self.u3 <= set(self._commit):
            self._follow_u3()

    def _remove_input(self, u: int) -> bool:
        """Take u's masked input out of the accumulator; False if it was not kept."""
        if u not in self._in_acc:
            return True
        y = self._inputs.pop(u, None)
        if y is None or self._acc is None:
            return False
        np.subtract(self._acc, y, out=self._acc)
        self._in_acc.discard(u)
        return True

    def _close_masked(self) -> None:
        cfg = self.cfg
        u3 = frozenset(self._commit)
        need = max(cfg.threshold, cfg.min_sum)
        if cfg.sketch is not None:
            need = max(need, 2 * cfg.sketch.threshold - 1)
        if len(u3) < need:
            return self._stop("too few masked inputs")
        self.u3 = u3
        self._decide(Stage.MASKED, u3)
        self._after_u3()

    def _after_u3(self) -> None:
        assert self.u3 is not None
        if self.cfg.sketch is None:
            self._goto(A.CONSISTENCY)
            self._announce_sets({u: None for u in self.u3})
            return
        self.sketch_seed = cx.sketch_seed(
            self.cfg.context, [(u, self._commit[u][0]) for u in sorted(self.u3)]
        )
        self._goto(A.SKETCH)
        if self.primary:
            commits = tuple((u, self._commit[u]) for u in sorted(self.u3))
            for u in sorted(self.u3):
                self._send(u, SketchRequest(commits))
        else:
            self._goto(A.SCORES)

    def _follow_u3(self) -> None:
        assert self.u3 is not None
        for u in sorted(set(self._commit) - self.u3):
            del self._commit[u]
            if not self._remove_input(u):
                return self._stop("cannot follow the primary's U3: input not retained")
        self._after_u3()

    # stage 4 --------------------------------------------------------------

    def _announce_sets(self, scores: dict[int, SketchScore | None]) -> None:
        cfg = self.cfg
        assert self.u3 is not None
        self.scores = scores
        excluded = frozenset(self._hook(MappingProxyType(dict(scores)), self.sketch_seed))
        if not excluded <= self.u3 or not all(isinstance(u, int) for u in excluded):
            raise LocalProtocolError("exclusion hook returned non-survivors")
        if len(self.u3 - excluded) < cfg.min_sum:
            return self._stop("too few members left after exclusions")
        if not feasible(cfg, self.u2, self.u3, excluded, self.u3):
            return self._stop("survivors cannot reconstruct every needed secret")
        for u in sorted(excluded):
            if not self._remove_input(u):
                return self._stop("cannot exclude: input not retained")
        self.excluded = excluded
        a = Announce(self.party, tuple(sorted(self.u3)), tuple(sorted(excluded)), b"")
        a = Announce(a.aggregator, a.survivors, a.excluded, self._sign(a.signed_bytes(cfg.context)))
        self._announce = a
        self._seen.setdefault(self.party, {})[a.sets] = a
        for u in a.survivors:
            self._send(u, a)

    def _check_echoes(self, sender: int, echoes: tuple[Announce, ...]) -> None:
        """Verify echoed announcements; abort on proof of equivocation or disagreement."""
        cfg = self.cfg
        assert self._announce is not None
        for a in echoes:
            if a.aggregator not in cfg.aggregators or not self._verify(
                a.aggregator, a.signed_bytes(cfg.context), a.signature
            ):
                raise RemoteError(sender, EvidenceKind.BAD_SIGNATURE, "forged echo")
        d = self._u3_decision
        for a in echoes:
            if d is not None and a.aggregator == cfg.primary and a.survivors != d.members:
                ev = self._blame(
                    a.aggregator,
                    EvidenceKind.EQUIVOCATION,
                    "announced a survivor set other than the one it decided",
                    (d, a),
                )
                return self._stop(f"aggregator {a.aggregator} equivocated", (ev,))
        for a in echoes:
            versions = self._seen.setdefault(a.aggregator, {})
            versions.setdefault(a.sets, a)
            if len(versions) > 1:
                proof = tuple(versions.values())
                ev = self._blame(
                    a.aggregator,
                    EvidenceKind.EQUIVOCATION,
                    "announced different sets to different members",
                    proof,
                )
                return self._stop(f"aggregator {a.aggregator} equivocated", (ev,))
        for a in echoes:
            if a.sets != self._announce.sets:
                ev = self._blame(
                    a.aggregator,
                    EvidenceKind.DISAGREEMENT,
                    "announced other sets than this aggregator",
                    (a, self._announce),
                )
                return self._stop(f"aggregator {a.aggregator} announced other sets", (ev,))

    def _on_consistency(self, sender: int, msg: ConsistencySig) -> None:
        assert self.u3 is not None and self._announce is not None
        if sender not in self.u3 or sender in self._sigs:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "consistency signature")
        self._check_echoes(sender, msg.echoes)
        if self.finished:
            return
        if not self._verify(
            sender, consistency_bytes(self.cfg.context, sender, self._announce.sets), msg.signature
        ):
            raise RemoteError(sender, EvidenceKind.BAD_SIGNATURE, "consistency signature")
        self._sigs[sender] = msg.signature
        if len(self._sigs) == len(self.u3):
            self._close()

    def _on_complaint(self, sender: int, msg: Complaint) -> None:
        assert self.u3 is not None
        if sender not in self.u3:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "complaint")
        self._check_echoes(sender, msg.echoes)

    def _close_consistency(self) -> None:
        assert self.u3 is not None
        u4 = frozenset(self._sigs)
        if len(u4) < self.cfg.threshold or not feasible(
            self.cfg, self.u2, self.u3, self.excluded, u4
        ):
            return self._stop("too few consistency signatures")
        self.u4 = u4
        bundle = SigBundle(tuple(sorted(self._sigs.items())))
        for u in sorted(u4):
            self._send(u, bundle)
        self._goto(A.UNMASK)

    # stage 5 -> 6 ---------------------------------------------------------

    def _on_unmask(self, sender: int, msg: UnmaskShares) -> None:
        assert self.u3 is not None
        if sender not in self.u4 or sender in self._unmask:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "unmask shares")
        hold = self.cfg.plan.holders[sender]
        included = self.u3 - self.excluded
        removed = (self.u2 - self.u3) | self.excluded
        b_owners = {u for u, _ in msg.b_shares}
        sk_owners = {u for u, _ in msg.sk_shares}
        if b_owners & removed or sk_owners & included:
            raise RemoteError(
                sender, EvidenceKind.UNEXPECTED, "revealed a share of the wrong kind (ignored)"
            )
        if not (b_owners <= hold & included and sk_owners <= hold & removed):
            raise RemoteError(sender, EvidenceKind.MALFORMED, "unmask shares of non-holders")
        self._unmask[sender] = msg
        if len(self._unmask) == len(self.u4):
            self._close()

    def _rebuild(self, owner: int, kind: str, shares: list[tuple[int, int]]) -> bytes | None:
        """Reconstruct one 32-byte secret; names holders of bad shares, stops on failure."""
        value, bad, why = open_seed(shares, self.cfg.threshold)
        for x in sorted(bad):
            self._blame(x - 1, EvidenceKind.INCONSISTENT_SHARE, f"{kind} share of {owner}")
        if value is None:
            self._stop(f"{kind} of member {owner}: {why}")
        return value

    def _close_unmask(self) -> None:
        cfg = self.cfg
        assert self.u3 is not None
        need_b, need_sk = needed_secrets(cfg, self.u2, self.u3, self.excluded)
        b_pts: dict[int, list[tuple[int, int]]] = {u: [] for u in need_b}
        sk_pts: dict[int, list[tuple[int, int]]] = {u: [] for u in need_sk}
        for w, msg in sorted(self._unmask.items()):
            for u, s in msg.b_shares:
                b_pts[u].append((w + 1, s))
            for u, s in msg.sk_shares:
                if u in sk_pts:
                    sk_pts[u].append((w + 1, s))
        plus: list[bytes] = []
        minus: list[bytes] = []
        for u in sorted(need_b):
            b = self._rebuild(u, "b", b_pts[u])
            if b is None:
                return
            minus.append(b)
        included = self.u3 - self.excluded
        ctx = cx.pair_context(cfg.context, b"s")
        for r in sorted(need_sk):
            sk = self._rebuild(r, "s_sk", sk_pts[r])
            if sk is None:
                return
            if cx.public_of(sk) != self._keys[r].s_pk:
                ev = self._blame(
                    r, EvidenceKind.WRONG_KEY, "rebuilt s_sk does not match the signed s_pk"
                )
                return self._stop(f"s_sk of member {r} is wrong", (ev,))
            for v in sorted(cfg.plan.neighbours[r] & included):
                seed = cx.agree(sk, self._keys[v].s_pk, ctx)
                (minus if v < r else plus).append(seed)
        if self._acc is None:
            raise LocalProtocolError("no accumulator at unmask")
        self._expander.apply(self._acc, plus, minus)
        sketch_sum = self._open_sketch_sum()
        total = self._acc
        self._acc = None
        self._inputs.clear()
        self._goto(A.DONE)
        self._emit(
            OutputReady(
                total=total,
                included=included,
                survivors=self.u3,
                dropped=frozenset(range(cfg.n)) - self.u3,
                excluded=self.excluded,
                commitments={u: self._commit[u][0] for u in sorted(self.u3)},
                scores=dict(self.scores),
                sketch_sum=sketch_sum,
                sketch_seed=self.sketch_seed,
            )
        )

    # replica: the primary's decisions ---------------------------------------

    def _on_decision(self, sender: int, msg: Decision) -> None:
        cfg = self.cfg
        if not self._verify(sender, msg.signed_bytes(cfg.context), msg.signature):
            raise RemoteError(sender, EvidenceKind.BAD_SIGNATURE, "decision")
        stage = Stage(msg.stage)
        members = frozenset(msg.members)
        if stage is Stage.OUTPUT:
            return self._stop("the primary aborted")
        if stage is Stage.KEYS:
            self._follow_keys(sender, msg)
        elif stage is Stage.SHARES:
            if not members <= self.u1 or not self._enough(len(members)):
                ev = self._blame(sender, EvidenceKind.UNEXPECTED, "bad U2 decision")
                return self._stop("bad decision from the primary", (ev,))
            self.u2 = members
            self._goto(A.MASKED)
            for u in sorted(set(self._commit) - members):
                del self._commit[u]
                self._remove_input(u)
        elif stage is Stage.MASKED:
            if not members <= self.u2 or not self._enough(len(members)):
                ev = self._blame(sender, EvidenceKind.UNEXPECTED, "bad U3 decision")
                return self._stop("bad decision from the primary", (ev,))
            self.u3 = members
            self._u3_decision = msg
            if members <= set(self._commit):
                self._follow_u3()
            else:  # a member crashed between its sends: fetch its signed input
                missing = tuple(sorted(members - set(self._commit)))
                self._send(cfg.primary, InputRequest(missing))

    def _on_input_request(self, sender: int, msg: InputRequest) -> None:
        assert self.u3 is not None
        for u in msg.members:
            y = self._inputs.get(u)
            if u in self.u3 and y is not None:
                self._send(sender, ForwardedInput(u, y, self._commit[u][1]))

    def _on_forwarded_input(self, sender: int, msg: ForwardedInput) -> None:
        if self.u3 is None or msg.member not in self.u3 or msg.member in self._commit:
            raise RemoteError(sender, EvidenceKind.UNEXPECTED, "forwarded input")
        try:
            self._on_masked(msg.member, MaskedInput(msg.y, msg.signature))
        except RemoteError as e:  # a bad commitment signature: the primary forged it
            raise RemoteError(sender, e.kind, f"forwarded input of {msg.member}: {e}") from e

    def _follow_keys(self, sender: int, msg: Decision) -> None:
        cfg = self.cfg
        keys = {k.member: k for k in msg.keys}
        ok = tuple(sorted(keys)) == msg.members and all(
            self._verify(k.member, k.signed_bytes(cfg.context), k.signature)
            and cx.valid_public(k.c_pk)
            and cx.valid_public(k.s_pk)
            for k in msg.keys
        )
        if not ok or not self._enough(len(keys)):
            ev = self._blame(sender, EvidenceKind.UNEXPECTED, "bad key decision")
            return self._stop("bad key decision from the primary", (ev,))
        self._keys = keys
        self.u1 = frozenset(keys)
        self._goto(A.SHARES)
