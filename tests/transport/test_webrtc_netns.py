"""A WebRTC link across separate network stacks (Linux network namespaces).

Topology (three namespaces, created and always deleted by the test)::

    [ A: 10.213.1.2 ] --veth-- [ R: 10.213.1.1 | 10.213.2.1 ] --veth-- [ B: 10.213.2.2 ]

A and B are "private": each has one address and a default route through R,
which forwards IP between them and runs the signaling relay (TCP, port 47000).
Three processes (this file run as a script) play R's relay, B (serving) and A
(connecting).  A and B have no listening socket; they gather their ICE host
candidates the default way (every interface but loopback) and find each other
through the relay.  The proof that the link crosses the stacks: A and B share
no address or loopback, and R's interfaces must have forwarded the two 4 MiB
messages.

Needs root and ``ip netns``; skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NETWORK_ID = b"netns-test"
PORT = 47000
MiB = 1024 * 1024
SUBNET = "10.213"


def _seed(name: str) -> bytes:
    return name.encode().ljust(32, b".")


# -- the three roles (run as `python test_webrtc_netns.py ROLE`) ---------------------


def _role_main(role: str) -> None:
    import hashlib

    import trio

    from p2pfl.identity import Identity
    from p2pfl.transport import Link, TcpTransport
    from p2pfl.transport.webrtc import (
        RelaySignaling,
        SignalingRelay,
        WebRtcTransport,
        format_webrtc_address,
    )

    def payload(tag: bytes) -> bytes:
        block = hashlib.blake2b(tag, digest_size=64).digest()
        return block * (4 * MiB // len(block))

    def report(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    async def relay_link(identity: Identity, host: str) -> Link:
        client = TcpTransport(identity, NETWORK_ID, handshake_timeout=5)
        while True:  # the relay may still be starting
            try:
                return await client.connect(f"tcp:{host}:{PORT}")
            except OSError:
                await trio.sleep(0.1)

    async def relay() -> None:
        server = TcpTransport(Identity.from_seed(_seed("relay")), NETWORK_ID,
                              listen=f"tcp:0.0.0.0:{PORT}")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, SignalingRelay().handle)
            report(role="relay", ready=True)

    async def serve() -> None:
        identity = Identity.from_seed(_seed("b"))
        signaling = RelaySignaling(await relay_link(identity, f"{SUBNET}.2.1"))
        transport = WebRtcTransport(identity, NETWORK_ID, signaling, connect_timeout=20)
        done = trio.Event()

        async def handler(link: Link) -> None:
            got = await link.receive()
            await link.send(payload(b"from b"))
            try:
                await link.receive()
                clean = False
            except trio.EndOfChannel:
                clean = True
            report(role="b", ok=got == payload(b"from a") and clean,
                   remote=str(link.remote_peer))
            done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(transport.serve, handler)
            await done.wait()
            nursery.cancel_scope.cancel()

    async def connect() -> None:
        identity = Identity.from_seed(_seed("a"))
        signaling = RelaySignaling(await relay_link(identity, f"{SUBNET}.1.1"))
        transport = WebRtcTransport(identity, NETWORK_ID, signaling, connect_timeout=20)
        b = Identity.from_seed(_seed("b")).peer_id
        while True:  # b may not have reached the relay yet
            try:
                link = await transport.connect(format_webrtc_address(b))
                break
            except ConnectionRefusedError:
                await trio.sleep(0.1)
        t0 = time.perf_counter()
        await link.send(payload(b"from a"))
        got = await link.receive()
        elapsed = time.perf_counter() - t0
        await link.aclose()
        report(role="a", ok=got == payload(b"from b"), remote=str(link.remote_peer),
               seconds=round(elapsed, 3))

    async def main() -> None:
        with trio.fail_after(60):
            await {"relay": relay, "b": serve, "a": connect}[role]()

    trio.run(main)


# -- the test ---------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=check)


def _netns_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    probe = f"p2pfl-probe-{uuid.uuid4().hex[:6]}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"`ip netns add` is not allowed here: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _rx_bytes(ns: str, dev: str) -> int:
    """Bytes received by ``dev`` in namespace ``ns``."""
    info = json.loads(_ip("-n", ns, "-j", "-s", "link", "show", dev).stdout)
    return int(info[0]["stats64"]["rx"]["bytes"])


def test_webrtc_link_across_network_namespaces() -> None:
    pytest.importorskip("aiortc")
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    ns = {k: f"p2pfl-{tag}-{k}" for k in ("a", "b", "r")}
    procs: list[subprocess.Popen[str]] = []
    try:
        for name in ns.values():
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        for side, net in (("a", 1), ("b", 2)):
            here, there = f"v{tag}{side}", f"v{tag}r{side}"
            _ip("link", "add", here, "netns", ns[side], "type", "veth",
                "peer", "name", there, "netns", ns["r"])
            _ip("-n", ns[side], "addr", "add", f"{SUBNET}.{net}.2/24", "dev", here)
            _ip("-n", ns["r"], "addr", "add", f"{SUBNET}.{net}.1/24", "dev", there)
            _ip("-n", ns[side], "link", "set", here, "up")
            _ip("-n", ns["r"], "link", "set", there, "up")
            _ip("-n", ns[side], "route", "add", "default", "via", f"{SUBNET}.{net}.1")
        subprocess.run(["ip", "netns", "exec", ns["r"], "sysctl", "-qw",
                        "net.ipv4.ip_forward=1"], check=True, timeout=10)
        before = {side: _rx_bytes(ns["r"], f"v{tag}r{side}") for side in ("a", "b")}

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for role in ("relay", "b", "a"):
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns["r" if role == "relay" else role],
                 sys.executable, __file__, role],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            ))
        outputs: dict[str, dict[str, object]] = {}
        for role, proc in zip(("b", "a"), procs[1:], strict=True):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{role} failed:\n{err[-3000:]}"
            outputs[role] = json.loads(out.strip().splitlines()[-1])
        assert outputs["a"]["ok"] and outputs["b"]["ok"], outputs
        forwarded = {side: _rx_bytes(ns["r"], f"v{tag}r{side}") - before[side]
                     for side in ("a", "b")}
        # Each private side sent one 4 MiB message through the router.
        assert forwarded["a"] > 4 * MiB and forwarded["b"] > 4 * MiB, forwarded
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
        for name in ns.values():
            _ip("netns", "del", name, check=False)


if __name__ == "__main__":
    _role_main(sys.argv[1])
