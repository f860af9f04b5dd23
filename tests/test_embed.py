"""p2pfl.embed: peers in background threads, driven by plain synchronous code.

These tests are deliberately *not* trio tests: they call the handles from the test's
own thread (and helper threads), as a program that is not trio would.  Peers run over
one in-memory network in real time with a toy task, so a round takes milliseconds.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import p2pfl
from p2pfl.embed import PeerHandle, start_peers
from p2pfl.errors import ClosedResourceError, ConfigError
from p2pfl.federation.driver import RoundStarted
from p2pfl.peer import PeerConfig
from p2pfl.transport import MemoryNetwork
from tests.federation.driver_cluster import QuadraticTask, identities, make_federation

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # generous bound on a few real-time toy rounds (each takes milliseconds)


def _peer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("p2pfl-peer")]


def _start(n: int = 3, **kwargs: object) -> list[PeerHandle]:
    ids = identities(n, tag=b"embed")
    fed = make_federation(ids, **{"timeouts.train": 5.0})
    rng = np.random.default_rng(0)
    tasks = [QuadraticTask(rng.normal(size=8).astype(np.float32), 10) for _ in range(n)]
    configs = [PeerConfig(identity=i, federation=fed, warmup=0.05, train_inline=True)
               for i in ids]
    return start_peers(configs, tasks, network=MemoryNetwork(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def peers() -> Iterator[list[PeerHandle]]:
    handles = _start()
    yield handles
    for h in handles:
        h.close()
    assert not _peer_threads()


def test_rounds_advance_and_peers_agree(peers: list[PeerHandle]) -> None:
    assert [h.address for h in peers] == ["mem:p0", "mem:p1", "mem:p2"]
    states = [h.wait_round(1, timeout=WAIT) for h in peers]
    assert all(s.round >= 2 for s in states)
    r = min(s.round for s in states)
    assert len({p2pfl.hash_vector(s.model) for s in states if s.round == r}) == 1
    model = peers[0].global_model()
    assert model.round >= 2 and model.hash == p2pfl.hash_vector(model.vector)
    assert peers[0].state.round >= 2 and peers[0].round >= 2
    assert peers[0].statistics().rounds_completed >= 2


def test_wait_round_timeout(peers: list[PeerHandle]) -> None:
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        peers[0].wait_round(10**9, timeout=0.05)
    assert time.perf_counter() - t0 < 5.0
    assert peers[0].wait_round(timeout=WAIT).round >= 1  # the handle still works


def test_close_is_idempotent_and_ends_the_thread() -> None:
    handles = _start(2)
    assert len(_peer_threads()) == 1  # start_peers: one thread for all
    pid = handles[0].peer_id
    handles[0].close()
    handles[0].close()
    assert handles[0].closed and handles[0].peer_id == pid  # still readable
    with pytest.raises(ClosedResourceError):
        handles[0].wait_round(timeout=1.0)
    with pytest.raises(ClosedResourceError):
        handles[0].global_model()
    assert len(_peer_threads()) == 1  # the other peer still runs there
    assert not handles[1].closed and handles[1].round >= 0
    with handles[1]:
        pass  # the context manager closes it
    handles[1].close()
    assert not _peer_threads()


def test_close_wakes_a_waiting_thread(peers: list[PeerHandle]) -> None:
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            peers[1].wait_round(10**9)
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.05)
    peers[1].close()
    t.join(WAIT)
    assert not t.is_alive()
    assert len(caught) == 1 and isinstance(caught[0], ClosedResourceError)


def test_error_in_the_peer_thread_reaches_the_caller() -> None:
    def fault(stage: str, r: int) -> bool:
        if r >= 1:
            raise RuntimeError("boom")
        return False

    handles = _start(3, per_peer=[{"fault": fault}, {}, {}])
    try:
        with pytest.raises(p2pfl.PeerFailedError) as info:
            handles[0].wait_round(10**9, timeout=WAIT)  # woken by the failure
        assert isinstance(info.value.__cause__, RuntimeError)
        assert str(info.value.__cause__) == "boom"
        with pytest.raises(p2pfl.PeerFailedError):
            handles[0].statistics()  # every later call, too
        handles[0].close()  # reported already: close is quiet
        assert handles[1].round >= 1  # the others run on (in the same thread)
    finally:
        for h in handles:
            h.close()


def test_close_reports_an_unreported_error() -> None:
    handles = _start(2, per_peer=[{"fault": _raise_at_round_1}, {}])
    try:
        deadline = time.monotonic() + WAIT
        while not handles[0].closed and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(p2pfl.PeerFailedError):
            handles[0].close()
        handles[0].close()  # once is enough
    finally:
        for h in handles:
            h.close()


def _raise_at_round_1(stage: str, r: int) -> bool:
    if r >= 1:
        raise RuntimeError("boom")
    return False


def test_events_stream(peers: list[PeerHandle]) -> None:
    with peers[0].events() as events:
        starts = []
        for ev in events:
            if isinstance(ev, RoundStarted):
                starts.append(ev.round)
                if len(starts) == 2:
                    break
        assert starts[1] == starts[0] + 1
        with pytest.raises(TimeoutError):
            peers[0].events().get(timeout=0.0)  # a new stream starts empty
    small = peers[1].events(buffer=1)
    peers[1].wait_round(peers[1].round + 2, timeout=WAIT)
    assert small.dropped > 0  # drop-oldest: the peer never waited for us
    peers[1].close()
    rest = list(small)  # what was queued, then the end of the stream
    assert len(rest) <= 1
    with pytest.raises(ClosedResourceError):
        small.get(timeout=1.0)


def test_start_errors_are_raised_by_start_peer(tmp_path: Path) -> None:
    ids = identities(1, tag=b"embed")
    fed = make_federation(ids)
    cfg = PeerConfig(identity=ids[0], federation=fed, listen="udp:127.0.0.1:0")
    with pytest.raises(ConfigError, match="listen"):
        p2pfl.start_peer(cfg, QuadraticTask(np.zeros(8, np.float32), 1))
    with pytest.raises(ConfigError):
        p2pfl.start_peer(PeerConfig(identity=ids[0], federation=tmp_path / "missing.toml"),
                         QuadraticTask(np.zeros(8, np.float32), 1))
    assert not _peer_threads()


def test_the_embedding_example_runs() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "docs/examples/embed_peer.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    rounds = re.findall(r"^round (\d): model ([0-9a-f]{16}) accuracy (0\.\d+)$", r.stdout, re.M)
    assert [int(x) for x, _, _ in rounds] == [1, 2, 3]
    assert float(rounds[-1][2]) > 0.5  # the digits model learns
    assert "all 3 peers agree" in r.stdout


# -- the public names and their reference ---------------------------------------------

EXPECTED = {
    "ConfigError", "EventStream", "Federation", "GlobalModel", "GlobalState", "Identity",
    "P2PFLError", "Peer", "PeerConfig", "PeerFailedError", "PeerHandle", "PeerId", "SimConfig",
    "Task", "__version__", "federation_from_dict", "hash_vector", "load_federation",
    "open_peer", "run_simulation", "start_peer", "start_peers",
}


def test_public_names() -> None:
    assert set(p2pfl.__all__) == EXPECTED
    assert all(getattr(p2pfl, name) is not None for name in p2pfl.__all__)


def test_import_is_light() -> None:
    code = "import sys, p2pfl; assert 'torch' not in sys.modules and 'trio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_api_reference_names_every_public_name() -> None:
    text = (ROOT / "docs/api.md").read_text()
    missing = [n for n in p2pfl.__all__ if f"`{n}" not in text and f"{n}(" not in text]
    assert not missing, f"docs/api.md does not document: {missing}"
