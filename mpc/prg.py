"""Mask expansion: a 32-byte seed to a uint32 vector with ChaCha20.

Theory of operation
-------------------
``expand(seed, n)`` is the first ``4 n`` bytes of the IETF ChaCha20 keystream
(RFC 8439) under key ``seed``, 12-byte nonce ``b"LibsodiumDRG"`` and initial block
counter 0, read as little-endian uint32 words.  This is byte for byte libsodium's
``randombytes_buf_deterministic`` (pynacl's ``nacl.utils.randombytes_deterministic``),
which the tests use as an oracle.  The ``cryptography`` package takes a 16-byte nonce:
the 4-byte little-endian initial counter followed by the 12-byte IETF nonce, so the
nonce is ``b"\\0\\0\\0\\0" + b"LibsodiumDRG"``.  (libsodium's 32-bit counter limits a
stream to 256 GiB, far above any model.)

The seed is the whole key: seeds must be uniformly random and used for one mask only
(masks are derived per round and pair by :func:`mpc.ka.agree` with a context).

ChaCha20 is seekable: the keystream from word ``w`` on, for ``w`` a multiple of 16
(one 64-byte block), is the stream with initial block counter ``w / 16``.  Any part
of a mask can therefore be generated on its own, bit for bit equal to the same words
of the whole mask.

Performance
-----------
The keystream is produced by ``update_into`` over a read-only zero buffer, chunk by
chunk (64 Ki words, 256 KiB), straight into a destination or a reused scratch chunk
(no allocation).  :class:`MaskExpander` fuses generation and wrapping addition chunk
by chunk, so each chunk of keystream is still in L2 cache when it is added, and
:meth:`MaskExpander.apply` runs all seeds over one accumulator chunk before moving
on, which keeps the accumulator chunk in cache as well.  With ``src=`` the first mask
is added to ``src`` straight into the accumulator (no separate copy of the input).

Large jobs use several threads, and the result does not depend on how many: the
accumulator is cut into contiguous parts aligned to 64-byte blocks, each part runs
every seed from the block counter of its first word, and the calling thread and
helpers from a process-wide pool claim parts in turn (``cryptography`` releases the
GIL while it encrypts, numpy while it adds).  With ``digest=``, the finished
accumulator is hashed in order while the masking goes on: after each chunk, the
worker that finds the hash free feeds it every word that is final so far (hashlib
releases the GIL on large buffers); the digest is that of the whole accumulator,
since hashing consecutive pieces equals hashing their concatenation.  Helpers that
start late find nothing left to claim and return, so a busy machine costs little
more than one thread; only the caller waits, for parts still running elsewhere.
Jobs below about 10^6 words of work stay on the calling thread; ``workers=1`` never
uses another thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from numpy.typing import NDArray

__all__ = ["NONCE", "SEED_BYTES", "Digest", "MaskExpander", "default_workers", "expand"]

SEED_BYTES = 32
"""Length of a PRG seed (a ChaCha20 key) in bytes."""

_IETF_NONCE = b"LibsodiumDRG"
NONCE = (0).to_bytes(4, "little") + _IETF_NONCE
"""The 16-byte ``cryptography`` ChaCha20 nonce: counter 0 (LE u32) + libsodium's nonce."""

_CHUNK = 1 << 16  # uint32 words per chunk: 256 KiB, fits L2 with room to spare
_ZEROS = bytes(4 * _CHUNK)
_BLOCK_WORDS = 16  # one ChaCha20 block (64 bytes)
_PAR_MIN_WORDS = 1 << 20  # words of work (keystream, hashing counts 3) to share a job
_PART_MIN_WORDS = _CHUNK // 2  # accumulator words per part, at least
_MAX_WORKERS = 8

U32 = NDArray[np.uint32]


class Digest(Protocol):
    """What ``apply(digest=...)`` needs of a hash object (``hashlib.sha256()`` fits)."""

    def update(self, data: memoryview, /) -> None:
        """Absorb ``data``."""


