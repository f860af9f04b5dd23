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
import statistics
import time
from typing import Any

import aiortc
import trio
from _common import environment, measure, report, size_arguments, sizes, start_server

from p2pfl.identity import Identity
from p2pfl.transport import TcpTransport, Transport
from p2pfl.transport.webrtc import MemorySignalingHub, WebRtcTransport


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
        address, got = await start_server(nursery, server, args.setups + 1)
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
            **await measure(a.send, b.receive, args, digits=2),
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
        **environment(),
        "aiortc": aiortc.__version__,
        "host": args.host,
        **sizes(args),
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
    size_arguments(p, big_count=16, small_count=2000)
    p.add_argument("--setups", type=int, default=5, help="link setups timed")
    args = p.parse_args(argv)
    report(trio.run(main_async, args), args.out)


if __name__ == "__main__":
    main()
