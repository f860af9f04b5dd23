"""Work every ledger of a process repeats, done once: records built, records verified.

Theory of operation
-------------------
Every peer of a round builds the same record from the same group results and verifies
it against the same chain: :func:`~p2pfl.ledger.build_record` and
:func:`~p2pfl.ledger.verify_record` plus :meth:`Standing.apply` are pure functions of
their inputs.  A simulation runs N ledgers in one process, so it would do that work N
times per round -- with a full cohort of 1000 peers, 100 groups verified by 1000
ledgers.  :class:`LedgerMemo` remembers the last few results, keyed so that a hit is
exactly the value the function would return:

* **built records** by a BLAKE2b-256 fingerprint of *every* input of
  ``build_record``: the round record's fields, the strategy state's hash, the schedule
  (digest, group indices, cohort), the chain head, each result's body digest and
  endorsements (key ‖ signature), each abort's body digest and endorsement, each proof
  id.  A result body's digest is :func:`~p2pfl.federation.messages.digest_of` (what its
  endorsements sign); it is remembered per body *object* (holding a reference, so the
  identity cannot be reused) only for bodies that cannot change: frozen messages whose
  arrays are read-only (decoded from the wire, see :func:`frozen`);
* **verifications** of one record *object* against one chain: keyed by (federation id,
  ledger parameters, the head it extends, the record's identity), again only for
  records whose arrays are read-only, and holding the record.  The value is the
  record's hash, its signature count, its schedule and the standing after it (an
  immutable :class:`~p2pfl.ledger.Standing`, shared by every ledger that holds the
  same chain: the head commits to every body before it);
* **standings**: the empty chain's per (federation id, parameters), and the one after
  each record per (federation id, parameters, head) -- records that differ only in
  their witnesses (which endorsements a peer happened to merge) share it -- so that
* **weights** (``Standing.weight``, the cohort selection weight) are computed once per
  standing object.

Only successes are remembered (a verification that raises is recomputed every time),
the memo is bounded (oldest out) and thread-safe.  In a deployment each ledger holds
one chain and every entry is used once: it costs a few dictionary entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import numpy as np

from p2pfl._lru import BoundedLru, IdentityMemo
from p2pfl.federation import Federation, RoundCompleted, RoundSchedule, SignedGroupAbort
from p2pfl.federation.messages import ResultBody, digest_of
from p2pfl.wire import PeerId

from ._build import proof_id, strategy_hash
from ._messages import EquivocationProof, Record
from ._params import LedgerParams
from ._reputation import Standing

__all__ = ["LedgerMemo", "Verified", "frozen", "memo"]

T = TypeVar("T")


_MAX_ENTRIES: Final = 64
_MAX_DIGESTS: Final = 4096
_MAX_WEIGHTS: Final = 8


def frozen(obj: object, _depth: int = 0) -> bool:
    """True when ``obj`` cannot change: frozen dataclasses, tuples, scalars, bytes,
    peer ids and numpy arrays that are not writeable (the codec's arrays are read-only
    views of immutable ``bytes``).  Anything else -- a writeable array, a list, a dict,
    an unknown object -- is not."""
    if _depth > 16:
        return False
    if obj is None or isinstance(obj, bool | int | float | str | bytes | PeerId):
        return True
    if isinstance(obj, np.ndarray):
        return not obj.flags.writeable
    if isinstance(obj, tuple):
        return all(frozen(x, _depth + 1) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        params = getattr(type(obj), "__dataclass_params__", None)
        if params is None or not params.frozen:
            return False
        return all(frozen(getattr(obj, f.name), _depth + 1) for f in dataclasses.fields(obj))
    return False


@dataclasses.dataclass(frozen=True, eq=False)
class Verified:
    """What verifying and applying one record gave (see :meth:`LedgerMemo.verified`)."""

    record: Record  # held: its identity is part of the key
    hash: bytes
    signatures: int
    schedule: RoundSchedule
    standing: Standing  # after the record


class LedgerMemo:
    """The process-wide memo of built and verified records (see the module docstring)."""

    def __init__(self, capacity: int = _MAX_ENTRIES) -> None:
        self._built: BoundedLru[bytes, Record] = BoundedLru(capacity)
        self._verified: BoundedLru[tuple[bytes, LedgerParams, bytes, int], Verified] = BoundedLru(capacity)
        self._digests: IdentityMemo[ResultBody, bytes] = IdentityMemo(_MAX_DIGESTS)
        self._hashes: IdentityMemo[Record, bytes] = IdentityMemo(capacity)
        self._weights: IdentityMemo[Standing, dict[PeerId, float]] = IdentityMemo(_MAX_WEIGHTS)
        self._initial: BoundedLru[tuple[bytes, LedgerParams], Standing] = BoundedLru(_MAX_WEIGHTS)
        self._after: BoundedLru[tuple[bytes, LedgerParams, bytes], Standing] = BoundedLru(capacity)
        self.hits = self.misses = 0

    def clear(self) -> None:
        for lru in (self._built, self._verified, self._digests, self._hashes, self._weights,
                    self._initial, self._after):
            lru.clear()
        self.hits = self.misses = 0

    def _remembered(self, lru: BoundedLru[Any, T], key: Any, compute: Callable[[], T], *,
                    keep: Callable[[T], bool],
                    holds: Callable[[T], bool] = lambda v: True) -> T:
        """``lru[key]`` when present and ``holds``, else ``compute()`` (remembered when
        ``keep``); counts hits and misses."""
        v = lru.get(key)
        if v is not None and holds(v):
            self.hits += 1
            return v
        self.misses += 1
        v = compute()
        if keep(v):
            lru.put(key, v)
        return v

    # -- digests of result bodies ----------------------------------------------------

    def body_digest(self, body: ResultBody) -> bytes:
        """``digest_of(body)``, computed once per immutable body object."""
        d = self._digests.get(body)
        if d is None:
            d = digest_of(body)
            if frozen(body):
                self._digests.put(body, d)
        return d

    def record_hash(self, record: Record) -> bytes:
        """``record.hash``, computed once per immutable record object."""
        h = self._hashes.get(record)
        if h is None:
            h = record.hash
            if frozen(record):
                self._hashes.put(record, h)
        return h

    # -- building ----------------------------------------------------------------------

    def build_key(self, completed: RoundCompleted, schedule: RoundSchedule, prev: bytes,
                  aborts: Iterable[SignedGroupAbort], evidence: Iterable[EquivocationProof],
                  params: LedgerParams) -> bytes:
        """A fingerprint of every input of ``build_record`` (and of the ledger
        parameters of the caller), see the module docstring."""
        h = hashlib.blake2b(digest_size=32, person=b"p2pfl/ledgermemo")

        def part(b: bytes) -> None:
            h.update(struct.pack("<Q", len(b)))
            h.update(b)

        rec = completed.record
        part(repr(params).encode())
        part(completed.base.federation_id)
        part(struct.pack("<Q", rec.round))
        for b in (rec.beacon, rec.schedule, rec.base_state, rec.model_hash, prev,
                  strategy_hash(completed.strategy_state), schedule.digest):
            part(b)
        part(struct.pack(f"<{len(schedule.groups)}Q", *(g.index for g in schedule.groups)))
        part(b"".join(p.raw for p in schedule.cohort))
        part(struct.pack("<Q", len(completed.results)))
        for m in completed.results:
            part(self.body_digest(m.body))
            part(b"".join(e.public_key + e.signature for e in m.endorsements))
        ab = list(aborts)
        part(struct.pack("<Q", len(ab)))
        for a in ab:
            part(digest_of(a.body))
            part(a.endorsement.public_key + a.endorsement.signature)
        ev = list(evidence)
        part(struct.pack("<Q", len(ev)))
        for p in ev:
            part(proof_id(p))
        return h.digest()

    def built(self, key: bytes, build: Callable[[], Record]) -> Record:
        """The record built for ``key`` (``build()`` on a miss; kept when frozen)."""
        return self._remembered(self._built, key, build, keep=frozen)

    # -- verifying -----------------------------------------------------------------------

    def verified(self, federation_id: bytes, params: LedgerParams, head: bytes, record: Record,
                 verify: Callable[[], Verified]) -> Verified:
        """The verification of ``record`` on top of the chain with head ``head``:
        ``verify()`` on a miss (what it raises propagates and nothing is kept)."""
        return self._remembered(self._verified, (federation_id, params, head, id(record)),
                                verify, keep=lambda v: frozen(record),
                                holds=lambda v: v.record is record)

    # -- standings -----------------------------------------------------------------------

    def initial_standing(self, federation: Federation, params: LedgerParams) -> Standing:
        """``Standing.initial(federation, params)``, one object per (federation, params)
        -- so that the weights of every empty ledger are computed once, too."""
        key = (federation.id, params)
        st = self._initial.get(key)
        if st is None or st.federation.id != federation.id:
            st = Standing.initial(federation, params)
            self._initial.put(key, st)
        return st

    def standing_after(self, federation_id: bytes, params: LedgerParams, head: bytes,
                       apply: Callable[[], Standing]) -> Standing:
        """The standing of the chain whose head is ``head``: a pure function of
        (federation, parameters, every body of the chain), and the head commits to
        every body; ``apply()`` on a miss."""
        key = (federation_id, params, head)
        st = self._after.get(key)
        if st is None:
            st = apply()
            self._after.put(key, st)
        return st

    # -- weights -------------------------------------------------------------------------

    def weights(self, standing: Standing) -> dict[PeerId, float]:
        """The table ``peer -> standing.weight(peer)`` of ``standing`` (an immutable
        object), shared by every ledger holding it; filled by the callers as they
        look peers up (:meth:`Ledger.weight`)."""
        table = self._weights.get(standing)
        if table is None:
            table = {}
            self._weights.put(standing, table)
        return table

    def statistics(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "built": len(self._built),
                "verified": len(self._verified), "digests": len(self._digests)}


memo = LedgerMemo()
"""The process-wide :class:`LedgerMemo` every :class:`~p2pfl.ledger.Ledger` uses."""
