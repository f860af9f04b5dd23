"""What the link benchmarks share: the pipelined transfer, the measurement
loop, a server that hands over accepted links, and the JSON report.

Imported by the scripts in this folder when they run as
``python benchmarks/<name>.py`` (the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pfl.transport import Link, Transport

Sender = Callable[[bytes], Awaitable[None]]
Receiver = Callable[[], Awaitable[bytes]]


async def transfer(send: Sender, receive: Receiver, payload: bytes, count: int) -> float:
    """Seconds to move ``count`` copies of ``payload`` (pipelined)."""
    t0 = time.perf_counter()

    async def sender() -> None:
        for _ in range(count):
            await send(payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for _ in range(count):
            got = await receive()
            if len(got) != len(payload):
                raise AssertionError("benchmark message corrupted")
    return time.perf_counter() - t0


async def measure(
    send: Sender, receive: Receiver, args: argparse.Namespace, *, digits: int = 1
) -> dict[str, Any]:
    """Bulk throughput (MB/s, ``digits`` decimals) and small-message rate
    (msg/s): the medians of ``args.repeats`` runs, after a warm-up."""
    big = bytes(range(256)) * (args.big_size // 256)
    small = b"x" * args.small_size
    await transfer(send, receive, big, 2)  # warm up buffers (and congestion windows)
    await transfer(send, receive, small, 100)
    mbps, rates = [], []
    for _ in range(args.repeats):
        dt = await transfer(send, receive, big, args.big_count)
        mbps.append(args.big_count * len(big) / dt / 1e6)
        dt = await transfer(send, receive, small, args.small_count)
        rates.append(args.small_count / dt)
    return {
        "throughput_MBps": round(statistics.median(mbps), digits),
        "throughput_MBps_runs": [round(x, digits) for x in mbps],
        "small_msgs_per_s": round(statistics.median(rates)),
        "small_msgs_per_s_runs": [round(x) for x in rates],
    }


async def start_server(
    nursery: trio.Nursery, server: Transport, capacity: int = 1
) -> tuple[str, trio.MemoryReceiveChannel[Link]]:
    """Start ``server.serve`` in ``nursery``: its address, and a channel on
    which each accepted link arrives (kept open until the nursery is cancelled)."""
    put, got = trio.open_memory_channel[Link](capacity)

    async def handler(link: Link) -> None:
        await put.send(link)
        await trio.sleep_forever()

    address: str = await nursery.start(server.serve, handler)
    return address, got


def environment() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "python": sys.version.split()[0],
        "trio": trio.__version__,
        "machine": platform.machine(),
    }


def size_arguments(p: argparse.ArgumentParser, *, big_count: int, small_count: int) -> None:
    """The message sizes, counts and repeats every link benchmark takes."""
    p.add_argument("--big-size", type=int, default=4 * 1024 * 1024)
    p.add_argument("--big-count", type=int, default=big_count)
    p.add_argument("--small-size", type=int, default=64)
    p.add_argument("--small-count", type=int, default=small_count)
    p.add_argument("--repeats", type=int, default=5)


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The sizes and counts of a run, for its report."""
    return {
        "big_size": args.big_size,
        "big_count": args.big_count,
        "small_size": args.small_size,
        "small_count": args.small_count,
        "repeats": args.repeats,
    }


def report(result: dict[str, Any], out: str | None) -> None:
    """Print the result as JSON, and write it to ``out`` too when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
