"""The federation file: everything the peers of one federation must agree on.

Theory of operation
-------------------
A federation file is TOML (read with :mod:`tomllib`).  It is parsed into a frozen
:class:`Federation`, validated key by key, and *normalized*: defaults are filled in,
ints given for float keys become floats, public keys become raw bytes in sorted
order, the strategy's hyper-parameters are completed with the strategy's defaults.
The federation id is the BLAKE2b-256 of the canonical CBOR encoding of that
normalized form (:meth:`Federation.to_dict`), so comments, whitespace, key order,
``1`` versus ``1.0`` or a hex versus base32 spelling of a key never change it, while
any value that changes behaviour does.

Layout (every key except ``name`` and ``task`` has a default)::

    name = "digits-demo"      # human-readable
    task = "digits"           # task id (built-in name or module:function)
    seed = 0                  # model init seed
    secure = true             # secure aggregation (false: plaintext baseline)

    [strategy]                # name + hyper-parameters of p2pfl.learning.strategy
    name = "fedavg"
    server_lr = 1.0

    [training]                # local training (TrainConfig); device is per peer
    epochs = 1
    batch_size = 32
    lr = 0.05
    momentum = 0.9
    weight_decay = 0.0

    [update]                  # what a member contributes
    clip_norm = 10.0          # L2 bound B on the update (inf: none; plaintext only)
    weighting = "samples"     # "samples": w = min(n, sample_cap)/sample_cap; "uniform": w = 1
    sample_cap = 10000

    [cohort]
    size = 20                 # peers drawn per round
    group_size = 10           # g
    min_group_size = 5        # a smaller trailing group is merged; smaller cohorts skip the round
    aggregators = 2           # per group, in failover order

    [secagg]
    threshold = 0.6           # float: fraction of the group; int: a count
    neighbours = 0            # SecAgg+ degree k (0: all pairs)
    quant_bits = 32           # signed width of a group sum (mpc.quant.QuantParams.bits)
    quant_range = 1.0         # per-coordinate clip c before quantization (QuantParams.clip)

    [timeouts]                # seconds
    train = 60.0              # round start -> inputs due
    stage = 10.0              # each secure-aggregation stage after the inputs
    sign = 5.0                # an aggregator collects member signatures
    failover = 5.0            # extra wait before the next aggregator takes over
    round = 180.0             # round start -> the global step at the latest

    [membership]
    policy = "open"           # or "permissioned" with members = ["<hex or base32 key>", ...]
    newcomer_rounds = 5       # open: rounds a newcomer's weight stays capped
    newcomer_weight = 0.25

    [detection]               # the sketch stage and exclusion policy (secure only)
    enabled = false
    rows = 1024               # sketch length r
    nnz = 1                   # non-zeros per column of the sketch map
    norm_slack = 0.5          # ||z|| may exceed the clip bound's image by this fraction
    clone_cos = 0.95          # two members closer than this are clones (both excluded)
    reference_rounds = 5      # the reference: the global model's move over this many rounds
    direction_min = 0.05      # exclude cos(z, ref) < -max(direction_min, ...
    direction_ratio = 0.25    #   ... direction_ratio * median cos of the group)
    direction_agree = 0.3     # median cos at least this: exclude any cos(z, ref) < 0
    group_direction_min = 0.15  # round 0 (no reference): the same against the group
    stale_cos = 0.98          # cos(z, ref) above this: a replayed (stale) update
    zero_fraction = 0.001     # ||z|| below this fraction of the bound: a zero update

    [ledger]                  # reputation and credits: p2pfl.federation.LedgerParams
    floor = 0.2               # (every field of LedgerParams; all have defaults)

Every invalid value raises :class:`~p2pfl.errors.ConfigError` naming the key and why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

import cbor2

from p2pfl.errors import ConfigError
from p2pfl.learning.strategy import Strategy, make_strategy
from p2pfl.wire import PeerId

from .ledger_params import LedgerParams

if TYPE_CHECKING:
    from p2pfl.learning.task import TrainConfig

__all__ = [
    "Cohort",
    "Detection",
    "Federation",
    "LocalTraining",
    "Membership",
    "SecAgg",
    "Threshold",
    "Timeouts",
    "UpdatePolicy",
    "federation_from_dict",
    "load_federation",
]

FEDERATION_ID_DOMAIN: Final = b"p2pfl/federation/1\x00"
_FORMAT_VERSION: Final = 1
_REQUIRED: Final = object()


class _Table:
    """Typed, key-tracking access to one TOML table; errors name ``path.key``."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'federation'}: must be a table, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, default: object = _REQUIRED) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.name(key)}: required key is missing")
        return default

    def table(self, key: str) -> _Table:
        return _Table(self.raw(key, {}), self.name(key))

    def integer(self, key: str, default: object = _REQUIRED, *, lo: int | None = None,
            hi: int | None = None) -> int:
        v = self.raw(key, default)
        if type(v) is not int:
            raise ConfigError(f"{self.name(key)}: must be an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ConfigError(f"{self.name(key)}: must be in [{lo}, {hi}], got {v}")
        return v

    def number(self, key: str, default: object = _REQUIRED, *, lo: float | None = None,
              hi: float | None = None, lo_open: bool = False, allow_inf: bool = False) -> float:
        v = self.raw(key, default)
        if type(v) not in (int, float):
            raise ConfigError(f"{self.name(key)}: must be a number, got {v!r}")
        f = float(v)
        if math.isnan(f) or (math.isinf(f) and not (allow_inf and f > 0)):
            raise ConfigError(f"{self.name(key)}: must be a finite number, got {v!r}")
        if lo is not None and (f <= lo if lo_open else f < lo):
            raise ConfigError(f"{self.name(key)}: must be {'>' if lo_open else '>='} {lo}, got {v!r}")
        if hi is not None and f > hi:
            raise ConfigError(f"{self.name(key)}: must be <= {hi}, got {v!r}")
        return f

    def text(self, key: str, default: object = _REQUIRED, *, choices: tuple[str, ...] = (),
            max_len: int = 256) -> str:
        v = self.raw(key, default)
        if type(v) is not str or not v.strip():
            raise ConfigError(f"{self.name(key)}: must be a non-empty string, got {v!r}")
        if len(v) > max_len:
            raise ConfigError(f"{self.name(key)}: longer than {max_len} characters")
        if choices and v not in choices:
            raise ConfigError(f"{self.name(key)}: must be one of {', '.join(choices)}; got {v!r}")
        return v

    def flag(self, key: str, default: object = _REQUIRED) -> bool:
        v = self.raw(key, default)
        if type(v) is not bool:
            raise ConfigError(f"{self.name(key)}: must be true or false, got {v!r}")
        return v

    def consume_all(self) -> dict[str, Any]:
        """Every key of the table (validated by the caller), all marked used."""
        self.used.update(self.data)
        return dict(self.data)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.name(unknown[0])}: unknown key")


