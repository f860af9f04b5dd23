"""The conformance suite every :class:`~p2pfl.transport.Link` kind must pass.

Like trio's ``check_two_way_stream``, :func:`check_link` takes a *factory* and
exercises the contract of :mod:`p2pfl.transport._base` on fresh pairs of
connected links: ordering, message sizes, ``max_message``, peer ids, close from
either side, crash of one side, back-pressure, atomic concurrent sends and
statistics.  The memory, TCP and WebRTC transports all run it::

    from p2pfl.transport.testing import LinkPair, check_link, open_link_pair

    async def tcp_pair(nursery: trio.Nursery) -> LinkPair:
        client, server = make_two_tcp_transports()
        a, b = await open_link_pair(nursery, client, server)
        return LinkPair(a, b, crash_a=lambda: abort_socket_of(a))

    async def test_tcp_conformance() -> None:
        await check_link(tcp_pair)

Factory interface
-----------------
``factory(nursery) -> LinkPair`` is awaited once per check, so every check
starts from a fresh, connected, idle pair.  The factory may start background
tasks (servers, reader tasks) in ``nursery``; the suite cancels that nursery
when the check ends, after closing both links.  :class:`LinkPair` holds:

* ``a`` and ``b``: the two ends of one link (``a.remote_peer == b.local_peer``);
* ``crash_a``: an async callable that kills ``a``'s side abruptly, as a
  process crash or a cut cable would (no clean close); ``b`` must then see
  :class:`trio.BrokenResourceError`, never :class:`trio.EndOfChannel`.  After
  the crash the suite only calls ``a.aclose()``, which must not raise.  ``None``
  skips the crash checks (say so in your tests).

Clocks and hangs
----------------
The suite never sleeps.  It waits for "everything is blocked" with
:func:`trio.testing.wait_all_tasks_blocked`, so it runs the same under
pytest-trio's ``autojump_clock`` (memory transport with latency) and under the
real clock (TCP over loopback).  Each check runs under ``trio.fail_after
(timeout)``: a deadlock is reported as :class:`trio.TooSlowError` naming the
check, instead of hanging the test run.  With a real clock the timeout is wall
time; with ``autojump_clock`` it costs nothing.

Failures raise :class:`AssertionError` with a message naming the check; nothing
here depends on pytest.  Run one check alone with ``check_link(factory,
only=["ordering"])``; :data:`LINK_CHECKS` lists the names, for
``pytest.mark.parametrize``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio
import trio.testing

from ._base import Link, Transport

__all__ = [
    "LINK_CHECKS",
    "LinkFactory",
    "LinkPair",
    "check_link",
    "open_link_pair",
]


@dataclass
class LinkPair:
    """Two connected ends of one link, and a way to crash ``a``'s side."""

    a: Link
    b: Link
    crash_a: Callable[[], Awaitable[None]] | None = None
    #: Free-form extras a factory wants to keep alive (transports, networks).
    extras: dict[str, object] = field(default_factory=dict)


LinkFactory = Callable[[trio.Nursery], Awaitable[LinkPair]]


@dataclass(frozen=True)
class _Options:
    rng_seed: int
    backpressure_limit: int
    cushion: float
    ordering_messages: int


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


async def _expect_raises(
    exc_type: type[BaseException], what: str, fn: Callable[[], Awaitable[object]]
) -> None:
    try:
        result = await fn()
    except exc_type:
        return
    except BaseException as e:
        if isinstance(e, trio.Cancelled):
            raise
        raise AssertionError(f"{what}: expected {exc_type.__name__}, got {e!r}") from e
    raise AssertionError(f"{what}: expected {exc_type.__name__}, got {result!r}")


def _payload(tag: int, index: int, size: int) -> bytes:
    """A message of ``size`` bytes that names (tag, index) and is cheap to check."""
    if size < 9:
        return bytes([(tag * 31 + index + k) % 256 for k in range(size)])
    head = struct.pack(">BQ", tag, index)
    return head + bytes([(tag + index) % 256]) * (size - len(head))


async def _wait_blocked(options: _Options) -> None:
    await trio.testing.wait_all_tasks_blocked(cushion=options.cushion)


# -- individual checks ---------------------------------------------------------


