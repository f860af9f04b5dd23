"""Protocol messages: frozen dataclasses of plain Python types, bytes and numpy arrays.

The network layer encodes them (CBOR) and maps party indices to peer ids; the
sender of a message is the authenticated peer of the link it came over, so no
message names its own sender except where it is relayed (then the original
author's signature or an AEAD tag travels with it).

Every message has ``check(cfg)``, which raises :class:`MessageError` when a field
has the wrong type, length or range for the group; the state machines call it on
receipt (the wire layer may call it too). Semantic checks that need protocol state
(is this index in U2?) are done by the machines.

``TO_AGGREGATOR`` tells a party that is both member and aggregator which of its two
machines a message is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from mpc.field import BIG_PRIME

from ._config import GroupConfig, Stage
from ._crypto import sketch_ciphertext_bytes

__all__ = [
    "AbortNotice",
    "Announce",
    "Complaint",
    "ConsistencySig",
    "Decision",
    "ForwardedInput",
    "InputRequest",
    "KeyBundle",
    "MaskedInput",
    "Message",
    "MessageError",
    "ScoreShares",
    "ShareKeys",
    "ShareRelay",
    "SigBundle",
    "SignedKeys",
    "SketchRelay",
    "SketchRequest",
    "SketchShares",
    "UnmaskShares",
    "transcript",
]

KEY_BYTES = 32
DIGEST_BYTES = 32
MAX_SIG_BYTES = 512
MAX_CIPHERTEXT_BYTES = 1 << 20
MAX_REASON_CHARS = 500


class MessageError(ValueError):
    """A received message is malformed for this group (wrong type, length or range)."""


# ---------------------------------------------------------------- field checkers


def _int(x: object, lo: int, hi: int, what: str) -> int:
    """``x`` must be an int (not bool) with ``lo <= x < hi``."""
    if not isinstance(x, int) or isinstance(x, bool) or not lo <= x < hi:
        raise MessageError(f"{what}: expected int in [{lo}, {hi})")
    return x


def _ints(xs: Sequence[Any], lo: int, hi: int, what: str) -> None:
    """Every item of ``xs`` an int (not bool) with ``lo <= x < hi`` (:func:`_int` of
    each, in a few passes over C loops: share and residue vectors are long)."""
    if not all(type(x) is int for x in xs):
        raise MessageError(f"{what}: expected ints in [{lo}, {hi})")
    if xs and not (lo <= min(xs) and max(xs) < hi):
        raise MessageError(f"{what}: expected ints in [{lo}, {hi})")


def _bytes(x: object, what: str, exact: int | None = None, most: int = MAX_SIG_BYTES) -> bytes:
    if not isinstance(x, bytes):
        raise MessageError(f"{what}: expected bytes")
    if exact is not None and len(x) != exact:
        raise MessageError(f"{what}: expected {exact} bytes, got {len(x)}")
    if len(x) > most:
        raise MessageError(f"{what}: longer than {most} bytes")
    return x


def _index_set(x: object, n: int, what: str) -> tuple[int, ...]:
    """A strictly increasing tuple of member indices."""
    if not isinstance(x, tuple):
        raise MessageError(f"{what}: expected a tuple")
    prev = -1
    for v in x:
        _int(v, 0, n, what)
        if v <= prev:
            raise MessageError(f"{what}: indices must be strictly increasing")
        prev = v
    return x


def _pairs(x: object, n: int, what: str) -> tuple[tuple[int, Any], ...]:
    """A tuple of (member index, value) pairs, indices strictly increasing."""
    if not isinstance(x, tuple):
        raise MessageError(f"{what}: expected a tuple")
    prev = -1
    for item in x:
        if not isinstance(item, tuple) or len(item) != 2:
            raise MessageError(f"{what}: expected (index, value) pairs")
        _int(item[0], 0, n, what)
        if item[0] <= prev:
            raise MessageError(f"{what}: indices must be strictly increasing")
        prev = item[0]
    return x


def _ciphertexts(x: object, n: int, what: str, most: int = MAX_CIPHERTEXT_BYTES) -> None:
    for _, ct in _pairs(x, n, what):
        _bytes(ct, what, most=most)


def _sketch_ciphertexts(x: object, cfg: GroupConfig, what: str) -> None:
    """Sketch payloads: at most as long as with every member a validator (the exact
    length, which depends on U3, is checked by the machines)."""
    if cfg.sketch is None:
        raise MessageError("no sketch stage in this group")
    _ciphertexts(x, cfg.n, what, sketch_ciphertext_bytes(cfg.sketch, cfg.n))


def _residues(x: object, moduli: Sequence[int], what: str) -> None:
    """A tuple of ints, the i-th canonical modulo ``moduli[i % len(moduli)]``."""
    if not isinstance(x, tuple) or len(x) % len(moduli):
        raise MessageError(f"{what}: expected a tuple of residues")
    k = len(moduli)
    for j, m in enumerate(moduli):
        _ints(x[j::k], 0, m, what)


def _sig(x: object) -> None:
    _bytes(x, "signature")


# ---------------------------------------------------------------- transcripts


def transcript(tag: str, context: bytes, *parts: int | bytes | Sequence[int]) -> bytes:
    """Canonical, unambiguous bytes that a signature covers.

    Domain-separated by ``tag`` and bound to the group ``context``; ints are unsigned
    64-bit, bytes and index lists are length-prefixed.
    """
    out = [b"p2pfl/secagg/v1\x00", tag.encode(), b"\x00"]
    out += [len(context).to_bytes(4, "big"), context]
    for p in parts:
        if isinstance(p, int):
            out.append(b"i" + p.to_bytes(8, "big"))
        elif isinstance(p, bytes):
            out += [b"b", len(p).to_bytes(4, "big"), p]
        else:
            out += [b"l", len(p).to_bytes(4, "big")]
            out += [v.to_bytes(8, "big") for v in p]
    return b"".join(out)


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base of all protocol messages."""

    TO_AGGREGATOR: ClassVar[bool] = False

    def check(self, cfg: GroupConfig) -> None:
        """Raise :class:`MessageError` if a field is malformed for ``cfg``."""