# ----------------------------------------------------------------------------
# the parts


@dataclass(frozen=True)
class Threshold:
    """Secure-aggregation threshold: an absolute ``count`` or a ``fraction`` of the group."""

    count: int | None = None
    fraction: float | None = None

    def resolve(self, group_size: int) -> int:
        """The threshold for a group of ``group_size`` members, in ``[1, group_size]``.

        A fraction is rounded up with exact rational arithmetic on its shortest
        decimal form (``0.1 * 10`` is 1, not 2), so every peer gets the same integer.
        """
        if self.count is not None:
            return max(1, min(self.count, group_size))
        assert self.fraction is not None
        t = math.ceil(Fraction(repr(self.fraction)) * group_size)
        return max(1, min(t, group_size))

    def to_value(self) -> int | float:
        return self.count if self.count is not None else float(self.fraction or 0.0)


@dataclass(frozen=True)
class LocalTraining:
    """Local training hyper-parameters (the device is a per-peer choice, not here)."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass(frozen=True)
class UpdatePolicy:
    """How a member's update is bounded and weighted before aggregation."""

    clip_norm: float = 10.0
    weighting: str = "samples"
    sample_cap: int = 10_000


@dataclass(frozen=True)
class Cohort:
    """Cohort and group sizes; ``aggregators`` per group, in failover order."""

    size: int = 20
    group_size: int = 10
    min_group_size: int = 5
    aggregators: int = 2

    @property
    def max_group_size(self) -> int:
        """The largest group :func:`~p2pfl.federation.schedule.split_groups` can form."""
        return self.group_size + self.min_group_size - 1


