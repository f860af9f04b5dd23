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
