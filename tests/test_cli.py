"""The command line as a user runs it (subprocesses of the installed script)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2pfl.cli import main
from p2pfl.identity import Identity


def _p2pfl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("p2pfl")
    cmd = [exe] if exe else [sys.executable, "-m", "p2pfl"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)


def test_help_lists_commands() -> None:
    r = _p2pfl("--help")
    assert r.returncode == 0
    for command in ("keygen", "peer-id", "demo"):
        assert command in r.stdout


def test_keygen_writes_a_private_key_and_prints_its_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "peer.key"
    r = _p2pfl("keygen", str(path))
    assert r.returncode == 0, r.stderr
    printed = r.stdout.strip()
    assert printed == str(Identity.load(path).peer_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = _p2pfl("keygen", str(path))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert _p2pfl("peer-id", str(path)).stdout.strip() == printed


def test_config_errors_are_one_line_with_status_2(tmp_path: Path, capsys: object) -> None:
    assert main(["peer-id", str(tmp_path / "missing")]) == 2


def test_demo_exchanges_authenticated_messages_over_tcp() -> None:
    r = _p2pfl("demo", "--message", "ping")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    a_id = lines[0].split(": ")[1]
    b_id = lines[1].split(": ")[1]
    assert a_id != b_id
    assert any(line.startswith(f"A received from {b_id[:8]}: ping") for line in lines)
    assert any(line.startswith(f"B received from {a_id[:8]}: ping (reply from A)") for line in lines)


# -- p2pfl status / p2pfl ledger -------------------------------------------------------


def test_help_lists_status_and_ledger() -> None:
    r = _p2pfl("--help")
    assert "status" in r.stdout and "ledger" in r.stdout
    for command in ("status", "ledger"):
        r = _p2pfl(command, "--help")
        assert r.returncode == 0 and "--json" in r.stdout and "--config" in r.stdout


def test_status_without_a_node_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--socket", str(tmp_path / "control.sock")]) == 1
    assert "no node is listening" in capsys.readouterr().err
    Identity.generate().save(tmp_path / "p.key")
    (tmp_path / "fed.toml").write_text('name = "x"\ntask = "t"\n')
    cfg = tmp_path / "peer.toml"
    cfg.write_text('key = "p.key"\nfederation = "fed.toml"\n')
    assert main(["status", "--config", str(cfg)]) == 2  # no checkpoint_dir: no socket
    assert "has no control socket" in capsys.readouterr().err
    cfg.write_text('key = "p.key"\nfederation = "fed.toml"\ncheckpoint_dir = "state"\n')
    assert main(["status", "--config", str(cfg)]) == 1
    assert f"no node is listening on {tmp_path / 'state' / 'control.sock'}" in capsys.readouterr().err


def test_status_prints_a_summary_of_the_reply() -> None:
    from p2pfl.cli import _status_lines

    reply = {"peer_id": "abc", "listen": "tcp:127.0.0.1:7000#abc", "round": 7, "pid": 1,
             "model_hash": "f" * 64, "neighbors": 2, "live_peers": 3,
             "neighbor_ids": ["p1", "p2"], "federation": "0" * 64, "federation_name": "demo",
             "history": {str(r): f"{r:064x}" for r in range(1, 8)},
             "reputation": {"p1": 0.9, "p2": 0.5}, "credits": {"p1": 12.0}}
    text = "\n".join(_status_lines(reply))
    assert "round       7  model ffffffffffffffff" in text
    assert "2 neighbours / 3 live" in text and "  p1" in text
    assert "history     3: " in text and "1: " not in text.split("history")[1]  # last 5 rounds
    assert "0.900" in text and "12.0" in text
    assert "no ledger yet" in "\n".join(_status_lines({"round": 0}))


def _toml(d: dict[str, Any]) -> str:
    """A federation dict (scalars, lists of scalars, one level of tables) as TOML."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]", *(f"{kk} = {value(vv)}" for kk, vv in v.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """A 4-round ledger of 9 peers (peer 2 excluded whenever drawn), with its
    federation file."""
    from p2pfl.federation import load_federation
    from p2pfl.ledger import Ledger
    from tests.ledger.net import LedgerNet, fed_for

    net = LedgerNet(fed_for(), 9, attackers=[2])
    net.run(4)
    d = tmp_path_factory.mktemp("ledger")
    fed_path = d / "federation.toml"
    fed_path.write_text(_toml(net.fed.to_dict()))
    assert load_federation(fed_path).id == net.fed.id
    path = d / "ledger.bin"
    led = Ledger.open(path, net.fed)
    for rec in net.ledger().records:
        led.append(rec)
    led.close()
    return net, path, fed_path


def test_ledger_shows_standings_and_history_without_touching_the_file(
        ledger_file: tuple[Any, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    net, path, fed = ledger_file
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    assert main(["ledger", "--file", str(path), "--federation", str(fed)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"federation {net.fed.id_hex[:16]}  height 4")
    assert all(str(p) in out for p in net.peers)
    assert "contrib" in out and "excl" in out and "round" in out
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_ledger_json_matches_the_library(ledger_file: tuple[Any, Path, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from p2pfl.ledger import Ledger

    net, path, fed = ledger_file
    assert main(["ledger", "--file", str(path), "--federation", str(fed), "--json",
                 "--history", "-1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    led = Ledger.open(path, net.fed)
    st = led.standing
    assert doc["height"] == 4 and doc["head"] == led.head.hex()
    assert {p: v["score"] for p, v in doc["peers"].items()} == {
        str(p): s for p, s in st.reputation().items()}
    assert {p: v["credits"] for p, v in doc["peers"].items()} == {
        str(p): c for p, c in st.credits().items()}
    attacker = doc["peers"][str(net.peers[2])]
    assert attacker["exclusions"] >= 1 and attacker["contributions"] == 0
    assert [h["round"] for h in doc["history"]] == [0, 1, 2, 3]
    assert [h["record"] for h in doc["history"]] == [r.hash.hex() for r in led.records]
    led.close()


def test_ledger_one_peer_and_short_history(ledger_file: tuple[Any, Path, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    net, path, fed = ledger_file
    attacker = str(net.peers[2])
    assert main(["ledger", "--file", str(path), "--federation", str(fed), "--peer",
                 attacker[:10], "--history", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if ln.split() and ln.split()[0] in {str(p) for p in net.peers}]
    assert [r.split()[0] for r in rows] == [attacker]
    assert lines[0].startswith("federation ")
    history = lines[len(lines) - lines[::-1].index(""):]  # after the last blank line
    assert len(history) == 2 and history[1].split()[0] == "3"  # header + round 3
    assert main(["ledger", "--file", str(path), "--federation", str(fed), "--peer", "zz"]) == 2
    assert "no peer 'zz'" in capsys.readouterr().err


def test_ledger_of_a_torn_file_reads_a_copy(ledger_file: tuple[Any, Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, path, fed = ledger_file
    torn = tmp_path / "torn.bin"
    torn.write_bytes(path.read_bytes() + b"\x00\x00\x01\x00half a frame")
    size = torn.stat().st_size
    assert main(["ledger", "--file", str(torn), "--federation", str(fed)]) == 0
    assert "torn record" in capsys.readouterr().out
    assert torn.stat().st_size == size  # the node cuts it off, not this command


def test_ledger_errors(ledger_file: tuple[Any, Path, Path], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    _, path, fed = ledger_file
    assert main(["ledger", "--file", str(tmp_path / "nope.bin"), "--federation", str(fed)]) == 2
    assert "no ledger file at" in capsys.readouterr().err
    assert not (tmp_path / "nope.bin").exists()
    assert main(["ledger", "--file", str(path)]) == 2
    assert "needs --federation" in capsys.readouterr().err
    other = tmp_path / "other.toml"
    other.write_text(fed.read_text().replace('name = "test"', 'name = "other"'))
    assert main(["ledger", "--file", str(path), "--federation", str(other)]) == 2
    assert "another federation" in capsys.readouterr().err
    assert main(["ledger", "--file", str(path), "--federation", str(tmp_path / "x.toml")]) == 2
    capsys.readouterr()


def test_ledger_from_a_peer_config(ledger_file: tuple[Any, Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from p2pfl.federation import load_federation
    from p2pfl.peer import ledger_path

    net, path, fed = ledger_file
    Identity.generate().save(tmp_path / "p.key")
    shutil.copyfile(fed, tmp_path / "federation.toml")
    cfg = tmp_path / "peer.toml"
    cfg.write_text('key = "p.key"\nfederation = "federation.toml"\ncheckpoint_dir = "state"\n')
    assert main(["ledger", "--config", str(cfg)]) == 2
    assert "no ledger file at" in capsys.readouterr().err
    dest = ledger_path(tmp_path / "state", load_federation(fed))
    dest.parent.mkdir()
    shutil.copyfile(path, dest)
    assert main(["ledger", "--config", str(cfg), "--history", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"federation {net.fed.id_hex[:16]}  height 4")
