"""Secure aggregation (SecAgg / SecAgg+) as sans-I/O state machines.

Theory of operation
-------------------
One group of ``n`` members (indices ``0..n-1``) sums quantized uint32 vectors so
that the aggregators learn only the sum of the *included* members (survivors that
were not excluded), following Bonawitz et al. (CCS 2017) with the sparse neighbour
graph of SecAgg+ (Bell et al., CCS 2020) and the signed consistency round of the
active-adversary variant:

====  ==============  =========================================================
 0    keys            members send signed fresh X25519 (c_pk, s_pk) -> U1
 1    share keys      b_u and s_sk_u Shamir-shared to the holders, encrypted -> U2
 2    masked input    y_u = x_u + PRG(b_u) + sum +-PRG(KA(s_sk_u, s_pk_v)) -> U3
 3    sketch (opt.)   z_u shared to validators mod each prime; scores opened
                      exactly (CRT); hook(scores, sketch seed) -> E
 4    consistency     aggregators announce signed (U3, E); members compare, sign
 5    unmask          b-shares for U3 \\ E, s_sk-shares for (U2 \\ U3) | E, never both
 6    output          reconstruct (checking extras), remove masks, output the sum
====  ==============  =========================================================

Drivers (the federation layer, :mod:`mpc.secagg.harness` in tests) create one
:class:`Member` per member and one :class:`Aggregator` per aggregator party, then
loop: deliver each message with ``receive(sender, msg, now)`` to the machine its
``TO_AGGREGATOR`` flag names, call ``handle_timer(now)`` when ``next_deadline()``
passes, send what ``messages_to_send()`` returns and act on ``next_event()``.
Signatures are injected (``sign``, ``verify``) so this package needs no identity
layer; randomness is an :class:`mpc.rand.Rng`; time is an argument.
"""

from ._aggregator import Aggregator, AggState, ExclusionHook
from ._config import GroupConfig, Phase, Plan, SketchConfig, Stage, Timeouts
from ._crypto import sketch_seed
from ._events import (
    Aborted,
    Completed,
    Event,
    Evidence,
    EvidenceFound,
    EvidenceKind,
    OutputReady,
    ProtocolError,
    SketchScore,
    StageReached,
)
from ._machine import LocalProtocolError, Sign, Verify
from ._member import Member, MemberState, ReferenceFn, SketchFn
from ._messages import (
    AbortNotice,
    Announce,
    Complaint,
    ConsistencySig,
    Decision,
    ForwardedInput,
    InputRequest,
    KeyBundle,
    MaskedInput,
    Message,
    MessageError,
    ScoreShares,
    ShareKeys,
    ShareRelay,
    SigBundle,
    SignedKeys,
    SketchRelay,
    SketchRequest,
    SketchShares,
    UnmaskShares,
)
from ._reveal import RevealLedger

__all__ = [
    "AbortNotice",
    "Aborted",
    "AggState",
    "Aggregator",
    "Announce",
    "Complaint",
    "Completed",
    "ConsistencySig",
    "Decision",
    "Event",
    "Evidence",
    "EvidenceFound",
    "EvidenceKind",
    "ExclusionHook",
    "ForwardedInput",
    "GroupConfig",
    "InputRequest",
    "KeyBundle",
    "LocalProtocolError",
    "MaskedInput",
    "Member",
    "MemberState",
    "Message",
    "MessageError",
    "OutputReady",
    "Phase",
    "Plan",
    "ProtocolError",
    "ReferenceFn",
    "RevealLedger",
    "ScoreShares",
    "ShareKeys",
    "ShareRelay",
    "SigBundle",
    "Sign",
    "SignedKeys",
    "SketchConfig",
    "SketchFn",
    "SketchRelay",
    "SketchRequest",
    "SketchScore",
    "SketchShares",
    "Stage",
    "StageReached",
    "Timeouts",
    "UnmaskShares",
    "Verify",
    "sketch_seed",
]