async def _check_peer_ids(pair: LinkPair, options: _Options) -> None:
    a, b = pair.a, pair.b
    _expect(a.remote_peer == b.local_peer, "peer ids: a.remote_peer != b.local_peer")
    _expect(b.remote_peer == a.local_peer, "peer ids: b.remote_peer != a.local_peer")
    _expect(a.local_peer != b.local_peer, "peer ids: both ends claim the same peer id")
    _expect(a.max_message > 0 and b.max_message > 0, "max_message must be positive")


async def _check_ordering(pair: LinkPair, options: _Options) -> None:
    """Many messages both ways at once, each direction in order."""
    rng = random.Random(options.rng_seed)
    n = options.ordering_messages
    sizes = {
        0: [rng.choice((0, 1, 2, 9, 100, 1000, 5000)) for _ in range(n)],
        1: [rng.choice((0, 1, 2, 9, 100, 1000, 5000)) for _ in range(n)],
    }

    async def sender(link: Link, tag: int) -> None:
        for i, size in enumerate(sizes[tag]):
            await link.send(_payload(tag, i, size))

    async def receiver(link: Link, tag: int) -> None:
        for i, size in enumerate(sizes[tag]):
            got = await link.receive()
            _expect(
                got == _payload(tag, i, size),
                f"ordering: message {i} of direction {tag} is wrong or out of order "
                f"(len {len(got)}, expected {size})",
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, pair.a, 0)
        nursery.start_soon(receiver, pair.b, 0)
        nursery.start_soon(sender, pair.b, 1)
        nursery.start_soon(receiver, pair.a, 1)


async def _check_sizes(pair: LinkPair, options: _Options) -> None:
    """Sizes 0, 1, 64 KiB and exactly ``max_message`` arrive intact, both ways."""
    rng = random.Random(options.rng_seed + 1)
    for src, dst in ((pair.a, pair.b), (pair.b, pair.a)):
        sizes = sorted({0, 1, min(64 * 1024, src.max_message), src.max_message})
        messages = [rng.randbytes(size) for size in sizes]

        async def send_all(link: Link = src, msgs: list[bytes] = messages) -> None:
            for m in msgs:
                await link.send(m)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            for size, expected in zip(sizes, messages, strict=True):
                got = await dst.receive()
                _expect(got == expected, f"sizes: message of {size} bytes arrived corrupted")


async def _check_oversize(pair: LinkPair, options: _Options) -> None:
    """``send`` of ``max_message + 1`` bytes is a ValueError and sends nothing."""
    a, b = pair.a, pair.b
    await _expect_raises(ValueError, "oversize send", lambda: a.send(b"\x00" * (a.max_message + 1)))
    stats = a.statistics()
    _expect(stats.messages_sent == 0, "oversize: the refused message was counted as sent")
    await a.send(b"after")
    _expect(await b.receive() == b"after", "oversize: link unusable after a refused send")


async def _check_close_a(pair: LinkPair, options: _Options) -> None:
    await _close_one_side(pair.a, pair.b, "close_a")


async def _check_close_b(pair: LinkPair, options: _Options) -> None:
    await _close_one_side(pair.b, pair.a, "close_b")


async def _close_one_side(closer: Link, other: Link, name: str) -> None:
    # Messages sent before a clean close are delivered, then EndOfChannel.
    for i in range(5):
        await closer.send(_payload(7, i, 100))
    await closer.aclose()
    await closer.aclose()  # idempotent
    await _expect_raises(
        trio.ClosedResourceError, f"{name}: send after local close", lambda: closer.send(b"x")
    )
    await _expect_raises(
        trio.ClosedResourceError, f"{name}: receive after local close", closer.receive
    )
    for i in range(5):
        got = await other.receive()
        _expect(got == _payload(7, i, 100), f"{name}: message {i} before the close was lost")
    await _expect_raises(trio.EndOfChannel, f"{name}: remote receive after close", other.receive)
    await _expect_raises(trio.EndOfChannel, f"{name}: EndOfChannel is sticky", other.receive)
    await _expect_raises(
        trio.BrokenResourceError, f"{name}: remote send after close", lambda: other.send(b"x")
    )
    await other.aclose()
    await other.aclose()
    await _expect_raises(
        trio.ClosedResourceError, f"{name}: receive after both closed", other.receive
    )
    await _expect_raises(
        trio.ClosedResourceError, f"{name}: send after both closed", lambda: other.send(b"x")
    )


