"""The ``p2pfl`` command line.

Sub-commands are small functions that parse their options and call the library;
every user-facing failure is a :class:`~p2pfl.errors.ConfigError` (or another
:class:`~p2pfl.errors.P2PFLError`) printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pfl.errors import P2PFLError

__all__ = ["main"]


def _cmd_keygen(args: argparse.Namespace) -> int:
    from p2pfl.identity import Identity

    ident = Identity.generate()
    ident.save(Path(args.path), overwrite=args.force)
    print(ident.peer_id)
    return 0


def _cmd_peer_id(args: argparse.Namespace) -> int:
    from p2pfl.identity import Identity

    print(Identity.load(Path(args.path)).peer_id)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from p2pfl._demo import run_demo

    return run_demo(message=args.message)


def _cmd_sim(args: argparse.Namespace) -> int:
    from p2pfl.sim import DEFAULT_SECURE, SimConfig, run_simulation

    secure = DEFAULT_SECURE if args.secure is None else args.secure
    if args.secure is None and not secure and not args.quiet:
        print("p2pfl sim: secure aggregation is not the default yet (its backend is being "
              "integrated); running --plaintext", file=sys.stderr)
    cfg = SimConfig(
        peers=args.peers, rounds=args.rounds, dataset=args.dataset, partition=args.partition,
        secure=secure, dropout=args.dropout, task=args.task, seed=args.seed, out=Path(args.out),
        quiet=args.quiet, transport=args.transport, model=args.model, strategy=args.strategy,
        cohort=args.cohort, group_size=args.group_size, device=args.device,
        reference=args.reference, attack=args.attack, malicious=args.malicious,
        defense=args.defense, weighting=args.weighting, clip=args.clip,
        membership=args.membership,
    )
    cfg.validate()
    summary = run_simulation(cfg)
    if not args.quiet:
        _print_summary(summary.data, Path(args.out))
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    import logging

    import trio

    from p2pfl.node import load_node_config, run_node

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_node_config(args.config)
    trio.run(run_node, cfg)
    return 0


def _control_socket(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    from p2pfl.control import config_socket_path
    from p2pfl.errors import ConfigError

    path = config_socket_path(args.config)  # reads two keys: no torch import
    if path is None:
        raise ConfigError(f"{args.config} has no control socket (set `control` or "
                          "`checkpoint_dir` in the peer config)")
    return path


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    from functools import partial

    import trio

    from p2pfl.control import ControlError, request

    path = _control_socket(args)
    try:
        reply = trio.run(partial(request, path, {"op": "status"}, timeout=args.timeout))
    except ControlError as e:
        print(f"p2pfl status: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=1, sort_keys=True))
    else:
        print("\n".join(_status_lines(reply)))
    return 0


def _status_lines(d: dict[str, Any], *, rounds: int = 5, top: int = 10) -> list[str]:
    """A node's status reply as text (missing fields show as '-')."""
    def get(key: str) -> Any:
        v = d.get(key)
        return "-" if v is None else v

    model = str(get("model_hash"))
    neighbors = d.get("neighbor_ids")
    lines = [
        f"peer        {get('peer_id')}  (pid {get('pid')})",
        f"listen      {get('listen')}",
        f"federation  {get('federation_name')} {str(get('federation'))[:16]}",
        f"round       {get('round')}  model {model[:16]}",
        f"peers       {get('neighbors')} neighbours / {get('live_peers')} live",
    ]
    if isinstance(neighbors, list):
        lines += [f"  {n}" for n in neighbors]
    history = d.get("history")
    if isinstance(history, dict) and history:
        last = sorted(history.items(), key=lambda kv: int(kv[0]))[-rounds:]
        lines.append("history     " + ", ".join(f"{r}: {str(h)[:12]}" for r, h in last))
    rep, cred = d.get("reputation"), d.get("credits")
    if isinstance(rep, dict) and rep:
        cred = cred if isinstance(cred, dict) else {}
        lines.append(f"{'reputation':<32}  {'score':>6}  {'credits':>10}")
        for peer, score in list(rep.items())[:top]:
            c = cred.get(peer)
            shown = "-" if not isinstance(c, int | float) else f"{c:.1f}"
            lines.append(f"  {peer:<30}  {score:>6.3f}  {shown:>10}")
        if len(rep) > top:
            lines.append(f"  ... {len(rep) - top} more (--json shows them all)")
    else:
        lines.append("reputation  - (no ledger yet)")
    return lines


