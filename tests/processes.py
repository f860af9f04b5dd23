"""Helpers shared by the tests that run ``p2pfl node`` processes over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
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


def log_tails(logs: Iterable[Path], lines: int = 25) -> str:
    """The last ``lines`` lines of each node log (without aioice's chatter), for a
    failure message: a process test that times out says what the nodes were doing."""
    out = []
    for path in logs:
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        kept = [ln[:300] for ln in text if "aioice" not in ln][-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(kept))
    return "\n".join(out)


def wait_for(what: str, cond: Callable[[], bool], until: float,
             procs: list[subprocess.Popen[bytes]], alive: Iterable[int] | None = None,
             every: Callable[[], None] = lambda: None, logs: Iterable[Path] = ()) -> None:
    """Poll ``cond`` every 0.2 s until ``until`` (monotonic); fail when one of the
    ``alive`` processes (default: all) exits first, with the tails of ``logs``."""
    while not cond():
        every()
        for i in (range(len(procs)) if alive is None else alive):
            if procs[i].poll() is not None:
                raise AssertionError(f"node {i} exited with {procs[i].returncode} while waiting "
                                     f"for {what}\n{log_tails(logs)}")
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}\n{log_tails(logs)}")
        time.sleep(0.2)