async def _check_close_wakes(pair: LinkPair, options: _Options) -> None:
    """Closing wakes blocked receivers on both ends, and a back-pressured sender."""
    a, b = pair.a, pair.b
    outcome: dict[str, BaseException | None] = {}

    async def record(key: str, fn: Callable[[], Awaitable[object]]) -> None:
        try:
            await fn()
        except (trio.ClosedResourceError, trio.EndOfChannel, trio.BrokenResourceError) as e:
            outcome[key] = e
        else:
            outcome[key] = None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(record, "local", a.receive)
        nursery.start_soon(record, "remote", b.receive)
        await _wait_blocked(options)
        _expect(not outcome, f"close_wakes: receive returned on an idle link: {outcome}")
        await a.aclose()
    _expect(
        isinstance(outcome["local"], trio.ClosedResourceError),
        f"close_wakes: blocked local receive got {outcome['local']!r}, "
        "expected ClosedResourceError",
    )
    _expect(
        isinstance(outcome["remote"], trio.EndOfChannel),
        f"close_wakes: blocked remote receive got {outcome['remote']!r}, expected EndOfChannel",
    )


async def _fill_until_blocked(sender: Link, options: _Options, name: str, sent: list[int]) -> None:
    """Send 64 KiB messages until ``sender`` blocks; fail past the limit."""
    size = min(64 * 1024, sender.max_message)
    limit_count = options.backpressure_limit // max(size, 1) + 1
    for i in range(limit_count):
        await sender.send(_payload(3, i, size))
        sent[0] += 1
    raise AssertionError(
        f"{name}: {limit_count} messages of {size} bytes "
        f"({limit_count * size} bytes) sent to a receiver that never reads, "
        "without blocking: the link is not back-pressured"
    )


async def _check_close_wakes_sender(pair: LinkPair, options: _Options) -> None:
    """A sender blocked by back-pressure gets ClosedResourceError on local close."""
    a = pair.a
    sent = [0]
    outcome: list[BaseException] = []

    async def fill() -> None:
        try:
            await _fill_until_blocked(a, options, "close_wakes_sender", sent)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as e:
            outcome.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fill)
        await _wait_blocked(options)
        _expect(not outcome, f"close_wakes_sender: sender failed early: {outcome}")
        await a.aclose()
    _expect(
        len(outcome) == 1 and isinstance(outcome[0], trio.ClosedResourceError),
        f"close_wakes_sender: blocked send got {outcome!r}, expected ClosedResourceError",
    )


async def _check_close_wakes_sender_remote(pair: LinkPair, options: _Options) -> None:
    """A sender blocked by back-pressure gets BrokenResourceError on remote close."""
    a, b = pair.a, pair.b
    sent = [0]
    outcome: list[BaseException] = []

    async def fill() -> None:
        try:
            await _fill_until_blocked(a, options, "close_remote_wakes_sender", sent)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as e:
            outcome.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fill)
        await _wait_blocked(options)
        _expect(not outcome, f"close_remote_wakes_sender: sender failed early: {outcome}")
        await b.aclose()
    _expect(
        len(outcome) == 1 and isinstance(outcome[0], trio.BrokenResourceError),
        f"close_remote_wakes_sender: blocked send got {outcome!r}, expected BrokenResourceError",
    )


