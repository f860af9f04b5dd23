"""Helpers shared by the tests that run ``p2pfl node`` processes over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def federation_toml(name: str, members: Iterable[str], *, size: int, group_size: int,
                    min_group_size: int, threshold: float | int, epochs: int = 1,
                    timeouts: tuple[float, float, float, float, float] = (4.0, 1.5, 1.5, 1.5, 18.0),
                    ) -> str:
    """A secure, permissioned digits federation of the listed public keys (hex);
    ``timeouts`` = (train, stage, sign, failover, round)."""
    train, stage, sign, failover, rnd = timeouts
    keys = ", ".join(f'"{k}"' for k in members)
    return f"""\
name = "{name}"
task = "digits-mlp"
seed = 0
secure = true

[training]
epochs = {epochs}
batch_size = 32
lr = 0.05
momentum = 0.9
weight_decay = 0.0

[update]
clip_norm = 10.0
sample_cap = 300

[cohort]
size = {size}
group_size = {group_size}
min_group_size = {min_group_size}
aggregators = 2

[secagg]
threshold = {threshold}

[timeouts]
train = {train}
stage = {stage}
sign = {sign}
failover = {failover}
round = {rnd}

[membership]
policy = "permissioned"
members = [{keys}]
"""


def free_ports(n: int) -> list[int]:
    """``n`` loopback TCP ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cli(*args: str) -> str:
    """``python -m p2pfl ARGS`` (must succeed within 60 s); its stdout."""
    out = subprocess.run([sys.executable, "-m", "p2pfl", *args], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def read_status(path: Path) -> dict[str, Any] | None:
    """A node's status file, or None while it is missing or half written."""
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


def start_node(config: Path, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``p2pfl node --config CONFIG`` in ``cwd`` (one torch thread), output appended to
    ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "p2pfl", "node", "--config", str(config)],
                            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