@dataclass(frozen=True)
class SecAgg:
    """Secure-aggregation parameters (the plaintext backend uses ``threshold`` only)."""

    threshold: Threshold = Threshold(fraction=0.6)
    neighbours: int = 0
    quant_bits: int = 32
    quant_range: float = 1.0


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds; see the module docstring for their meaning."""

    train: float = 60.0
    stage: float = 10.0
    sign: float = 5.0
    failover: float = 5.0
    round: float = 180.0


@dataclass(frozen=True)
class Membership:
    """``open`` (anyone; newcomers' weight capped) or ``permissioned`` (listed keys)."""

    policy: str = "open"
    newcomer_rounds: int = 5
    newcomer_weight: float = 0.25
    members: tuple[bytes, ...] = ()  # Ed25519 public keys, sorted

    @cached_property
    def _keys(self) -> dict[PeerId, bytes]:
        return {PeerId.from_public_key(k): k for k in self.members}

    @cached_property
    def member_ids(self) -> frozenset[PeerId]:
        return frozenset(self._keys)

    def public_key(self, peer: PeerId) -> bytes | None:
        """The listed key of ``peer`` (None: not listed, or an open federation)."""
        return self._keys.get(peer)

    def admits(self, peer: PeerId) -> bool:
        """True when ``peer`` may take part (always, for an open federation)."""
        return self.policy == "open" or peer in self._keys


@dataclass(frozen=True)
class Detection:
    """The sketch stage and its exclusion policy (see :mod:`p2pfl.federation.policy`).

    Only for secure federations; ``enabled = false`` runs secure aggregation without
    scoring (no exclusions, no binding check)."""

    enabled: bool = False
    rows: int = 1024
    nnz: int = 1
    norm_slack: float = 0.5
    clone_cos: float = 0.95
    reference_rounds: int = 5
    direction_min: float = 0.05
    direction_ratio: float = 0.25
    direction_agree: float = 0.3
    group_direction_min: float = 0.15
    stale_cos: float = 0.98
    zero_fraction: float = 0.001


@dataclass(frozen=True, eq=False)
class Federation:
    """A parsed, validated and normalized federation file.

    Equality and hashing are by :attr:`id`.  Build with :func:`load_federation` or
    :func:`federation_from_dict`.
    """

    name: str
    task: str
    seed: int
    secure: bool
    strategy: Strategy
    training: LocalTraining
    update: UpdatePolicy
    cohort: Cohort
    secagg: SecAgg
    timeouts: Timeouts
    membership: Membership
    detection: Detection = field(default_factory=Detection)
    ledger: LedgerParams = field(default_factory=LedgerParams)

    def to_dict(self) -> dict[str, Any]:
        """The normalized federation as plain TOML-compatible data (round-trips)."""
        return {
            "name": self.name,
            "task": self.task,
            "seed": self.seed,
            "secure": self.secure,
            "strategy": dict(self.strategy.to_config()),
            "training": _fields(self.training),
            "update": _fields(self.update),
            "cohort": _fields(self.cohort),
            "secagg": {
                "threshold": self.secagg.threshold.to_value(),
                "neighbours": self.secagg.neighbours,
                "quant_bits": self.secagg.quant_bits,
                "quant_range": self.secagg.quant_range,
            },
            "timeouts": _fields(self.timeouts),
            "membership": {
                "policy": self.membership.policy,
                "newcomer_rounds": self.membership.newcomer_rounds,
                "newcomer_weight": self.membership.newcomer_weight,
                **(
                    {"members": [k.hex() for k in self.membership.members]}
                    if self.membership.policy == "permissioned"
                    else {}
                ),
            },
            "detection": _fields(self.detection),
            "ledger": self.ledger.to_dict(),
        }

    @cached_property
    def canonical(self) -> bytes:
        """Canonical CBOR of ``[format version, to_dict()]``."""
        return cbor2.dumps([_FORMAT_VERSION, self.to_dict()], canonical=True)

    @cached_property
    def id(self) -> bytes:
        """The federation id: BLAKE2b-256 of the canonical encoding (32 bytes)."""
        return hashlib.blake2b(FEDERATION_ID_DOMAIN + self.canonical, digest_size=32).digest()

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def threshold_for(self, group_size: int) -> int:
        """The aggregation threshold (and result-signature quorum) of a group."""
        return self.secagg.threshold.resolve(group_size)

    def train_config(self, *, seed: int, device: str = "auto") -> TrainConfig:
        """The :class:`~p2pfl.learning.task.TrainConfig` of one local run."""
        from p2pfl.learning.task import TrainConfig  # torch: imported only when training

        t = self.training
        return TrainConfig(
            epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
            weight_decay=t.weight_decay, prox_mu=self.strategy.prox_mu, seed=seed, device=device,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Federation) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"Federation({self.name!r}, id={self.id_hex[:16]})"


def _fields(obj: object) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------
# parsing


def load_federation(path: str | os.PathLike[str]) -> Federation:
    """Read and validate a federation file.

    Raises :class:`ConfigError` when the file is missing, is not TOML, or holds an
    invalid value (the message names the key).
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"federation file {os.fspath(path)} does not exist") from None
    except OSError as e:
        raise ConfigError(f"cannot read federation file {os.fspath(path)}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"federation file {os.fspath(path)} is not valid TOML: {e}") from e
    return federation_from_dict(data)


def federation_from_dict(data: Mapping[str, Any]) -> Federation:
    """Validate and normalize parsed federation data (as from ``tomllib``).

    Raises :class:`ConfigError` naming the first invalid key.
    """
    top = _Table(data, "")
    name = top.text("name", max_len=128)
    task = top.text("task", max_len=256)
    seed = top.integer("seed", 0, lo=0, hi=2**63 - 1)
    secure = top.flag("secure", True)
    strategy = _strategy(top.table("strategy"))
    training = _training(top.table("training"))
    cohort = _cohort(top.table("cohort"), secure)
    update = _update(top.table("update"), secure)
    secagg = _secagg(top.table("secagg"), cohort, secure)
    timeouts = _timeouts(top.table("timeouts"), cohort, secure)
    membership = _membership(top.table("membership"))
    detection = _detection(top.table("detection"), cohort, secagg, secure)
    if detection.enabled:
        need = (timeouts.train + cohort.aggregators * (timeouts.sign + timeouts.failover)
                + 7 * timeouts.stage)
        if timeouts.round < need:
            raise ConfigError(
                f"timeouts.round: must be >= {need:g} s with detection enabled (train + "
                f"aggregators * (sign + failover) + 7 * stage: the sketch stage adds two "
                f"stages), got {timeouts.round:g}")
    ledger = LedgerParams.from_dict(top.table("ledger").consume_all())
    top.finish()
    return Federation(name, task, seed, secure, strategy, training, update, cohort, secagg,
                      timeouts, membership, detection, ledger)


def _detection(t: _Table, cohort: Cohort, secagg: SecAgg, secure: bool) -> Detection:
    out = Detection(
        enabled=t.flag("enabled", False),
        rows=t.integer("rows", 1024, lo=16, hi=1 << 16),
        nnz=t.integer("nnz", 1, lo=1, hi=16),
        norm_slack=t.number("norm_slack", 0.5, lo=0.0),
        clone_cos=t.number("clone_cos", 0.95, lo=0.0, hi=1.0),
        reference_rounds=t.integer("reference_rounds", 5, lo=1, hi=1 << 10),
        direction_min=t.number("direction_min", 0.05, lo=0.0, hi=1.0),
        direction_ratio=t.number("direction_ratio", 0.25, lo=0.0, hi=1.0),
        direction_agree=t.number("direction_agree", 0.3, lo=0.0, hi=1.0),
        group_direction_min=t.number("group_direction_min", 0.15, lo=0.0, hi=1.0),
        stale_cos=t.number("stale_cos", 0.98, lo=0.0, hi=1.0),
        zero_fraction=t.number("zero_fraction", 0.001, lo=0.0, hi=1.0),
    )
    if out.enabled:
        if not secure:
            raise ConfigError("detection.enabled: the sketch stage needs secure = true")
        if out.nnz > out.rows:
            raise ConfigError(f"detection.nnz: must be <= detection.rows ({out.rows})")
    t.finish()
    return out


def _strategy(t: _Table) -> Strategy:
    name = t.text("name", "fedavg", max_len=64).strip().lower()
    params = {k: v for k, v in t.data.items() if k != "name"}
    try:
        defaults = make_strategy(name).to_config()
    except ConfigError as e:
        raise ConfigError(f"strategy.name: {e}") from None
    for k, v in params.items():
        t.used.add(k)
        if k not in defaults:
            raise ConfigError(
                f"strategy.{k}: unknown hyper-parameter of {name!r} "
                f"(it accepts {', '.join(sorted(set(defaults) - {'name'}))})"
            )
        d = defaults[k]
        if isinstance(d, float) and type(v) is int:
            params[k] = float(v)
        elif type(v) is not type(d):
            raise ConfigError(f"strategy.{k}: must be a {type(d).__name__}, got {v!r}")
    try:
        strategy = make_strategy(name, **params)
    except ConfigError as e:
        key = next((k for k in params if f"{name}.{k}" in str(e)), None)
        raise ConfigError(f"strategy{'.' + key if key else ''}: {e}") from None
    t.finish()
    return strategy


def _training(t: _Table) -> LocalTraining:
    out = LocalTraining(
        epochs=t.integer("epochs", 1, lo=0, hi=10_000),
        batch_size=t.integer("batch_size", 32, lo=1, hi=2**31),
        lr=t.number("lr", 0.05, lo=0.0),
        momentum=t.number("momentum", 0.9, lo=0.0),
        weight_decay=t.number("weight_decay", 0.0, lo=0.0),
    )
    if out.momentum >= 1:
        raise ConfigError(f"training.momentum: must be < 1, got {out.momentum}")
    t.finish()
    return out


def _update(t: _Table, secure: bool) -> UpdatePolicy:
    clip = t.number("clip_norm", 10.0, lo=0.0, lo_open=True, allow_inf=True)
    if secure and math.isinf(clip):
        raise ConfigError("update.clip_norm: must be finite when secure = true (quantization needs a bound)")
    out = UpdatePolicy(
        clip_norm=clip,
        weighting=t.text("weighting", "samples", choices=("samples", "uniform")),
        sample_cap=t.integer("sample_cap", 10_000, lo=1, hi=2**40),
    )
    t.finish()
    return out


def _cohort(t: _Table, secure: bool) -> Cohort:
    size = t.integer("size", 20, lo=1, hi=1 << 16)
    group = t.integer("group_size", 10, lo=1, hi=1 << 14)
    default_min = min(group, max(math.ceil(group / 2), 3 if secure else 1))
    min_group = t.integer("min_group_size", default_min, lo=1)
    if min_group > group:
        raise ConfigError(f"cohort.min_group_size: must be <= group_size ({group}), got {min_group}")
    if secure and min_group < 3:
        raise ConfigError(
            "cohort.min_group_size: must be >= 3 when secure = true "
            "(the sum of two updates reveals each to the other)"
        )
    if min_group > size:
        raise ConfigError(f"cohort.min_group_size: must be <= cohort.size ({size}), got {min_group}")
    aggs = t.integer("aggregators", 2, lo=1, hi=16)
    if aggs > min_group:
        raise ConfigError(
            f"cohort.aggregators: must be <= min_group_size ({min_group}), got {aggs}"
        )
    t.finish()
    return Cohort(size, group, min_group, aggs)


def _secagg(t: _Table, cohort: Cohort, secure: bool) -> SecAgg:
    raw = t.raw("threshold", 0.6)
    if type(raw) is int:
        if raw < 1:
            raise ConfigError(f"secagg.threshold: a count must be >= 1, got {raw}")
        if raw > cohort.min_group_size:
            raise ConfigError(
                f"secagg.threshold: {raw} exceeds cohort.min_group_size ({cohort.min_group_size}); "
                "the smallest groups could never complete"
            )
        threshold = Threshold(count=raw)
    elif type(raw) is float:
        if not 0 < raw <= 1:
            raise ConfigError(f"secagg.threshold: a fraction must be in (0, 1], got {raw}")
        threshold = Threshold(fraction=raw)
    else:
        raise ConfigError(f"secagg.threshold: must be a count (int) or a fraction (float), got {raw!r}")
    if secure and threshold.resolve(cohort.min_group_size) < 2:
        raise ConfigError(
            "secagg.threshold: must be at least 2 members in the smallest group when secure = true"
        )
    k = t.integer("neighbours", 0, lo=0, hi=1 << 14)
    if k == 1:
        raise ConfigError("secagg.neighbours: must be 0 (all pairs) or >= 2, got 1")
    bits = t.integer("quant_bits", 32, lo=2, hi=32)
    if 2 ** (bits - 1) - 1 < cohort.max_group_size:
        raise ConfigError(
            f"secagg.quant_bits: a {bits}-bit sum leaves no quantization level for groups of up "
            f"to {cohort.max_group_size} members (each value gets (2**(bits-1) - 1) / n levels)"
        )
    out = SecAgg(threshold, k, bits, t.number("quant_range", 1.0, lo=0.0, lo_open=True))
    t.finish()
    return out


def _timeouts(t: _Table, cohort: Cohort, secure: bool) -> Timeouts:
    def pos(key: str, default: float) -> float:
        return t.number(key, default, lo=0.0, lo_open=True)

    out = Timeouts(pos("train", 60.0), pos("stage", 10.0), pos("sign", 5.0),
                   pos("failover", 5.0), pos("round", 180.0))
    if secure and out.train <= 2 * out.stage:
        raise ConfigError(
            f"timeouts.train: must exceed 2 * timeouts.stage ({2 * out.stage}) when secure = true "
            "(key exchange and share distribution run during training)"
        )
    need = out.train + cohort.aggregators * (out.sign + out.failover)
    if secure:
        need += 5 * out.stage  # post-input stages: sketches, scores, consistency, unmask, grace
    if out.round < need:
        raise ConfigError(
            f"timeouts.round: must be >= {need:g} s (train + aggregators * (sign + failover)"
            f"{' + 5 * stage' if secure else ''}), got {out.round:g}"
        )
    t.finish()
    return out


def _parse_key(text: object, where: str) -> bytes:
    if type(text) is not str:
        raise ConfigError(f"{where}: must be a string, got {text!r}")
    s = text.strip()
    raw: bytes | None = None
    if len(s) == 64:
        try:
            raw = bytes.fromhex(s)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b32decode(s.upper() + "=" * (-len(s) % 8))
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(f"{where}: not a 32-byte Ed25519 public key in hex or base32: {text!r}")
    return raw


def _membership(t: _Table) -> Membership:
    policy = t.text("policy", "open", choices=("open", "permissioned"))
    rounds = t.integer("newcomer_rounds", 5, lo=0, hi=1 << 20)
    weight = t.number("newcomer_weight", 0.25, lo=0.0, lo_open=True, hi=1.0)
    members: tuple[bytes, ...] = ()
    if policy == "permissioned":
        raw = t.raw("members")
        if not isinstance(raw, list) or not raw:
            raise ConfigError("membership.members: must be a non-empty list of public keys")
        keys = [_parse_key(k, f"membership.members[{i}]") for i, k in enumerate(raw)]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ConfigError(f"membership.members: key {dup.hex()} is listed twice")
        members = tuple(sorted(keys))
    elif "members" in t.data:
        raise ConfigError("membership.members: only allowed with policy = \"permissioned\"")
    t.finish()
    return Membership(policy, rounds, weight, members)
