"""WebRTC link throughput against the TCP link, over loopback, in one run.

Measures, for :class:`p2pfl.transport.webrtc.WebRtcLink` (aiortc data channel,
host candidate 127.0.0.1, in-process signaling) and for
:class:`p2pfl.transport.TcpLink` (the same handshake and AEAD frames over a
TCP socket):

* bulk throughput: ``--big-count`` messages of ``--big-size`` bytes (4 MiB), MB/s;
* small-message rate: ``--small-count`` messages of ``--small-size`` bytes, msg/s;
* link setup time (WebRTC: signaling, ICE, DTLS, SCTP and the handshake; TCP:
  connect and the handshake), ms.

Both ends of each link live in this one process, as in a single-process
simulation: aiortc's whole work for both ends runs in its one asyncio thread,
the rest on trio's.  Each figure is the median of ``--repeats`` runs.

    python benchmarks/webrtc_throughput.py --out results.json
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

import aiortc
import trio

from p2pfl.identity import Identity
from p2pfl.transport import Link, TcpTransport, Transport
from p2pfl.transport.webrtc import MemorySignalingHub, WebRtcTransport

Sender = Callable[[bytes], Awaitable[None]]
Receiver = Callable[[], Awaitable[bytes]]


async def _transfer(send: Sender, receive: Receiver, payload: bytes, count: int) -> float:
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


async def _measure(a: Link, b: Link, args: argparse.Namespace) -> dict[str, Any]:
    big = bytes(range(256)) * (args.big_size // 256)
    small = b"x" * args.small_size
    await _transfer(a.send, b.receive, big, 2)  # warm up buffers and congestion windows
    await _transfer(a.send, b.receive, small, 100)
    mbps, rates = [], []
    for _ in range(args.repeats):
        dt = await _transfer(a.send, b.receive, big, args.big_count)
        mbps.append(args.big_count * len(big) / dt / 1e6)
        dt = await _transfer(a.send, b.receive, small, args.small_count)
        rates.append(args.small_count / dt)
    return {
        "throughput_MBps": round(statistics.median(mbps), 2),
        "throughput_MBps_runs": [round(x, 2) for x in mbps],
        "small_msgs_per_s": round(statistics.median(rates)),
        "small_msgs_per_s_runs": [round(x) for x in rates],
    }


async def _bench(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    ia, ib = Identity.generate(), Identity.generate()
    client: Transport
    server: Transport
    if kind == "webrtc":
        hub = MemorySignalingHub()
        client = WebRtcTransport(ia, b"bench", hub.signaling(ia.peer_id),
                                 host_addresses=(args.host,), idle_timeout=None)
        server = WebRtcTransport(ib, b"bench", hub.signaling(ib.peer_id),
                                 host_addresses=(args.host,), idle_timeout=None)
    else:
        client = TcpTransport(ia, b"bench", idle_timeout=None)
        server = TcpTransport(ib, b"bench", idle_timeout=None, listen=f"tcp:{args.host}:0")
    setups = []
    async with trio.open_nursery() as nursery:
        put, got = trio.open_memory_channel[Link](args.setups + 1)

        async def handler(link: Link) -> None:
            await put.send(link)
            await trio.sleep_forever()

        address = await nursery.start(server.serve, handler)
        for _ in range(args.setups):
            t0 = time.perf_counter()
            a = await client.connect(address)
            b = await got.receive()
            setups.append(time.perf_counter() - t0)
            await a.aclose()
            await b.aclose()
        a = await client.connect(address)
        b = await got.receive()
        result = {
            "cipher_suite": getattr(getattr(a, "cipher_suite", None), "name", None),
            "setup_ms": round(1000 * statistics.median(setups), 1),
            "setup_ms_runs": [round(1000 * x, 1) for x in setups],
            **await _measure(a, b, args),
        }
        await a.aclose()
        await b.aclose()
        nursery.cancel_scope.cancel()
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tcp = await _bench("tcp", args)
    webrtc = await _bench("webrtc", args)
    return {
        "benchmark": "webrtc_throughput",
        "python": sys.version.split()[0],
        "trio": trio.__version__,
        "aiortc": aiortc.__version__,
        "machine": platform.machine(),
        "host": args.host,
        "big_size": args.big_size,
        "big_count": args.big_count,
        "small_size": args.small_size,
        "small_count": args.small_count,
        "repeats": args.repeats,
        "tcp_link": tcp,
        "webrtc_link": webrtc,
        "throughput_ratio_webrtc_over_tcp": round(
            webrtc["throughput_MBps"] / tcp["throughput_MBps"], 4),
        "small_rate_ratio_webrtc_over_tcp": round(
            webrtc["small_msgs_per_s"] / tcp["small_msgs_per_s"], 4),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--host", default="127.0.0.1", help="local address both ends use")
    p.add_argument("--big-size", type=int, default=4 * 1024 * 1024)
    p.add_argument("--big-count", type=int, default=16)
    p.add_argument("--small-size", type=int, default=64)
    p.add_argument("--small-count", type=int, default=2000)
    p.add_argument("--setups", type=int, default=5, help="link setups timed")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    result = trio.run(main_async, args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
