"""Checkpoints: the global state a peer resumes from, written atomically as CBOR.

Theory of operation
-------------------
A checkpoint is one :class:`CheckpointFile` message (the wire codec, never pickle):
the :class:`~p2pfl.federation.state.StateSnapshot` — federation id, round, beacon,
model (float32), strategy state (step and server-optimizer moments) — plus the
state's digest.  It is written with :func:`p2pfl.identity.atomic_write` (temporary
file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
checkpoint, never a torn one.  Loading re-derives the digest and compares: a file
that decodes but does not match (bit rot, a hand edit) is refused.

Write a checkpoint of the state every round starts from (``RoundCompleted.next_state``)
before starting the round; a restarted peer loads it and, when the federation has
moved on, catches up from there (:mod:`p2pfl.federation.sync`).  The identity key is
a separate file (:meth:`p2pfl.identity.Identity.save`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Final

from p2pfl.errors import P2PFLError, RemoteProtocolError
from p2pfl.identity import atomic_write
from p2pfl.wire import MaxLen, Range, decode_as, encode, message

from .config import Federation
from .state import GlobalState, StateSnapshot

__all__ = ["CheckpointError", "CheckpointFile", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_VERSION: Final = 1


class CheckpointError(P2PFLError):
    """A checkpoint is missing, unreadable, corrupt or for another federation."""


@message(0x0540)
class CheckpointFile:
    """On-disk checkpoint."""

    version: Annotated[int, Range(1, 1 << 16)]
    snapshot: StateSnapshot
    digest: Annotated[bytes, MaxLen(32, exact=True)]


def save_checkpoint(path: str | os.PathLike[str], state: GlobalState) -> None:
    """Write ``state`` to ``path`` atomically (mode 0600)."""
    data = encode(CheckpointFile(CHECKPOINT_VERSION, state.to_snapshot(), state.digest))
    atomic_write(Path(path), data, mode=0o600)


def load_checkpoint(path: str | os.PathLike[str], federation: Federation | None = None, *,
                    max_size: int | None = None) -> GlobalState:
    """Read a checkpoint written by :func:`save_checkpoint`.

    With ``federation``, the checkpoint must belong to it; with ``max_size``, it
    must be at most that many bytes (only that much is read). Raises
    :class:`CheckpointError` for a missing, oversized, malformed, corrupt or foreign file.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read() if max_size is None else f.read(max_size + 1)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {p} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror}") from e
    if max_size is not None and len(data) > max_size:
        raise CheckpointError(f"checkpoint {p} is larger than {max_size} bytes")
    try:
        ck = decode_as(data, CheckpointFile, max_size=max(len(data), 1))
    except RemoteProtocolError as e:
        raise CheckpointError(f"checkpoint {p} is not a p2pfl checkpoint: {e}") from e
    if ck.version != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {p} has unsupported version {ck.version}")
    fid = federation.id if federation is not None else None
    try:
        state = GlobalState.from_snapshot(ck.snapshot, fid)
    except (RemoteProtocolError, ValueError) as e:
        raise CheckpointError(f"checkpoint {p} does not fit: {e}") from e
    if state.digest != ck.digest:
        raise CheckpointError(f"checkpoint {p} is corrupt: its state digest does not match")
    return state
