"""Ed25519 identity keys (pynacl) and their key files.

A peer *is* its identity key: its :class:`~p2pfl.wire.PeerId` is the BLAKE2b-160
hash of the public key.  Key files hold the 32-byte private seed in a small CBOR
record, are written atomically (temporary file, fsync, rename, fsync of the
directory) with mode 0600, and are refused when group or others can read them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

import nacl.exceptions
import nacl.signing

from p2pfl.errors import ConfigError, RemoteProtocolError
from p2pfl.wire import MaxLen, PeerId, decode_as, encode, message

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Identity",
    "atomic_write",
    "verify_signature",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_SIG_PREFIX = b"p2pfl-sig/1\x00"


@message(0x0001)
class KeyFile:
    """On-disk form of an identity key."""

    kind: Annotated[str, MaxLen(32)]
    seed: Annotated[bytes, MaxLen(32, exact=True)]


def _signed_bytes(domain: bytes, data: bytes) -> bytes:
    # Domain separation: a signature made for one purpose (handshake, broadcast,
    # round record, ...) can never be replayed as another.
    if b"\x00" in domain:
        raise ValueError("signature domain must not contain NUL")
    return _SIG_PREFIX + domain + b"\x00" + data


class Identity:
    """An Ed25519 signing key with its peer id."""

    __slots__ = ("_key", "peer_id", "public_key")

    def __init__(self, seed: bytes) -> None:
        if type(seed) is not bytes or len(seed) != 32:
            raise ValueError("identity seed must be 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._key.verify_key)
        self.peer_id: PeerId = PeerId.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh key from the operating system's CSPRNG."""
        return cls(os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A deterministic key (simulations and tests)."""
        return cls(seed)

    def sign(self, domain: bytes, data: bytes) -> bytes:
        """Ed25519 signature of ``data`` under the purpose tag ``domain``."""
        return self._key.sign(_signed_bytes(domain, data)).signature

    def seed_bytes(self) -> bytes:
        return bytes(self._key)

    # -- key files -----------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0600.

        Raises :class:`ConfigError` when the file exists and ``overwrite`` is false.
        """
        p = Path(path)
        if p.exists() and not overwrite:
            raise ConfigError(f"key file {p} already exists; refusing to overwrite it")
        atomic_write(p, encode(KeyFile("ed25519", self.seed_bytes())), mode=0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by :meth:`save`.

        Raises :class:`ConfigError` when the file is missing, malformed, or
        readable by group or others.
        """
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ConfigError(f"key file {p} does not exist (create one with `p2pfl keygen {p}`)") from None
        except OSError as e:
            raise ConfigError(f"cannot open key file {p}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"key file {p} has mode {stat.S_IMODE(st.st_mode):04o} and is readable by "
                    f"others; run `chmod 600 {p}`"
                )
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        try:
            kf = decode_as(data, KeyFile)
        except RemoteProtocolError as e:
            raise ConfigError(f"key file {p} is not a p2pfl key file: {e}") from e
        if kf.kind != "ed25519":
            raise ConfigError(f"key file {p} holds an unsupported key kind {kf.kind!r}")
        return cls(kf.seed)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"


def verify_signature(public_key: bytes, domain: bytes, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` for ``domain``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(_signed_bytes(domain, data), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    return True


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Writes a temporary file in the same directory (created with ``mode``), fsyncs
    it, renames it over ``path`` and fsyncs the directory, so a crash leaves either
    the old or the new content, never a mix.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # umask must not widen or narrow the mode
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
