"""The primitives composed as SecAgg uses them: masked sum == plain quantized sum."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import ka, ring, shamir
from mpc.graph import neighbours
from mpc.prg import MaskExpander, expand
from mpc.quant import QuantParams, decode_sum, quantize
from mpc.rand import SeededRng


@settings(max_examples=25)
@given(st.integers(3, 12), st.integers(1, 5), st.integers(1, 3000), st.data())
def test_masked_sum_with_dropouts_equals_plain_sum(
    n: int, k: int, d: int, data: st.DataObject
) -> None:
    rng = SeededRng(bytes([n, k]) + d.to_bytes(2, "big"))
    ctx = b"round-1/group-0"
    t = max(1, (n + 1) // 2)
    graph = neighbours(n, k, b"beacon")
    keys = [ka.KeyPair.generate(rng) for _ in range(n)]
    params = QuantParams(clip=1.0, max_summands=n)
    gen = np.random.default_rng(n * 1000 + d)
    xs = [gen.uniform(-1.5, 1.5, d).astype(np.float32) for _ in range(n)]
    dropped = set(data.draw(st.lists(st.integers(0, n - 1), max_size=n - t, unique=True)))
    me = MaskExpander()
    # members: y_u = Q(x_u) + PRG(b_u) + sum_v ±PRG(agree(s_u, s_v)) over graph neighbours
    b_seeds = [rng.random_bytes(32) for _ in range(n)]
    holders = [list(range(n))] * n  # seeds shared with the whole group (small groups)
    th = [t] * n
    b_shares = [
        shamir.share_bytes(b_seeds[u], th[u], [h + 1 for h in holders[u]], rng) for u in range(n)
    ]
    sk_shares = [
        shamir.share_bytes(keys[u].secret, th[u], [h + 1 for h in holders[u]], rng)
        for u in range(n)
    ]
    plain = ring.zeros(d)
    total = ring.zeros(d)
    for u in range(n):
        q = quantize(xs[u], params, rng)
        if u in dropped:
            continue  # drops before sending its masked input
        ring.add_into(plain, q)
        y = q.copy()
        plus = [b_seeds[u]]
        minus = []
        for v in graph[u]:
            seed = ka.agree(keys[u].secret, keys[v].public, ctx)
            (plus if u < v else minus).append(seed)
        me.apply(y, plus, minus)
        ring.add_into(total, y)
    # aggregator: remove b_u of survivors, re-create the dropped members' pair masks
    for u in range(n):
        pts_b = [(h + 1, b_shares[u][i]) for i, h in enumerate(holders[u]) if h not in dropped]
        pts_sk = [(h + 1, sk_shares[u][i]) for i, h in enumerate(holders[u]) if h not in dropped]
        if u not in dropped:
            ring.sub_into(total, expand(shamir.reconstruct_bytes(pts_b, th[u]), d))
        elif any(v not in dropped for v in graph[u]):
            sk = shamir.reconstruct_bytes(pts_sk, th[u])
            for v in graph[u]:
                if v in dropped:
                    continue
                seed = ka.agree(sk, keys[v].public, ctx)
                # survivor v applied +seed if v < u, else -seed: undo it
                me.apply(total, minus=[seed]) if v < u else me.apply(total, plus=[seed])
    assert np.array_equal(total, plain)
    assert int(np.abs(decode_sum(total)).max()) <= n * params.level
