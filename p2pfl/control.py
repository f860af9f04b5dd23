"""The local control socket of ``p2pfl node`` (what ``p2pfl status`` talks to).

Theory of operation
-------------------
A running node listens on a Unix domain socket (mode 0600: only its user may connect).
One connection carries one exchange::

    client -> node:  length (u32, big-endian) ‖ CBOR map     e.g. {"op": "status"}
    node -> client:  length (u32, big-endian) ‖ CBOR map     then the node closes

Both messages are at most :data:`MAX_MESSAGE` bytes.  The protocol part is sans-I/O:
:func:`encode_message` frames a map, a :class:`MessageReader` is fed bytes and hands
back the map once it is complete, and :func:`handle_request` maps a request to a reply
through a table of operations (``op`` name -> a function returning a map).  A bad
request (wrong length prefix, undecodable CBOR, not a map, unknown ``op``) is the
client's fault: it gets ``{"error": "..."}``, never an exception in the node; so does
a failing operation (the node logs the traceback).

The I/O part: :func:`open_control` binds the socket for the duration of a block
(replacing a stale socket file left by a killed process, refusing to start when
another process is listening there or when the path is not a socket) and removes the
file at the end; :func:`serve_control` serves its clients concurrently (at most
:data:`MAX_CLIENTS`), giving each :data:`CLIENT_TIMEOUT` seconds for the whole
exchange.  :func:`answer` serves one connection (any trio stream; the unit tests use
memory streams).  :func:`request` is the client; :func:`config_socket_path` finds the
socket a peer config names without importing the node's heavy dependencies.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import cbor2
import trio

from p2pfl.errors import ConfigError, LocalProtocolError, P2PFLError, RemoteProtocolError
from p2pfl.wire._codec import _loads as _decode_cbor  # the hardened decoder of the wire codec

__all__ = [
    "CLIENT_TIMEOUT",
    "MAX_CLIENTS",
    "MAX_MESSAGE",
    "MAX_SOCKET_PATH",
    "ControlError",
    "MessageReader",
    "Operation",
    "answer",
    "config_socket_path",
    "encode_message",
    "handle_request",
    "open_control",
    "request",
    "serve_control",
    "socket_path",
]

log = logging.getLogger("p2pfl.control")

MAX_MESSAGE: Final = 64 * 1024
"""Largest request or reply payload, in bytes (the length prefix not counted)."""
CLIENT_TIMEOUT: Final = 5.0
"""Seconds a client has, from connecting, to send its request and read the reply."""
MAX_CLIENTS: Final = 16
"""Connections served at once; more wait in the listen backlog."""
_BACKLOG: Final = 128

MAX_SOCKET_PATH: Final = 100
"""Longest socket path in bytes (``sun_path`` holds 108 bytes on Linux, 104 on macOS)."""

_PREFIX: Final = struct.Struct(">I")

Operation = Callable[[Mapping[str, Any]], Mapping[str, Any]]
"""One operation: the request map in, the reply map out."""


def socket_path(value: object, checkpoint_dir: Path | None,
                where: Callable[[str], Path]) -> Path | None:
    """The control socket of a peer config from its ``control`` value: a path
    (resolved by ``where``), ``False`` for none, or absent (None) for
    ``checkpoint_dir/control.sock``; none without a checkpoint directory or when that
    default is longer than :data:`MAX_SOCKET_PATH`.

    Raises :class:`ConfigError` for another value or an explicit path that is too long.
    """
    if value is None:
        if checkpoint_dir is None:
            return None
        default = checkpoint_dir / "control.sock"
        return default if len(os.fsencode(default)) <= MAX_SOCKET_PATH else None
    if value is False:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"control: must be a socket path or false, got {value!r}")
    path = where(value)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(f"control: socket path {path} is too long for a Unix socket "
                          f"(at most {MAX_SOCKET_PATH} bytes)")
    return path


def read_peer_config(config: str | os.PathLike[str]) -> tuple[dict[str, Any], Callable[[str], Path]]:
    """The parsed TOML of a peer config file and ``where(rel)``, which resolves a path
    relative to the file's directory (what :func:`p2pfl.node.load_node_config` and
    :func:`config_socket_path` both start from).  Raises :class:`ConfigError`."""
    import tomllib

    p = Path(config)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"config: cannot read {p}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {p} is not valid TOML: {e}") from e
    base = p.resolve().parent

    def where(rel: str) -> Path:
        q = Path(rel).expanduser()
        return q if q.is_absolute() else base / q

    return data, where


def config_socket_path(config: str | os.PathLike[str]) -> Path | None:
    """The control socket named by the peer config file ``config`` (its ``control`` and
    ``checkpoint_dir`` keys; the rest is not read, so this stays cheap for a client).

    Raises :class:`ConfigError` when the file cannot be read or those keys are invalid.
    """
    data, where = read_peer_config(config)
    ckpt = data.get("checkpoint_dir")
    if ckpt is not None and (not isinstance(ckpt, str) or not ckpt.strip()):
        raise ConfigError(f"checkpoint_dir: must be a non-empty string, got {ckpt!r}")
    return socket_path(data.get("control"), where(ckpt) if ckpt else None, where)


class ControlError(P2PFLError):
    """Client side: no node listens on the socket, it did not answer in time, or it
    answered with an error or with something that is not a reply."""


def encode_message(message: Mapping[str, Any]) -> bytes:
    """``message`` framed for the control socket.

    Raises :class:`LocalProtocolError` when it cannot be encoded or exceeds
    :data:`MAX_MESSAGE` (a bug on this side).
    """
    try:
        payload = cbor2.dumps(dict(message))
    except (cbor2.CBOREncodeError, TypeError, ValueError) as e:
        raise LocalProtocolError(f"control message cannot be encoded: {e}") from e
    if len(payload) > MAX_MESSAGE:
        raise LocalProtocolError(
            f"control message of {len(payload)} bytes exceeds the limit of {MAX_MESSAGE}")
    return _PREFIX.pack(len(payload)) + payload


class MessageReader:
    """Reassembles one framed map from the bytes of a connection (no I/O).

    :meth:`feed` bytes as they arrive; :meth:`message` is the map once complete.
    Raises :class:`RemoteProtocolError` for a length prefix above ``max_size``, bytes
    beyond the one message, or a payload that is not a CBOR map with string keys.
    """

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self._max = max_size
        self._buf = bytearray()
        self._length: int | None = None
        self._message: dict[str, Any] | None = None

    @property
    def wanted(self) -> int:
        """How many more bytes complete the message (at least 1 until it is complete)."""
        if self._message is not None:
            return 0
        if self._length is None:
            return _PREFIX.size - len(self._buf)
        return _PREFIX.size + self._length - len(self._buf)

    def feed(self, data: bytes | bytearray) -> None:
        if not data:
            return
        if self._message is not None:
            raise RemoteProtocolError("control: bytes after the end of the message")
        self._buf += data
        if self._length is None:
            if len(self._buf) < _PREFIX.size:
                return
            (n,) = _PREFIX.unpack_from(self._buf)
            if n > self._max:
                raise RemoteProtocolError(
                    f"control: message of {n} bytes exceeds the limit of {self._max}")
            self._length = n
        end = _PREFIX.size + self._length
        if len(self._buf) > end:
            raise RemoteProtocolError("control: bytes after the end of the message")
        if len(self._buf) == end:
            obj = _decode_cbor(bytes(self._buf[_PREFIX.size:]), self._max)
            if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
                raise RemoteProtocolError("control: the message is not a map with text keys")
            self._message = obj
            self._buf.clear()

    def message(self) -> dict[str, Any] | None:
        """The message once complete, else None."""
        return self._message


def handle_request(request: Mapping[str, Any], ops: Mapping[str, Operation]) -> dict[str, Any]:
    """The reply to ``request`` (``{"op": NAME, ...}``) from the operation ``ops[NAME]``.

    Never raises for a bad request: an unknown or missing ``op`` gives
    ``{"error": "..."}``; exceptions of the operation propagate (see :func:`answer`).
    """
    op = request.get("op")
    if not isinstance(op, str):
        return {"error": "the request needs an 'op' text field"}
    fn = ops.get(op)
    if fn is None:
        shown = op if len(op) <= 40 else op[:40] + "..."
        return {"error": f"unknown op {shown!r} (known: {', '.join(sorted(ops))})"}
    return dict(fn(request))


def _reply_to(request: Mapping[str, Any], ops: Mapping[str, Operation]) -> bytes:
    try:
        return encode_message(handle_request(request, ops))
    except Exception:  # an operation's bug must not take the node down
        log.exception("control: operation %r failed", request.get("op"))
        return encode_message({"error": "internal error (see the node's log)"})


async def _receive(stream: trio.abc.ReceiveStream, reader: MessageReader) -> dict[str, Any]:
    while (msg := reader.message()) is None:
        data = await stream.receive_some(reader.wanted)
        if not data:
            raise RemoteProtocolError("control: connection closed in the middle of a message")
        reader.feed(data)
    return msg


async def answer(stream: trio.abc.Stream, ops: Mapping[str, Operation], *,
                 timeout: float = CLIENT_TIMEOUT) -> None:
    """Serve one connection: read a request, send the reply, close ``stream``.

    Never raises for anything the client does (bad input, slowness, hanging up):
    bad input is answered with ``{"error": ...}``, a client slower than ``timeout``
    seconds (the whole exchange) is dropped.
    """
    async with stream:
        with trio.move_on_after(timeout) as scope:
            try:
                request = await _receive(stream, MessageReader())
                reply = _reply_to(request, ops)
            except RemoteProtocolError as e:
                reply = encode_message({"error": str(e)[:1000]})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            try:
                await stream.send_all(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        if scope.cancelled_caught:
            log.debug("control: dropped a client slower than %.1f s", timeout)


async def _clear_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"control: {path} exists and is not a socket (not replacing it)")
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as probe:
        with trio.move_on_after(1.0):
            try:
                await probe.connect(os.fspath(path))
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # left behind by a process that was killed
                log.info("control: replaced the stale socket file %s", path)
                return
            except OSError:
                pass  # cannot tell: do not remove it
        # connected, or no answer within a second (a live but stuck listener)
    raise ConfigError(f"control: another process is listening on {path} (is this node "
                      "already running?)")


async def _bind(path: Path) -> tuple[trio.socket.SocketType, tuple[int, int]]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    await _clear_stale(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    bound = False
    try:
        await sock.bind(os.fspath(path))
        bound = True
        # restrict the file before listen(): until then a connect is refused, so no one
        # can use the socket while it still has the umask's mode
        os.chmod(path, 0o600)
        st = os.stat(path)
        sock.listen(_BACKLOG)
    except OSError as e:
        sock.close()
        if bound:
            path.unlink(missing_ok=True)
        raise ConfigError(f"control: cannot listen on {path}: {e.strerror or e}") from e
    return sock, (st.st_dev, st.st_ino)


def _remove(path: Path, ident: tuple[int, int]) -> None:
    """Unlink ``path`` if it is still the socket file we bound."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            path.unlink()
    except OSError as e:
        log.warning("control: could not remove %s: %s", path, e.strerror or e)