@dataclass(frozen=True)
class SignedKeys(Message):
    """Stage 0, member -> primary (and inside :class:`KeyBundle`): fresh round keys.

    ``signature`` is the member's identity signature over
    ``transcript("keys", ctx, member, c_pk, s_pk)``.
    """

    TO_AGGREGATOR: ClassVar[bool] = True
    member: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes

    def check(self, cfg: GroupConfig) -> None:
        _int(self.member, 0, cfg.n, "member")
        _bytes(self.c_pk, "c_pk", exact=KEY_BYTES)
        _bytes(self.s_pk, "s_pk", exact=KEY_BYTES)
        _sig(self.signature)

    def signed_bytes(self, context: bytes) -> bytes:
        """What ``signature`` covers."""
        return transcript("keys", context, self.member, self.c_pk, self.s_pk)


@dataclass(frozen=True)
class KeyBundle(Message):
    """Stage 0 -> 1, primary -> members of U1: everyone's signed keys, by member."""

    keys: tuple[SignedKeys, ...]

    def check(self, cfg: GroupConfig) -> None:
        if not isinstance(self.keys, tuple) or not self.keys:
            raise MessageError("keys: expected a non-empty tuple")
        prev = -1
        for k in self.keys:
            if not isinstance(k, SignedKeys):
                raise MessageError("keys: expected SignedKeys entries")
            k.check(cfg)
            if k.member <= prev:
                raise MessageError("keys: members must be strictly increasing")
            prev = k.member


@dataclass(frozen=True)
class ShareKeys(Message):
    """Stage 1, member u -> primary: ``(v, AEAD_{c_uv}(u, v, b-share, sk-share))``
    for each holder v != u of u's shares that is in U1."""

    TO_AGGREGATOR: ClassVar[bool] = True
    ciphertexts: tuple[tuple[int, bytes], ...]

    def check(self, cfg: GroupConfig) -> None:
        _ciphertexts(self.ciphertexts, cfg.n, "ciphertexts")


