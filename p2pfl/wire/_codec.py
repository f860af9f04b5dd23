"""The one CBOR codec for everything that crosses the network or the disk.

Theory of operation
-------------------
A *message* is a frozen dataclass registered with :func:`message` under a
numeric tag.  On the wire it is the canonical CBOR array::

    [WIRE_VERSION, tag, [field_0, field_1, ...]]

Fields are encoded in declaration order, so the encoding of a value is unique
(canonical) and can be signed.  Field types come from the annotations and drive
both encoding and *strict* decoding: every decoded value is checked for its
exact CBOR type, its range or length, and array dtype/shape, before a message
object is built.  Constraints are attached with ``typing.Annotated``::

    @message(0x0101)
    class Hello:
        peer: PeerId
        addrs: Annotated[tuple[str, ...], MaxLen(16)]
        port: Annotated[int, Range(0, 65535)]

Supported field types: ``int``, ``bool``, ``float`` (finite), ``str``,
``bytes``, :class:`PeerId`, ``IntEnum`` subclasses, ``numpy.ndarray``
(``[dtype, shape, little-endian raw bytes]``), ``tuple[T, ...]``,
``tuple[A, B, ...]``, ``dict[K, V]`` (as a list of pairs sorted by encoded key),
``T | None`` and nested dataclasses (registered or not).

Anything malformed raises :class:`~p2pfl.errors.RemoteProtocolError` with a
message naming the class and field; the codec never pickles and never executes
anything from the input.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, dataclass_transform

import cbor2
import numpy as np

from p2pfl.errors import LocalProtocolError, RemoteProtocolError

from ._peer_id import PEER_ID_BYTES, PeerId

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "WIRE_VERSION",
    "ArraySpec",
    "MaxLen",
    "Range",
    "decode",
    "decode_as",
    "encode",
    "encoded_size",
    "message",
    "registered_messages",
]

WIRE_VERSION = 1
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
_DEFAULT_MAX_STR = 4096
_DEFAULT_MAX_SEQ = 65536
_INT_RANGES: dict[Any, tuple[float, float]] = {}  # int decoders -> their range (a fast path)
_MAX_NDIM = 8
_MAX_DEPTH = 24
_ALLOWED_DTYPES = frozenset(
    ["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "b1"]
)

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Inclusive bounds for an ``int`` or ``float`` field."""

    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class MaxLen:
    """Maximum length of a ``str``/``bytes``/``tuple``/``dict`` field.

    ``exact=True`` demands exactly that length (keys, signatures, hashes).
    """

    n: int
    exact: bool = False


@dataclass(frozen=True)
class ArraySpec:
    """Constraints for an ``ndarray`` field."""

    dtypes: tuple[str, ...] | None = None  # numpy dtype strings such as "f4", "u4"
    ndim: int | None = None
    max_elems: int | None = None


_registry: dict[int, type[Any]] = {}
_tags: dict[type[Any], int] = {}


