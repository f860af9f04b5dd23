"""``p2pfl sim --transport tcp``: one ``p2pfl node`` process per peer over loopback TCP.

Theory of operation
-------------------
:func:`run_process_simulation` builds the same peers as the in-memory simulation (the
seed's keys, :func:`~p2pfl.sim.build_federation` with the same data shards and
local-training table), writes what an operator would write -- a key file per peer
(mode 0600), the federation file (TOML, checked to round-trip to the same federation
id), one peer config per peer -- into a private temporary directory, and starts one
``python -m p2pfl node --config pI.toml`` process per peer.  Ports are picked up
front (bind to port 0, note it, close), so every process starts at once and peer i
bootstraps through peer 0 and the two peers before it.  Nothing in the nodes is
special: they are production nodes that happen to share a host.

The parent only *observes*, as a monitoring script would:

* every ``_POLL`` seconds it asks each node's control socket for ``status``
  (:mod:`p2pfl.control`): the round, and the history round -> model hash;
* the nodes run with ``keep_models`` (:class:`p2pfl.peer.PeerConfig`): at the start
  of every round each writes its state, atomically, to
  ``checkpoint_dir/models/state-<fid>-<R>.ckpt`` (R: rounds completed), keeping the
  last ``rounds + 1 + _KEEP_SLACK``.  Every ``_FILE_POLL`` seconds, and once more
  after the nodes stopped, the parent reads the files of rounds 0 .. ``rounds`` it
  has not read (at most the size of a model and its optimizer moments; the
  checkpoint digest is checked).  A file's model is used only when the hash the
  parent computes is the one its node reported for that round (or, for a round the
  node never reported, one any node reported); any other file, or one that does not
  load, is counted in ``model_files_rejected`` (a file is not read when the parent
  already holds the model under the hash its node reported for that round).  A
  round whose model no file showed gets ``accuracy: null``;
* after the run, the first node's ledger file (a copy, never the node's file): the
  signed round records (groups accepted / aborted / missing, dropped and excluded
  members) and, replayed record by record, reputation and weight after every round.

It stops when every running node reports ``rounds`` completed rounds (the first one to
get there gives the others one more round deadline), or after a bound of
``_STARTUP + rounds x timeouts.round`` seconds; then SIGINT to every node (a clean
shutdown), SIGKILL to any still running ``_STOP`` seconds later.  The node logs are
copied to ``OUT/nodes/``.

The summary has the in-memory simulation's keys; what a process federation cannot
observe from outside is ``null``: ``virtual_s`` (time is real), ``bytes_sent_per_peer``
(the nodes do not report it), ``syncs`` and ``offences``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import trio

from p2pfl.errors import LocalProtocolError
from p2pfl.federation import Federation, GlobalState, federation_from_dict, load_checkpoint
from p2pfl.identity import Identity
from p2pfl.learning.strategy import hash_vector
from p2pfl.wire import PeerId

from ._config import SimConfig, build_federation, sim_identities
from ._report import (
    Summary,
    _evaluator,
    detection_stats,
    models_agree,
    progress_bar,
    run_fields,
    write_outputs,
)

__all__ = ["federation_toml", "run_process_simulation"]

_POLL: Final = 0.5  # seconds between two status polls
_FILE_POLL: Final = 0.25  # seconds between two looks at the model files (a listing each)
_KEEP_SLACK: Final = 4  # model files kept beyond rounds + 1 (the nodes run on until stopped)
_ASK_TIMEOUT: Final = 3.0  # seconds a node has to answer one status request
_STARTUP: Final = 120.0  # seconds allowed for starting the processes (imports, joining)
_STOP: Final = 30.0  # seconds between SIGINT and SIGKILL
_WARMUP: Final = 3.0  # the nodes' warm-up (seconds between joining and round 0)


# -- the files an operator would write ----------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_string(k)


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise LocalProtocolError(f"federation_toml: cannot write {type(v).__name__} {v!r} as TOML")


def _toml_table(data: Mapping[str, Any], prefix: str, lines: list[str]) -> None:
    for k, v in data.items():
        if not isinstance(v, Mapping):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, Mapping):
            name = f"{prefix}{_toml_key(k)}"
            lines.extend(["", f"[{name}]"])
            _toml_table(v, name + ".", lines)


def federation_toml(fed: Federation) -> str:
    """``fed`` as a federation file (TOML text) that loads back to the same federation id.

    Raises :class:`LocalProtocolError` when it would not (a value TOML cannot hold).
    """
    lines: list[str] = []
    _toml_table(fed.to_dict(), "", lines)
    text = "\n".join(lines) + "\n"
    if federation_from_dict(tomllib.loads(text)).id != fed.id:
        raise LocalProtocolError("federation_toml: the TOML text is another federation")
    return text


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (free when asked: another process may take one
    before the node binds it; the node then exits and the run reports it)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass(eq=False)
class _Proc:
    index: int
    ident: Identity
    config: Path
    sock: Path
    state: Path  # the checkpoint file
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    round: int = -1
    history: dict[int, str] = field(default_factory=dict)  # rounds completed -> hash
    files_seen: set[str] = field(default_factory=set)  # model files read (or refused)
    exit: int | None = None
    stopped: bool = False  # still running when the watch ended (we stopped it)

    @property
    def id(self) -> PeerId:
        return self.ident.peer_id

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _write_run_dir(root: Path, cfg: SimConfig, fed: Federation, ids: list[Identity]) -> list[_Proc]:
    """Key files, the federation file and one peer config per peer under ``root``."""
    from p2pfl.peer import checkpoint_path

    (root / "federation.toml").write_text(federation_toml(fed), encoding="utf-8")
    ports = _free_ports(cfg.peers)
    addrs = [f"tcp:127.0.0.1:{p}" for p in ports]
    procs = []
    for i, ident in enumerate(ids):
        ident.save(root / f"p{i}.key")
        boot = sorted({0, i - 1, i - 2} - {i} - {-1, -2}) if i > 0 else []
        boot_list = ", ".join(_toml_string(addrs[j]) for j in boot)
        sock = root / f"p{i}.sock"
        task = cfg.task if cfg.task is not None else "digits"
        text = (
            f'key = "p{i}.key"\nfederation = "federation.toml"\n'
            f'listen = "{addrs[i]}"\nbootstrap = [{boot_list}]\n'
            f'checkpoint_dir = "state{i}"\ncontrol = "p{i}.sock"\n'
            f"keep_models = {cfg.rounds + 1 + _KEEP_SLACK}\n"
            f"device = {_toml_string(cfg.device)}\nwarmup = {_WARMUP}\n\n"
            f"[task]\nname = {_toml_string(task)}\npeer_index = {i}\nn_peers = {cfg.peers}\n"
            f"partition = {_toml_string(cfg.partition)}\nseed = {cfg.seed}\n"
            f"model = {_toml_string(cfg.model)}\n"
        )
        config = root / f"p{i}.toml"
        config.write_text(text, encoding="utf-8")
        procs.append(_Proc(i, ident, config, sock, checkpoint_path(root / f"state{i}", fed),
                           root / f"p{i}.log"))
    return procs


# -- watching the nodes ------------------------------------------------------------


@dataclass
class _Seen:
    """What the parent observed (the raw material of the summary)."""

    held: dict[PeerId, dict[int, set[str]]] = field(default_factory=dict)  # r -> hashes after r
    models: dict[str, np.ndarray] = field(default_factory=dict)  # verified (hash -> model)
    file_models: dict[str, np.ndarray] = field(default_factory=dict)  # read, not yet verified
    files: dict[PeerId, dict[int, str]] = field(default_factory=dict)  # r -> file's hash after r
    files_unreadable: int = 0  # model files that would not load (oversized, corrupt, ...)
    wall_by_round: dict[int, float] = field(default_factory=dict)  # first node done with r
    # (time.time(): a model file's mtime -- the node started round r + 1 -- else the
    # poll that first saw a node past r)
    startup_s: float | None = None  # until every node answered its control socket
    last_status: dict[int, dict[str, Any]] = field(default_factory=dict)

    def hold(self, peer: PeerId, completed: int, h: str) -> None:
        """``peer`` held ``h`` after ``completed`` rounds (the model after round
        ``completed - 1``; -1: the initial model)."""
        self.held.setdefault(peer, {}).setdefault(completed - 1, set()).add(h)

    def verify_files(self) -> int:
        """Move every file model whose hash its node reported for that round (any node,
        for a round its node never reported) to ``models``; return the files refused."""
        everyone: dict[int, set[str]] = {}
        for held in self.held.values():
            for r, hs in held.items():
                everyone.setdefault(r, set()).update(hs)
        refused = 0
        for peer, files in self.files.items():
            own = self.held.get(peer, {})
            for r, h in files.items():
                if h in (own[r] if own.get(r) else everyone.get(r, ())):
                    self.models.setdefault(h, self.file_models[h])
                else:
                    refused += 1
        return refused


class _Watch:
    def __init__(self, cfg: SimConfig, fed: Federation, procs: list[_Proc],
                 on_round: Callable[[int], None], t0: float, dim: int) -> None:
        self.cfg, self.fed, self.procs, self.on_round, self.t0 = cfg, fed, procs, on_round, t0
        self.seen = _Seen()
        self.top = 0
        # a model file: the model (float32) and at most two optimizer moments (float64)
        self.max_file = 20 * dim + (1 << 16)
        self._name = re.compile(re.escape(f"state-{fed.id_hex[:16]}-") + r"([0-9]{8})\.ckpt")

    async def _ask(self, p: _Proc) -> None:
        from p2pfl.control import ControlError, request

        try:
            reply = await request(p.sock, {"op": "status"}, timeout=_ASK_TIMEOUT)
        except ControlError:
            return  # not up yet, or busy: the next poll asks again
        self.seen.last_status[p.index] = reply
        p.round = max(p.round, int(reply.get("round", -1)))
        for r, h in dict(reply.get("history") or {}).items():
            p.history[int(r)] = str(h)
            self.seen.hold(p.id, int(r), str(h))

    def read_models(self, p: _Proc) -> None:
        """Read the model files of ``p`` not read yet (see the module docstring)."""
        from p2pfl.federation import CheckpointError

        folder = p.state.parent / "models"
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name not in p.files_seen)
        except OSError:
            return  # not written yet
        for name in names:
            m = self._name.fullmatch(name)
            if m is None:
                continue  # a temporary file (being written) or another federation's
            completed = int(m.group(1))
            if completed > self.cfg.rounds:  # the nodes ran on: not part of the summary
                p.files_seen.add(name)
                continue
            try:
                mtime = os.stat(folder / name).st_mtime
                known = p.history.get(completed)
                if known is not None and known in self.seen.file_models:
                    h = known  # the same model from another node: no need to read it
                else:
                    state = load_checkpoint(folder / name, self.fed, max_size=self.max_file)
                    if state.round != completed:
                        raise CheckpointError(f"{name} holds the state of round {state.round}")
                    h = hash_vector(state.model)
                    self.seen.file_models.setdefault(h, np.array(state.model, dtype=np.float32))
            except FileNotFoundError:
                p.files_seen.add(name)  # deleted (the node keeps only the last ones)
                continue
            except (OSError, CheckpointError):
                p.files_seen.add(name)
                self.seen.files_unreadable += 1
                continue
            p.files_seen.add(name)
            self.seen.files.setdefault(p.id, {})[completed - 1] = h
            if 0 < completed <= self.cfg.rounds:
                r = completed - 1
                self.seen.wall_by_round[r] = min(self.seen.wall_by_round.get(r, mtime), mtime)

    async def poll(self) -> None:
        async with trio.open_nursery() as nursery:
            for p in self.procs:
                if p.running:
                    nursery.start_soon(self._ask, p)
        now = time.time()
        if self.seen.startup_s is None and all(p.round >= 0 for p in self.procs):
            self.seen.startup_s = now - self.t0
        top = max((p.round for p in self.procs), default=0)
        for r in range(self.top, min(top, self.cfg.rounds)):
            self.seen.wall_by_round.setdefault(r, now)
        if top > self.top:
            self.top = top
            self.on_round(top)

    def finished(self) -> bool:
        return all(p.round >= self.cfg.rounds for p in self.procs if p.running)

    async def _read_models(self) -> None:
        while True:
            for p in self.procs:
                self.read_models(p)
            await trio.sleep(_FILE_POLL)

    async def main(self) -> None:
        limit = _STARTUP + self.cfg.rounds * self.fed.timeouts.round
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_models)
            with trio.move_on_after(limit):
                while not self.finished() and any(p.running for p in self.procs):
                    await self.poll()
                    await trio.sleep(_POLL)
            # stragglers (catching up) get one more round deadline, within the bound above
            with trio.move_on_after(self.fed.timeouts.round):
                while not self.finished():
                    await trio.sleep(_POLL)
                    await self.poll()
            nursery.cancel_scope.cancel()


def _start(p: _Proc, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with p.log.open("ab") as log:
        p.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pfl", "node", "--config", str(p.config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def _stop(procs: list[_Proc]) -> None:
    """SIGINT every node, SIGKILL those still running after :data:`_STOP` seconds."""
    for p in procs:
        if p.running:
            assert p.proc is not None
            p.stopped = True
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGINT)
    until = time.monotonic() + _STOP
    for p in procs:
        if p.proc is None:
            continue
        try:
            p.exit = p.proc.wait(max(0.1, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.exit = p.proc.wait(10)


# -- the summary ---------------------------------------------------------------------


def _ledger_records(fed: Federation, procs: list[_Proc]) -> list[Any]:
    """The round records of the first node whose ledger file can be read (a copy; the
    nodes have stopped); [] when none can."""
    from p2pfl.errors import P2PFLError
    from p2pfl.ledger import Ledger
    from p2pfl.peer import ledger_path

    for p in procs:
        path = ledger_path(p.state.parent, fed)
        if not path.is_file():
            continue
        with tempfile.TemporaryDirectory(prefix="p2pfl-ledger-") as tmp:
            copy = Path(tmp) / "ledger.bin"
            shutil.copyfile(path, copy)
            try:
                led = Ledger.open(copy, fed)
            except P2PFLError:
                continue
            records = list(led.records)
            led.close()
        return records
    return []


def _summary(cfg: SimConfig, fed: Federation, tasks: list[Any], procs: list[_Proc],
             seen: _Seen, start: GlobalState, *, wall_s: float, t0: float) -> Summary:
    from p2pfl.ledger import GroupStatus, Standing

    evaluate = _evaluator(tasks, fed.seed)
    agree, bad_rounds = models_agree(seen.held, cfg.rounds)
    seen.models.setdefault(hash_vector(start.model), np.array(start.model))  # ours: no check
    refused = seen.verify_files()
    ledger = _ledger_records(fed, procs)
    records: dict[int, Any] = {}
    standing: dict[int, Standing] = {}
    st = Standing.initial(fed)
    for rec in sorted(ledger, key=lambda x: x.body.round):
        st = st.apply(rec.body)
        records[rec.body.round], standing[rec.body.round] = rec.body, st
    canonical: list[str | None] = []
    for r in range(-1, cfg.rounds):
        counts = Counter(h for held in seen.held.values() for h in held.get(r, ()))
        canonical.append(counts.most_common(1)[0][0] if counts else None)

    def measure(h: str | None) -> dict[str, float]:
        return evaluate(seen.models[h]) if h is not None and h in seen.models else {}

    ids = [p.id for p in procs]
    initial = measure(canonical[0])
    metrics: list[dict[str, Any]] = []
    prev_wall = t0
    for r in range(cfg.rounds):
        h = canonical[r + 1]
        m = measure(h)
        body = records.get(r)
        slots = body.groups if body is not None and body.model_hash.hex() == h else None
        heads = [s.header for s in slots or () if s.header is not None]
        excluded = sorted({str(p) for hd in heads for p, _ in hd.excluded})
        present = sorted({str(p) for hd in heads for p in (*hd.included, *hd.dropped)}
                         | set(excluded))
        after = standing.get(r) if slots is not None else None
        t_wall = seen.wall_by_round.get(r)
        metrics.append({
            "round": r,
            "accuracy": m.get("accuracy"),
            "loss": m.get("loss"),
            "model_hash": h,
            "agree": r not in bad_rounds,
            "distinct_hashes": len({x for held in seen.held.values() for x in held.get(r, ())}),
            "groups": None if slots is None else len(slots),
            "groups_accepted": None if slots is None else sum(
                s.status is GroupStatus.ACCEPTED for s in slots),
            "groups_aborted": None if slots is None else sum(
                s.status is GroupStatus.ABORTED for s in slots),
            "groups_missing": None if slots is None else sum(
                s.status is GroupStatus.MISSING for s in slots),
            "contributors": None if slots is None else sum(len(hd.included) for hd in heads),
            "dropouts": [],
            "dropped": None if slots is None else sorted(
                {str(p) for hd in heads for p in hd.dropped}),
            "excluded": None if slots is None else excluded,
            "exclusion_reasons": None if slots is None else {
                str(p): why for hd in heads for p, why in hd.excluded},
            "in_results": None if slots is None else present,
            "binding_failures": None if slots is None else sum(
                1 for s in slots if s.status is GroupStatus.ABORTED
                and any("binding" in why for _, why in s.aborts)),
            "reputation": {} if after is None else {
                str(p): s for p, s in after.reputation().items()},
            "weight": {} if after is None else {str(p): after.weight_factor(p) for p in ids},
            "virtual_time": None,
            "wall_s": None if t_wall is None else round(t_wall - prev_wall, 4),
        })
        prev_wall = t_wall if t_wall is not None else prev_wall
    final = standing.get(cfg.rounds - 1)  # the nodes ran on: their ledgers are longer
    lagging = [p for p in procs if p.stopped and p.round < cfg.rounds]
    with_records = [m for m in metrics if m["in_results"] is not None]
    data: dict[str, Any] = {
        **run_fields(cfg, fed, metrics, initial, agree, bad_rounds, canonical),
        "transport": "tcp",
        "models_loaded_by_round": [h is not None and h in seen.models for h in canonical[1:]],
        "model_files_rejected": refused + seen.files_unreadable,
        "malicious": [],
        "reputation": {} if final is None else {
            str(p): s for p, s in sorted(final.reputation().items())},
        "credits": {} if final is None else {
            str(p): c for p, c in sorted(final.credits().items())},
        "detection": detection_stats(with_records, set()),
        "syncs": None,
        "offences": None,
        "lagging_peers": sorted(str(p.id) for p in lagging),
        "down_at_end": sorted(str(p.id) for p in procs if not p.stopped),
        "node_exit_codes": {str(p.id): p.exit for p in procs},
        "startup_s": None if seen.startup_s is None else round(seen.startup_s, 3),
        "wall_s": round(wall_s, 3),
        "virtual_s": None,
        "bytes_sent_per_peer": None,
        "bytes_sent_mean": None,
        "peer_ids": [str(p) for p in ids],
    }
    h_final = canonical[-1]
    return Summary(data, metrics, seen.models.get(h_final) if h_final else None, fed)


# -- the run -------------------------------------------------------------------------


def run_process_simulation(cfg: SimConfig) -> Summary:
    """Run the simulation ``cfg`` (``transport = "tcp"``) as one ``p2pfl node``
    process per peer over loopback TCP; return its :class:`Summary` and, with
    ``cfg.out``, write ``summary.json``, ``metrics.jsonl`` and the plots there (the
    node logs in ``cfg.out/nodes/``).

    Raises :class:`~p2pfl.errors.ConfigError` for invalid options (before starting a
    process).  Every process started is stopped before it returns or raises.
    """
    from p2pfl.peer import initial_model, resolve_aggregation

    from ._run import _load_tasks, _training_table

    cfg.validate()
    t0 = time.time()  # wall clock: compared with the model files' mtimes
    tasks = _load_tasks(cfg)
    ids = sim_identities(cfg.peers, cfg.seed)
    cap = max(int(t.num_samples) for t in tasks)
    fed = build_federation(cfg, ids, sample_cap=cap, training=_training_table(cfg))
    resolve_aggregation(None, fed)
    start = GlobalState.initial(fed, initial_model(tasks[0], fed))
    # a short private directory: Unix socket paths must stay under 100 bytes
    with tempfile.TemporaryDirectory(prefix="p2pfl-sim-") as tmp:
        root = Path(tmp)
        procs = _write_run_dir(root, cfg, fed, ids)
        try:
            for p in procs:
                _start(p, Path.cwd())  # a user task is imported from the caller's directory
            with progress_bar(cfg) as advance:
                watch = _Watch(cfg, fed, procs, advance, t0, start.model.size)
                trio.run(watch.main)
        finally:
            _stop(procs)
            if cfg.out is not None:
                logs = cfg.out / "nodes"
                logs.mkdir(parents=True, exist_ok=True)
                for p in procs:
                    with contextlib.suppress(OSError):
                        shutil.copyfile(p.log, logs / p.log.name)
        for p in procs:  # the files written since the last look
            watch.read_models(p)
        wall = time.time() - t0
        summary = _summary(cfg, fed, tasks, procs, watch.seen, start, wall_s=wall, t0=t0)
    if cfg.out is not None:
        write_outputs(summary, cfg.out)
    return summary