def default_workers() -> int:
    """Threads a :class:`MaskExpander` uses by default: the CPUs this process may
    run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cpus))


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The process-wide helper pool (threads start on demand; a forked child gets a
    fresh pool, since the parent's threads do not exist there)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="mpc-prg")
            _pool_pid = os.getpid()
        return _pool


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        n = len(seed) if isinstance(seed, bytes | bytearray) else type(seed).__name__
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {n}")


def _keystream(seed: bytes, word: int = 0) -> CipherContext:
    """The ChaCha20 keystream of ``seed`` from word ``word`` (a multiple of 16) on."""
    _check_seed(seed)
    nonce = (word // _BLOCK_WORDS).to_bytes(4, "little") + _IETF_NONCE
    return Cipher(algorithms.ChaCha20(bytes(seed), nonce), mode=None).encryptor()


def _check_out(out: NDArray[np.uint32], n: int, what: str = "out") -> None:
    if out.dtype != np.uint32:
        raise TypeError(f"{what} must be uint32, got {out.dtype}")
    if out.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{what} must be C-contiguous and writeable")


def expand(seed: bytes, n: int, out: U32 | None = None) -> U32:
    """Return the ``n``-word mask of ``seed`` (see the module docstring).

    Writes into ``out`` when given (shape ``(n,)``, uint32, C-contiguous) and returns it.
    Raises ``ValueError`` for a seed that is not 32 bytes, ``n < 0`` or a wrong ``out``
    shape, ``TypeError`` for a wrong ``out`` dtype.
    """
    if n < 0:
        raise ValueError(f"negative length {n}")
    enc = _keystream(seed)
    if out is None:
        out = np.empty(n, dtype=np.uint32)
    else:
        _check_out(out, n)
    dst = out.data.cast("B")
    zeros = memoryview(_ZEROS)
    total = 4 * n
    step = 4 * _CHUNK
    for start in range(0, total, step):
        stop = min(total, start + step)
        enc.update_into(zeros[: stop - start], dst[start:stop])
    return out


class MaskExpander:
    """Adds or subtracts PRG masks into uint32 accumulators, reusing scratch chunks.

    ``workers``: the most threads one call may use, the caller's included (default
    :func:`default_workers`; 1 keeps everything on the calling thread).  Results are
    identical for any value.  One instance per thread (it owns mutable scratch
    memory); cheap to keep for the lifetime of a peer.  Raises ``ValueError`` for
    ``workers < 1``.
    """

    __slots__ = ("_scratch", "workers")

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = default_workers() if workers is None else min(workers, _MAX_WORKERS)
        self._scratch: list[U32] = [np.empty(_CHUNK, dtype=np.uint32)]

    def add_mask(self, acc: U32, seed: bytes) -> U32:
        """``acc += expand(seed, len(acc)) (mod 2**32)`` in place; returns ``acc``.

        Raises as :meth:`apply`.
        """
        return self.apply(acc, plus=(seed,))

    def sub_mask(self, acc: U32, seed: bytes) -> U32:
        """``acc -= expand(seed, len(acc)) (mod 2**32)`` in place; returns ``acc``.

        Raises as :meth:`apply`.
        """
        return self.apply(acc, minus=(seed,))

    def apply(
        self,
        acc: U32,
        plus: Sequence[bytes] = (),
        minus: Sequence[bytes] = (),
        *,
        src: U32 | None = None,
        digest: Digest | None = None,
    ) -> U32:
        """``acc += sum(expand(s) for s in plus) - sum(expand(s) for s in minus)`` in place.

        With ``src`` (uint32, the shape of ``acc``; may be ``acc`` itself) the result
        is ``src + ...`` instead, written into ``acc`` in the same pass (``src`` is
        not modified unless it is ``acc``).  With ``digest``, the bytes of the final
        ``acc`` (native byte order) are fed to ``digest.update`` in order, partly
        while the masks are still being applied.  Returns ``acc``.

        All masks are processed chunk by chunk over the accumulator, so the accumulator
        chunk stays in cache while every seed is applied.  Raises ``TypeError``
        unless ``acc`` (and ``src``) is uint32 and ``ValueError`` unless ``acc`` is
        1-D, C-contiguous and writeable and ``src`` has its shape, or when a seed is
        not 32 bytes (all checked before ``acc`` is touched).
        """
        if acc.dtype != np.uint32:
            raise TypeError(f"accumulator must be uint32, got {acc.dtype}")
        if acc.ndim != 1:
            raise ValueError(f"accumulator must be 1-D, got shape {acc.shape}")
        n = acc.shape[0]
        _check_out(acc, n, "accumulator")
        if src is acc:
            src = None
        elif src is not None:
            if src.dtype != np.uint32:
                raise TypeError(f"src must be uint32, got {src.dtype}")
            if src.shape != (n,):
                raise ValueError(f"src must have shape ({n},), got {src.shape}")
        seeds = [*plus, *minus]
        for s in seeds:
            _check_seed(s)
        signs = [True] * len(plus) + [False] * len(minus)
        if not seeds:
            if src is not None:
                np.copyto(acc, src)
            if digest is not None:
                digest.update(acc.data.cast("B"))
        else:
            self._masks(acc, src, seeds, signs, digest)
        return acc

    # ------------------------------------------------------------ internals

    def _masks(
        self,
        acc: U32,
        src: U32 | None,
        seeds: list[bytes],
        signs: list[bool],
        digest: Digest | None,
    ) -> None:
        n = acc.shape[0]
        helpers = 0
        parts = 1
        if self.workers > 1 and n * (len(seeds) + 3 * (digest is not None)) >= _PAR_MIN_WORDS:
            parts = max(1, min(2 * self.workers, n // _PART_MIN_WORDS))
            helpers = min(self.workers, parts) - 1
        if parts == 1 and helpers == 0 and digest is None:  # the plain loop
            self._run_part(acc, src, seeds, signs, 0, n, self._scratch[0], None, 0)
            return
        while len(self._scratch) <= helpers:
            self._scratch.append(np.empty(_CHUNK, dtype=np.uint32))
        cuts = [(n * i // parts) // _BLOCK_WORDS * _BLOCK_WORDS for i in range(parts)]
        job = _Job(self, acc, src, seeds, signs, [*cuts, n], digest)
        if helpers:
            pool = _executor()
            for r in range(1, helpers + 1):
                pool.submit(job.work, self._scratch[r], False)
        job.work(self._scratch[0], True)

    def _run_part(
        self,
        acc: U32,
        src: U32 | None,
        seeds: list[bytes],
        signs: list[bool],
        start: int,
        stop: int,
        scratch: U32,
        job: _Job | None,
        part: int,
    ) -> None:
        """``acc[start:stop] = (src or acc)[start:stop] ± masks``, chunk by chunk;
        reports each finished chunk to ``job``."""
        streams = [(_keystream(s, start), sign) for s, sign in zip(seeds, signs, strict=True)]
        sbytes = scratch.data.cast("B")
        zeros = memoryview(_ZEROS)
        for c0 in range(start, stop, _CHUNK):
            m = min(_CHUNK, stop - c0)
            a = acc[c0 : c0 + m]
            s = scratch[:m]
            base = a if src is None else src[c0 : c0 + m]
            for enc, sign in streams:
                enc.update_into(zeros[: 4 * m], sbytes[: 4 * m])
                if sign:
                    np.add(base, s, out=a)
                else:
                    np.subtract(base, s, out=a)
                base = a
            if job is not None:
                job.finished(part, c0 + m)


class _Job:
    """One ``apply`` shared by the caller and helper threads.

    The accumulator is cut into contiguous parts; every worker claims the next
    unclaimed part, runs it chunk by chunk, and between chunks takes its turn at the
    hash: whoever finds the hash free feeds it everything finished from where it
    stopped up to the first unfinished word (the frontier), so the digest sees the
    final accumulator once and in order.  Helpers that start late find nothing left
    and return without touching anything; only the caller waits, for parts other
    workers are still running and for the last piece of hash.
    """

    __slots__ = (
        "acc", "bounds", "cond", "digest", "done", "error", "expander", "first", "frontier",
        "hashed", "hashing", "next", "seeds", "signs", "src", "view",
    )

    def __init__(
        self,
        expander: MaskExpander,
        acc: U32,
        src: U32 | None,
        seeds: list[bytes],
        signs: list[bool],
        bounds: list[int],
        digest: Digest | None,
    ) -> None:
        self.expander = expander
        self.acc = acc
        self.src = src
        self.seeds = seeds
        self.signs = signs
        self.bounds = bounds
        self.digest = digest
        self.view = acc.data.cast("B")
        self.cond = threading.Condition()
        self.next = 0  # next part to claim
        self.done = bounds[:-1]  # words finished in each part, from its start
        self.first = 0  # first unfinished part
        self.frontier = 0  # every word below is final
        self.hashed = 0  # words fed to the digest
        self.hashing = False
        self.error: BaseException | None = None
        self._advance()

    def _advance(self) -> None:
        """Move the frontier past every finished (or empty) part; under ``cond``."""
        parts = len(self.bounds) - 1
        while self.first < parts and self.done[self.first] == self.bounds[self.first + 1]:
            self.first += 1
        self.frontier = self.done[self.first] if self.first < parts else self.bounds[-1]

    def finished(self, part: int, word: int) -> None:
        """Part ``part`` is final up to ``word``; maybe take a turn at the hash."""
        with self.cond:
            self.done[part] = word
            self._advance()
            self.cond.notify_all()
        self._hash_some()

    def _hash_some(self) -> bool:
        """Feed the digest up to the frontier unless someone else is; True if it did."""
        if self.digest is None:
            return False
        with self.cond:
            if self.hashing or self.hashed >= self.frontier or self.error is not None:
                return False
            self.hashing = True
            start, stop = self.hashed, self.frontier
        try:
            self.digest.update(self.view[4 * start : 4 * stop])
        finally:
            with self.cond:
                self.hashed = stop
                self.hashing = False
                self.cond.notify_all()
        return True

    def _claim(self) -> int | None:
        with self.cond:
            if self.next >= len(self.bounds) - 1 or self.error is not None:
                return None
            self.next += 1
            return self.next - 1

    def work(self, scratch: U32, caller: bool) -> None:
        """Run parts until none is left; the caller then waits for the rest."""
        try:
            while (p := self._claim()) is not None:
                self.expander._run_part(
                    self.acc, self.src, self.seeds, self.signs,
                    self.bounds[p], self.bounds[p + 1], scratch, self, p,
                )
        except BaseException as e:  # pragma: no cover - inputs were checked
            with self.cond:
                self.error = self.error or e
                self.cond.notify_all()
            if caller:
                raise
            return
        if not caller:
            return
        n = self.bounds[-1]
        while True:
            self._hash_some()
            with self.cond:
                if self.error is not None:  # pragma: no cover - inputs were checked
                    raise self.error
                if self.frontier == n and (
                    self.digest is None or (self.hashed == n and not self.hashing)
                ):
                    return
                if self.digest is None or self.hashing or self.hashed >= self.frontier:
                    self.cond.wait()