async def _check_crash(pair: LinkPair, options: _Options) -> None:
    """After ``crash_a``, ``b`` sees BrokenResourceError (never EndOfChannel)."""
    if pair.crash_a is None:
        return
    a, b = pair.a, pair.b
    await a.send(b"before crash")
    _expect(await b.receive() == b"before crash", "crash: link not working before the crash")
    outcome: list[BaseException | bytes] = []

    async def blocked_receive() -> None:
        # Messages sent before the crash may or may not arrive; then Broken.
        for _ in range(100):
            try:
                outcome.append(await b.receive())
            except (trio.BrokenResourceError, trio.EndOfChannel, trio.ClosedResourceError) as e:
                outcome.append(e)
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_receive)
        await _wait_blocked(options)
        await pair.crash_a()
    _expect(
        bool(outcome) and isinstance(outcome[-1], trio.BrokenResourceError),
        f"crash: blocked receive on the surviving side got {outcome[-1:]!r}, "
        "expected BrokenResourceError",
    )
    await _expect_raises(
        trio.BrokenResourceError, "crash: send after the remote crashed", lambda: b.send(b"x")
    )
    await _expect_raises(trio.BrokenResourceError, "crash: Broken is sticky", b.receive)
    await b.aclose()
    await _expect_raises(trio.ClosedResourceError, "crash: receive after local close", b.receive)
    await a.aclose()  # must not raise


async def _check_crash_idle(pair: LinkPair, options: _Options) -> None:
    """A crash with no receive pending is seen by the next receive and send."""
    if pair.crash_a is None:
        return
    await pair.crash_a()
    await _expect_raises(
        trio.BrokenResourceError, "crash_idle: receive after remote crash", pair.b.receive
    )
    await _expect_raises(
        trio.BrokenResourceError, "crash_idle: send after remote crash", lambda: pair.b.send(b"x")
    )
    await pair.a.aclose()


async def _check_backpressure(pair: LinkPair, options: _Options) -> None:
    """A sender to a non-reading receiver blocks, and resumes when it reads."""
    a, b = pair.a, pair.b
    size = min(64 * 1024, a.max_message)
    total = options.backpressure_limit // max(size, 1) + 1
    sent = [0]

    async def sender() -> None:
        for i in range(total):
            await a.send(_payload(5, i, size))
            sent[0] += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await _wait_blocked(options)
        blocked_at = sent[0]
        _expect(
            blocked_at < total,
            f"backpressure: {total} messages ({total * size} bytes) were accepted by a "
            "receiver that never reads: the link is not back-pressured",
        )
        # Blocked means blocked: nothing moves until the receiver reads.
        await _wait_blocked(options)
        _expect(sent[0] == blocked_at, "backpressure: the sender made progress while blocked")
        resumed_after: int | None = None
        for i in range(total):
            got = await b.receive()
            _expect(got == _payload(5, i, size), f"backpressure: message {i} wrong")
            if resumed_after is None and sent[0] > blocked_at:
                resumed_after = i + 1
        _expect(resumed_after is not None, "backpressure: sender never resumed")
    # After the nursery: the sender's last send may complete only after the
    # receiver has already taken the last message (real sockets).
    _expect(sent[0] == total, "backpressure: the sender did not finish")


async def _check_concurrent_send(pair: LinkPair, options: _Options) -> None:
    """Two tasks sending large messages at once never interleave their bytes."""
    a, b = pair.a, pair.b
    size = min(1024 * 1024, a.max_message)
    per_task = 8
    seen: dict[int, int] = {1: 0, 2: 0}

    async def sender(tag: int) -> None:
        for _ in range(per_task):
            await a.send(bytes([tag]) * size)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, 1)
        nursery.start_soon(sender, 2)
        for _ in range(2 * per_task):
            got = await b.receive()
            _expect(
                len(got) == size, f"concurrent_send: message of {len(got)} bytes, expected {size}"
            )
            tag = got[0]
            _expect(
                tag in seen and got.count(tag) == size,
                "concurrent_send: messages from two tasks were interleaved",
            )
            seen[tag] += 1
    _expect(seen == {1: per_task, 2: per_task}, f"concurrent_send: got {seen}")


async def _check_statistics(pair: LinkPair, options: _Options) -> None:
    """Counters count payload messages and bytes on both ends."""
    a, b = pair.a, pair.b
    sizes = [0, 1, 10, 1000, 4096]
    for i, size in enumerate(sizes):
        await a.send(_payload(9, i, size))
    for _ in sizes:
        await b.receive()
    await b.send(b"12345")
    await a.receive()
    sa, sb = a.statistics(), b.statistics()
    expected_a = (len(sizes), 1, sum(sizes), 5)
    expected_b = (1, len(sizes), 5, sum(sizes))
    got_a = (sa.messages_sent, sa.messages_received, sa.bytes_sent, sa.bytes_received)
    got_b = (sb.messages_sent, sb.messages_received, sb.bytes_sent, sb.bytes_received)
    _expect(
        got_a == expected_a,
        f"statistics: a has (sent, received, bytes sent, bytes "
        f"received) = {got_a}, expected {expected_a}",
    )
    _expect(got_b == expected_b, f"statistics: b has {got_b}, expected {expected_b}")


