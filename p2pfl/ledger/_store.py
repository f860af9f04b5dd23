"""The ledger file: append-only CBOR records with length prefixes and checksums.

Theory of operation
-------------------
A ledger file is a sequence of frames::

    frame = length (u32, big-endian) ‖ check (8 bytes) ‖ payload (length bytes)
    check = BLAKE2b-64(length ‖ payload)

The first payload is a :class:`LedgerFileHeader` (format version, federation id);
each later payload is one encoded :class:`Record`.  ``append`` writes one frame with a
single ``write`` on an ``O_APPEND`` descriptor and ``fsync`` s before returning, so a
record that :meth:`Ledger.append` reported is durable.  A frame whose body hash is
already in the file adds endorsements to that record (witness merge); a fork switch,
which must drop records, rewrites the whole file atomically
(:func:`p2pfl.identity.atomic_write`: temporary file, fsync, rename, fsync of the
directory), as does compaction.

**Recovery.**  A crash can only tear the *last* frame (everything before it was
fsync'ed).  On open, frames are read in order; a last frame that is short or whose
check fails is cut off (the file is truncated to the end of the last good frame and
fsync'ed).  A bad frame followed by more data is not a torn write but corruption:
:class:`LedgerError`.  The records are then verified from genesis by
:meth:`Ledger.open` (chain, signatures, rules), like records from the network.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from p2pfl.errors import P2PFLError, RemoteProtocolError
from p2pfl.identity import atomic_write
from p2pfl.wire import decode_as, encode

from ._messages import LedgerFileHeader, Record

__all__ = ["FORMAT_VERSION", "LedgerError", "LedgerStore"]

FORMAT_VERSION: Final = 2  # 2: headers are what results sign; witnesses carry no sums
_HEAD: Final = struct.Struct(">I8s")
MAX_FRAME: Final = 1 << 30


class LedgerError(P2PFLError):
    """A ledger file is corrupt (not merely torn at its end), unreadable, or belongs
    to another federation."""


def _check(length: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(length + payload, digest_size=8).digest()


def frame(payload: bytes) -> bytes:
    """One frame around ``payload``."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"ledger frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    n = struct.pack(">I", len(payload))
    return n + _check(n, payload) + payload


def _scan(data: bytes) -> tuple[list[bytes], int]:
    """Payloads of the good frames and the offset where they end.

    Raises :class:`LedgerError` for a bad frame that is not the last one.
    """
    out: list[bytes] = []
    off = 0
    while off < len(data):
        if len(data) - off < _HEAD.size:
            break  # torn length prefix
        n, check = _HEAD.unpack_from(data, off)
        end = off + _HEAD.size + n
        if n > MAX_FRAME or end > len(data):
            break  # torn payload (or a garbage length at the tail)
        payload = data[off + _HEAD.size:end]
        if _check(data[off:off + 4], payload) != check:
            if end == len(data):
                break  # torn last frame
            raise LedgerError(f"ledger frame at offset {off} is corrupt")
        out.append(payload)
        off = end
    return out, off


class LedgerStore:
    """An open ledger file (see the module docstring).  Use :meth:`open`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self.truncated = 0  # bytes cut off a torn tail when opened

    @classmethod
    def open(cls, path: str | os.PathLike[str], federation_id: bytes) -> tuple[LedgerStore, list[Record]]:
        """Open (or create) the ledger file of ``federation_id``; returns the store and
        the records in file order (unverified).

        Raises :class:`LedgerError` for a corrupt file or one of another federation.
        """
        p = Path(path)
        header = frame(encode(LedgerFileHeader(FORMAT_VERSION, federation_id)))
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as e:
            raise LedgerError(f"cannot read ledger {p}: {e.strerror}") from e
        payloads, end = _scan(data)
        if not payloads:
            if data:  # the header is written atomically: this is not a torn ledger
                raise LedgerError(f"{p} is not a p2pfl ledger (no valid first frame)")
            atomic_write(p, header, mode=0o600)
            data, payloads, end = header, [header[_HEAD.size:]], len(header)
        try:
            head = decode_as(payloads[0], LedgerFileHeader)
        except RemoteProtocolError as e:
            raise LedgerError(f"{p} is not a p2pfl ledger: {e}") from e
        if head.version != FORMAT_VERSION:
            raise LedgerError(f"{p}: unsupported ledger format version {head.version}")
        if head.federation != federation_id:
            raise LedgerError(f"{p} is the ledger of another federation")
        records: list[Record] = []
        for i, payload in enumerate(payloads[1:], 1):
            try:
                records.append(decode_as(payload, Record, max_size=max(len(payload), 1)))
            except RemoteProtocolError as e:
                raise LedgerError(f"{p}: frame {i} is not a ledger record: {e}") from e
        fd = os.open(p, os.O_RDWR | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
        store = cls(p, fd)
        if end < len(data):
            store.truncated = len(data) - end
            os.ftruncate(fd, end)
            os.fsync(fd)
        return store, records

    def _need_fd(self) -> int:
        if self._fd is None:
            raise LedgerError(f"ledger {self.path} is closed")
        return self._fd

    def append(self, record: Record) -> None:
        """Append one record durably (write + fsync)."""
        fd = self._need_fd()
        view = memoryview(frame(encode(record)))
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)

    def rewrite(self, federation_id: bytes, records: Iterable[Record]) -> None:
        """Replace the file atomically with exactly ``records`` (fork switch, compaction)."""
        self._need_fd()
        parts = [frame(encode(LedgerFileHeader(FORMAT_VERSION, federation_id)))]
        parts += [frame(encode(r)) for r in records]
        atomic_write(self.path, b"".join(parts), mode=0o600)
        self.close()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
