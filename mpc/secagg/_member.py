"""The member's side of secure aggregation (Bonawitz et al. 2017 with the SecAgg+
neighbour graph of Bell et al. 2020 and the active-adversary consistency round).

Theory of operation
-------------------
A member u walks one line of states; each waits for one input from an aggregator:

=============  ==========================================  =========================
state          waiting for                                 then sends
=============  ==========================================  =========================
KEYS           KeyBundle (primary): U1 and signed keys     ShareKeys (to primary)
SHARES         ShareRelay (primary): U2 and its shares      -
INPUT          ``set_input`` (the quantized update)          MaskedInput (to all aggs)
REQUEST        SketchRequest (primary), sketch stage only   SketchShares (to primary)
RELAY          SketchRelay (primary), sketch stage only     ScoreShares (to all aggs)
ANNOUNCE       Announce from every aggregator (or quorum)   ConsistencySig (to all)
CONSISTENCY    SigBundle from each announcing aggregator    UnmaskShares (to those)
DONE           -                                            -
=============  ==========================================  =========================

y_u = x_u + PRG(b_u) + sum_{v in N(u) & U2} sign(u, v) PRG(KA(s_sk_u, s_pk_v)) mod 2^32
with sign +1 when u < v. b_u and s_sk_u are Shamir-shared (threshold t) among u's
holders N(u) + {u} in U1, each share encrypted under KA(c_sk_u, c_pk_v).

Sketch stage (when ``cfg.sketch`` is set): on the primary's SketchRequest the member
derives the sketch seed from the signed commitments, computes z_u = sketch(seed)
(exact int64) and, for each prime p of ``SketchConfig.moduli``, Shamir-shares
z_u mod p among the validators U3 (threshold ``sketch.threshold``) together with
fresh degree-2(t - 1) sharings of zero: one for its norm and, when pairwise, one per
other survivor (the pair masks, see ``_pair_shares``). As a validator it then
returns, per owner it holds and per prime, re-randomized shares of ||z_u||^2, linear
shares of <z_u, z_ref>, and re-randomized shares of <z_u, z_v> per pair; at unmask it
adds its shares of the sum of the included members' sketches.

Privacy rests on three member-side rules, enforced here whatever the aggregators say:
shares are revealed only after every required aggregator announced the same signed
(U3, E) and at least t members of U3 signed it too; the announced sets must leave
every needed secret reconstructible (else nothing is revealed); and for any peer the
member reveals its b-share or its s_sk-share, never both (``RevealLedger``, which
raises a local error rather than break the rule). Any timeout or inconsistency aborts
the member before stage 5; an aborted member reveals nothing more.
"""

from __future__ import annotations

import enum
import hashlib
import sys
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from mpc import field, shamir
from mpc.prg import MaskExpander
from mpc.rand import Rng

from . import _crypto as cx
from ._config import GroupConfig, Phase, Stage
from ._events import Completed, EvidenceKind, StageReached
from ._machine import LocalProtocolError, Machine, RemoteError, Sign, Verify
from ._messages import (
    AbortNotice,
    Announce,
    Complaint,
    ConsistencySig,
    KeyBundle,
    MaskedInput,
    Message,
    ScoreShares,
    ShareKeys,
    ShareRelay,
    SigBundle,
    SignedKeys,
    SketchRelay,
    SketchRequest,
    SketchShares,
    UnmaskShares,
    consistency_bytes,
    transcript,
)
from ._reveal import RevealLedger, feasible

__all__ = ["Member", "MemberState", "SketchFn"]

_LITTLE_ENDIAN = sys.byteorder == "little"

SketchFn = Callable[[bytes], NDArray[np.int64]]
"""Maps the public sketch seed to this member's exact integer sketch
z_u = S(seed) @ signed(Q(x_u)): shape ``(rows,)``, any integer dtype, |z_i| < 2**62."""

ReferenceFn = Callable[[bytes], NDArray[np.int64]]
"""Maps the public sketch seed to the public reference sketch z_ref = S(seed) @ ref:
shape ``(rows,)``, integers with |z_i| < 2**62 (every member must compute the same)."""

_Z_LIMIT = 1 << 62


