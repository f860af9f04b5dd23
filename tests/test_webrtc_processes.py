"""Six ``p2pfl node`` processes over loopback, two of them not reachable (no listening
socket: ``reachable = false``, ``webrtc = true``), secure aggregation: every node
completes rounds with the same model hash, and the unreachable nodes hold no listening
TCP socket but do use UDP (WebRTC) sockets: their links to each other, and the links
that reachable peers dial to them, are WebRTC data channels signaled over the overlay.

The secure group is all six peers with a Shamir threshold of six, so a round changes
the model only when every member -- the unreachable ones included -- delivered its
masked update and its unmasking shares: a missing member aborts the group and the
round keeps the model.  The test counts rounds whose model hash *changed*.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from p2pfl.identity import Identity
from tests.processes import federation_toml, free_ports, read_status, start_node, wait_for

pytest.importorskip("aiortc")

N = 6
UNREACHABLE = (4, 5)
ROUNDS = 2
DEADLINE = 150.0  # the whole test, seconds



def _federation(n: int, members: Iterable[str]) -> str:
    """Every member must contribute (threshold n): rounds need the unreachable peers."""
    return federation_toml("webrtc-processes", members, size=n, group_size=n,
                           min_group_size=n, threshold=n, timeouts=(8.0, 3.0, 3.0, 3.0, 40.0))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _sockets(pid: int) -> tuple[int, int]:
    """(listening TCP sockets, UDP sockets) that process ``pid`` holds (Linux /proc)."""
    mine = _socket_inodes(pid)
    listening = udp = 0
    for table, count_listen in (("tcp", True), ("tcp6", True), ("udp", False), ("udp6", False)):
        with contextlib.suppress(OSError), open(f"/proc/net/{table}") as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[9] not in mine:
                    continue
                if count_listen and cols[3] == "0A":
                    listening += 1
                elif not count_listen:
                    udp += 1
    return listening, udp




@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_unreachable_nodes_take_part_through_webrtc(tmp_path: Path) -> None:
    t0 = time.monotonic()
    until = t0 + DEADLINE
    keys = [tmp_path / f"p{i}.key" for i in range(N)]
    idents = [Identity.generate() for _ in keys]
    for ident, k in zip(idents, keys, strict=True):
        ident.save(k)
    (tmp_path / "federation.toml").write_text(_federation(N, (i.public_key.hex() for i in idents)))
    reachable = [i for i in range(N) if i not in UNREACHABLE]
    ports = dict(zip(reachable, free_ports(len(reachable)), strict=True))
    addrs = {i: f"tcp:127.0.0.1:{p}" for i, p in ports.items()}
    configs, statuses = [], []
    for i in range(N):
        boot = ", ".join(f'"{a}"' for j, a in addrs.items() if j != i)
        reach = (f'listen = "{addrs[i]}"\n' if i in addrs else "reachable = false\n")
        cfg = tmp_path / f"p{i}.toml"
        cfg.write_text(
            f'key = "p{i}.key"\nfederation = "federation.toml"\n{reach}'
            f'webrtc = true\nwebrtc_host_addresses = ["127.0.0.1"]\nice_servers = []\n'
            f"bootstrap = [{boot}]\ncheckpoint_dir = \"state{i}\"\ndevice = \"cpu\"\n"
            f'status_file = "status{i}.json"\nwarmup = 2.0\n\n'
            f'[task]\nname = "digits"\npeer_index = {i}\nn_peers = {N}\nseed = 0\n'
        )
        configs.append(cfg)
        statuses.append(tmp_path / f"status{i}.json")

    logs = [tmp_path / f"p{i}.log" for i in range(N)]

    def start(i: int) -> subprocess.Popen[bytes]:
        return start_node(configs[i], tmp_path, logs[i])

    def hist(i: int) -> dict[int, str]:
        s = read_status(statuses[i])
        return {} if s is None else {int(r): h for r, h in s["history"].items()}

    udp_seen = dict.fromkeys(UNREACHABLE, 0)
    listening_seen = dict.fromkeys(UNREACHABLE, 0)
    procs: list[subprocess.Popen[bytes]] = []

    def sample() -> None:
        for i in UNREACHABLE:
            listening, udp = _sockets(procs[i].pid)
            udp_seen[i] = max(udp_seen[i], udp)
            listening_seen[i] = max(listening_seen[i], listening)

    def agreed() -> list[int]:
        """Rounds after which every node holds the same, changed, model."""
        hs = [hist(i) for i in range(N)]
        common = set.intersection(*(set(h) for h in hs)) - {0}
        return sorted(r for r in common if len({h[r] for h in hs}) == 1
                      and r - 1 in hs[0] and hs[0][r - 1] != hs[0][r])

    try:
        started = time.monotonic()
        procs = [start(i) for i in range(N)]
        wait_for(f"{ROUNDS} rounds with equal hashes everywhere",
                 lambda: len(agreed()) >= ROUNDS, until, procs, every=sample, logs=logs)
        wall = time.monotonic() - started
        # under load the first rounds may ride on relays before the WebRTC links are up:
        # keep looking at the unreachable nodes' sockets for a while (bounded)
        with contextlib.suppress(AssertionError):
            wait_for("a WebRTC socket on every unreachable node",
                     lambda: all(udp_seen[i] > 0 for i in UNREACHABLE),
                     min(until, time.monotonic() + 30.0), procs, every=sample)
        for i in UNREACHABLE:
            s = read_status(statuses[i])
            assert s is not None and s["listen"] == f"webrtc:{idents[i].peer_id}"
            assert listening_seen[i] == 0, f"unreachable node {i} had a listening socket"
            assert udp_seen[i] > 0, f"unreachable node {i} never opened a WebRTC (UDP) socket"
        rounds = agreed()
        print(f"\n{N} nodes ({len(UNREACHABLE)} unreachable): rounds {rounds} with equal hashes "
              f"{wall:.1f} s after the processes started; UDP sockets seen on the unreachable "
              f"nodes {udp_seen}")
        for p in procs:
            assert p.poll() is None
        procs[UNREACHABLE[0]].terminate()
        assert procs[UNREACHABLE[0]].wait(15) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


# -- the peer-config keys (fast) ------------------------------------------------------


def _node_config(tmp_path: Path, extra: str) -> Path:
    Identity.generate().save(tmp_path / "k.key", overwrite=True)
    (tmp_path / "federation.toml").write_text(_federation(3, [Identity.generate().public_key.hex()]))
    cfg = tmp_path / "peer.toml"
    cfg.write_text(f'key = "k.key"\nfederation = "federation.toml"\n{extra}')
    return cfg


def test_reachability_keys(tmp_path: Path) -> None:
    from p2pfl.node import load_node_config
    from p2pfl.transport import IceServer

    cfg = load_node_config(_node_config(tmp_path, (
        'reachable = false\nwebrtc = true\nwebrtc_host_addresses = ["127.0.0.1"]\n'
        'ice_servers = ["stun:s.example:3478", {urls = ["turn:t.example:3478"], '
        'username = "u", credential = "p"}]\n')))
    r = cfg.reach
    assert (r.reachable, r.webrtc, r.webrtc_host_addresses) == (False, True, ("127.0.0.1",))
    assert r.ice_servers == (IceServer(("stun:s.example:3478",)),
                             IceServer(("turn:t.example:3478",), "u", "p"))
    plain = load_node_config(_node_config(tmp_path, "")).reach
    assert (plain.reachable, plain.webrtc, plain.ice_servers) == (True, False, ())


@pytest.mark.parametrize("extra, key", [
    ('ice_servers = ["stun:s:1"]\n', "need webrtc"),
    ('webrtc = true\nice_servers = ["http://s"]\n', "ice_servers[0]"),
    ('webrtc = true\nice_servers = [{urls = "stun:s:1", password = "x"}]\n', "ice_servers[0]"),
    ('webrtc = true\nwebrtc_host_addresses = "127.0.0.1"\n', "webrtc_host_addresses"),
    ('reachable = "no"\n', "reachable"),
])
def test_bad_reachability_keys(tmp_path: Path, extra: str, key: str) -> None:
    from p2pfl.errors import ConfigError
    from p2pfl.node import load_node_config

    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_node_config(_node_config(tmp_path, extra))


def test_transport_selection(tmp_path: Path) -> None:
    from p2pfl.federation import load_federation
    from p2pfl.peer import PeerConfig, _default_transport, _overlay_hook, _overlay_listens
    from p2pfl.transport import TcpTransport
    from p2pfl.transport.hybrid import HybridTransport

    _node_config(tmp_path, "")
    fed = load_federation(tmp_path / "federation.toml")
    me = Identity.generate()
    tcp = _default_transport(me, fed, PeerConfig(me, fed))
    assert isinstance(tcp, TcpTransport) and _overlay_hook(tcp) is None
    hidden = PeerConfig(me, fed, reachable=False, webrtc=True,
                        webrtc_host_addresses=("127.0.0.1",))
    hybrid = _default_transport(me, fed, hidden)
    assert isinstance(hybrid, HybridTransport) and not hybrid.reachable
    assert _overlay_hook(hybrid) is not None and _overlay_listens(hidden)
    assert not _overlay_listens(PeerConfig(me, fed, reachable=False))
    both = _default_transport(me, fed, PeerConfig(me, fed, webrtc=True))
    assert isinstance(both, HybridTransport) and both.reachable
