"""Wire messages of the overlay (tags 0x0300-0x03FF).

Every message is a frozen dataclass registered with the one codec
(:mod:`p2pfl.wire`), so the codec already checks types, ranges and lengths
before protocol code sees anything.  What the codec cannot know (a dialable
address looks like one, a topic is printable) is checked by
:func:`valid_address` / :func:`valid_topic` in the protocol objects.

Ranges::

    0x0300-0x030F  membership (HyParView)
    0x0310-0x031F  failure detection (SWIM)
    0x0320-0x032F  broadcast (Plumtree) and the signed publication body
    0x0330-0x033F  direct messages
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from p2pfl.identity import Signed
from p2pfl.wire import MaxLen, PeerId, Range, message

__all__ = [
    "MAX_ADDRESS",
    "MAX_IDS",
    "MAX_TOPIC",
    "MSG_ID_BYTES",
    "Ack",
    "Direct",
    "DirectBody",
    "Disconnect",
    "ForwardJoin",
    "Gossip",
    "Graft",
    "IHave",
    "Join",
    "JoinReply",
    "Neighbor",
    "NeighborReply",
    "PeerInfo",
    "Ping",
    "PingReq",
    "PingReqAck",
    "Priority",
    "Prune",
    "Publication",
    "Relay",
    "Relayed",
    "Shuffle",
    "ShuffleReply",
    "Status",
    "Update",
    "valid_address",
    "valid_topic",
]

MAX_ADDRESS = 256
MAX_TOPIC = 128
MSG_ID_BYTES = 20
MAX_IDS = 512
_MAX_ENTRIES = 32
_MAX_UPDATES = 16

Address = Annotated[str | None, MaxLen(MAX_ADDRESS)]
MsgId = Annotated[bytes, MaxLen(MSG_ID_BYTES, exact=True)]
Seq = Annotated[int, Range(0, 2**63 - 1)]
Ttl = Annotated[int, Range(0, 32)]


def valid_address(addr: str | None) -> bool:
    """A dialable address hint: printable ASCII, no spaces, ``scheme:rest``."""
    if addr is None:
        return True
    return (
        0 < len(addr) <= MAX_ADDRESS
        and addr.isascii()
        and addr.isprintable()
        and " " not in addr
        and ":" in addr
    )


def valid_topic(topic: str) -> bool:
    """A topic name: 1-128 printable characters."""
    return 0 < len(topic) <= MAX_TOPIC and topic.isprintable()


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer id and its dialable address (``None``: it only connects out)."""

    peer: PeerId
    addr: Address


class Priority(enum.IntEnum):
    """NEIGHBOR request priority: LOW is refused by a full active view, HIGH evicts."""

    LOW = 0
    HIGH = 1


class Status(enum.IntEnum):
    """SWIM member state carried by :class:`Update`."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


# -- membership (HyParView) ---------------------------------------------------


@message(0x0301)
class Join:
    """Sent by a newcomer to a bootstrap peer over a fresh link."""

    addr: Address


@message(0x0302)
class JoinReply:
    """The contact's sample of peers, so the joiner's passive view is never empty."""

    peers: Annotated[tuple[PeerInfo, ...], MaxLen(_MAX_ENTRIES)]


@message(0x0303)
class ForwardJoin:
    """Random walk announcing a joiner; ends in a HIGH NEIGHBOR to the joiner."""

    joiner: PeerInfo
    ttl: Ttl


@message(0x0304)
class Neighbor:
    """Ask the receiver to make the sender an active neighbour."""

    priority: Priority
    addr: Address


@message(0x0305)
class NeighborReply:
    accepted: bool


@message(0x0306)
class Disconnect:
    """The sender dropped the receiver from its active view (``alive``: not leaving)."""

    alive: bool


@message(0x0307)
class Shuffle:
    """Random walk carrying a sample of the origin's views."""

    origin: PeerInfo
    ttl: Ttl
    entries: Annotated[tuple[PeerInfo, ...], MaxLen(_MAX_ENTRIES)]


@message(0x0308)
class ShuffleReply:
    entries: Annotated[tuple[PeerInfo, ...], MaxLen(_MAX_ENTRIES)]


# -- failure detection (SWIM) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """A piggybacked membership hint: ``peer`` is in ``status`` at ``incarnation``."""

    peer: PeerId
    status: Status
    incarnation: Seq
    addr: Address


Updates = Annotated[tuple[Update, ...], MaxLen(_MAX_UPDATES)]


@message(0x0310)
class Ping:
    """``neighbor``: the sender has the receiver in its active view (a direct probe)."""

    seq: Seq
    updates: Updates
    neighbor: bool = False


@message(0x0311)
class Ack:
    seq: Seq
    updates: Updates


@message(0x0312)
class PingReq:
    """Ask the receiver to ping ``target`` for us (indirect probe)."""

    seq: Seq
    target: PeerInfo
    updates: Updates


@message(0x0313)
class PingReqAck:
    """Outcome of an indirect probe (``ok=False`` is Lifeguard's nack)."""

    seq: Seq
    target: PeerId
    ok: bool
    updates: Updates


# -- broadcast (Plumtree) ----------------------------------------------------------


@message(0x0320)
class Gossip:
    """Eager push of a signed :class:`Publication`; ``hops`` is unsigned metadata."""

    envelope: Signed
    hops: Annotated[int, Range(0, 255)]


@message(0x0321)
class IHave:
    """Lazy push: ids of messages the sender holds and will serve on GRAFT."""

    ids: Annotated[tuple[MsgId, ...], MaxLen(MAX_IDS)]


@message(0x0322)
class Graft:
    """Ask for the messages ``ids`` and make the link an eager (tree) link."""

    ids: Annotated[tuple[MsgId, ...], MaxLen(MAX_IDS)]


@message(0x0323)
class Prune:
    """Demote the link to lazy: the receiver sent us a duplicate."""


@message(0x0324)
class Publication:
    """The signed body of a broadcast; its signer is the origin.

    ``addr`` and ``relays`` tell every receiver how to reach the origin directly
    (``relays`` only when the origin has no address of its own).
    """

    topic: Annotated[str, MaxLen(MAX_TOPIC)]
    ts: float
    seqno: Seq
    addr: Address
    relays: Annotated[tuple[PeerInfo, ...], MaxLen(4)]
    payload: bytes


# -- direct messages ----------------------------------------------------------


@message(0x0330)
class Direct:
    """Point-to-point payload over a link to the addressee (the link authenticates)."""

    payload: bytes


@message(0x0331)
class Relay:
    """Ask the receiver to pass a signed :class:`DirectBody` on to ``to``."""

    to: PeerId
    envelope: Signed


@message(0x0332)
class Relayed:
    """A relayed signed :class:`DirectBody`, verified by relay and addressee."""

    envelope: Signed


@message(0x0333)
class DirectBody:
    to: PeerId
    ts: float
    nonce: Seq
    payload: bytes
