"""Links and transports: the contract every transport implements.

A :class:`Link` is an authenticated, reliable, ordered *message* channel to one
remote peer (``trio.abc.Channel[bytes]``-like).  Messages are opaque bytes up to
``max_message`` long; a transport may chunk them on the wire, but ``receive``
always returns exactly one whole message as it was sent.

Errors follow trio:

* ``send``/``receive`` on a link *we* closed → :class:`trio.ClosedResourceError`;
* the remote closed cleanly → ``receive`` raises :class:`trio.EndOfChannel`,
  ``send`` raises :class:`trio.BrokenResourceError`;
* the remote crashed, the network broke, or the remote sent invalid frames →
  :class:`trio.BrokenResourceError` (chained from a
  :class:`~p2pfl.errors.RemoteProtocolError` when it was the remote's fault);
* ``send`` of a message larger than ``max_message`` → :class:`ValueError`
  (a local bug, nothing is sent).

A :class:`Transport` opens links (``connect``) and accepts them (``serve``).
Both ends of every link know each other's :class:`~p2pfl.wire.PeerId`; links are
bound to a *network id* (the federation id) and a link between peers of
different networks is refused during the handshake.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from p2pfl.wire import PeerId

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "Link",
    "LinkHandler",
    "LinkStatistics",
    "Transport",
]

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class LinkStatistics:
    """Counters of one link (payload bytes, not counting framing overhead)."""

    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int


class Link(trio.abc.Channel[bytes]):
    """An authenticated message channel to one remote peer."""

    @property
    @abc.abstractmethod
    def local_peer(self) -> PeerId:
        """Our own peer id."""

    @property
    @abc.abstractmethod
    def remote_peer(self) -> PeerId:
        """The authenticated peer id of the other end."""

    @property
    @abc.abstractmethod
    def max_message(self) -> int:
        """The largest message ``send`` accepts."""

    @abc.abstractmethod
    async def send(self, value: bytes) -> None:
        """Send one message; waits while the link is back-pressured."""

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Receive the next whole message."""

    @abc.abstractmethod
    def statistics(self) -> LinkStatistics:
        """Counters for this link."""


class _LinkCounters:
    """The mutable payload counters behind :meth:`Link.statistics`."""

    __slots__ = ("bytes_received", "bytes_sent", "messages_received", "messages_sent")

    def __init__(self) -> None:
        self.messages_sent = self.messages_received = 0
        self.bytes_sent = self.bytes_received = 0

    def sent(self, nbytes: int) -> None:
        self.messages_sent += 1
        self.bytes_sent += nbytes

    def received(self, nbytes: int) -> None:
        self.messages_received += 1
        self.bytes_received += nbytes

    def freeze(self) -> LinkStatistics:
        return LinkStatistics(
            self.messages_sent, self.messages_received, self.bytes_sent, self.bytes_received
        )


class _PeerLink(Link):
    """What every built-in link shares: both peer ids and the payload counters.

    Subclasses count each whole message with ``self._stats.sent(n)`` /
    ``self._stats.received(n)`` and supply ``max_message``, ``send``,
    ``receive`` and ``aclose``.
    """

    def __init__(self, local_peer: PeerId, remote_peer: PeerId) -> None:
        self._local = local_peer
        self._remote = remote_peer
        self._stats = _LinkCounters()

    @property
    def local_peer(self) -> PeerId:
        return self._local

    @property
    def remote_peer(self) -> PeerId:
        return self._remote

    def statistics(self) -> LinkStatistics:
        return self._stats.freeze()


LinkHandler = Callable[[Link], Awaitable[None]]


class Transport(abc.ABC):
    """Opens and accepts :class:`Link`\\ s for one local identity."""

    @property
    @abc.abstractmethod
    def local_peer(self) -> PeerId:
        """The peer id links from this transport authenticate as."""

    @abc.abstractmethod
    async def connect(self, address: str) -> Link:
        """Open a link to the peer listening at ``address``.

        Raises :class:`OSError` (or a subclass) when nobody answers and
        :class:`~p2pfl.errors.RemoteProtocolError` when the handshake fails.
        The caller owns the returned link and must ``aclose`` it.
        """

    @abc.abstractmethod
    async def serve(
        self,
        handler: LinkHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept links forever, running ``handler(link)`` in a new task for each.

        Use as ``address = await nursery.start(transport.serve, handler)``; the
        started value is the address others ``connect`` to.  A failed inbound
        handshake is logged and never stops the server.  The handler owns the
        link; it is closed when the handler returns.
        """