def _cmd_ledger(args: argparse.Namespace) -> int:
    import json
    import os
    import shutil
    import tempfile

    from p2pfl.errors import ConfigError
    from p2pfl.federation import load_federation
    from p2pfl.ledger import Ledger, ledger_rows

    if args.config is not None:
        from p2pfl.node import load_node_config
        from p2pfl.peer import ledger_path

        if args.federation is not None:
            raise ConfigError("--federation goes with --file (--config names its own)")

        cfg = load_node_config(args.config)
        fed = load_federation(cfg.federation)
        if cfg.checkpoint_dir is None:
            raise ConfigError(f"{args.config} has no checkpoint_dir, where the ledger is kept")
        path = ledger_path(cfg.checkpoint_dir, fed)
    else:
        if args.federation is None:
            raise ConfigError("--file needs --federation FED.TOML (the ledger's federation)")
        fed = load_federation(args.federation)
        path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"no ledger file at {path}")
    with tempfile.TemporaryDirectory(prefix="p2pfl-ledger-") as tmp:
        # Ledger.open creates missing files and cuts torn tails: open a copy, so that
        # the node's file (which it may be appending to right now) is never written
        copy = Path(tmp) / "ledger.bin"
        shutil.copyfile(path, copy)
        size = os.path.getsize(copy)
        led = Ledger.open(copy, fed)
        torn = size - os.path.getsize(copy)
        led.close()
    st = led.standing
    peers = sorted(st.peers)
    if args.peer is not None:
        peers = [p for p in peers if str(p).startswith(args.peer)]
        if not peers:
            raise ConfigError(f"--peer: no peer {args.peer!r} in the ledger")
    last = None if args.history < 0 else args.history
    if args.json:
        print(json.dumps(_ledger_doc(led, peers, last, torn), indent=1))
        return 0
    rows = ledger_rows(led, last=last)
    if args.peer is not None:  # drop the other peers' standing rows
        others = {str(p) for p in st.peers} - {str(p) for p in peers}
        rows = [r for r in rows if not (r.split() and r.split()[0] in others)]
    if torn:
        rows.append(f"(the file ends in {torn} bytes of a torn record, ignored)")
    print("\n".join(rows))
    return 0


def _ledger_doc(led: Any, peers: list[Any], last: int | None, torn: int) -> dict[str, Any]:
    """``p2pfl ledger --json``: the summary, the standing of ``peers``, the history."""
    import dataclasses

    from p2pfl.ledger import GroupStatus, record_hash

    st = led.standing
    standing = {}
    for p in peers:
        row = dataclasses.asdict(st.get(p))
        row.update(score=st.score(p), weight_factor=st.weight_factor(p), weight=st.weight(p),
                   newcomer=st.is_newcomer(p))
        standing[str(p)] = row
    records = led.records
    start = 0 if last is None else max(0, len(records) - last)
    history = []
    for i in range(start, len(records)):
        b = records[i].body
        acc = [s.header for s in b.groups
               if s.status is GroupStatus.ACCEPTED and s.header is not None]
        history.append({
            "round": b.round, "record": record_hash(b).hex(), "cohort": len(b.cohort),
            "groups": len(b.groups), "accepted": len(acc),
            "aborted": sum(s.status is GroupStatus.ABORTED for s in b.groups),
            "included": sum(len(h.included) for h in acc),
            "dropped": sum(len(h.dropped) for h in acc),
            "excluded": sum(len(h.excluded) for h in acc),
            "signatures": led.signatures(i), "updated": b.updated,
            "model_hash": b.model_hash.hex(), "evidence": len(b.evidence),
        })
    return {"federation": led.federation.id_hex, "height": led.height, "head": led.head.hex(),
            "torn_bytes": torn, "peers": standing, "history": history}


def _items(v: object) -> list[object]:
    return list(v) if isinstance(v, list) else []


