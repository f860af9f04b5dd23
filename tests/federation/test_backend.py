"""Another backend slots in without touching round.py: a toy that quantizes into
Z_2^32 (mpc.quant), sends ring vectors to the primary only, sums with wrapping uint32
adds and dequantizes, the data path of the secure backend without the masks."""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np

from mpc.quant import QuantParams, dequantize_sum, quantize
from p2pfl.errors import RemoteProtocolError
from p2pfl.federation import (
    AggregationContext,
    AggregationEvent,
    Contribution,
    GroupAborted,
    GroupSumReady,
)
from p2pfl.wire import ArraySpec, PeerId, Range, decode_as, encode, message

from .harness import Net, make_federation, oracle_fedavg


@message(0x05F0)  # test-only tag inside the federation range
class RingInput:
    q: Annotated[np.ndarray, ArraySpec(dtypes=("u4",), ndim=1)]
    weight: Annotated[float, Range(0.0, 1.0)]
    samples: Annotated[int, Range(0, 2**53)]


class RingAggregation:
    def __init__(self, ctx: AggregationContext) -> None:
        self.ctx = ctx
        self.primary = ctx.group.aggregators[0]
        self.params = QuantParams(clip=ctx.federation.secagg.quant_range,
                                  bits=ctx.federation.secagg.quant_bits,
                                  max_summands=len(ctx.group))
        self.inputs: dict[PeerId, RingInput] = {}
        self.out: list[tuple[PeerId, bytes]] = []
        self.events: list[AggregationEvent] = []
        self.closed = ctx.me != self.primary

    def submit(self, c: Contribution, now: float) -> None:
        q = quantize(c.update, self.params, self.ctx.rng, weight=c.weight)
        msg = RingInput(q, c.weight, c.num_samples)
        if self.ctx.me == self.primary:
            self._add(self.ctx.me, msg)
        else:
            self.out.append((self.primary, encode(msg)))

    def receive(self, sender: PeerId, payload: bytes, now: float) -> None:
        if self.ctx.me != self.primary or sender in self.inputs:
            raise RemoteProtocolError("unexpected ring input", peer=sender)
        msg = decode_as(payload, RingInput)
        if msg.q.shape != (self.ctx.dim,):
            raise RemoteProtocolError("wrong length", peer=sender)
        self._add(sender, msg)

    def _add(self, who: PeerId, msg: RingInput) -> None:
        if not self.closed:
            self.inputs[who] = msg
            if len(self.inputs) == len(self.ctx.group):
                self._close()

    def _close(self) -> None:
        self.closed = True
        included = tuple(p for p in self.ctx.group.members if p in self.inputs)
        if len(included) < self.ctx.threshold:
            self.events.append(GroupAborted("too few"))
            return
        acc = np.zeros(self.ctx.dim, dtype=np.uint32)
        for p in included:
            np.add(acc, self.inputs[p].q, out=acc)  # wraps mod 2**32
        total = dequantize_sum(acc, self.params)
        weight = math.fsum(self.inputs[p].weight for p in included)
        samples = sum(self.inputs[p].samples for p in included)
        self.events.append(GroupSumReady(total, included, weight, samples))

    def handle_timer(self, now: float) -> None:
        if not self.closed and now >= self.ctx.input_deadline:
            self._close()

    def next_deadline(self) -> float | None:
        return None if self.closed else self.ctx.input_deadline

    def messages_to_send(self) -> list[tuple[PeerId, bytes]]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> AggregationEvent | None:
        return self.events.pop(0) if self.events else None

    def check_result(self, result: GroupSumReady) -> str | None:
        return None

    def send_failed(self, recipient: PeerId, now: float) -> None:
        pass


def test_a_ring_backend_runs_the_same_rounds() -> None:
    fed = make_federation(**{"cohort.group_size": 4, "cohort.min_group_size": 2,
                             "update.clip_norm": 4.0, "secagg.quant_range": 4.0})
    net = Net(fed, 9, aggregation=RingAggregation)
    everyone = {p: (net.targets[p], net.samples[p]) for p in net.peers}
    for _ in range(3):
        before = net.states[net.peers[0]]
        out = net.run_round()
        assert not out.failed and not out.rejected and len(out.hashes()) == 1
        assert len(out.completed) == 9
        expect = oracle_fedavg(fed, before, everyone)
        # quantization error: about 1 step (clip / level) per summand
        np.testing.assert_allclose(net.states[net.peers[0]].model, expect, atol=1e-6)
