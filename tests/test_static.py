"""Static checks as tests, so CI enforces them: ruff everywhere, mypy --strict on mpc/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_is_clean() -> None:
    dirs = [d for d in ("p2pfl", "mpc", "tests", "benchmarks", "sims") if (ROOT / d).is_dir()]
    r = _run("ruff", "check", *dirs)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_on_mpc() -> None:
    pytest.importorskip("mypy")
    r = _run(sys.executable, "-m", "mypy", "--strict", "--no-incremental", "mpc")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_on_p2pfl_core() -> None:
    pytest.importorskip("mypy")
    r = _run(sys.executable, "-m", "mypy", "--no-incremental", "p2pfl/wire", "p2pfl/identity",
             "p2pfl/transport", "p2pfl/overlay", "p2pfl/federation", "p2pfl/learning",
             "p2pfl/ledger", "p2pfl/sim", "p2pfl/embed.py", "p2pfl/control.py", "p2pfl/peer.py",
             "p2pfl/node.py")
    assert r.returncode == 0, r.stdout + r.stderr