def _count(v: object) -> int:
    return len(v) if isinstance(v, list) else 0


def _print_summary(d: dict[str, object], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    bytes_mean = d["bytes_sent_mean"]
    rows = [
        ("peers / rounds", f"{d['peers']} / {d['rounds']}"),
        ("aggregation", str(d["aggregation"])),
        ("partition / dropout", f"{d['partition']} / {d['dropout']}"),
        ("detection", "on" if d.get("defense") else "off"),
        *([("attack", f"{d['attack']} ({_count(d.get('malicious'))} malicious)")]
          if d.get("attack") else []),
        ("excluded (peer-rounds)", str(sum(_count(e) for e in _items(d.get("excluded_by_round"))))),
        ("final accuracy", fmt(d["final_accuracy"])),
        ("models agree", fmt(d["models_agree"])),
        ("rounds completed", fmt(d["rounds_completed"])),
        ("wall time", f"{d['wall_s']} s" + (
            f" ({d['virtual_s']} s simulated)" if d.get("virtual_s") is not None else "")),
        ("bytes sent per peer (mean)",
         f"{bytes_mean / 1e6:.2f} MB" if isinstance(bytes_mean, int | float) else "-"),
    ]
    for k, v in dict(d.get("references") or {}).items():  # type: ignore[call-overload]
        if not k.endswith("by_round"):
            rows.append((k.replace("_", " "), fmt(v)))
    table = Table(title="p2pfl sim", show_header=False)
    for k, v in rows:
        table.add_row(k, v)
    console = Console()
    console.print(table)
    det = d.get("detection")
    if isinstance(det, dict) and det.get("detection_rate") is not None:
        console.print(f"detection rate {det['detection_rate']:.3f}, false positives "
                      f"{det['false_positive_rate']:.3f} (excluded / present peer-rounds)")
    plots = [n for n in ("accuracy.png", "reputation.png", "bytes_per_peer.png")
             if (out / n).exists()]
    console.print(f"wrote {out / 'summary.json'}, {out / 'metrics.jsonl'}, "
                  + ", ".join(str(out / n) for n in plots))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pfl",
        description=(
            "Serverless peer-to-peer federated learning with dropout-tolerant secure "
            "aggregation (Shamir MPC) and a replicated reputation ledger."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("keygen", help="create an identity key file (mode 0600) and print its peer id")
    p.add_argument("path", help="where to write the key file")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("peer-id", help="print the peer id of a key file")
    p.add_argument("path", help="key file written by `p2pfl keygen`")
    p.set_defaults(func=_cmd_peer_id)

    p = sub.add_parser(
        "demo", help="two peers on loopback TCP: authenticated handshake and one message each way"
    )
    p.add_argument("--message", default="hello from p2pfl", help="text the peers exchange")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "sim",
        help="simulate a whole federation in one process (memory network, virtual time)",
        description=(
            "Run N peers in one process over the in-memory network under a virtual clock: "
            "real overlay, rounds and aggregation; writes DIR/summary.json, "
            "DIR/metrics.jsonl and plots. See docs/simulation.md."
        ),
    )
    p.add_argument("--peers", type=int, default=10, help="number of peers (default 10)")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds (default 20)")
    p.add_argument("--dataset", default="digits", help="built-in data set (digits)")
    p.add_argument("--partition", default="iid",
                   help="iid | dirichlet:A (label skew) | quantity:A (default iid)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--secure", dest="secure", action="store_true", default=None,
                      help="secure aggregation (Shamir MPC; the default)")
    mode.add_argument("--plaintext", dest="secure", action="store_false",
                      help="plaintext aggregation (baseline, no privacy)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="fraction F of each round's cohort that crashes mid-round (default 0)")
    p.add_argument("--task", default=None, metavar="MODULE:FUNCTION",
                   help="a user task factory instead of the built-in data set")
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"], help="digits model")
    p.add_argument("--strategy", default="fedavg",
                   help="fedavg | fedprox | fedadam | fedyogi (default fedavg)")
    p.add_argument("--cohort", type=int, default=None, help="peers per round (default: all)")
    p.add_argument("--group-size", type=int, default=10, help="aggregation group size g")
    p.add_argument("--transport", default="memory", choices=["memory", "tcp"],
                   help="memory (one process, virtual time) or tcp (one `p2pfl node` "
                        "process per peer over loopback TCP, real time)")
    p.add_argument("--device", default="cpu", help="training device: cpu | cuda | auto")
    p.add_argument("--seed", type=int, default=0, help="seed of keys, data split, dropouts")
    p.add_argument("--attack", default=None, metavar="NAME|MODULE:FUNCTION",
                   help="attack run by the malicious peers: signflip, scale[:G], noise[:S], "
                        "labelflip, freerider[:zero|:stale], sybil, sketchliar, or "
                        "module:function (see docs/simulation.md)")
    p.add_argument("--malicious", type=float, default=0.0, metavar="F",
                   help="fraction of peers that run --attack (default 0)")
    dfn = p.add_mutually_exclusive_group()
    dfn.add_argument("--defense", dest="defense", action="store_true", default=None,
                     help="sketch stage + exclusion policy (default: on when secure)")
    dfn.add_argument("--no-defense", dest="defense", action="store_false",
                     help="secure aggregation without the sketch stage")
    p.add_argument("--weighting", default="samples", choices=["samples", "uniform"],
                   help="aggregation weights: by sample count (default) or uniform")
    p.add_argument("--clip", type=float, default=5.0, metavar="B",
                   help="L2 clipping bound of updates (default 5.0)")
    p.add_argument("--membership", default="permissioned", choices=["permissioned", "open"],
                   help="federation membership policy (default permissioned)")
    p.add_argument("--reference", action="store_true",
                   help="also run centralized training (and plaintext, for secure runs)")
    p.add_argument("--out", default="runs/sim", metavar="DIR", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    p.set_defaults(func=_cmd_sim)

    p = sub.add_parser(
        "node",
        help="run one peer over TCP from a peer config (until Ctrl-C / SIGTERM)",
        description=(
            "Run one federated-learning peer: identity from its key file, model and round "
            "from its checkpoint directory when there is one; logs one status line per "
            "round and writes status_file. See docs/operator.md for the config keys."
        ),
    )
    p.add_argument("--config", required=True, metavar="PEER.TOML", help="peer config file")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="log level (default info)")
    p.set_defaults(func=_cmd_node)

    p = sub.add_parser(
        "status",
        help="ask a running node (over its local control socket) for its round, model and peers",
        description=(
            "Connect to the control socket of a running `p2pfl node` on this host and print "
            "its status: peer id, listen address, federation, round and model hash, "
            "neighbours and live peers, the model hashes of recent rounds, and reputation "
            "and credits. Exit status 1 when no node answers. See docs/operator.md."
        ),
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="PEER.TOML",
                       help="the node's peer config (its `control` socket, by default "
                            "CHECKPOINT_DIR/control.sock)")
    where.add_argument("--socket", metavar="PATH", help="the control socket itself")
    p.add_argument("--json", action="store_true",
                   help="print the node's whole reply as JSON (for scripts)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the answer (default 10)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "ledger",
        help="show the reputation ledger: reputation, credits, per-peer counters, history",
        description=(
            "Read a peer's ledger file (never modifying it; a running node's file is fine) "
            "and print the federation summary, each peer's score, weights, credits and "
            "counters (contributions, exclusions, dropouts, failed groups, violations, "
            "equivocations), and the last rounds' records. See docs/ledger.md."
        ),
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="PEER.TOML",
                       help="a peer config: its federation file and CHECKPOINT_DIR/ledger-*.bin")
    where.add_argument("--file", metavar="LEDGER", help="a ledger file (needs --federation)")
    p.add_argument("--federation", metavar="FED.TOML", help="the federation file of --file")
    p.add_argument("--peer", metavar="ID", help="only this peer (a peer id or its prefix)")
    p.add_argument("--history", type=int, default=20, metavar="N",
                   help="show the last N records (default 20; -1: all)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    p.set_defaults(func=_cmd_ledger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2pfl`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except P2PFLError as e:
        print(f"p2pfl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
