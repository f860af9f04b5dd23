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
        reference=args.reference,
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
        ("final accuracy", fmt(d["final_accuracy"])),
        ("models agree", fmt(d["models_agree"])),
        ("rounds completed", fmt(d["rounds_completed"])),
        ("wall time", f"{d['wall_s']} s ({d['virtual_s']} s simulated)"),
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
    console.print(f"wrote {out / 'summary.json'}, {out / 'metrics.jsonl'}, {out / 'accuracy.png'}")


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
                   help="memory (one process); tcp is not implemented yet")
    p.add_argument("--device", default="cpu", help="training device: cpu | cuda | auto")
    p.add_argument("--seed", type=int, default=0, help="seed of keys, data split, dropouts")
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