@dataclass(frozen=True)
class ShareRelay(Message):
    """Stage 1 -> 2, primary -> each v in U2: the set U2 and the ciphertexts
    ``(u, e_uv)`` addressed to v by each u in U2 that v holds shares for."""

    u2: tuple[int, ...]
    ciphertexts: tuple[tuple[int, bytes], ...]

    def check(self, cfg: GroupConfig) -> None:
        _index_set(self.u2, cfg.n, "u2")
        _ciphertexts(self.ciphertexts, cfg.n, "ciphertexts")


@dataclass(frozen=True)
class MaskedInput(Message):
    """Stage 2, member u -> every aggregator: y_u (uint32, shape (dim,)).

    ``signature`` covers ``transcript("masked", ctx, u, sha256(y_u))``: the commitment.
    """

    TO_AGGREGATOR: ClassVar[bool] = True
    y: NDArray[np.uint32]
    signature: bytes

    def check(self, cfg: GroupConfig) -> None:
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.uint32:
            raise MessageError("y: expected a uint32 array")
        if self.y.shape != (cfg.dim,):
            raise MessageError(f"y: expected shape ({cfg.dim},)")
        _sig(self.signature)


@dataclass(frozen=True)
class Decision(Message):
    """Primary -> replicas: a set the primary fixed, signed by it.

    ``stage`` KEYS carries the key bundle in ``keys``, SHARES carries U2, MASKED U3;
    OUTPUT with an empty set means the primary aborted. ``signature`` covers
    ``transcript("decision", ctx, stage, members)``.
    """

    TO_AGGREGATOR: ClassVar[bool] = True
    stage: int
    members: tuple[int, ...]
    signature: bytes
    keys: tuple[SignedKeys, ...] = ()

    def check(self, cfg: GroupConfig) -> None:
        _int(self.stage, 0, len(Stage), "stage")
        _index_set(self.members, cfg.n, "members")
        _sig(self.signature)
        if self.keys:
            KeyBundle(self.keys).check(cfg)

    def signed_bytes(self, context: bytes) -> bytes:
        """What ``signature`` covers."""
        return transcript("decision", context, self.stage, self.members)


@dataclass(frozen=True)
class SketchRequest(Message):
    """Stage 2 -> 3, primary -> members of U3: the commitments ``(u, H(y_u), sig_u)``.

    The sketch seed is ``H(ctx, commitments)``, fixed only after the commitment
    deadline, so no member can tailor its input to the sketch map.
    """

    commitments: tuple[tuple[int, tuple[bytes, bytes]], ...]

    def check(self, cfg: GroupConfig) -> None:
        for _, c in _pairs(self.commitments, cfg.n, "commitments"):
            if not isinstance(c, tuple) or len(c) != 2:
                raise MessageError("commitments: expected (digest, signature)")
            _bytes(c[0], "digest", exact=DIGEST_BYTES)
            _sig(c[1])


@dataclass(frozen=True)
class SketchShares(Message):
    """Stage 3, owner u -> primary: ``(v, AEAD_{c_uv}(payload))`` per other validator v
    in U3; the payload holds v's shares of z_u and of u's zero-sharings modulo each
    prime (``_crypto.encode_sketch_payload``: ``8 + 4 * primes * (rows + zeros)``
    bytes, ``zeros = 1`` or ``|U3|`` when pairwise)."""

    TO_AGGREGATOR: ClassVar[bool] = True
    ciphertexts: tuple[tuple[int, bytes], ...]

    def check(self, cfg: GroupConfig) -> None:
        _sketch_ciphertexts(self.ciphertexts, cfg, "ciphertexts")