_CHECKS: dict[str, Callable[[LinkPair, _Options], Awaitable[None]]] = {
    "peer_ids": _check_peer_ids,
    "ordering": _check_ordering,
    "sizes": _check_sizes,
    "oversize": _check_oversize,
    "close_a": _check_close_a,
    "close_b": _check_close_b,
    "close_wakes_receivers": _check_close_wakes,
    "close_wakes_sender": _check_close_wakes_sender,
    "close_remote_wakes_sender": _check_close_wakes_sender_remote,
    "crash": _check_crash,
    "crash_idle": _check_crash_idle,
    "backpressure": _check_backpressure,
    "concurrent_send": _check_concurrent_send,
    "statistics": _check_statistics,
}

#: The names of the checks :func:`check_link` runs, in order.
LINK_CHECKS: tuple[str, ...] = tuple(_CHECKS)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _run_check(name: str, factory: LinkFactory, options: _Options, timeout: float) -> None:
    try:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                pair = await factory(nursery)
                try:
                    await _CHECKS[name](pair, options)
                finally:
                    with trio.CancelScope(shield=True):
                        await pair.a.aclose()
                        await pair.b.aclose()
                    nursery.cancel_scope.cancel()
    except trio.TooSlowError as e:
        raise AssertionError(
            f"check_link[{name}]: no progress within {timeout} s (deadlock?)"
        ) from e
    except Exception as e:
        # Report the first real failure plainly, not inside nested ExceptionGroups.
        leaves = [x for x in _leaves(e) if not isinstance(x, trio.Cancelled)]
        first = leaves[0] if leaves else e
        if isinstance(first, AssertionError):
            raise AssertionError(f"check_link[{name}]: {first}") from e
        raise AssertionError(f"check_link[{name}]: unexpected {first!r}") from e


async def check_link(
    factory: LinkFactory,
    *,
    only: Iterable[str] | None = None,
    seed: int = 0,
    backpressure_limit: int = 64 * 1024 * 1024,
    ordering_messages: int = 1000,
    cushion: float = 0.0,
    timeout: float = 60.0,
) -> None:
    """Run the link conformance checks on pairs made by ``factory``.

    ``only`` restricts the run to some of :data:`LINK_CHECKS`.
    ``backpressure_limit`` is the most payload a sender may push to a receiver
    that never reads before ``send`` must block (the transport's buffers,
    kernel socket buffers included, must stay below it).  ``cushion`` is passed
    to :func:`trio.testing.wait_all_tasks_blocked` (raise it when a transport
    has I/O that completes outside trio's view).  ``timeout`` bounds each check.

    Raises :class:`AssertionError` naming the first failed check.
    """
    names = LINK_CHECKS if only is None else tuple(only)
    unknown = [n for n in names if n not in _CHECKS]
    if unknown:
        raise ValueError(f"unknown link checks {unknown}; known: {list(LINK_CHECKS)}")
    options = _Options(
        rng_seed=seed,
        backpressure_limit=backpressure_limit,
        cushion=cushion,
        ordering_messages=ordering_messages,
    )
    for name in names:
        await _run_check(name, factory, options, timeout)


async def open_link_pair(
    nursery: trio.Nursery, client: Transport, server: Transport
) -> tuple[Link, Link]:
    """Connect ``client`` to ``server`` and return (client end, server end).

    Starts ``server.serve`` in ``nursery``; the server-side handler hands its
    link out and then waits, so the link stays open until the nursery is
    cancelled (the handler's return then closes it, which is idempotent).
    """
    send_channel, receive_channel = trio.open_memory_channel[Link](1)

    async def handler(link: Link) -> None:
        await send_channel.send(link)
        await trio.sleep_forever()

    address = await nursery.start(server.serve, handler)
    client_end = await client.connect(address)
    server_end = await receive_channel.receive()
    return client_end, server_end
