"""Five ``p2pfl node`` processes over loopback TCP, secure aggregation: SIGKILL one
mid-training, restart it with the same config; it catches up (model hash equal to the
others' within two rounds) with its key file and checkpoint intact."""

from __future__ import annotations

import contextlib
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from p2pfl.federation import load_checkpoint, load_federation
from p2pfl.identity import Identity
from p2pfl.peer import checkpoint_path
from tests.processes import cli, federation_toml, free_ports, read_status, start_node, wait_for

N = 5
VICTIM = 3
DEADLINE = 110.0  # the whole test, seconds





@pytest.mark.slow
def test_kill_and_restart_a_node_process(tmp_path: Path) -> None:
    t0 = time.monotonic()
    until = t0 + DEADLINE
    keys = [tmp_path / f"p{i}.key" for i in range(N)]
    for k in keys:
        cli("keygen", str(k))
    idents = [Identity.load(k) for k in keys]
    (tmp_path / "federation.toml").write_text(federation_toml(
        "node-processes", (i.public_key.hex() for i in idents),
        size=5, group_size=5, min_group_size=3, threshold=0.6))
    fed = load_federation(tmp_path / "federation.toml")
    ports = free_ports(N)
    addrs = [f"tcp:127.0.0.1:{p}" for p in ports]
    configs, statuses = [], []
    for i in range(N):
        boot = ", ".join(f'"{a}"' for j, a in enumerate(addrs) if j != i)
        cfg = tmp_path / f"p{i}.toml"
        cfg.write_text(
            f'key = "p{i}.key"\nfederation = "federation.toml"\nlisten = "{addrs[i]}"\n'
            f"bootstrap = [{boot}]\ncheckpoint_dir = \"state{i}\"\ndevice = \"cpu\"\n"
            f'status_file = "status{i}.json"\nwarmup = 1.0\n\n'
            f'[task]\nname = "digits"\npeer_index = {i}\nn_peers = {N}\nseed = 0\n'
        )
        configs.append(cfg)
        statuses.append(tmp_path / f"status{i}.json")
    key_bytes = keys[VICTIM].read_bytes()

    logs = [tmp_path / f"p{i}.log" for i in range(N)]

    def start(i: int) -> subprocess.Popen[bytes]:
        return start_node(configs[i], tmp_path, logs[i])

    def rnd(i: int) -> int:
        s = read_status(statuses[i])
        return -1 if s is None else int(s["round"])

    def hist(i: int) -> dict[int, str]:
        s = read_status(statuses[i])
        return {} if s is None else {int(r): h for r, h in s["history"].items()}

    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = [start(i) for i in range(N)]
        alive = set(range(N))
        wait_for("round 2 everywhere", lambda: all(rnd(i) >= 2 for i in range(N)),
                 until, procs, alive, logs=logs)
        # mid-round: just after the victim started a new round (training or aggregating)
        r_kill = rnd(VICTIM)
        wait_for("the next round", lambda: rnd(VICTIM) > r_kill,
                 until, procs, alive, logs=logs)
        time.sleep(0.3)
        r_kill = rnd(VICTIM)  # the round it was running (status: rounds completed)
        procs[VICTIM].send_signal(signal.SIGKILL)
        procs[VICTIM].wait(10)
        alive.discard(VICTIM)
        others = sorted(alive)
        r_dead = max(rnd(i) for i in others)
        wait_for("two rounds without the victim",
                 lambda: min(rnd(i) for i in others) >= r_dead + 2, until, procs, alive, logs=logs)

        assert keys[VICTIM].read_bytes() == key_bytes
        assert stat.S_IMODE(keys[VICTIM].stat().st_mode) == 0o600
        saved = load_checkpoint(checkpoint_path(tmp_path / f"state{VICTIM}", fed), fed)
        assert saved.round >= 2

        statuses[VICTIM].unlink()
        procs[VICTIM] = start(VICTIM)
        alive.add(VICTIM)
        wait_for("the restarted node's first status", lambda: rnd(VICTIM) >= 0,
                 until, procs, alive, logs=logs)
        r_back = max(rnd(i) for i in others)
        resumed = min(hist(VICTIM))
        assert resumed >= saved.round  # resumed from its checkpoint, not from round 0

        def agreed() -> int | None:
            mine = hist(VICTIM)
            theirs = [hist(i) for i in others]
            same = [r for r, h in mine.items()  # a round it completed after coming back
                    if r > resumed and r >= r_back and all(t.get(r) == h for t in theirs)]
            return min(same) if same else None

        wait_for("the restarted node to agree", lambda: agreed() is not None,
                 until, procs, alive, logs=logs)
        r_match = agreed()
        assert r_match is not None
        r_now = max(rnd(i) for i in others)
        print(f"\nkilled in round {r_kill}, others at {r_back} when it came back, resumed from "
              f"{resumed}, first equal hash at round {r_match} "
              f"(others at {r_now} then), {time.monotonic() - t0:.1f} s")
        assert r_match <= r_back + 2, "not caught up within two rounds"
        assert keys[VICTIM].read_bytes() == key_bytes
        assert stat.S_IMODE(keys[VICTIM].stat().st_mode) == 0o600
        assert load_checkpoint(checkpoint_path(tmp_path / f"state{VICTIM}", fed), fed).round >= resumed
        for i in range(N):
            assert procs[i].poll() is None, f"node {i} died"
        # clean shutdown on SIGTERM
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(15) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
