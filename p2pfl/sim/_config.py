"""Simulation parameters and the federation a simulation runs.

Everything a run does is fixed by :class:`SimConfig` (with ``seed``): the peers' keys
(``Identity.from_seed(H("p2pfl-sim", seed, i))``), their data shards, the permissioned
federation built from their public keys, the dropout plan, the network's jitter.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from p2pfl.errors import ConfigError
from p2pfl.federation import Federation, federation_from_dict
from p2pfl.identity import Identity
from p2pfl.learning.partition import parse_partition

__all__ = ["DEFAULT_SECURE", "SimConfig", "build_federation", "sim_identities"]

DEFAULT_SECURE: Final = True
"""Default of ``--secure``/``--plaintext`` (the secure backend is p2pfl.federation.secure)."""

TRANSPORTS: Final = ("memory", "tcp")
MAX_TCP_PEERS: Final = 64


@dataclass(frozen=True)
class SimConfig:
    """One simulation (see ``docs/simulation.md``).

    ``peers`` peers run ``rounds`` rounds in one process over the in-memory network
    under a mock clock. ``dataset``/``partition``/``model`` pick the built-in digits
    shards; ``task`` (``module:function``) replaces them with a user task.
    ``dropout`` F: each round a random F of the cohort crashes (half before training,
    half right after submitting its update, at random) and restarts at the next round.
    ``cohort``: peers drawn per round (None: all); ``group_size``: g. ``reference``:
    also run centralized training (digits) and, for secure runs, the plaintext mode.
    ``corrupt``: ``(peer, round)`` pairs -- that peer restarts from a corrupted state at
    that round (a self-test of ``models_agree``; not a CLI option).
    ``attack`` (:mod:`p2pfl.sim.attacks`) is run by a ``malicious`` fraction of the peers;
    ``defense`` turns the sketch stage and exclusion policy on or off (default: on when
    secure); ``weighting`` (``samples`` | ``uniform``) and ``clip`` (the L2 bound B) go
    into the federation; ``membership``: ``permissioned`` (every sim peer listed) or
    ``open`` (newcomer caps apply).
    """

    peers: int = 10
    rounds: int = 20
    dataset: str = "digits"
    partition: str = "iid"
    secure: bool = DEFAULT_SECURE
    dropout: float = 0.0
    task: str | None = None
    seed: int = 0
    out: Path | None = Path("runs/sim")
    quiet: bool = False
    transport: str = "memory"
    model: str = "mlp"
    strategy: str = "fedavg"
    cohort: int | None = None
    group_size: int = 10
    device: str = "cpu"
    latency: float = 0.005
    jitter: float = 0.002
    reference: bool = False
    progress: bool | None = None  # None: when stderr is a terminal and not quiet
    corrupt: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    attack: str | None = None
    malicious: float = 0.0
    defense: bool | None = None  # None: on for secure runs
    weighting: str = "samples"
    clip: float = 5.0
    membership: str = "permissioned"

    @property
    def defended(self) -> bool:
        """Whether the sketch stage and exclusion policy run (secure runs only)."""
        return self.secure and (self.defense if self.defense is not None else True)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad option."""
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"--transport: must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if self.transport == "tcp":
            self._validate_tcp()
        if not 1 <= self.peers <= 100_000:
            raise ConfigError(f"--peers: must be in [1, 100000], got {self.peers}")
        if not 1 <= self.rounds <= 100_000:
            raise ConfigError(f"--rounds: must be in [1, 100000], got {self.rounds}")
        if not (0.0 <= self.dropout < 1.0):
            raise ConfigError(f"--dropout: must be in [0, 1), got {self.dropout}")
        if self.task is None and self.dataset != "digits":
            raise ConfigError(f"--dataset: only 'digits' is built in, got {self.dataset!r} "
                              "(use --task module:function for your own)")
        if self.cohort is not None and not 1 <= self.cohort <= self.peers:
            raise ConfigError(f"--cohort: must be in [1, --peers], got {self.cohort}")
        if self.group_size < 1:
            raise ConfigError(f"--group-size: must be >= 1, got {self.group_size}")
        for name in ("latency", "jitter"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"--{name}: must be a finite number >= 0, got {v}")
        try:
            parse_partition(self.partition)
        except ConfigError as e:
            raise ConfigError(f"--partition: {e}") from None
        if not 0.0 <= self.malicious < 1.0:
            raise ConfigError(f"--malicious: must be in [0, 1), got {self.malicious}")
        if self.attack is not None and self.malicious <= 0:
            raise ConfigError("--attack needs --malicious F > 0 (the fraction of attackers)")
        if self.attack is None and self.malicious > 0:
            raise ConfigError("--malicious needs --attack NAME")
        if self.defense and not self.secure:
            raise ConfigError("--defense: the sketch stage needs --secure")
        if self.weighting not in ("samples", "uniform"):
            raise ConfigError(f"--weighting: samples or uniform, got {self.weighting!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"--clip: must be a finite number > 0, got {self.clip}")
        if self.membership not in ("open", "permissioned"):
            raise ConfigError(f"--membership: open or permissioned, got {self.membership!r}")
        for p, r in self.corrupt:
            if not (0 <= p < self.peers and 0 < r < self.rounds):
                raise ConfigError(f"corrupt: ({p}, {r}) is not a (peer, round > 0) of this run")

    def _validate_tcp(self) -> None:
        """What ``--transport tcp`` (one ``p2pfl node`` process per peer) cannot do."""
        unsupported = [name for name, used in (
            ("--dropout", self.dropout > 0), ("--attack", self.attack is not None),
            ("--malicious", self.malicious > 0), ("--reference", self.reference),
            ("corrupt", bool(self.corrupt))) if used]
        if unsupported:
            raise ConfigError(f"{unsupported[0]} is not supported with --transport tcp "
                              "(only with --transport memory)")
        if self.peers > MAX_TCP_PEERS:
            raise ConfigError(f"--peers: at most {MAX_TCP_PEERS} with --transport tcp (one "
                              f"process of a few hundred MB each), got {self.peers}")


def sim_identities(n: int, seed: int) -> list[Identity]:
    """The peers' deterministic keys."""
    return [
        Identity.from_seed(hashlib.blake2b(f"p2pfl-sim/{seed}/{i}".encode(), digest_size=32).digest())
        for i in range(n)
    ]


def build_federation(cfg: SimConfig, identities: list[Identity], *, sample_cap: int,
                     training: dict[str, Any] | None = None) -> Federation:
    """The permissioned federation of a simulation (every peer a member).

    Timeouts are short because the clock is virtual: inputs are due 10 s after a round
    starts, each secure stage gets 2 s, an aggregator collects signatures for 2 s and a
    backup takes over 2 s after that, a round ends at 40 s at the latest.
    """
    size = cfg.cohort if cfg.cohort is not None else cfg.peers
    group = min(cfg.group_size, size)
    data: dict[str, Any] = {
        "name": f"sim-{cfg.seed}",
        "task": cfg.task or f"{cfg.dataset}-{cfg.model}",
        "seed": cfg.seed,
        "secure": cfg.secure,
        "strategy": {"name": cfg.strategy},
        "update": {"clip_norm": cfg.clip, "weighting": cfg.weighting,
                   "sample_cap": max(1, sample_cap)},
        "cohort": {"size": size, "group_size": group},
        "secagg": {"threshold": 0.6},
        "timeouts": {"train": 10.0, "stage": 2.0, "sign": 2.0, "failover": 2.0, "round": 40.0},
        "membership": ({"policy": "permissioned",
                        "members": [i.public_key.hex() for i in identities]}
                       if cfg.membership == "permissioned" else {"policy": "open"}),
        "detection": {"enabled": cfg.defended},
    }
    if training:
        data["training"] = training
    min_group = min(group, max(math.ceil(group / 2), 3 if cfg.secure else 1))
    data["cohort"]["min_group_size"] = min_group
    data["cohort"]["aggregators"] = min(2, min_group)
    try:
        return federation_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"this simulation cannot form groups: {e}") from e
