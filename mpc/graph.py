"""The SecAgg+ neighbour graph: a seeded, symmetric, (near) k-regular graph.

Theory of operation
-------------------
SecAgg+ (Bell et al., CCS 2020) replaces the complete graph of pairwise masks by a
sparse random k-regular graph: each member masks with, and secret-shares to, only its
``k`` neighbours, so work and traffic per member are ``O(k)`` instead of ``O(n)``.
Every party must derive the same graph, so it is a deterministic function of a public
seed (from the round beacon), and no party may choose its own position in it.

Construction: a Harary graph ``H_{k,n}`` on positions ``0..n-1`` (a circulant where
position ``i`` is joined to ``i ± 1, …, i ± ⌊k/2⌋`` mod ``n``, plus, for odd ``k``, a
"diameter" edge), then members are placed on positions by a uniformly random
permutation drawn with :class:`mpc.rand.SeededRng` from the seed (Fisher–Yates with
exact rejection sampling).  Members' indices are ``0..n-1``.

* ``k >= n - 1``: the complete graph (every other member is a neighbour).
* odd ``k`` and even ``n``: ``i`` is also joined to ``i + n/2``; exactly k-regular.
* odd ``k`` and odd ``n``: no k-regular graph exists (``n k`` would be odd).  Positions
  ``i = 0..(n-1)/2`` are joined to ``i + (n-1)/2``: every member has degree ``k``
  except one, which has degree ``k + 1``.  (Rounding up keeps the privacy argument
  intact: more neighbours never hurt it.)
* ``k = 0``: no edges.

A member is never its own neighbour; the sets returned are symmetric
(``v in result[u]`` iff ``u in result[v]``).
"""

from __future__ import annotations

import hashlib

from mpc.rand import SeededRng, random_below

__all__ = ["neighbours"]


def _permutation(n: int, seed: bytes) -> list[int]:
    key = hashlib.blake2b(seed, digest_size=32, person=b"mpc.graph").digest()
    rng = SeededRng(key)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = random_below(rng, i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def neighbours(n: int, k: int, seed: bytes) -> list[frozenset[int]]:
    """Return ``result`` with ``result[u]`` the neighbours of member ``u`` (``0 <= u < n``).

    Deterministic in ``(n, k, seed)``; see the module docstring for the degrees.
    Raises ``ValueError`` if ``n < 1`` or ``k < 0``, ``TypeError`` if ``seed`` is not
    bytes.
    """
    if n < 1:
        raise ValueError(f"need at least one member, got n={n}")
    if k < 0:
        raise ValueError(f"degree must be >= 0, got k={k}")
    if not isinstance(seed, bytes | bytearray):
        raise TypeError("seed must be bytes")
    if k >= n - 1:
        everyone = frozenset(range(n))
        return [everyone - {u} for u in range(n)]
    adj: list[set[int]] = [set() for _ in range(n)]

    def join(i: int, j: int) -> None:
        adj[i % n].add(j % n)
        adj[j % n].add(i % n)

    for i in range(n):
        for off in range(1, k // 2 + 1):
            join(i, i + off)
    if k % 2:
        if n % 2 == 0:
            for i in range(n // 2):
                join(i, i + n // 2)
        else:
            half = (n - 1) // 2
            for i in range(half + 1):
                join(i, i + half)
    perm = _permutation(n, bytes(seed))
    out: list[frozenset[int]] = [frozenset()] * n
    for pos in range(n):
        out[perm[pos]] = frozenset(perm[q] for q in adj[pos])
    return out
