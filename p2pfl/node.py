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

Control: with a control socket (``control``; by default ``checkpoint_dir/control.sock``)
the node answers ``p2pfl status`` over a local Unix socket (:mod:`p2pfl.control`):
:func:`control_status` is the status document plus the federation id, the neighbours'
peer ids, and reputation and credits.  The socket is removed on a clean shutdown.

Layout of the peer config (only ``key`` and ``federation`` are required)::

    key = "peer.key"                  # identity key file (p2pfl keygen)
    federation = "federation.toml"    # the federation file shared by all members
    listen = "tcp:0.0.0.0:7000"       # port 0: any free port
    bootstrap = ["tcp:10.0.0.2:7000"] # peers to join through (none for the first)
    checkpoint_dir = "state"          # optional; resume from here after a restart
    keep_models = 0                   # also keep the last N rounds' models in
                                      # checkpoint_dir/models/ (0: none)
    device = "auto"                   # auto | cpu | cuda[:N]
    status_file = "status.json"       # optional
    control = "control.sock"          # optional (default: checkpoint_dir/control.sock);
                                      # false: no control socket
    warmup = 2.0                      # seconds between joining and the first round
    reachable = true                  # false: no listening socket (behind NAT); dial out only
    webrtc = false                    # true: WebRTC links too, signaled over the overlay
    ice_servers = []                  # STUN/TURN: "stun:host:3478" or
                                      # {urls = ["turn:host:3478"], username = "u", credential = "p"}
    webrtc_host_addresses = []        # ICE host candidates (empty: all but loopback)

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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pfl.errors import ConfigError
from p2pfl.federation.config import _Table
from p2pfl.transport import IceServer

if TYPE_CHECKING:
    from p2pfl.learning.task import Task
    from p2pfl.peer import Peer

__all__ = ["NodeConfig", "TaskSpec", "build_task", "control_status", "load_node_config",
           "run_node", "status_doc", "write_status"]

log = logging.getLogger("p2pfl.node")

_HISTORY = 64  # rounds of model hashes kept in the status file
_MAX_SCORES = 256  # peers listed in a control status reply (keeps it under 64 KiB)


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
class Reachability:
    """The ``reachable``, ``webrtc``, ``ice_servers`` and ``webrtc_host_addresses`` keys
    (see :class:`p2pfl.peer.PeerConfig` and ``docs/webrtc.md``)."""

    reachable: bool = True
    webrtc: bool = False
    ice_servers: tuple[IceServer, ...] = ()
    webrtc_host_addresses: tuple[str, ...] | None = None


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
    control: Path | None = None  # the control socket (None: none)
    reach: Reachability = Reachability()
    keep_models: int = 0  # rounds whose state is kept in checkpoint_dir/models (0: none)