class MemberState(enum.Enum):
    """States of :class:`Member`, in protocol order (see the module docstring)."""

    KEYS = "keys"
    SHARES = "shares"
    INPUT = "input"
    REQUEST = "request"
    RELAY = "relay"
    ANNOUNCE = "announce"
    CONSISTENCY = "consistency"
    DONE = "done"
    ABORTED = "aborted"
    ERROR = "error"


M = MemberState
_ANY_ABORT = frozenset({M.ABORTED})

TRANSITIONS: dict[MemberState, frozenset[MemberState]] = {
    M.KEYS: frozenset({M.SHARES}) | _ANY_ABORT,
    M.SHARES: frozenset({M.INPUT}) | _ANY_ABORT,
    M.INPUT: frozenset({M.REQUEST, M.ANNOUNCE}) | _ANY_ABORT,
    M.REQUEST: frozenset({M.RELAY}) | _ANY_ABORT,
    M.RELAY: frozenset({M.ANNOUNCE}) | _ANY_ABORT,
    M.ANNOUNCE: frozenset({M.CONSISTENCY}) | _ANY_ABORT,
    M.CONSISTENCY: frozenset({M.DONE}) | _ANY_ABORT,
}

_STAGE_OF = {
    M.KEYS: Stage.KEYS,
    M.SHARES: Stage.SHARES,
    M.INPUT: Stage.MASKED,
    M.REQUEST: Stage.SKETCH,
    M.RELAY: Stage.SKETCH,
    M.ANNOUNCE: Stage.CONSISTENCY,
    M.CONSISTENCY: Stage.CONSISTENCY,
    M.DONE: Stage.UNMASK,
}

# which state consumes each downlink message (from the primary only, or any aggregator)
_FROM_PRIMARY = {
    KeyBundle: M.KEYS,
    ShareRelay: M.SHARES,
    SketchRequest: M.REQUEST,
    SketchRelay: M.RELAY,
}
_FROM_ANY_AGG = {Announce: M.ANNOUNCE, SigBundle: M.CONSISTENCY}


