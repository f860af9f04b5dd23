"""``p2pfl node --config peer.toml``: one long-running peer process over TCP.

Theory of operation
-------------------
:func:`load_node_config` reads a small TOML *peer config* (what this one peer needs:
its key file, listen address, bootstrap addresses, the federation file, its task and
data, a checkpoint directory), validates it key by key and resolves relative paths
against the config file's directory.  Every bad value is a
:class:`~p2pfl.errors.ConfigError` that names the key.  :func:`run_node` builds the
task, opens the peer with :func:`p2pfl.peer.open_peer` (TCP transport) and runs until
SIGINT or SIGTERM, when it leaves the ``open_peer`` block (DISCONNECT to neighbours,
links closed) and returns.

Restart: identity comes from the key file (never written here); the model, round and
strategy state come from the checkpoint in ``checkpoint_dir`` when one exists, so a
killed peer resumes where it was and catches up with the federation.

Progress: one log line per round (``round``, model hash prefix, neighbours / live
peers) through :mod:`logging` (logger ``p2pfl.node``), and, with ``status_file``, a
small JSON document replaced atomically at start and after every round::

    {"peer_id": ..., "listen": ..., "round": 7, "model_hash": "ab12...",
     "neighbors": 4, "live_peers": 4, "time": 1700000000.0,
     "history": {"6": "...", "7": "..."}}         # the last 64 rounds' model hashes

Layout of the peer config (only ``key`` and ``federation`` are required)::

    key = "peer.key"                  # identity key file (p2pfl keygen)
    federation = "federation.toml"    # the federation file shared by all members
    listen = "tcp:0.0.0.0:7000"       # port 0: any free port
    bootstrap = ["tcp:10.0.0.2:7000"] # peers to join through (none for the first)
    checkpoint_dir = "state"          # optional; resume from here after a restart
    device = "auto"                   # auto | cpu | cuda[:N]
    status_file = "status.json"       # optional
    warmup = 2.0                      # seconds between joining and the first round

    [task]
    name = "digits"                   # or "module:function" (a task factory)
    peer_index = 0                    # digits: this peer's shard of n_peers
    n_peers = 5
    partition = "iid"                 # iid | dirichlet:A | quantity:A
    seed = 0
    model = "mlp"                     # digits: mlp | cnn
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pfl.errors import ConfigError
from p2pfl.federation.config import _Table

if TYPE_CHECKING:
    from p2pfl.learning.task import Task
    from p2pfl.peer import Peer

__all__ = ["NodeConfig", "TaskSpec", "build_task", "load_node_config", "run_node",
           "status_doc", "write_status"]

log = logging.getLogger("p2pfl.node")

_HISTORY = 64  # rounds of model hashes kept in the status file


@dataclass(frozen=True)
class TaskSpec:
    """The ``[task]`` table: ``name`` is ``digits`` or ``module:function``."""

    name: str = "digits"
    peer_index: int = 0
    n_peers: int = 1
    partition: str = "iid"
    seed: int = 0
    model: str = "mlp"


@dataclass(frozen=True)
class NodeConfig:
    """A validated peer config (paths already resolved; see the module docstring)."""

    key: Path
    federation: Path
    listen: str = "tcp:127.0.0.1:0"
    bootstrap: tuple[str, ...] = ()
    checkpoint_dir: Path | None = None
    device: str = "auto"
    status_file: Path | None = None
    warmup: float = 2.0
    task: TaskSpec = TaskSpec()


def _address(value: str, key: str) -> str:
    host, sep, port = value.removeprefix("tcp:").rpartition(":")
    if not value.startswith("tcp:") or not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: {value!r} is not a tcp:HOST:PORT address")
    return value


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate the peer config at ``path`` (raises :class:`ConfigError`)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config: cannot read {p}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {p} is not valid TOML: {e}") from e
    base = p.resolve().parent

    def where(rel: str) -> Path:
        q = Path(rel).expanduser()
        return q if q.is_absolute() else base / q

    t = _Table(data, "")
    key = where(t.text("key", max_len=4096))
    if not key.is_file():
        raise ConfigError(f"key: no key file at {key} (create one with `p2pfl keygen`)")
    federation = where(t.text("federation", max_len=4096))
    if not federation.is_file():
        raise ConfigError(f"federation: no federation file at {federation}")
    listen = _address(t.text("listen", "tcp:127.0.0.1:0"), "listen")
    boot = t.raw("bootstrap", [])
    if not isinstance(boot, list) or not all(isinstance(b, str) for b in boot):
        raise ConfigError(f"bootstrap: must be a list of tcp:HOST:PORT strings, got {boot!r}")
    bootstrap = tuple(_address(b, f"bootstrap[{i}]") for i, b in enumerate(boot))
    ckpt = t.raw("checkpoint_dir", None)
    checkpoint_dir = where(t.text("checkpoint_dir", max_len=4096)) if ckpt is not None else None
    device = t.text("device", "auto")
    if device not in ("auto", "cpu", "cuda") and not (
            device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"device: must be auto, cpu, cuda or cuda:N, got {device!r}")
    status = t.raw("status_file", None)
    status_file = where(t.text("status_file", max_len=4096)) if status is not None else None
    warmup = t.number("warmup", 2.0, lo=0.0, hi=3600.0)
    task = _task(t.table("task"))
    t.finish()
    return NodeConfig(key, federation, listen, bootstrap, checkpoint_dir, device, status_file,
                      warmup, task)


def _task(t: _Table) -> TaskSpec:
    name = t.text("name", "digits")
    if name != "digits" and ":" not in name:
        raise ConfigError(f"task.name: must be 'digits' or 'module:function', got {name!r}")
    n_peers = t.integer("n_peers", 1, lo=1, hi=1 << 20)
    peer_index = t.integer("peer_index", 0, lo=0, hi=n_peers - 1)
    spec = TaskSpec(name, peer_index, n_peers, t.text("partition", "iid"),
                    t.integer("seed", 0, lo=0, hi=(1 << 63) - 1),
                    t.text("model", "mlp", choices=("mlp", "cnn")))
    t.finish()
    return spec


def build_task(cfg: NodeConfig) -> Task:
    """The task of ``cfg``: the built-in digits shard or a user factory's task."""
    from p2pfl.learning.loader import call_task_factory, load_task_factory

    s = cfg.task
    if s.name == "digits":
        from p2pfl.learning.digits import digits_task

        try:
            task: Task = digits_task(  # type: ignore[assignment]
                s.peer_index, s.n_peers, seed=s.seed, partition=s.partition, model=s.model,
                device=cfg.device)
            return task
        except ConfigError as e:
            raise ConfigError(f"task: {e}") from e
    factory = load_task_factory(s.name, path=os.getcwd())
    return call_task_factory(factory, peer_index=s.peer_index, n_peers=s.n_peers, seed=s.seed,
                             partition=s.partition, device=cfg.device)