@dataclass(frozen=True)
class SketchRelay(Message):
    """Stage 3, primary -> each validator v: the sketch ciphertexts addressed to v."""

    ciphertexts: tuple[tuple[int, bytes], ...]

    def check(self, cfg: GroupConfig) -> None:
        _sketch_ciphertexts(self.ciphertexts, cfg, "ciphertexts")


@dataclass(frozen=True)
class ScoreShares(Message):
    """Stage 3, validator -> every aggregator: its shares of the scores.

    ``scores``: per owner u it holds a sketch of, ``sketch.n_scores`` residues: its
    share of ||z_u||^2 (re-randomized) modulo each prime of ``sketch.moduli`` in
    order, then of <z_u, ref> modulo each prime when ``with_reference``. ``pairs``
    (only when ``sketch.pairwise``): ``(u, v, shares)`` for owners u < v it holds, in
    increasing (u, v) order, ``shares`` its share of <z_u, z_v> (re-randomized)
    modulo each prime. Share i of a tuple is below ``moduli[i % primes]``.
    """

    TO_AGGREGATOR: ClassVar[bool] = True
    scores: tuple[tuple[int, tuple[int, ...]], ...]
    pairs: tuple[tuple[int, int, tuple[int, ...]], ...] = ()

    def check(self, cfg: GroupConfig) -> None:
        sk = cfg.sketch
        if sk is None:
            raise MessageError("no sketch stage in this group")
        for _, s in _pairs(self.scores, cfg.n, "scores"):
            if not isinstance(s, tuple) or len(s) != sk.n_scores:
                raise MessageError("scores: wrong number of scores")
            _residues(s, sk.moduli, "score share")
        if not isinstance(self.pairs, tuple):
            raise MessageError("pairs: expected a tuple")
        if self.pairs and not sk.pairwise:
            raise MessageError("pairs: this group does not score pairs")
        prev = (-1, -1)
        for item in self.pairs:
            if not isinstance(item, tuple) or len(item) != 3:
                raise MessageError("pairs: expected (u, v, shares) triples")
            u = _int(item[0], 0, cfg.n, "pairs")
            v = _int(item[1], 0, cfg.n, "pairs")
            if not u < v or (u, v) <= prev:
                raise MessageError("pairs: need u < v, in strictly increasing order")
            prev = (u, v)
            if not isinstance(item[2], tuple) or len(item[2]) != sk.primes:
                raise MessageError("pairs: one share per prime")
            _residues(item[2], sk.moduli, "pair share")