class Member(Machine[MemberState]):
    """One member of a secure-aggregation group (party index ``index < cfg.n``).

    ``start`` is the agreed start of the round (the deadlines are absolute from it);
    the round keys are queued for the primary on construction. ``x`` (uint32, shape
    ``(cfg.dim,)``: the already-quantized update) may be given now or later with
    :meth:`set_input`. ``sketch`` is required when ``cfg.sketch`` is set, and
    ``reference`` when it asks for <z, ref>: the public reference sketch z_ref as
    signed ints of shape ``(rows,)`` (|z_i| < 2**62), or a function of the sketch
    seed returning it (the map S is known only once the seed is: see
    :class:`ReferenceFn`); a function that fails or returns a bad vector stops the
    member with a ``ProtocolError``.
    ``out``: optional uint32 buffer for y_u, reused by the caller once the message
    has been delivered (benchmarks). Raises ``ValueError`` for inconsistent arguments.
    """

    TRANSITIONS = TRANSITIONS
    TERMINAL = frozenset({M.DONE, M.ABORTED, M.ERROR})
    ERROR = M.ERROR
    ABORTED = M.ABORTED

    def __init__(
        self,
        cfg: GroupConfig,
        index: int,
        rng: Rng,
        sign: Sign,
        verify: Verify,
        *,
        start: float,
        x: NDArray[np.uint32] | None = None,
        sketch: SketchFn | None = None,
        reference: NDArray[np.int64] | ReferenceFn | None = None,
        out: NDArray[np.uint32] | None = None,
        expander: MaskExpander | None = None,
    ) -> None:
        if not 0 <= index < cfg.n:
            raise ValueError("member index out of range")
        if cfg.sketch is not None and sketch is None:
            raise ValueError("this group has a sketch stage: pass sketch=")
        self._ref_source: NDArray[np.int64] | ReferenceFn | None = None
        if cfg.sketch is not None and cfg.sketch.with_reference:
            if reference is None:
                raise ValueError("this group scores a reference: pass reference=")
            if not callable(reference):
                self._ref_source = _checked_sketch(reference, cfg.sketch.rows, "reference")
            else:
                self._ref_source = reference
        super().__init__(cfg, index, sign, verify, M.KEYS)
        self.index = index
        self._rng = rng
        self._start = start
        self._now = start
        self._x: NDArray[np.uint32] | None = None
        self._out = out
        self._sketch_fn = sketch
        self._expander = expander if expander is not None else MaskExpander()
        self._keys: cx.KeyMaterial | None = cx.KeyMaterial(rng)
        self._c_keys: dict[int, bytes] = {}
        self._c_pk: dict[int, bytes] = {}
        self._s_pk: dict[int, bytes] = {}
        self._u1: frozenset[int] = frozenset()
        self._u2: frozenset[int] = frozenset()
        self._held: dict[int, tuple[int, int]] = {}  # owner -> (b-share, sk-share)
        self._validators: tuple[int, ...] = ()
        # owner -> my shares of z_owner (primes, rows) and of its zero-sharings (primes, k)
        self._z_shares: dict[int, NDArray[np.int64]] = {}
        self._zero_shares: dict[int, NDArray[np.int64]] = {}
        self._ref: list[NDArray[np.int64]] = []  # z_ref modulo each prime
        self.sketch_seed: bytes | None = None
        self._announcements: dict[int, Announce] = {}
        self._sets: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self._bundles: dict[int, frozenset[int]] = {}
        self.ledger = RevealLedger()
        self._b = b""
        self.commitment = b""
        self._own_sketch: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None
        if x is not None:
            self._check_input(x)
            self._x = x
        keys = self._keys
        msg = SignedKeys(index, keys.c.public, keys.s.public, b"")
        signature = sign(msg.signed_bytes(cfg.context))
        self._send(cfg.primary, SignedKeys(index, keys.c.public, keys.s.public, signature))
        self._emit_stage(Stage.KEYS)

    # ------------------------------------------------------------ public API

    def set_input(self, x: NDArray[np.uint32], now: float) -> None:
        """Give the quantized update (uint32, shape ``(dim,)``); ``ValueError`` if not.

        Ignored once the member has finished; the array is not modified (unless it is
        also the ``out`` buffer) and not kept after masking.
        """
        self._check_input(x)
        self._now = now
        if self.finished or self._sets is not None:
            return
        self._x = x
        if self._state is M.INPUT:
            self._guarded(self._mask_and_send)

    def next_deadline(self) -> float | None:
        """Absolute time of this member's next timeout, or None when finished."""
        cfg, s = self.cfg, self._state
        g = cfg.timeouts.grace
        phase = {
            M.KEYS: Phase.KEYS,
            M.SHARES: Phase.SHARES,
            M.REQUEST: Phase.MASKED,
            M.RELAY: Phase.SKETCH_SHARES,
            M.ANNOUNCE: cfg.announce_phase,
            M.CONSISTENCY: Phase.CONSISTENCY,
        }.get(s)
        if phase is not None:
            return cfg.deadline(self._start, phase) + g
        if s is M.INPUT:
            return cfg.deadline(self._start, Phase.MASKED)
        return None

    # ------------------------------------------------------------ machine hooks

    def _emit_stage(self, stage: Stage) -> None:
        self._emit(StageReached(stage))

    def _stage_of(self, state: MemberState) -> Stage | None:
        return None  # stages are reported when the member acts, see _emit_stage

    def _current_stage(self) -> Stage:
        return _STAGE_OF.get(self._state, Stage.OUTPUT)

    def _consumer(self, sender: int, msg: Message) -> MemberState | None:
        if isinstance(msg, AbortNotice):
            return self._state if sender in self.cfg.aggregators else None
        t = _FROM_PRIMARY.get(type(msg))
        if t is not None:
            if t in (M.REQUEST, M.RELAY) and self.cfg.sketch is None:
                return None
            return t if sender == self.cfg.primary else None
        t = _FROM_ANY_AGG.get(type(msg))
        if t is not None and sender in self.cfg.aggregators:
            return t
        return None

    def _handle(self, sender: int, msg: Message) -> None:
        if isinstance(msg, AbortNotice):
            self._abort(f"aggregator {sender} aborted: {msg.reason}")
        elif isinstance(msg, KeyBundle):
            self._on_key_bundle(sender, msg)
        elif isinstance(msg, ShareRelay):
            self._on_share_relay(sender, msg)
        elif isinstance(msg, SketchRequest):
            self._on_sketch_request(sender, msg)
        elif isinstance(msg, SketchRelay):
            self._on_sketch_relay(msg)
        elif isinstance(msg, Announce):
            self._on_announce(sender, msg)
        elif isinstance(msg, SigBundle):
            self._on_sig_bundle(sender, msg)
        else:  # pragma: no cover - _consumer admits nothing else
            raise LocalProtocolError(f"no handler for {type(msg).__name__}")
        self._replay_buffer()

    def _on_deadline(self) -> None:
        s = self._state
        if s is M.ANNOUNCE and len(self._announcements) >= self.cfg.needed_announcements:
            self._decide_announcements()
        elif s is M.CONSISTENCY and len(self._bundles) >= self.cfg.needed_announcements:
            self._reveal()
        elif s is M.INPUT:
            self._abort("no input before the commitment deadline")
        else:
            if s is M.ANNOUNCE:
                missing = [a for a in self.cfg.aggregators if a not in self._announcements]
            elif s is M.CONSISTENCY:
                missing = [a for a in self._announcements if a not in self._bundles]
            else:
                missing = [self.cfg.primary]
            ev = tuple(
                self._blame(a, EvidenceKind.SILENT, f"nothing by the {s.value} deadline")
                for a in missing
            )
            self._abort(f"timeout waiting in state {s.value}", ev)
        self._replay_buffer()

    def _on_abort(self) -> None:
        self._wipe()

    def _wipe(self) -> None:
        self._held.clear()
        self._z_shares.clear()
        self._zero_shares.clear()
        self._own_sketch = None
        self._c_keys.clear()
        self._keys = None
        self._x = None

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except RemoteError as e:
            self._blame(e.accused, e.kind, e.detail, e.proof)
        except LocalProtocolError as e:
            self._fail(str(e))

    def _refuse(
        self, reason: str, accused: int, kind: EvidenceKind, proof: tuple[object, ...] = ()
    ) -> None:
        """Abort with evidence against ``accused`` (an aggregator that sent bad data)."""
        self._abort(reason, (self._blame(accused, kind, reason, proof),))

    # ------------------------------------------------------------ stage 0 -> 1

    def _on_key_bundle(self, sender: int, msg: KeyBundle) -> None:
        cfg, me = self.cfg, self.index
        assert self._keys is not None
        by_member = {k.member: k for k in msg.keys}
        mine = by_member.get(me)
        if mine is None or (mine.c_pk, mine.s_pk) != (self._keys.c.public, self._keys.s.public):
            return self._refuse("key bundle lacks my keys", sender, EvidenceKind.UNEXPECTED)
        for k in msg.keys:
            if not self._verify(k.member, k.signed_bytes(cfg.context), k.signature):
                return self._refuse(
                    f"key bundle has a bad signature of member {k.member}",
                    sender,
                    EvidenceKind.BAD_SIGNATURE,
                )
        pks = [k.c_pk for k in msg.keys] + [k.s_pk for k in msg.keys]
        if len(set(pks)) != len(pks):
            return self._refuse("key bundle repeats a public key", sender, EvidenceKind.UNEXPECTED)
        u1 = frozenset(by_member)
        holders = sorted(cfg.plan.holders[me] & u1)
        if len(u1) < max(cfg.threshold, cfg.min_sum) or len(holders) < cfg.threshold:
            return self._abort("too few members sent keys")
        self._u1 = u1
        self._c_pk = {k.member: k.c_pk for k in msg.keys}
        self._s_pk = {k.member: k.s_pk for k in msg.keys}
        b = self._rng.random_bytes(32)
        self._b = b
        b_sh = cx.share_secret(b, cfg.threshold, holders, self._rng)
        sk_sh = cx.share_secret(self._keys.s.secret, cfg.threshold, holders, self._rng)
        cts: list[tuple[int, bytes]] = []
        for v, bs, ss in zip(holders, b_sh, sk_sh, strict=True):
            if v == me:
                self._held[me] = (bs, ss)
                continue
            payload = cx.encode_share_payload(me, v, bs, ss)
            aad = cx.share_aad(cfg.context, me, v, b"share")
            cts.append((v, cx.encrypt(self._c_key(v), payload, aad, self._rng)))
        self._send(cfg.primary, ShareKeys(tuple(cts)))
        self._goto(M.SHARES)
        self._emit_stage(Stage.SHARES)

    def _c_key(self, v: int) -> bytes:
        key = self._c_keys.get(v)
        if key is None:
            assert self._keys is not None
            key = cx.agree(
                self._keys.c.secret, self._c_pk[v], cx.pair_context(self.cfg.context, b"c")
            )
            self._c_keys[v] = key
        return key

    # ------------------------------------------------------------ stage 1 -> 2

    def _on_share_relay(self, sender: int, msg: ShareRelay) -> None:
        cfg, me = self.cfg, self.index
        u2 = frozenset(msg.u2)
        if not u2 <= self._u1 or me not in u2 or len(u2) < cfg.threshold:
            return self._refuse("share relay: bad U2", sender, EvidenceKind.UNEXPECTED)
        expected = (cfg.plan.holders[me] & u2) - {me}
        if {u for u, _ in msg.ciphertexts} != expected:
            return self._refuse(
                "share relay: wrong set of senders", sender, EvidenceKind.UNEXPECTED
            )
        for u, ct in msg.ciphertexts:
            aad = cx.share_aad(cfg.context, u, me, b"share")
            try:
                plain = cx.decrypt(self._c_key(u), ct, aad)
                self._held[u] = cx.decode_share_payload(plain, u, me)
            except (cx.DecryptionError, ValueError) as e:
                # u (or the relay) cheated: hold no share of u, keep going; the others'
                # shares of u suffice or the aggregators abort at unmask
                self._blame(u, EvidenceKind.DECRYPTION_FAILED, f"relayed by {sender}: {e}")
        self._u2 = u2
        self._goto(M.INPUT)
        self._emit_stage(Stage.MASKED)
        if self._x is not None:
            self._mask_and_send()

    def _check_input(self, x: NDArray[np.uint32]) -> None:
        if not isinstance(x, np.ndarray) or x.dtype != np.uint32 or x.shape != (self.cfg.dim,):
            raise ValueError(f"input must be a uint32 array of shape ({self.cfg.dim},)")

    def _mask_and_send(self) -> None:
        cfg, me = self.cfg, self.index
        assert self._x is not None and self._keys is not None
        y = self._out if self._out is not None else np.empty(cfg.dim, dtype=np.uint32)
        plus: list[bytes] = [self._b]
        minus: list[bytes] = []
        ctx = cx.pair_context(cfg.context, b"s")
        for v in sorted(cfg.plan.neighbours[me] & self._u2):
            seed = cx.agree(self._keys.s.secret, self._s_pk[v], ctx)
            (plus if me < v else minus).append(seed)
        # one pass: y = x + masks, hashed chunk by chunk once final. The digest is
        # cx.commitment(y) (SHA-256 of y's little-endian bytes: its memory on a
        # little-endian host; the aggregators recompute it with cx.commitment)
        h = hashlib.sha256() if _LITTLE_ENDIAN else None
        self._expander.apply(y, plus, minus, src=self._x, digest=h)
        self._x = None
        self._b = b""
        digest = h.digest() if h is not None else cx.commitment(y)
        self.commitment = digest
        sig = self._sign(transcript("masked", cfg.context, me, digest))
        for a in cfg.aggregators:
            self._send(a, MaskedInput(y, sig))
        if cfg.sketch is not None:
            self._goto(M.REQUEST)
        else:
            self._goto(M.ANNOUNCE)

    # ------------------------------------------------------------ stage 3 (sketch)

    def _on_sketch_request(self, sender: int, msg: SketchRequest) -> None:
        cfg, me = self.cfg, self.index
        assert cfg.sketch is not None and self._sketch_fn is not None
        sk = cfg.sketch
        owners = [u for u, _ in msg.commitments]
        mine = dict(msg.commitments).get(me)
        if not set(owners) <= self._u2 or mine is None or mine[0] != self.commitment:
            return self._refuse("sketch request: bad commitments", sender, EvidenceKind.UNEXPECTED)
        for u, (digest, sig) in msg.commitments:
            if not self._verify(u, transcript("masked", cfg.context, u, digest), sig):
                return self._refuse(
                    f"sketch request: bad commitment signature of {u}",
                    sender,
                    EvidenceKind.BAD_SIGNATURE,
                )
        if len(owners) < 2 * sk.threshold - 1:
            return self._abort("too few validators for the sketch stage")
        self._emit_stage(Stage.SKETCH)
        seed = cx.sketch_seed(cfg.context, [(u, c[0]) for u, c in msg.commitments])
        self.sketch_seed = seed
        z = _checked_sketch(_call(self._sketch_fn, seed, "sketch"), sk.rows, "sketch")
        if sk.with_reference:
            src = self._ref_source
            if callable(src):
                ref = _checked_sketch(_call(src, seed, "reference"), sk.rows, "reference")
            else:
                assert src is not None
                ref = src
            self._ref = [np.mod(ref, p) for p in sk.moduli]
        xs = [v + 1 for v in owners]
        k = sk.zero_count(len(owners))
        # per prime: shares of z mod p (m, rows) and of k zeros of degree 2(t-1) (m, k)
        z_sh = np.stack(
            [shamir.share_vector(np.mod(z, p), sk.threshold, xs, self._rng, p=p) for p in sk.moduli]
        )  # (primes, m, rows)
        zeros = np.stack(
            [shamir.share_zeros(k, sk.threshold, xs, self._rng, p=p) for p in sk.moduli]
        )  # (primes, m, k)
        cts: list[tuple[int, bytes]] = []
        for i, v in enumerate(owners):
            if v == me:
                self._own_sketch = (z_sh[:, i].copy(), zeros[:, i].copy())
                continue
            payload = cx.encode_sketch_payload(me, v, z_sh[:, i], zeros[:, i])
            aad = cx.share_aad(cfg.context, me, v, b"sketch")
            cts.append((v, cx.encrypt(self._c_key(v), payload, aad, self._rng)))
        self._validators = tuple(owners)
        self._send(cfg.primary, SketchShares(tuple(cts)))
        self._goto(M.RELAY)

    def _on_sketch_relay(self, msg: SketchRelay) -> None:
        cfg, me = self.cfg, self.index
        sk = cfg.sketch
        assert sk is not None and self._own_sketch is not None
        k = sk.zero_count(len(self._validators))
        shares: dict[int, tuple[NDArray[np.int64], NDArray[np.int64]]] = {me: self._own_sketch}
        for u, ct in msg.ciphertexts:
            if u not in self._validators or u == me:
                self._blame(
                    self.cfg.primary,
                    EvidenceKind.UNEXPECTED,
                    f"sketch relay has a ciphertext from {u}",
                )
                continue
            aad = cx.share_aad(cfg.context, u, me, b"sketch")
            try:
                plain = cx.decrypt(self._c_key(u), ct, aad)
            except cx.DecryptionError as e:
                self._blame(u, EvidenceKind.DECRYPTION_FAILED, f"sketch share: {e}")
                continue
            try:
                shares[u] = cx.decode_sketch_payload(plain, u, me, sk.moduli, sk.rows, k)
            except ValueError as e:  # authentic (AEAD under u's key) but malformed
                self._blame(u, EvidenceKind.MALFORMED, f"sketch payload: {e}")
        owners = sorted(shares)
        z = np.stack([shares[u][0] for u in owners], axis=1)  # (primes, U, rows)
        zero = np.stack([shares[u][1] for u in owners], axis=1)  # (primes, U, k)
        cols: list[NDArray[np.int64]] = []  # per score kind and prime: (U,)
        for i, p in enumerate(sk.moduli):
            cols.append(shamir.local_sq_norms(z[i], mask=zero[i, :, 0].copy(), p=p))
        if sk.with_reference:
            for i, p in enumerate(sk.moduli):
                cols.append(shamir.local_inner_public(z[i], self._ref[i], p=p))
        scores = tuple((u, tuple(int(c[a]) for c in cols)) for a, u in enumerate(owners))
        pairs: tuple[tuple[int, int, tuple[int, ...]], ...] = ()
        if sk.pairwise and len(owners) > 1:
            pairs = self._pair_shares(owners, z, zero)
        self._z_shares = {u: z[:, a] for a, u in enumerate(owners)}
        self._zero_shares = {u: zero[:, a] for a, u in enumerate(owners)}
        for a in cfg.aggregators:
            self._send(a, ScoreShares(scores, pairs))
        self._goto(M.ANNOUNCE)

    def _pair_shares(
        self, owners: list[int], z: NDArray[np.int64], zero: NDArray[np.int64]
    ) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
        """Degree-2 shares of <z_u, z_v> for the held owners u < v, each re-randomized
        with the SUM of u's zero-sharing for v and v's zero-sharing for u.

        Why both: the opened polynomial is P = <f_u, f_v> + r, with f_u, f_v the
        sharing polynomials of z_u and z_v (degree t - 1) and r the mask (degree
        2(t - 1), r(0) = 0). The aggregators see P at 2t - 1 points, i.e. all of it.
        If r were dealt by u alone, u (who knows f_u and r) colluding with the
        aggregators and t - 1 validators would learn the whole product polynomial
        <f_u, f_v>: 2t - 1 linear equations in f_v's coefficients beyond the one
        opened value, which together with the colluders' t - 1 points of f_v pin
        down further linear functions of z_v (all of it when rows is small). With
        r = r_u + r_v, r_v is uniform among degree-2(t - 1) polynomials vanishing at
        0 apart from the t - 1 colluders' points of it, so P is uniform apart from
        its constant term and the colluders' own points: the opening reveals
        <z_u, z_v> and nothing else as long as either u or v is honest.
        """
        sk = self.cfg.sketch
        assert sk is not None
        pos = {v: i for i, v in enumerate(self._validators)}  # U3, increasing
        # column of u's zero-sharings reserved for v: 1 + v's position in U3 minus u
        col = {
            u: np.array([1 + pos[v] - (v > u) for v in owners if v != u], dtype=np.intp)
            for u in owners
        }
        n_own = len(owners)
        grams: list[NDArray[np.int64]] = []
        for i, p in enumerate(sk.moduli):
            dealt = np.zeros((n_own, n_own), dtype=np.int64)  # [a, b]: a's zero for b
            for a, u in enumerate(owners):
                others = [b for b in range(n_own) if b != a]
                dealt[a, others] = zero[i, a, col[u]]
            mask = field.add(dealt, np.ascontiguousarray(dealt.T), p)  # r_u(me) + r_v(me)
            grams.append(shamir.local_gram(z[i], mask=mask, p=p))
        return tuple(
            (owners[a], owners[b], tuple(int(g[a, b]) for g in grams))
            for a in range(n_own)
            for b in range(a + 1, n_own)
        )

    # ------------------------------------------------------------ stage 4

    def _on_announce(self, sender: int, msg: Announce) -> None:
        if msg.aggregator != sender or not self._verify(
            sender, msg.signed_bytes(self.cfg.context), msg.signature
        ):
            self._blame(sender, EvidenceKind.BAD_SIGNATURE, "announcement signature")
            return
        old = self._announcements.get(sender)
        if old is not None:
            if old.sets != msg.sets:
                return self._refuse(
                    "an aggregator announced two different sets",
                    sender,
                    EvidenceKind.EQUIVOCATION,
                    (old, msg),
                )
            return
        self._announcements[sender] = msg
        if len(self._announcements) == len(self.cfg.aggregators):
            self._decide_announcements()

    def _decide_announcements(self) -> None:
        cfg, me = self.cfg, self.index
        anns = [self._announcements[a] for a in cfg.aggregators if a in self._announcements]
        variants = {a.sets for a in anns}
        if len(variants) > 1:
            for agg in cfg.aggregators:
                self._send(agg, Complaint(tuple(anns)))
            counts = {v: sum(a.sets == v for a in anns) for v in variants}
            top = max(counts.values())
            majority = [v for v, c in counts.items() if c == top]
            accused = [a.aggregator for a in anns if len(majority) > 1 or a.sets != majority[0]]
            ev = tuple(
                self._blame(
                    x,
                    EvidenceKind.DISAGREEMENT,
                    "aggregators announced different sets",
                    tuple(anns),
                )
                for x in accused
            )
            return self._abort("aggregators announced different sets", ev)
        survivors, excluded = anns[0].sets
        s, e = frozenset(survivors), frozenset(excluded)
        why = None
        if me not in s:
            why = "not in the announced survivor set"
        elif not s <= self._u2 or not e <= s:
            why = "announced sets are not subsets of U2"
        elif len(s) < cfg.threshold or len(s - e) < cfg.min_sum:
            why = "too few survivors"
        elif not feasible(cfg, self._u2, s, e, s):
            why = "announced sets cannot be unmasked"
        if why is not None:
            ev = (
                ()
                if me not in s
                else tuple(self._blame(a.aggregator, EvidenceKind.UNEXPECTED, why) for a in anns)
            )
            return self._abort(why, ev)
        self._sets = (survivors, excluded)
        sig = self._sign(consistency_bytes(cfg.context, me, self._sets))
        for ann in anns:
            self._send(ann.aggregator, ConsistencySig(sig, tuple(anns)))
        self._goto(M.CONSISTENCY)

    def _on_sig_bundle(self, sender: int, msg: SigBundle) -> None:
        cfg = self.cfg
        assert self._sets is not None
        if sender not in self._announcements or sender in self._bundles:
            return
        s = frozenset(self._sets[0])
        ok: set[int] = set()
        for w, sig in msg.signatures:
            if w in s and self._verify(w, consistency_bytes(cfg.context, w, self._sets), sig):
                ok.add(w)
            else:
                self._blame(
                    sender,
                    EvidenceKind.BAD_SIGNATURE,
                    f"relayed a bad consistency signature of {w}",
                )
        u4 = frozenset(ok)
        if len(u4) < cfg.threshold or not feasible(cfg, self._u2, s, frozenset(self._sets[1]), u4):
            return self._refuse(
                "too few consistency signatures to unmask", sender, EvidenceKind.UNEXPECTED
            )
        self._bundles[sender] = u4
        if len(self._bundles) == len(self._announcements):
            self._reveal()

    # ------------------------------------------------------------ stage 5

    def _reveal(self) -> None:
        cfg = self.cfg
        assert self._sets is not None
        s, e = frozenset(self._sets[0]), frozenset(self._sets[1])
        included = s - e
        b_out: list[tuple[int, int]] = []
        sk_out: list[tuple[int, int]] = []
        for owner in sorted(self._held):
            b_share, sk_share = self._held[owner]
            if owner in included:
                self.ledger.reveal(owner, "b")
                b_out.append((owner, b_share))
            elif owner in self._u2:
                self.ledger.reveal(owner, "sk")
                sk_out.append((owner, sk_share))
        sketch_sum: tuple[int, ...] | None = None
        if cfg.sketch is not None and included <= set(self._z_shares):
            moduli = np.array(cfg.sketch.moduli, dtype=np.int64)[:, None]
            acc = np.zeros((len(moduli), cfg.sketch.rows), dtype=np.int64)
            for u in sorted(included):  # each share < 2**31: no overflow for n <= 2**16
                acc += self._z_shares[u]
            sketch_sum = tuple(int(v) for v in (acc % moduli).reshape(-1))
        msg = UnmaskShares(tuple(b_out), tuple(sk_out), sketch_sum)
        for a in sorted(self._bundles):
            self._send(a, msg)
        self._wipe()
        self._goto(M.DONE)
        self._emit_stage(Stage.UNMASK)
        self._emit(Completed(s, e))

    def _may_flush(self, msg: Message) -> bool:
        return False


def _call(fn: Callable[[bytes], NDArray[np.int64]], seed: bytes, what: str) -> object:
    try:
        return fn(seed)
    except Exception as e:  # the caller's function: our side's failure, not the peer's
        raise LocalProtocolError(f"the {what} function failed: {type(e).__name__}: {e}") from e


def _checked_sketch(v: object, rows: int, what: str) -> NDArray[np.int64]:
    """``v`` as int64 of shape ``(rows,)`` with |v_i| < 2**62, else ``ValueError``
    (``LocalProtocolError`` when it came from the caller's function at run time)."""
    arr = np.asarray(v)
    if arr.shape != (rows,) or arr.dtype.kind not in "iu":
        raise _BadSketch(f"{what} must be an integer array of shape ({rows},)")
    if arr.size and (int(arr.max()) >= _Z_LIMIT or int(arr.min()) <= -_Z_LIMIT):
        raise _BadSketch(f"{what} has entries of magnitude >= 2**62")
    return arr.astype(np.int64)


class _BadSketch(LocalProtocolError, ValueError):
    """A sketch or reference vector of the wrong shape, dtype or range (a local error
    at run time, a ``ValueError`` for the constructor's caller)."""