def status_doc(peer: Peer, history: dict[int, str]) -> dict[str, Any]:
    """``peer``'s status now (``history``: round -> model hash, updated and trimmed)."""
    gm = peer.global_model()
    history[gm.round] = gm.hash
    for r in sorted(history)[:-_HISTORY]:
        del history[r]
    doc: dict[str, Any] = {
        "peer_id": str(peer.peer_id),
        "listen": peer.address,
        "round": gm.round,
        "model_hash": gm.hash,
        "neighbors": len(peer.overlay.neighbors()),
        "live_peers": len(peer.overlay.live_peers()),
        "time": time.time(),
        "pid": os.getpid(),
        "history": {str(r): h for r, h in sorted(history.items())},
    }
    return doc


def write_status(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` atomically with the JSON of ``doc``."""
    from p2pfl.identity import atomic_write

    atomic_write(path, json.dumps(doc, indent=1).encode())


async def run_node(cfg: NodeConfig, *, task: Task | None = None) -> None:
    """Run the peer of ``cfg`` until SIGINT/SIGTERM (or cancellation); clean shutdown."""
    from p2pfl.peer import PeerConfig, open_peer

    if task is None:
        task = build_task(cfg)
    pcfg = PeerConfig(identity=cfg.key, federation=cfg.federation, listen=cfg.listen,
                      bootstrap=cfg.bootstrap, checkpoint_dir=cfg.checkpoint_dir,
                      device=cfg.device, warmup=cfg.warmup)
    history: dict[int, str] = {}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_peer(pcfg, task) as peer, trio.open_nursery() as nursery:
            gm = peer.global_model()
            log.info("peer %s listening on %s; federation %s; starting at round %d (model %s)",
                     peer.peer_id, peer.address, peer.federation.id_hex[:16], gm.round,
                     gm.hash[:12])

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(on_signal)
            if cfg.status_file is not None:
                write_status(cfg.status_file, status_doc(peer, history))
            while True:
                await peer.wait_round()
                gm = peer.global_model()
                log.info("round %d done: model %s, peers %d neighbours / %d live",
                         gm.round, gm.hash[:12], len(peer.overlay.neighbors()),
                         len(peer.overlay.live_peers()))
                if cfg.status_file is not None:
                    doc = status_doc(peer, history)
                    await trio.to_thread.run_sync(write_status, cfg.status_file, doc)
