"""The control socket and ``p2pfl status``.

Unit tests of :mod:`p2pfl.control` (sans-I/O reader, request handling, one connection
over memory streams under the autojump clock, the Unix socket's life cycle), and four
``p2pfl node`` processes over loopback TCP driven only through ``p2pfl status --json``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from p2pfl.control import (
    MAX_MESSAGE,
    ControlError,
    MessageReader,
    Operation,
    answer,
    config_socket_path,
    encode_message,
    handle_request,
    open_control,
    request,
    serve_control,
)
from p2pfl.errors import ConfigError, RemoteProtocolError
from p2pfl.identity import Identity
from tests.processes import cli, federation_toml, free_ports, start_node


def _ops(calls: list[Mapping[str, Any]] | None = None) -> dict[str, Operation]:
    def status(req: Mapping[str, Any]) -> Mapping[str, Any]:
        if calls is not None:
            calls.append(req)
        return {"round": 3, "model_hash": "ab" * 32}

    def boom(req: Mapping[str, Any]) -> Mapping[str, Any]:
        raise RuntimeError("a bug")

    return {"status": status, "boom": boom}


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# -- sans-I/O ------------------------------------------------------------------------


def test_a_message_fed_byte_by_byte_comes_out_whole() -> None:
    data = encode_message({"op": "status", "n": [1, 2]})
    reader = MessageReader()
    for i in range(len(data)):
        assert reader.message() is None
        assert reader.wanted == (4 - i if i < 4 else len(data) - i)  # never reads ahead
        reader.feed(data[i:i + 1])
    assert reader.message() == {"op": "status", "n": [1, 2]} and reader.wanted == 0
    with pytest.raises(RemoteProtocolError, match="after the end"):
        reader.feed(b"x")


@pytest.mark.parametrize(("data", "match"), [
    (struct.pack(">I", MAX_MESSAGE + 1), "exceeds the limit"),
    (struct.pack(">I", 0xFFFFFFFF), "exceeds the limit"),
    (_frame(b"\xff\xff"), "undecodable"),
    (_frame(cbor2.dumps([1, 2])), "not a map"),
    (_frame(cbor2.dumps({1: "x"})), "not a map"),
    (_frame(cbor2.dumps({"op": "status"})) + b"\x00", "after the end"),
    (_frame(b"\xc1\x00"), "tag"),  # a CBOR date: semantic tags are refused
])
def test_bad_input_is_a_remote_protocol_error(data: bytes, match: str) -> None:
    reader = MessageReader()
    with pytest.raises(RemoteProtocolError, match=match):
        reader.feed(data)


@given(st.binary(max_size=64))
def test_any_bytes_give_a_map_none_or_a_remote_protocol_error(data: bytes) -> None:
    reader = MessageReader()
    try:
        reader.feed(data)
    except RemoteProtocolError:
        return
    assert reader.message() is None or isinstance(reader.message(), dict)


def test_requests_are_dispatched_and_bad_ones_answered_with_an_error() -> None:
    calls: list[Mapping[str, Any]] = []
    ops = _ops(calls)
    assert handle_request({"op": "status"}, ops) == {"round": 3, "model_hash": "ab" * 32}
    assert calls == [{"op": "status"}]
    assert "needs an 'op'" in handle_request({}, ops)["error"]
    assert "needs an 'op'" in handle_request({"op": 7}, ops)["error"]
    err = handle_request({"op": "x" * 1000}, ops)["error"]
    assert "unknown op" in err and "known: boom, status" in err and len(err) < 200


def test_replies_larger_than_the_limit_are_refused_locally() -> None:
    from p2pfl.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode_message({"x": b"\x00" * MAX_MESSAGE})
    with pytest.raises(LocalProtocolError, match="cannot be encoded"):
        encode_message({"x": object()})


# -- one connection over memory streams (virtual time) -------------------------------


async def _exchange(sent: bytes, *, close: bool = True) -> dict[str, Any] | None:
    """Send ``sent`` to :func:`answer`; its reply (None: closed without one)."""
    client, server = trio.testing.memory_stream_pair()
    reply: dict[str, Any] | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer, server, _ops())
        await client.send_all(sent)
        if close:
            await client.send_eof()
        reader = MessageReader()
        while (data := await client.receive_some()) != b"":
            reader.feed(data)
        reply = reader.message()
    return reply


async def test_a_status_request_is_answered(autojump_clock: object) -> None:
    assert await _exchange(encode_message({"op": "status"})) == {
        "round": 3, "model_hash": "ab" * 32}


async def test_bad_requests_get_an_error_reply(autojump_clock: object) -> None:
    for sent, match in [
        (struct.pack(">I", 0xFFFFFFFF), "exceeds the limit"),
        (_frame(b"garbage"), "undecodable"),
        (_frame(cbor2.dumps("status")), "not a map"),
        (encode_message({"op": "nope"}), "unknown op"),
        (encode_message({"op": "boom"}), "internal error"),
        (b"\x00\x00", "closed in the middle"),  # hangs up half-way through the prefix
    ]:
        reply = await _exchange(sent)
        assert reply is not None and match in reply["error"], (sent, reply)


async def test_a_slow_client_is_dropped_after_the_timeout(autojump_clock: object) -> None:
    t0 = trio.current_time()
    # half a request, then silence (no EOF): the server gives up and closes
    assert await _exchange(encode_message({"op": "status"})[:5], close=False) is None
    assert 5.0 <= trio.current_time() - t0 < 6.0


async def test_a_client_that_hangs_up_does_not_disturb_the_server(
        autojump_clock: object) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.aclose()
    await answer(server, _ops())  # returns quietly


# -- the Unix socket ------------------------------------------------------------------


async def test_socket_life_cycle(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "control.sock"
    async with open_control(path) as listener, trio.open_nursery() as nursery:
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        await nursery.start(serve_control, listener, _ops())
        assert (await request(path, {"op": "status"}))["round"] == 3
        with pytest.raises(ControlError, match="answered: unknown op"):
            await request(path, {"op": "nope"})
        # a second node on the same socket is refused; the first keeps serving
        with pytest.raises(ConfigError, match="another process is listening"):
            async with open_control(path):
                pass
        # a burst of concurrent clients
        results: list[dict[str, Any]] = []

        async def one() -> None:
            results.append(await request(path, {"op": "status"}))

        async with trio.open_nursery() as clients:
            for _ in range(40):
                clients.start_soon(one)
        assert len(results) == 40
        nursery.cancel_scope.cancel()
    assert not path.exists()  # removed on the way out
    with pytest.raises(ControlError, match=r"no node is listening.*no such socket"):
        await request(path, {"op": "status"})


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening: what a SIGKILLed node leaves behind
    dead.close()
    with pytest.raises(ControlError, match="stale socket file"):
        await request(path, {"op": "status"})
    async with open_control(path) as listener, trio.open_nursery() as nursery:
        await nursery.start(serve_control, listener, _ops())
        assert (await request(path, {"op": "status"}))["round"] == 3
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        async with open_control(path):
            pass
    assert path.read_text() == "precious"


async def test_a_server_that_never_answers_times_out_the_client(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    async with open_control(path):  # bound and listening, but nobody serves
        with pytest.raises(ControlError, match="did not answer within"):
            await request(path, {"op": "status"}, timeout=0.2)


def test_control_key_of_the_peer_config(tmp_path: Path) -> None:
    from p2pfl.node import load_node_config

    Identity.generate().save(tmp_path / "p.key")
    (tmp_path / "fed.toml").write_text('name = "x"\ntask = "t"\n')
    base = 'key = "p.key"\nfederation = "fed.toml"\n'

    def control(extra: str) -> Path | None:
        (tmp_path / "peer.toml").write_text(base + extra)
        return load_node_config(tmp_path / "peer.toml").control

    assert control("") is None
    assert control('checkpoint_dir = "state"\n') == tmp_path / "state" / "control.sock"
    assert control('checkpoint_dir = "state"\ncontrol = false\n') is None
    assert control('control = "c.sock"\n') == tmp_path / "c.sock"
    assert control('checkpoint_dir = "' + "d" * 120 + '"\n') is None  # too long: none
    with pytest.raises(ConfigError, match=r"control: socket path .* too long"):
        control('control = "' + "c" * 120 + '.sock"\n')
    with pytest.raises(ConfigError, match="control: must be a socket path or false"):
        control("control = 3\n")
    with pytest.raises(ConfigError, match="control: must be a non-empty string"):
        control('control = " "\n')
    # the client's cheap reader agrees with the node's
    for extra in ("", 'checkpoint_dir = "state"\n', 'control = "~/x.sock"\n',
                  'checkpoint_dir = "s"\ncontrol = "/abs/c.sock"\n', "control = false\n"):
        assert control(extra) == config_socket_path(tmp_path / "peer.toml"), extra


# -- four node processes, watched through `p2pfl status --json` ----------------------

N = 4
ROUNDS = 3
DEADLINE = 120.0  # waiting for round 3 everywhere, seconds



def _status_all(configs: list[Path]) -> list[tuple[int, dict[str, Any] | None, str]]:
    """``p2pfl status --config C --json`` for every config, concurrently: (exit status,
    the reply or None, stderr) each."""
    procs = [subprocess.Popen([sys.executable, "-m", "p2pfl", "status", "--config", str(c),
                               "--json", "--timeout", "5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in configs]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=30)
        out.append((p.returncode, json.loads(stdout) if p.returncode == 0 else None, stderr))
    return out


def _status(config: Path) -> tuple[int, dict[str, Any] | None, str]:
    return _status_all([config])[0]


@pytest.mark.slow
def test_four_node_processes_agree_as_seen_through_p2pfl_status(tmp_path: Path) -> None:
    t0 = time.monotonic()
    keys = [tmp_path / f"p{i}.key" for i in range(N)]
    peer_ids = [cli("keygen", str(k)) for k in keys]
    (tmp_path / "federation.toml").write_text(federation_toml(
        "status-processes", (Identity.load(k).public_key.hex() for k in keys),
        size=4, group_size=4, min_group_size=3, threshold=0.6, epochs=3))
    addrs = [f"tcp:127.0.0.1:{p}" for p in free_ports(N)]
    configs = []
    for i in range(N):
        boot = ", ".join(f'"{a}"' for j, a in enumerate(addrs) if j != i)
        cfg = tmp_path / f"p{i}.toml"
        cfg.write_text(
            f'key = "p{i}.key"\nfederation = "federation.toml"\nlisten = "{addrs[i]}"\n'
            f'bootstrap = [{boot}]\ncheckpoint_dir = "state{i}"\ndevice = "cpu"\n'
            f'warmup = 1.0\n\n[task]\nname = "digits"\npeer_index = {i}\nn_peers = {N}\n'
        )
        configs.append(cfg)
    sockets = [tmp_path / f"state{i}" / "control.sock" for i in range(N)]
    rc, _, err = _status(configs[0])
    assert rc == 1 and "no node is listening" in err  # nothing running yet

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(N):
            procs.append(start_node(configs[i], tmp_path, tmp_path / f"p{i}.log"))
        docs: list[dict[str, Any] | None] = [None] * N
        seen: list[dict[str, str]] = [{} for _ in range(N)]  # round -> hash, every reply
        polls = 0
        until = time.monotonic() + DEADLINE
        while not all(d is not None and d["round"] >= ROUNDS for d in docs):
            for i, p in enumerate(procs):
                assert p.poll() is None, f"node {i} exited with {p.returncode}"
            assert time.monotonic() < until, f"timed out waiting for round {ROUNDS}: {docs}"
            for i, (rc, doc, err) in enumerate(_status_all(configs)):
                polls += 1
                assert rc in (0, 1), err  # 1: not listening yet
                if doc is not None:
                    docs[i] = doc
                    seen[i].update(doc["history"])
            time.sleep(0.2)
        t_round = time.monotonic() - t0
        got = [d for d in docs if d is not None]
        assert [d["peer_id"] for d in got] == peer_ids
        assert [d["listen"].split("#")[0] for d in got] == addrs  # tcp:HOST:PORT#peer
        assert len({d["federation"] for d in got}) == 1
        for d in got:
            assert d["pid"] in {p.pid for p in procs}
            assert set(d["neighbor_ids"]) <= set(peer_ids) - {d["peer_id"]}
            assert d["neighbors"] == len(d["neighbor_ids"]) >= 1 and d["live_peers"] >= 1
            assert isinstance(d["reputation"], dict) and isinstance(d["credits"], dict)
            assert d["history"][str(d["round"])] == d["model_hash"]
        for r in range(1, ROUNDS + 1):
            hashes = [h.get(str(r)) for h in seen]
            assert None not in hashes, f"round {r} is missing from a history: {hashes}"
            assert len(set(hashes)) == 1, f"round {r}: the nodes disagree: {hashes}"
        for s in sockets:
            assert stat.S_IMODE(s.stat().st_mode) == 0o600
        text = subprocess.run([sys.executable, "-m", "p2pfl", "status", "--socket",
                               str(sockets[0])], capture_output=True, text=True, timeout=30,
                              check=True).stdout
        assert text.startswith(f"peer        {peer_ids[0]}") and "\nround       " in text
        print("\n" + text)
        # the ledger of a running node, read through a copy
        led = json.loads(subprocess.run(
            [sys.executable, "-m", "p2pfl", "ledger", "--config", str(configs[1]), "--json"],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        assert led["federation"] == got[0]["federation"] and led["height"] >= ROUNDS
        assert set(led["peers"]) == set(peer_ids)

        t1 = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGINT)
        codes = [p.wait(30) for p in procs]
        t_stop = time.monotonic() - t1
        assert codes == [0] * N, codes
        for s in sockets:
            assert not s.exists(), f"{s} left behind"
        rc, _, err = _status(configs[0])
        assert rc == 1 and "no node is listening" in err
        print(f"\nround {ROUNDS} everywhere after {t_round:.1f} s ({polls} status calls), "
              f"hashes of rounds 1..{ROUNDS} agree, SIGINT to exit 0 in {t_stop:.1f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