@dataclass_transform(frozen_default=True)
def message(tag: int) -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` a frozen, slotted dataclass registered as ``tag``.

    Raises :class:`LocalProtocolError` when the tag is already taken.
    """
    if not 0 < tag < 2**32:
        raise LocalProtocolError(f"message tag out of range: {tag}")

    def wrap(cls: type[T]) -> type[T]:
        if tag in _registry and _registry[tag].__qualname__ != cls.__qualname__:
            raise LocalProtocolError(
                f"wire tag {tag:#x} used by both {_registry[tag].__qualname__} and {cls.__qualname__}"
            )
        dc = cls if dataclasses.is_dataclass(cls) else dataclass(frozen=True, slots=True)(cls)
        _registry[tag] = dc
        _tags[dc] = tag
        return dc

    return wrap


def registered_messages() -> dict[int, type[Any]]:
    """A copy of the tag → class registry."""
    return dict(_registry)


# ----------------------------------------------------------------------------
# per-type encoders/decoders, compiled once per annotation

_Enc = Callable[[Any], Any]
_Dec = Callable[[Any, str], Any]


def _fail(where: str, what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"invalid field {where}: {what}")


def _split_annotated(tp: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        return base, meta
    return tp, []


def _compile(tp: Any) -> tuple[_Enc, _Dec]:
    base, meta = _split_annotated(tp)
    rng = next((m for m in meta if isinstance(m, Range)), None)
    maxlen = next((m for m in meta if isinstance(m, MaxLen)), None)
    aspec = next((m for m in meta if isinstance(m, ArraySpec)), None)
    origin = typing.get_origin(base)

    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(base) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(base)) != 2:
            raise LocalProtocolError(f"only 'T | None' unions are supported, got {base}")
        inner_tp = typing.Annotated[(args[0], *meta)] if meta else args[0]
        ienc, idec = _compile(inner_tp)
        return (lambda v: None if v is None else ienc(v)), (
            lambda v, w: None if v is None else idec(v, w)
        )
    if base is bool:
        def dec_bool(v: Any, w: str) -> bool:
            if type(v) is not bool:
                raise _fail(w, "expected bool")
            return bool(v)
        return (lambda v: v), dec_bool
    if isinstance(base, type) and issubclass(base, enum.IntEnum):
        enum_cls = base

        def dec_enum(v: Any, w: str) -> Any:
            if type(v) is not int:
                raise _fail(w, f"expected {enum_cls.__name__}")
            try:
                return enum_cls(v)
            except ValueError:
                raise _fail(w, f"unknown {enum_cls.__name__} value {v}") from None
        return (lambda v: int(v)), dec_enum
    if base is int:
        lo = -(2**63) if rng is None or rng.lo is None else rng.lo
        hi = 2**64 - 1 if rng is None or rng.hi is None else rng.hi

        def dec_int(v: Any, w: str) -> int:
            if type(v) is not int:
                raise _fail(w, f"expected int, got {type(v).__name__}")
            if not lo <= v <= hi:
                raise _fail(w, f"{v} outside [{lo}, {hi}]")
            return int(v)
        _INT_RANGES[dec_int] = (lo, hi)
        return (lambda v: int(v)), dec_int
    if base is float:
        flo = -math.inf if rng is None or rng.lo is None else rng.lo
        fhi = math.inf if rng is None or rng.hi is None else rng.hi

        def dec_float(v: Any, w: str) -> float:
            if type(v) is int and not isinstance(v, bool):
                v = float(v)
            if type(v) is not float or not math.isfinite(v):
                raise _fail(w, "expected a finite float")
            if not flo <= v <= fhi:
                raise _fail(w, f"{v} outside [{flo}, {fhi}]")
            return v
        return (lambda v: float(v)), dec_float
    if base in (str, bytes):
        kind = base
        n = maxlen.n if maxlen else (_DEFAULT_MAX_STR if base is str else None)
        exact = bool(maxlen and maxlen.exact)

        def dec_sb(v: Any, w: str) -> Any:
            if type(v) is not kind:
                raise _fail(w, f"expected {kind.__name__}, got {type(v).__name__}")
            if n is not None and (len(v) != n if exact else len(v) > n):
                raise _fail(w, f"length {len(v)} {'!=' if exact else '>'} {n}")
            return v
        return (lambda v: v), dec_sb
    if base is PeerId:
        def dec_pid(v: Any, w: str) -> PeerId:
            if type(v) is not bytes or len(v) != PEER_ID_BYTES:
                raise _fail(w, "expected a 20-byte peer id")
            return PeerId(v)
        return (lambda v: v.raw), dec_pid
    if base is np.ndarray:
        return _compile_array(aspec)
    if origin is tuple:
        targs: tuple[Any, ...] = typing.get_args(base)
        if len(targs) == 2 and targs[1] is Ellipsis:
            ienc, idec = _compile(targs[0])
            lim = maxlen.n if maxlen else _DEFAULT_MAX_SEQ
            exact_t = bool(maxlen and maxlen.exact)

            int_range = _INT_RANGES.get(idec)

            def dec_seq(v: Any, w: str) -> tuple[Any, ...]:
                if type(v) is not list:
                    raise _fail(w, "expected a list")
                if len(v) != lim if exact_t else len(v) > lim:
                    raise _fail(w, f"{len(v)} items, limit {lim}")
                if int_range is not None and all(type(x) is int for x in v) and (
                        not v or (int_range[0] <= min(v) and max(v) <= int_range[1])):
                    return tuple(v)  # plain ints in range: what idec returns, item by item
                try:  # the item's path is formatted only for the error (decoding is pure)
                    return tuple(idec(x, w) for x in v)
                except RemoteProtocolError:
                    for i, x in enumerate(v):
                        idec(x, f"{w}[{i}]")
                    raise
            return (lambda v: [ienc(x) for x in v]), dec_seq
        parts = [_compile(a) for a in targs]

        def dec_fixed(v: Any, w: str) -> tuple[Any, ...]:
            if type(v) is not list or len(v) != len(parts):
                raise _fail(w, f"expected a list of {len(parts)}")
            return tuple(p[1](x, f"{w}[{i}]") for i, (p, x) in enumerate(zip(parts, v, strict=True)))
        return (lambda v: [p[0](x) for p, x in zip(parts, v, strict=True)]), dec_fixed
    if origin is dict:
        kt, vt = typing.get_args(base)
        kenc, kdec = _compile(kt)
        venc, vdec = _compile(vt)
        lim_d = maxlen.n if maxlen else _DEFAULT_MAX_SEQ

        def enc_dict(d: Any) -> Any:
            pairs = [[kenc(k), venc(v)] for k, v in d.items()]
            pairs.sort(key=lambda p: cbor2.dumps(p[0], canonical=True))
            return pairs

        def dec_dict(v: Any, w: str) -> dict[Any, Any]:
            if type(v) is not list or len(v) > lim_d:
                raise _fail(w, f"expected a list of at most {lim_d} pairs")
            out: dict[Any, Any] = {}
            for i, p in enumerate(v):
                if type(p) is not list or len(p) != 2:
                    raise _fail(f"{w}[{i}]", "expected a [key, value] pair")
                k = kdec(p[0], f"{w}[{i}].key")
                if k in out:
                    raise _fail(w, f"duplicate key {k!r}")
                out[k] = vdec(p[1], f"{w}[{k!r}]")
            return out
        return enc_dict, dec_dict
    if dataclasses.is_dataclass(base) and isinstance(base, type):
        sub = base
        return (lambda v: _schema(sub).encode_fields(v)), (
            lambda v, w: _schema(sub).decode_fields(v, w)
        )
    raise LocalProtocolError(f"unsupported wire field type: {tp!r}")


def _compile_array(spec: ArraySpec | None) -> tuple[_Enc, _Dec]:
    def enc(a: Any) -> Any:
        a = np.asarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        code = dt.str[1:]
        if code not in _ALLOWED_DTYPES:
            raise LocalProtocolError(f"dtype {a.dtype} cannot go on the wire")
        return [code, list(a.shape), np.ascontiguousarray(a, dtype=dt.newbyteorder("<")).tobytes()]

    def dec(v: Any, w: str) -> np.ndarray[Any, Any]:
        if type(v) is not list or len(v) != 3:
            raise _fail(w, "expected [dtype, shape, data]")
        code, shape, data = v
        if type(code) is not str or code not in _ALLOWED_DTYPES:
            raise _fail(w, f"dtype {code!r} not allowed")
        if spec and spec.dtypes and code not in spec.dtypes:
            raise _fail(w, f"dtype {code} not in {spec.dtypes}")
        if type(shape) is not list or len(shape) > _MAX_NDIM or not all(
            type(s) is int and 0 <= s < 2**40 for s in shape
        ):
            raise _fail(w, "bad shape")
        if spec and spec.ndim is not None and len(shape) != spec.ndim:
            raise _fail(w, f"expected {spec.ndim} dimensions, got {len(shape)}")
        count = math.prod(shape)
        if spec and spec.max_elems is not None and count > spec.max_elems:
            raise _fail(w, f"{count} elements > {spec.max_elems}")
        dt = np.dtype("<" + code) if code not in ("u1", "i1", "b1") else np.dtype(code)
        if type(data) is not bytes or len(data) != count * dt.itemsize:
            raise _fail(w, "data length does not match dtype and shape")
        arr = np.frombuffer(data, dtype=dt).reshape(shape)
        if code == "b1" and arr.size and not np.isin(arr.view(np.uint8), (0, 1)).all():
            raise _fail(w, "bool array with values other than 0/1")
        return arr
    return enc, dec


class _Schema:
    __slots__ = ("cls", "decs", "encs", "names")

    def __init__(self, cls: type[Any]) -> None:
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = dataclasses.fields(cls)
        self.cls = cls
        self.names = [f.name for f in fields]
        compiled = [_compile(hints[f.name]) for f in fields]
        self.encs = [c[0] for c in compiled]
        self.decs = [c[1] for c in compiled]

    def encode_fields(self, obj: Any) -> list[Any]:
        if type(obj) is not self.cls:
            raise LocalProtocolError(f"expected {self.cls.__name__}, got {type(obj).__name__}")
        return [e(getattr(obj, n)) for e, n in zip(self.encs, self.names, strict=True)]

    def decode_fields(self, v: Any, where: str) -> Any:
        name = self.cls.__name__
        if type(v) is not list or len(v) != len(self.names):
            raise _fail(where or name, f"expected {len(self.names)} fields for {name}")
        kwargs = {
            n: d(x, f"{where or name}.{n}")
            for n, d, x in zip(self.names, self.decs, v, strict=True)
        }
        try:
            return self.cls(**kwargs)
        except RemoteProtocolError:
            raise
        except (ValueError, TypeError) as e:  # __post_init__ validation
            raise _fail(where or name, str(e)) from e


_schemas: dict[type[Any], _Schema] = {}


def _schema(cls: type[Any]) -> _Schema:
    s = _schemas.get(cls)
    if s is None:
        s = _schemas[cls] = _Schema(cls)
    return s


# ----------------------------------------------------------------------------
# public entry points


def encode(msg: Any) -> bytes:
    """Canonical CBOR encoding of a registered message.

    Raises :class:`LocalProtocolError` for unregistered classes or values that
    the schema cannot carry.
    """
    tag = _tags.get(type(msg))
    if tag is None:
        raise LocalProtocolError(f"{type(msg).__name__} is not a registered wire message")
    return cbor2.dumps([WIRE_VERSION, tag, _schema(type(msg)).encode_fields(msg)], canonical=True)


def encoded_size(msg: Any) -> int:
    """Length in bytes of ``encode(msg)``."""
    return len(encode(msg))


def _semantic_tag_refused(decoder: Any, tag: Any) -> Any:
    raise RemoteProtocolError(f"CBOR semantic tag {tag.tag} not allowed")


def _loads(data: bytes, max_size: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError("message must be bytes")
    if len(data) > max_size:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    fp = io.BytesIO(data)
    try:
        dec = cbor2.CBORDecoder(
            fp,
            tag_hook=_semantic_tag_refused,
            max_depth=_MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            semantic_decoders={t: _refuse_semantic for t in _REFUSED_TAGS},
        )
        obj = dec.decode()
    except RemoteProtocolError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError, EOFError) as e:
        raise RemoteProtocolError(f"undecodable CBOR: {e}") from e
    if fp.tell() != len(data):
        raise RemoteProtocolError(f"{len(data) - fp.tell()} trailing bytes after the message")
    return obj


def _refuse_semantic(decoder: Any) -> Any:
    raise RemoteProtocolError("CBOR semantic tags are not allowed")


# every tag that cbor2 decodes natively (dates, bignums, decimals, regexps,
# shared values, sets, ...): the wire format uses none of them.
_REFUSED_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 55799)


def _unwrap(data: bytes, max_size: int) -> tuple[int, Any]:
    obj = _loads(data, max_size)
    if type(obj) is not list or len(obj) != 3:
        raise RemoteProtocolError("not a p2pfl message (expected [version, tag, fields])")
    version, tag, fields = obj
    if type(version) is not int or version != WIRE_VERSION:
        raise RemoteProtocolError(f"unsupported wire version {version!r} (we speak {WIRE_VERSION})")
    if type(tag) is not int:
        raise RemoteProtocolError("message tag must be an int")
    return tag, fields


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_MESSAGE) -> Any:
    """Decode and validate any registered message.

    Raises :class:`RemoteProtocolError` for anything malformed, oversized,
    of an unknown tag or version, or failing a field constraint.
    """
    tag, fields = _unwrap(data, max_size)
    cls = _registry.get(tag)
    if cls is None:
        raise RemoteProtocolError(f"unknown message tag {tag:#x}")
    return _schema(cls).decode_fields(fields, "")


def decode_as(data: bytes, cls: type[T], *, max_size: int = DEFAULT_MAX_MESSAGE) -> T:
    """Like :func:`decode` but the message must be exactly of class ``cls``."""
    tag, fields = _unwrap(data, max_size)
    if _tags.get(cls) != tag:
        got = _registry.get(tag)
        raise RemoteProtocolError(
            f"expected {cls.__name__}, got {got.__name__ if got else f'unknown tag {tag:#x}'}"
        )
    result: T = _schema(cls).decode_fields(fields, "")
    return result