def _reachability(t: _Table) -> Reachability:
    reachable = t.flag("reachable", True)
    webrtc = t.flag("webrtc", False)
    raw = t.raw("ice_servers", [])
    if not isinstance(raw, list):
        raise ConfigError(f"ice_servers: must be a list, got {raw!r}")
    servers = tuple(_ice_server(v, f"ice_servers[{i}]") for i, v in enumerate(raw))
    hosts = t.raw("webrtc_host_addresses", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(f"webrtc_host_addresses: must be a list of IP addresses, got {hosts!r}")
    if (servers or hosts) and not webrtc:
        raise ConfigError("ice_servers / webrtc_host_addresses need webrtc = true")
    return Reachability(reachable, webrtc, servers, tuple(hosts) or None)


def _ice_server(value: object, key: str) -> IceServer:
    """``"stun:host:port"`` or ``{urls = [...] | "...", username = "...", credential = "..."}``."""
    try:
        if isinstance(value, str):
            return IceServer((value,))
        if isinstance(value, dict) and set(value) <= {"urls", "username", "credential"}:
            urls = value.get("urls")
            urls = (urls,) if isinstance(urls, str) else tuple(urls) if isinstance(
                urls, list) else ()
            user, cred = value.get("username"), value.get("credential")
            if all(isinstance(x, str | None) for x in (user, cred)):
                return IceServer(urls, user, cred)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from e
    raise ConfigError(f"{key}: expected a STUN/TURN url or a table with urls, username, "
                      f"credential; got {value!r}")


def _reach_options(r: Reachability) -> dict[str, Any]:
    """The :class:`p2pfl.peer.PeerConfig` keywords of ``r``."""
    return {"reachable": r.reachable, "webrtc": r.webrtc, "ice_servers": r.ice_servers,
            "webrtc_host_addresses": r.webrtc_host_addresses}


def _address(value: str, key: str) -> str:
    host, sep, port = value.removeprefix("tcp:").rpartition(":")
    if not value.startswith("tcp:") or not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: {value!r} is not a tcp:HOST:PORT address")
    return value


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate the peer config at ``path`` (raises :class:`ConfigError`)."""
    from p2pfl.control import read_peer_config

    data, where = read_peer_config(path)
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
    keep_models = t.integer("keep_models", 0, lo=0, hi=1 << 20)
    if keep_models > 0 and checkpoint_dir is None:
        raise ConfigError("keep_models: needs a checkpoint_dir (the models are kept in "
                          "checkpoint_dir/models)")
    device = t.text("device", "auto")
    if device not in ("auto", "cpu", "cuda") and not (
            device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"device: must be auto, cpu, cuda or cuda:N, got {device!r}")
    status = t.raw("status_file", None)
    status_file = where(t.text("status_file", max_len=4096)) if status is not None else None
    warmup = t.number("warmup", 2.0, lo=0.0, hi=3600.0)
    task = _task(t.table("task"))
    control = _control(t, where, checkpoint_dir)
    reach = _reachability(t)
    t.finish()
    return NodeConfig(key, federation, listen, bootstrap, checkpoint_dir, device, status_file,
                      warmup, task, control=control, reach=reach, keep_models=keep_models)


def _control(t: _Table, where: Callable[[str], Path], checkpoint_dir: Path | None) -> Path | None:
    """The ``control`` key: a socket path, ``false`` for none; by default
    ``checkpoint_dir/control.sock`` (none without a checkpoint directory, or when that
    path is too long for a Unix socket)."""
    from p2pfl.control import socket_path

    value = t.raw("control", None)
    if isinstance(value, str):
        t.text("control", max_len=4096)
    return socket_path(value, checkpoint_dir, where)


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


def control_status(peer: Peer, history: dict[int, str]) -> dict[str, Any]:
    """What ``p2pfl status`` shows: :func:`status_doc` plus ``federation`` (id, hex),
    ``federation_name``, ``neighbor_ids``, and ``reputation`` and ``credits`` (peer id
    -> value, the :data:`_MAX_SCORES` best; empty while the peer keeps no ledger)."""
    doc = status_doc(peer, history)
    doc["federation"] = peer.federation.id_hex
    doc["federation_name"] = peer.federation.name
    doc["neighbor_ids"] = sorted(str(p) for p in peer.overlay.neighbors())
    doc["reputation"] = _scores(peer, "reputation")
    doc["credits"] = _scores(peer, "credits")
    return doc


def _scores(peer: Peer, name: str) -> dict[str, float]:
    """``peer.<name>()`` (peer id -> number) as text keys, best first, bounded; {} when
    the peer has no such method."""
    fn = getattr(peer, name, None)
    if not callable(fn):
        return {}
    try:
        values = {str(k): float(v) for k, v in dict(fn()).items()}
    except Exception:  # the rest of the status is still worth answering
        log.exception("control: peer.%s() failed", name)
        return {}
    best = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:_MAX_SCORES]
    return dict(best)


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
                      keep_models=cfg.keep_models, device=cfg.device, warmup=cfg.warmup,
                      **_reach_options(cfg.reach))
    history: dict[int, str] = {}
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with _control_socket(cfg.control) as control, open_peer(pcfg, task) as peer, \
                trio.open_nursery() as nursery:
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
            if control is not None:
                await nursery.start(_serve_status, control, peer, history)
                log.info("control socket %s (p2pfl status)", cfg.control)
            doc = status_doc(peer, history)
            if cfg.status_file is not None:
                write_status(cfg.status_file, doc)
            while True:
                await peer.wait_round()
                gm = peer.global_model()
                log.info("round %d done: model %s, peers %d neighbours / %d live",
                         gm.round, gm.hash[:12], len(peer.overlay.neighbors()),
                         len(peer.overlay.live_peers()))
                doc = status_doc(peer, history)  # also records the round in the history
                if cfg.status_file is not None:
                    await trio.to_thread.run_sync(write_status, cfg.status_file, doc)
    log.info("stopped")


@asynccontextmanager
async def _control_socket(path: Path | None) -> AsyncIterator[trio.SocketListener | None]:
    """The bound control socket of ``path`` for the block (None: no control socket)."""
    if path is None:
        yield None
        return
    from p2pfl.control import open_control

    async with open_control(path) as listener:
        yield listener


async def _serve_status(listener: trio.SocketListener, peer: Peer, history: dict[int, str], *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer ``{"op": "status"}`` on the control socket with :func:`control_status`."""
    from p2pfl.control import serve_control

    ops = {"status": lambda _request: control_status(peer, history)}
    await serve_control(listener, ops, task_status=task_status)