@asynccontextmanager
async def open_control(path: str | os.PathLike[str]) -> AsyncIterator[trio.SocketListener]:
    """Bind the Unix socket ``path`` (mode 0600) for the duration of the block; the
    socket file is removed on the way out.  Clients can connect as soon as the block
    starts; they are answered once :func:`serve_control` runs.

    Raises :class:`ConfigError` when the socket cannot be created: the path is too long
    or not writable, exists and is not a socket, or another process listens on it.
    """
    p = Path(path)
    sock, ident = await _bind(p)
    try:
        async with trio.SocketListener(sock) as listener:
            yield listener
    finally:
        _remove(p, ident)


async def serve_control(listener: trio.abc.Listener[trio.SocketStream],
                        ops: Mapping[str, Operation], *, timeout: float = CLIENT_TIMEOUT,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer the clients of ``listener`` with ``ops`` until cancelled: at most
    :data:`MAX_CLIENTS` at once (more wait in the listen backlog), each within
    ``timeout`` seconds (see :func:`answer`)."""
    slots = trio.Semaphore(MAX_CLIENTS)

    async def serve(stream: trio.SocketStream) -> None:
        try:
            await answer(stream, ops, timeout=timeout)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as e:  # out of file descriptors and the like: back off
                slots.release()
                log.warning("control: accept failed: %s", e.strerror or e)
                await trio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(serve, stream)


async def request(path: str | os.PathLike[str], message: Mapping[str, Any], *,
                  timeout: float = 10.0) -> dict[str, Any]:
    """Send ``message`` to the node listening on ``path``; its reply.

    Raises :class:`ControlError` when nothing listens there, the node does not answer
    within ``timeout`` seconds, or it answers ``{"error": ...}`` or garbage.
    """
    p = os.fspath(path)
    try:
        with trio.fail_after(timeout):
            try:
                stream = await trio.open_unix_socket(p)
            except FileNotFoundError as e:
                raise ControlError(f"no node is listening on {p} (no such socket)") from e
            except ConnectionRefusedError as e:
                raise ControlError(f"no node is listening on {p} (stale socket file)") from e
            except OSError as e:
                raise ControlError(f"cannot connect to {p}: {e.strerror or e}") from e
            async with stream:
                await stream.send_all(encode_message(message))
                reply = await _receive(stream, MessageReader())
    except trio.TooSlowError as e:
        raise ControlError(f"the node on {p} did not answer within {timeout:g} s") from e
    except (trio.BrokenResourceError, RemoteProtocolError) as e:
        raise ControlError(f"bad answer from {p}: {e}") from e
    if "error" in reply:
        raise ControlError(f"the node on {p} answered: {reply['error']}")
    return reply
