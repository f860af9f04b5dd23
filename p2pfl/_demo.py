"""``p2pfl demo``: two peers on loopback TCP exchange one authenticated message each way."""

from __future__ import annotations

import hashlib

import trio

from p2pfl.identity import Identity
from p2pfl.transport import Link
from p2pfl.transport.tcp import TcpTransport

DEMO_NETWORK = hashlib.blake2b(b"p2pfl-demo", digest_size=32).digest()


async def _demo(message: str) -> list[str]:
    alice, bob = Identity.generate(), Identity.generate()
    lines = [f"peer A: {alice.peer_id}", f"peer B: {bob.peer_id}"]
    got_by_a: list[bytes] = []

    async def on_link(link: Link) -> None:  # runs on A for the inbound link from B
        data = await link.receive()
        lines.append(f"A received from {link.remote_peer.short()}: {data.decode()}")
        await link.send(f"{message} (reply from A)".encode())
        got_by_a.append(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a = TcpTransport(alice, DEMO_NETWORK, listen="tcp:127.0.0.1:0")
            address = await nursery.start(a.serve, on_link)
            lines.append(f"A listening on {address}")
            b = TcpTransport(bob, DEMO_NETWORK)
            link = await b.connect(address)  # "tcp:HOST:PORT#PEERID": pins A's identity
            async with link:
                assert link.remote_peer == alice.peer_id
                await link.send(message.encode())
                reply = await link.receive()
                lines.append(f"B received from {link.remote_peer.short()}: {reply.decode()}")
            nursery.cancel_scope.cancel()
    return lines


def run_demo(message: str = "hello from p2pfl") -> int:
    """Run the demo, print what happened; returns 0 on success."""
    for line in trio.run(_demo, message):
        print(line)
    return 0
