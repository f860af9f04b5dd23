"""Wire mirrors of the :mod:`mpc.secagg` messages (tags 0x0401–0x0412).

Theory of operation
-------------------
:mod:`mpc.secagg` defines its messages as plain frozen dataclasses and must not
import :mod:`p2pfl`, so this module mirrors each of them as a registered wire
message with the same field names, typed and bounded for the strict CBOR codec of
:mod:`p2pfl.wire`.  Conversion is field by field (:func:`to_wire` /
:func:`from_wire`); two representations differ from the mpc side:

* Shamir shares of 32-byte secrets live in the field of ``BIG_PRIME = 2**256 + 297``,
  beyond CBOR's native integers (and the codec refuses bignum tags): they travel as
  33-byte big-endian strings (``SHARE_BYTES``).
* Nested messages (the signed keys inside a key bundle or a decision, the
  announcements echoed in a consistency signature or a complaint) are nested wire
  dataclasses.

:func:`decode_payload` is the only entry point for received bytes: it bounds the
size, decodes strictly (types, lengths, dtypes), converts, and runs the message's
own ``check(cfg)`` (indices in range and increasing, the masked input's exact
shape, shares below the prime, ...).  Any failure is a
:class:`~p2pfl.errors.RemoteProtocolError` naming the sender.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Final

import numpy as np

from mpc.field import P31, PRIMES_31
from mpc.secagg import (
    AbortNotice,
    Announce,
    Complaint,
    ConsistencySig,
    Decision,
    ForwardedInput,
    GroupConfig,
    InputRequest,
    KeyBundle,
    MaskedInput,
    Message,
    MessageError,
    ScoreShares,
    ShareKeys,
    ShareRelay,
    SigBundle,
    SignedKeys,
    SketchRelay,
    SketchRequest,
    SketchShares,
    UnmaskShares,
)
from mpc.secagg._crypto import SHARE_BYTES
from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.wire import ArraySpec, MaxLen, PeerId, Range, decode, encode, message

__all__ = ["decode_payload", "encode_message", "from_wire", "max_payload", "to_wire"]

_MAX_PARTIES: Final = 1 << 16
_MAX_SIG: Final = 512  # mpc.secagg._messages.MAX_SIG_BYTES
_MAX_CT: Final = 1 << 20  # ... MAX_CIPHERTEXT_BYTES
_MAX_AGGS: Final = 64
_MAX_PRIMES: Final = len(PRIMES_31)

Party = Annotated[int, Range(0, _MAX_PARTIES - 1)]
Indices = Annotated[tuple[Party, ...], MaxLen(_MAX_PARTIES)]
Sig = Annotated[bytes, MaxLen(_MAX_SIG)]
Key = Annotated[bytes, MaxLen(32, exact=True)]
Share = Annotated[bytes, MaxLen(SHARE_BYTES, exact=True)]
Ciphertexts = Annotated[tuple[tuple[Party, Annotated[bytes, MaxLen(_MAX_CT)]], ...],
                        MaxLen(_MAX_PARTIES)]
Shares = Annotated[tuple[tuple[Party, Share], ...], MaxLen(_MAX_PARTIES)]
Ring = Annotated[np.ndarray, ArraySpec(dtypes=("u4",), ndim=1, max_elems=1 << 30)]
F31 = Annotated[int, Range(0, P31 - 1)]


@message(0x0401)
class WSignedKeys:
    member: Party
    c_pk: Key
    s_pk: Key
    signature: Sig


@message(0x0402)
class WKeyBundle:
    keys: Annotated[tuple[WSignedKeys, ...], MaxLen(_MAX_PARTIES)]


@message(0x0403)
class WShareKeys:
    ciphertexts: Ciphertexts


@message(0x0404)
class WShareRelay:
    u2: Indices
    ciphertexts: Ciphertexts


@message(0x0405)
class WMaskedInput:
    y: Ring
    signature: Sig


@message(0x0406)
class WDecision:
    stage: Annotated[int, Range(0, 6)]
    members: Indices
    signature: Sig
    keys: Annotated[tuple[WSignedKeys, ...], MaxLen(_MAX_PARTIES)]


@message(0x0407)
class WSketchRequest:
    commitments: Annotated[tuple[tuple[Party, tuple[Key, Sig]], ...], MaxLen(_MAX_PARTIES)]


@message(0x0408)
class WSketchShares:
    ciphertexts: Ciphertexts


@message(0x0409)
class WSketchRelay:
    ciphertexts: Ciphertexts


@message(0x040A)
class WScoreShares:
    scores: Annotated[tuple[tuple[Party, Annotated[tuple[F31, ...], MaxLen(2 * _MAX_PRIMES)]], ...],
                      MaxLen(_MAX_PARTIES)]
    pairs: Annotated[tuple[tuple[Party, Party, Annotated[tuple[F31, ...], MaxLen(_MAX_PRIMES)]], ...],
                     MaxLen(1 << 22)] = ()


@message(0x040B)
class WAnnounce:
    aggregator: Party
    survivors: Indices
    excluded: Indices
    signature: Sig


@message(0x040C)
class WConsistencySig:
    signature: Sig
    echoes: Annotated[tuple[WAnnounce, ...], MaxLen(_MAX_AGGS)]


@message(0x040D)
class WComplaint:
    echoes: Annotated[tuple[WAnnounce, ...], MaxLen(_MAX_AGGS)]


@message(0x040E)
class WSigBundle:
    signatures: Annotated[tuple[tuple[Party, Sig], ...], MaxLen(_MAX_PARTIES)]


@message(0x040F)
class WUnmaskShares:
    b_shares: Shares
    sk_shares: Shares
    sketch_sum: Annotated[tuple[F31, ...], MaxLen(_MAX_PRIMES << 16)] | None


@message(0x0410)
class WInputRequest:
    members: Indices


@message(0x0411)
class WForwardedInput:
    member: Party
    y: Ring
    signature: Sig


@message(0x0412)
class WAbortNotice:
    reason: Annotated[str, MaxLen(500)]


_PAIRS: Final[tuple[tuple[type[Message], type[Any]], ...]] = (
    (SignedKeys, WSignedKeys), (KeyBundle, WKeyBundle), (ShareKeys, WShareKeys),
    (ShareRelay, WShareRelay), (MaskedInput, WMaskedInput), (Decision, WDecision),
    (SketchRequest, WSketchRequest), (SketchShares, WSketchShares),
    (SketchRelay, WSketchRelay), (ScoreShares, WScoreShares), (Announce, WAnnounce),
    (ConsistencySig, WConsistencySig), (Complaint, WComplaint), (SigBundle, WSigBundle),
    (UnmaskShares, WUnmaskShares), (InputRequest, WInputRequest),
    (ForwardedInput, WForwardedInput), (AbortNotice, WAbortNotice),
)
_TO_WIRE: Final = dict(_PAIRS)
_FROM_WIRE: Final = {w: m for m, w in _PAIRS}
_SHARE_FIELDS: Final = frozenset({"b_shares", "sk_shares"})


def _out(v: Any) -> Any:
    if isinstance(v, Message):
        return to_wire(v)
    if isinstance(v, tuple) and not (v and type(v[0]) is int):  # (fields are homogeneous)
        return tuple(_out(x) for x in v)
    return v


def _in(v: Any) -> Any:
    if type(v) in _FROM_WIRE:
        return from_wire(v)
    if isinstance(v, tuple) and not (v and type(v[0]) is int):  # (fields are homogeneous)
        return tuple(_in(x) for x in v)
    return v


def to_wire(msg: Message) -> Any:
    """The wire mirror of an mpc.secagg message. Raises :class:`LocalProtocolError`
    for a type without a mirror or a share that does not fit ``SHARE_BYTES``."""
    cls = _TO_WIRE.get(type(msg))
    if cls is None:
        raise LocalProtocolError(f"no wire form for {type(msg).__name__}")
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        v = getattr(msg, f.name)
        if f.name in _SHARE_FIELDS:
            try:
                kw[f.name] = tuple((u, int(s).to_bytes(SHARE_BYTES, "big")) for u, s in v)
            except OverflowError as e:
                raise LocalProtocolError(f"{f.name}: share out of range") from e
        else:
            kw[f.name] = _out(v)
    return cls(**kw)


def from_wire(w: Any) -> Message:
    """The mpc.secagg message a decoded wire mirror stands for (not yet checked)."""
    cls = _FROM_WIRE[type(w)]
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(w):
        v = getattr(w, f.name)
        if f.name in _SHARE_FIELDS:
            kw[f.name] = tuple((u, int.from_bytes(s, "big")) for u, s in v)
        else:
            kw[f.name] = _in(v)
    return cls(**kw)


def encode_message(msg: Message) -> bytes:
    """Canonical bytes of an mpc.secagg message (its wire mirror, CBOR)."""
    return encode(to_wire(msg))


def max_payload(cfg: GroupConfig) -> int:
    """A generous upper bound on the encoded size of any message of this group:
    the masked input (4 bytes per coordinate) or O(n) keys, ciphertexts, shares and
    signatures (times the aggregators, for echoed announcements)."""
    per_party = 512 * (2 + len(cfg.aggregators))
    if cfg.sketch is not None:  # shares of z and zero-sharings, score and pair shares
        per_party += 8 * cfg.sketch.primes * (cfg.sketch.rows + 4 * cfg.n) + 512
    return 4 * cfg.dim + cfg.n * per_party + 8192


def decode_payload(cfg: GroupConfig, data: bytes, sender: PeerId) -> Message:
    """Decode, convert and check one received payload.

    Raises :class:`RemoteProtocolError` (``peer=sender``) for an oversized or
    undecodable payload, a message that is not an mpc.secagg mirror, or one that
    fails its field checks for ``cfg``.
    """
    try:
        w = decode(data, max_size=max_payload(cfg))
    except RemoteProtocolError as e:
        raise RemoteProtocolError(f"secure aggregation payload: {e}", peer=sender) from e
    if type(w) not in _FROM_WIRE:
        raise RemoteProtocolError(
            f"secure aggregation payload: unexpected {type(w).__name__}", peer=sender)
    msg = from_wire(w)
    try:
        msg.check(cfg)
    except MessageError as e:
        raise RemoteProtocolError(f"secure aggregation {type(msg).__name__}: {e}",
                                  peer=sender) from e
    return msg
