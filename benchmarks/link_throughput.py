"""TCP link throughput against raw trio TCP, over loopback, in one run.

Measures, for the encrypted :class:`p2pfl.transport.TcpLink` and for a plain
length-prefixed trio TCP stream (the baseline, no encryption, receiving with
``recv_into`` into a reusable buffer as a tuned implementation would):

* bulk throughput: ``--big-count`` messages of ``--big-size`` bytes (4 MiB), MB/s;
* small-message rate: ``--small-count`` messages of ``--small-size`` bytes (64), msg/s.

The link is measured with the cipher suite this CPU prefers (``tcp_link``:
AES-256-GCM where the CPU has AES instructions) and with ChaCha20-Poly1305
(``tcp_link_chacha20``, the suite of CPUs without them).

Sender and receiver run in one trio process (as a single-process simulation
does), so both the encryption and the decryption cost land on one core.
Each figure is the median of ``--repeats`` runs; the ratios are TCP link / raw.

    python benchmarks/link_throughput.py --out results.json
"""

from __future__ import annotations

import argparse
import struct
from typing import Any

import trio
from _common import environment, measure, report, size_arguments, sizes, start_server

from p2pfl.identity import Identity
from p2pfl.transport import CipherSuite, TcpLink, TcpTransport, default_suites

_LEN = struct.Struct(">I")


class RawChannel:
    """Length-prefixed messages over a trio SocketStream, no encryption."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray(256 * 1024)
        self.start = 0
        self.end = 0

    async def send(self, msg: bytes) -> None:
        if len(msg) <= 64 * 1024:
            await self.stream.send_all(_LEN.pack(len(msg)) + msg)
        else:
            await self.stream.send_all(_LEN.pack(len(msg)))
            await self.stream.send_all(msg)

    async def _read(self, need: int) -> None:
        """Make sure ``need`` bytes are buffered from ``start``."""
        sock = self.stream.socket
        if len(self.buf) - self.start < need:
            grown = bytearray(max(need, len(self.buf)))
            grown[: self.end - self.start] = self.buf[self.start : self.end]
            self.buf, self.end, self.start = grown, self.end - self.start, 0
        while self.end - self.start < need:
            with memoryview(self.buf)[self.end :] as view:
                n = await sock.recv_into(view)
            if n == 0:
                raise trio.EndOfChannel
            self.end += n

    async def receive(self) -> bytes:
        if self.start == self.end:
            self.start = self.end = 0
        else:
            # Like any trio channel (and TcpLink), receive is a checkpoint
            # even when the message is already buffered.
            await trio.lowlevel.checkpoint()
        await self._read(4)
        (n,) = _LEN.unpack_from(self.buf, self.start)
        await self._read(4 + n)
        with memoryview(self.buf) as view:
            msg = bytes(view[self.start + 4 : self.start + 4 + n])
        self.start += 4 + n
        return msg


async def _bench_tcp_link(
    args: argparse.Namespace, suites: tuple[CipherSuite, ...] | None = None
) -> dict[str, Any]:
    server = TcpTransport(Identity.generate(), b"bench", idle_timeout=None, cipher_suites=suites)
    client = TcpTransport(Identity.generate(), b"bench", idle_timeout=None, cipher_suites=suites)
    async with trio.open_nursery() as nursery:
        address, got = await start_server(nursery, server)
        a = await client.connect(address)
        assert isinstance(a, TcpLink)
        b = await got.receive()
        result = {"cipher_suite": a.cipher_suite.name, **await measure(a.send, b.receive, args)}
        await a.aclose()
        nursery.cancel_scope.cancel()
    return result


async def _bench_raw(args: argparse.Namespace) -> dict[str, Any]:
    put, got = trio.open_memory_channel[trio.SocketStream](1)

    async def handler(stream: trio.SocketStream) -> None:
        await put.send(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        a = RawChannel(await trio.open_tcp_stream("127.0.0.1", port))
        b = RawChannel(await got.receive())
        result = await measure(a.send, b.receive, args)
        await a.stream.aclose()
        nursery.cancel_scope.cancel()
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    raw = await _bench_raw(args)
    link = await _bench_tcp_link(args)  # the default suite for this CPU
    chacha = await _bench_tcp_link(args, (CipherSuite.CHACHA20_POLY1305,))
    return {
        "benchmark": "link_throughput",
        **environment(),
        **sizes(args),
        "default_suites": [s.name for s in default_suites()],
        "raw_tcp": raw,
        "tcp_link": link,
        "tcp_link_chacha20": chacha,
        "throughput_ratio": round(link["throughput_MBps"] / raw["throughput_MBps"], 3),
        "small_rate_ratio": round(link["small_msgs_per_s"] / raw["small_msgs_per_s"], 3),
        "throughput_ratio_chacha20": round(chacha["throughput_MBps"] / raw["throughput_MBps"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="also write the JSON here")
    size_arguments(p, big_count=64, small_count=20000)
    args = p.parse_args(argv)
    report(trio.run(main_async, args), args.out)


if __name__ == "__main__":
    main()
