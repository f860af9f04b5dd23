"""Ed25519 identity keys (pynacl) and their key files.

A peer *is* its identity key: its :class:`~p2pfl.wire.PeerId` is the BLAKE2b-160
hash of the public key.  Key files hold the 32-byte private seed in a small CBOR
record, are written atomically (temporary file, fsync, rename, fsync of the
directory) with mode 0600, and are refused when group or others can read them.

Verified signatures are remembered (:class:`SignatureCache`, as Bitcoin Core's
signature cache): the same signature is checked many times -- a group result by every
peer that receives it, again by the ledger that records it, and, in a simulation of N
peers in one process, by all N of them.  Ed25519 verification is a deterministic
function of (public key, domain, message, signature), so a success can be remembered
under a collision-resistant hash of all four and answered again without the curve
arithmetic.  Only successes are kept (a failure is recomputed, so nothing an attacker
sends can fill the cache with verdicts), and the cache is bounded (oldest out first).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import nacl.exceptions
import nacl.signing

from p2pfl._lru import BoundedLru
from p2pfl.errors import ConfigError, RemoteProtocolError
from p2pfl.wire import MaxLen, PeerId, decode_as, encode, message

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Identity",
    "SignatureCache",
    "SignatureCacheStatistics",
    "atomic_write",
    "signature_cache",
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


@dataclass(frozen=True)
class SignatureCacheStatistics:
    """Counters of a :class:`SignatureCache` (:meth:`SignatureCache.statistics`)."""

    size: int  # entries held
    capacity: int
    hits: int  # verifications answered from the cache
    misses: int  # verifications computed (valid or not)


class SignatureCache:
    """A bounded set of (public key, domain, message, signature) that verified.

    An entry is BLAKE2b-256 (personalized) of ``public key ‖ signature ‖ signed
    bytes`` -- the exact bytes Ed25519 checked, which already separate domain and
    message unambiguously, and fixed-length key and signature -- so an entry vouches
    for one full input and for nothing else.  Only successes are added; the oldest
    entry leaves first.  Thread-safe.  ``capacity`` 0 disables the cache.
    """

    def __init__(self, capacity: int = 1 << 17) -> None:
        self._seen: BoundedLru[bytes, bool] = BoundedLru(capacity)

    @staticmethod
    def key(public_key: bytes, signature: bytes, signed: bytes) -> bytes:
        h = hashlib.blake2b(public_key, digest_size=32, person=b"p2pfl/sigcache1")
        h.update(signature)
        h.update(signed)
        return h.digest()

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def _lookup(self, key: bytes) -> bool:
        return self._seen.get(key) is not None

    @property
    def enabled(self) -> bool:
        return self._seen.capacity > 0

    @property
    def hits(self) -> int:
        return self._seen.hits

    @property
    def misses(self) -> int:
        return self._seen.misses

    def add(self, key: bytes) -> None:
        """Remember a key of a signature that verified."""
        self._seen.put(key, True)

    def resize(self, capacity: int) -> None:
        """Keep at most ``capacity`` entries from now on (0: off). Raises ``ValueError``
        for a negative capacity."""
        self._seen.resize(capacity)

    def clear(self) -> None:
        self._seen.clear()

    def statistics(self) -> SignatureCacheStatistics:
        return SignatureCacheStatistics(len(self._seen), self._seen.capacity, self.hits,
                                        self.misses)


signature_cache = SignatureCache()
"""The process-wide cache :func:`verify_signature` uses (see the module docstring)."""


def verify_signature(public_key: bytes, domain: bytes, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` for ``domain``.

    A success is remembered in :data:`signature_cache`; asking again for the same four
    inputs is answered from there.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        signed = _signed_bytes(domain, data)
        cache = signature_cache
        key = cache.key(public_key, signature, signed) if cache.enabled else b""
        if key and cache._lookup(key):
            return True
        nacl.signing.VerifyKey(public_key).verify(signed, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError, TypeError):
        return False
    if key:
        cache.add(key)
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