@dataclass(frozen=True)
class Announce(Message):
    """Stage 4, aggregator -> members of U3: the survivor set U3 and the excluded set E.

    ``signature`` (the aggregator's identity) covers
    ``transcript("announce", ctx, aggregator, survivors, excluded)``; members echo it
    back, which lets any honest aggregator prove equivocation.
    """

    aggregator: int
    survivors: tuple[int, ...]
    excluded: tuple[int, ...]
    signature: bytes

    def check(self, cfg: GroupConfig) -> None:
        _int(self.aggregator, 0, 1 << 16, "aggregator")
        _index_set(self.survivors, cfg.n, "survivors")
        _index_set(self.excluded, cfg.n, "excluded")
        _sig(self.signature)

    def signed_bytes(self, context: bytes) -> bytes:
        """What ``signature`` covers."""
        return transcript("announce", context, self.aggregator, self.survivors, self.excluded)

    @property
    def sets(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(survivors, excluded)."""
        return (self.survivors, self.excluded)


def consistency_bytes(context: bytes, member: int, sets: tuple[tuple[int, ...], ...]) -> bytes:
    """What a member's consistency signature covers."""
    return transcript("consistency", context, member, sets[0], sets[1])


@dataclass(frozen=True)
class ConsistencySig(Message):
    """Stage 4, member -> every aggregator: its signature on (U3, E) and the signed
    announcements it received (for equivocation detection)."""

    TO_AGGREGATOR: ClassVar[bool] = True
    signature: bytes
    echoes: tuple[Announce, ...]

    def check(self, cfg: GroupConfig) -> None:
        _sig(self.signature)
        _echoes(self.echoes, cfg)


def _echoes(echoes: object, cfg: GroupConfig) -> None:
    if not isinstance(echoes, tuple) or len(echoes) > len(cfg.aggregators):
        raise MessageError("echoes: expected at most one announcement per aggregator")
    for a in echoes:
        if not isinstance(a, Announce):
            raise MessageError("echoes: expected Announce entries")
        a.check(cfg)


@dataclass(frozen=True)
class Complaint(Message):
    """Stage 4, member -> every aggregator: the announcements disagreed; here they are."""

    TO_AGGREGATOR: ClassVar[bool] = True
    echoes: tuple[Announce, ...]

    def check(self, cfg: GroupConfig) -> None:
        _echoes(self.echoes, cfg)


@dataclass(frozen=True)
class SigBundle(Message):
    """Stage 4 -> 5, aggregator -> signers: the consistency signatures it collected."""

    signatures: tuple[tuple[int, bytes], ...]

    def check(self, cfg: GroupConfig) -> None:
        for _, s in _pairs(self.signatures, cfg.n, "signatures"):
            _sig(s)


@dataclass(frozen=True)
class UnmaskShares(Message):
    """Stage 5, member -> every aggregator: shares of b_v for included survivors v,
    shares of s_sk_v for dropped or excluded v (never both for one v), as
    ``(owner, share)`` with shares in [0, BIG_PRIME); with a sketch stage also the
    member's share of the sum of the included members' sketches: ``rows`` residues
    modulo each prime of ``sketch.moduli`` in turn (``primes * rows`` values, entry j
    below ``moduli[j // rows]``).
    """

    TO_AGGREGATOR: ClassVar[bool] = True
    b_shares: tuple[tuple[int, int], ...]
    sk_shares: tuple[tuple[int, int], ...]
    sketch_sum: tuple[int, ...] | None = None

    def check(self, cfg: GroupConfig) -> None:
        _ints([s for _, s in _pairs(self.b_shares, cfg.n, "b_shares")], 0, BIG_PRIME, "b share")
        _ints([s for _, s in _pairs(self.sk_shares, cfg.n, "sk_shares")], 0, BIG_PRIME,
              "sk share")
        if self.sketch_sum is not None:
            if cfg.sketch is None or not isinstance(self.sketch_sum, tuple):
                raise MessageError("sketch_sum: unexpected")
            rows, moduli = cfg.sketch.rows, cfg.sketch.moduli
            if len(self.sketch_sum) != rows * len(moduli):
                raise MessageError("sketch_sum: wrong length")
            for j, m in enumerate(moduli):
                _ints(self.sketch_sum[j * rows:(j + 1) * rows], 0, m, "sketch_sum")


@dataclass(frozen=True)
class InputRequest(Message):
    """Replica -> primary: masked inputs of the primary's U3 that never reached it."""

    TO_AGGREGATOR: ClassVar[bool] = True
    members: tuple[int, ...]

    def check(self, cfg: GroupConfig) -> None:
        _index_set(self.members, cfg.n, "members")


@dataclass(frozen=True)
class ForwardedInput(Message):
    """Primary -> replica: a member's masked input with the member's own commitment
    signature (so the replica needs to trust the primary for nothing)."""

    TO_AGGREGATOR: ClassVar[bool] = True
    member: int
    y: NDArray[np.uint32]
    signature: bytes

    def check(self, cfg: GroupConfig) -> None:
        _int(self.member, 0, cfg.n, "member")
        MaskedInput(self.y, self.signature).check(cfg)


@dataclass(frozen=True)
class AbortNotice(Message):
    """Aggregator -> members: the round is aborted; reveal nothing more."""

    reason: str

    def check(self, cfg: GroupConfig) -> None:
        if not isinstance(self.reason, str) or len(self.reason) > MAX_REASON_CHARS:
            raise MessageError("reason: expected a short string")
