"""The command line as a user runs it (subprocesses of the installed script)."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

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
