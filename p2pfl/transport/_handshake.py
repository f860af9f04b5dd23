"""Sans-I/O authenticated key exchange for stream transports (TCP).

Theory of operation
-------------------
Two peers that know nothing of each other but a *network id* (the federation
id) run a SIGMA-I style exchange (Krawczyk, CRYPTO 2003; the signed variant of
Noise XX): fresh X25519 ephemerals give forward secrecy, each side signs the
transcript with its Ed25519 identity key, identities travel encrypted, and a
final MAC confirms the keys.  Primitives come from libsodium (pynacl: X25519,
Ed25519), ``cryptography`` (ChaCha20-Poly1305) and BLAKE2b (``hashlib``);
nothing is hand-rolled.

Each handshake message is ``length:u16be ‖ CBOR`` (a :mod:`p2pfl.wire` message,
at most :data:`MAX_HANDSHAKE_MESSAGE` bytes).  ``I`` is the initiator (it
connected), ``R`` the responder.  ``T`` is a running BLAKE2b-512 transcript hash
(``person="p2pfl-hs/1"``); ``absorb(label, x)`` feeds it ``len(label) ‖ label ‖
len(x) ‖ x``; ``T`` below means its digest at that point.

1. ``I → R  HandshakeInit(version, network, e_i, suites)``
   ``version`` is :data:`PROTOCOL_VERSION`; ``network`` is a 16-byte BLAKE2b
   tag of the network id (``R`` refuses a foreign network or version with a
   clear error); ``e_i`` is ``I``'s fresh X25519 public key; ``suites`` the
   frame AEADs ``I`` accepts, best first (:class:`~._framing.CipherSuite`).
   Both absorb ``version``, the full ``network_id`` and the encoded message.
2. ``R → I  HandshakeResponse(e_r, suite, sealed_r)``
   ``suite`` is the first of ``I``'s suites that ``R`` accepts (none: a
   ``CIPHER`` failure).  Both absorb ``e_r`` and ``suite`` and compute
   ``h_a = T``, ``dh = X25519(e, E)`` (an all-zero result, from a low-order
   point, is refused) and
   ``prk = BLAKE2b(key=dh, h_a)``; ``k_auth_r``, ``k_auth_i`` expand ``prk``
   with their labels (keyed BLAKE2b as the PRF, as libsodium's ``crypto_kdf``).
   ``R`` absorbs its identity key ``pk_r`` and signs ``T`` with the domain
   ``p2pfl/handshake/1/responder``: ``sealed_r = AEAD(k_auth_r, 0, aad=h_a,
   HandshakeAuth(pk_r, sig_r))``.  ``I`` opens it, absorbs ``pk_r``, checks the
   signature, derives the peer id from ``pk_r`` and checks it against the
   expected peer id if it has one; both absorb ``sig_r``.
3. ``I → R  HandshakeFinish(sealed_i)``
   ``I`` absorbs ``pk_i`` and signs ``T`` (domain ``.../initiator``):
   ``sealed_i = AEAD(k_auth_i, 0, aad=h_a, HandshakeAuth(pk_i, sig_i))``.
   ``R`` opens and checks it; both absorb ``sig_i``; ``h_f = T`` now covers the
   version, network id, both ephemerals, both identity keys and both
   signatures.  ``prk_f = BLAKE2b(key=dh, h_f)`` expands to the session keys
   ``k_i→r``, ``k_r→i`` and ``k_confirm``.
4. ``R → I  HandshakeConfirm(mac)``
   ``mac = BLAKE2b(key=k_confirm, h_f)``.  ``I`` checks it in constant time:
   ``R`` accepted ``I`` and holds the same keys.  Only now does ``I`` consider
   the link open, so ``connect`` never returns a link the responder refused.

Either side may answer a failure with ``HandshakeReject(reason, detail)``
instead, then close.  A reject is *not* authenticated (an active attacker can
always cut a TCP connection anyway); it only makes errors clear, e.g.
"network id mismatch" on the initiator's side.

Security properties: mutual authentication (each side's signature covers both
ephemerals, and ``I``'s covers both identities; ``R``'s binding to ``I`` is
confirmed by the MAC over ``h_f``); forward secrecy (only ephemeral keys are
used for secrecy, and the machine drops them when it finishes: best effort,
as Python cannot zero memory); identity
hiding (identities travel encrypted; ``R``'s is revealed to any active prober,
``I``'s only to an authenticated responder); no replay (every key depends on
both fresh ephemerals, so a message recorded from another session fails to
open or to verify); no reflection (role-specific signature domains, and a
connection to oneself is refused); downgrade protection (the version, the
network id, and the offered and chosen cipher suites are all in the signed
transcript).

The machine is driven by bytes: :meth:`Handshake.receive_data`,
:meth:`Handshake.data_to_send`, :meth:`Handshake.next_event`, plus
:meth:`~Handshake.handle_timer` / :meth:`~Handshake.next_deadline` for the
timeout (the machine never reads a clock; the driver passes ``now``) and
:meth:`~Handshake.receive_eof`.  States and legal transitions are in
:data:`_TRANSITIONS`; any other input moves the machine to ``FAILED`` and
raises :class:`HandshakeError` (a :class:`~p2pfl.errors.RemoteProtocolError`).
Work per input byte is bounded: the length prefix is checked before anything is
buffered, and a message is parsed once.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Final, NoReturn

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2pfl.errors import LocalProtocolError, RemoteProtocolError
from p2pfl.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from p2pfl.wire import MaxLen, PeerId, Range, decode, encode, message

from ._framing import CipherSuite, default_suites

__all__ = [
    "MAX_HANDSHAKE_MESSAGE",
    "PROTOCOL_VERSION",
    "FailureReason",
    "Handshake",
    "HandshakeComplete",
    "HandshakeError",
    "HandshakeState",
    "Role",
    "network_tag",
]

PROTOCOL_VERSION: Final = "p2pfl-handshake/1"
MAX_HANDSHAKE_MESSAGE: Final = 1024
_LEN = struct.Struct(">H")
_X25519_BYTES = 32
_SEALED_MAX = 256
_SIG_DOMAIN_R = b"p2pfl/handshake/1/responder"
_SIG_DOMAIN_I = b"p2pfl/handshake/1/initiator"
_ZERO_NONCE = bytes(12)


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class FailureReason(enum.IntEnum):
    """Why a handshake failed (sent in :class:`HandshakeReject`, counted by drivers)."""

    MALFORMED = 1  # undecodable or unexpected message
    VERSION = 2  # protocol version mismatch
    NETWORK = 3  # network (federation) id mismatch
    AUTHENTICATION = 4  # bad signature, undecryptable payload, bad MAC, bad key
    UNEXPECTED_PEER = 5  # authenticated, but not the peer the initiator asked for
    SELF = 6  # both ends are the same identity
    TIMEOUT = 7  # not finished in time
    CLOSED = 8  # the connection ended during the handshake
    REFUSED = 9  # the remote sent a reject (see ``remote_reason``)
    CIPHER = 10  # no frame cipher suite in common


class HandshakeError(RemoteProtocolError):
    """The handshake failed; ``reason`` is a :class:`FailureReason`.

    ``remote_reason`` is the reason the remote gave in its reject, when
    ``reason`` is ``REFUSED``.  ``peer`` is the remote peer id once known.
    """

    def __init__(
        self,
        message: str,
        reason: FailureReason,
        *,
        peer: PeerId | None = None,
        remote_reason: FailureReason | None = None,
    ) -> None:
        super().__init__(message, peer=peer)
        self.reason = reason
        self.remote_reason = remote_reason


# -- wire messages (tags 0x0200-0x02FF belong to the transport) -----------------

_Key = Annotated[bytes, MaxLen(_X25519_BYTES, exact=True)]


@message(0x0200)
class HandshakeInit:
    version: Annotated[str, MaxLen(64)]
    network: Annotated[bytes, MaxLen(16, exact=True)]
    ephemeral: _Key
    #: Frame AEADs the initiator accepts, as CipherSuite values, best first.
    suites: Annotated[tuple[int, ...], MaxLen(8)]


@message(0x0201)
class HandshakeResponse:
    ephemeral: _Key
    suite: Annotated[int, Range(0, 255)]
    sealed: Annotated[bytes, MaxLen(_SEALED_MAX)]


@message(0x0202)
class HandshakeFinish:
    sealed: Annotated[bytes, MaxLen(_SEALED_MAX)]


@message(0x0203)
class HandshakeConfirm:
    mac: Annotated[bytes, MaxLen(32, exact=True)]


@message(0x0204)
class HandshakeReject:
    reason: FailureReason
    detail: Annotated[str, MaxLen(200)]


@message(0x0205)
class HandshakeAuth:
    """The encrypted payload of messages 2 and 3."""

    public_key: Annotated[bytes, MaxLen(PUBLIC_KEY_BYTES, exact=True)]
    signature: Annotated[bytes, MaxLen(SIGNATURE_BYTES, exact=True)]


# -- states and the transition table ---------------------------------------------


class HandshakeState(enum.Enum):
    AWAIT_INIT = "await-init"  # responder: waiting for message 1
    AWAIT_RESPONSE = "await-response"  # initiator: sent 1, waiting for 2
    AWAIT_FINISH = "await-finish"  # responder: sent 2, waiting for 3
    AWAIT_CONFIRM = "await-confirm"  # initiator: sent 3, waiting for 4
    ESTABLISHED = "established"
    FAILED = "failed"


_S = HandshakeState

#: (state, message class) -> next state.  Everything else is a failure.
_TRANSITIONS: Final[dict[tuple[HandshakeState, type], HandshakeState]] = {
    (_S.AWAIT_INIT, HandshakeInit): _S.AWAIT_FINISH,
    (_S.AWAIT_RESPONSE, HandshakeResponse): _S.AWAIT_CONFIRM,
    (_S.AWAIT_FINISH, HandshakeFinish): _S.ESTABLISHED,
    (_S.AWAIT_CONFIRM, HandshakeConfirm): _S.ESTABLISHED,
}
_WAITING = frozenset({_S.AWAIT_INIT, _S.AWAIT_RESPONSE, _S.AWAIT_FINISH, _S.AWAIT_CONFIRM})


@dataclass(frozen=True)
class HandshakeComplete:
    """The event of a finished handshake: who the remote is, and the session keys."""

    remote_peer: PeerId
    remote_public_key: bytes
    suite: CipherSuite
    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    #: Hash of the whole transcript: a channel binding both ends agree on.
    transcript_hash: bytes = field(repr=False)


# -- helpers -----------------------------------------------------------------------


def network_tag(network_id: bytes) -> bytes:
    """The 16-byte tag of a network id sent in message 1."""
    return hashlib.blake2b(network_id, digest_size=16, person=b"p2pfl-netid").digest()


def _expand(prk: bytes, label: bytes) -> bytes:
    return hashlib.blake2b(label, key=prk, digest_size=32, person=b"p2pfl-hs-kdf").digest()


def _extract(dh: bytes, transcript: bytes) -> bytes:
    return hashlib.blake2b(transcript, key=dh, digest_size=64, person=b"p2pfl-hs-prk").digest()


class _Transcript:
    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=64, person=b"p2pfl-hs/1")

    def absorb(self, label: bytes, data: bytes) -> None:
        self._h.update(bytes([len(label)]) + label + len(data).to_bytes(4, "big") + data)

    def digest(self) -> bytes:
        return self._h.digest()


def _frame(msg: object) -> bytes:
    body = encode(msg)
    if len(body) > MAX_HANDSHAKE_MESSAGE:  # pragma: no cover - schema bounds it
        raise LocalProtocolError("handshake message too large")
    return _LEN.pack(len(body)) + body


# -- the machine -----------------------------------------------------------------------


class Handshake:
    """One side of one handshake.

    ``network_id`` is the federation id (bytes, or str as UTF-8).  ``now`` is the
    driver's clock at the start and ``timeout`` the most seconds the whole
    handshake may take (``None``: no limit).  ``expected_peer`` (initiator only)
    makes the handshake fail unless the responder authenticates as that peer.
    ``suites`` are the frame AEADs accepted, best first (default
    :func:`~._framing.default_suites`).  ``rng(n)`` supplies the ephemeral secret (default :func:`os.urandom`; tests
    pass a seeded generator).

    The initiator's first message is ready in :meth:`data_to_send` at once.
    """

    def __init__(
        self,
        role: Role,
        identity: Identity,
        network_id: bytes | str,
        *,
        now: float,
        timeout: float | None = 10.0,
        expected_peer: PeerId | None = None,
        suites: tuple[CipherSuite, ...] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._suites = default_suites() if suites is None else tuple(suites)
        if not self._suites or not all(isinstance(x, CipherSuite) for x in self._suites):
            raise LocalProtocolError("suites must be a non-empty tuple of CipherSuite")
        self.suite: CipherSuite | None = None
        if isinstance(network_id, str):
            network_id = network_id.encode()
        if not isinstance(network_id, bytes):
            raise TypeError("network_id must be bytes or str")
        if expected_peer is not None and role is not Role.INITIATOR:
            raise LocalProtocolError("only the initiator can expect a peer id")
        self.role = role
        self._identity = identity
        self._network_id = network_id
        self._network_tag = network_tag(network_id)
        self._expected = expected_peer
        self._deadline = None if timeout is None else now + timeout
        self._secret: bytes | None = rng(32)
        if len(self._secret) != 32:
            raise LocalProtocolError("rng must return 32 bytes for an X25519 key")
        self._ephemeral = nacl.bindings.crypto_scalarmult_base(self._secret)
        self._t = _Transcript()
        self._t.absorb(b"version", PROTOCOL_VERSION.encode())
        self._t.absorb(b"network", network_id)
        self._h_a = b""
        self._dh = b""
        self._k_auth_r = b""
        self._k_auth_i = b""
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._trailing = b""
        self._events: list[HandshakeComplete] = []
        self._remote_pk = b""
        self._pending_done: HandshakeComplete | None = None
        self.result: HandshakeComplete | None = None
        self.error: HandshakeError | None = None
        self.remote_peer: PeerId | None = None
        if role is Role.INITIATOR:
            init = HandshakeInit(
                PROTOCOL_VERSION,
                self._network_tag,
                self._ephemeral,
                tuple(int(x) for x in self._suites),
            )
            self._t.absorb(b"init", encode(init))
            self._outbuf += _frame(init)
            self.state = _S.AWAIT_RESPONSE
        else:
            self.state = _S.AWAIT_INIT

    # -- driver interface ---------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the remote now (possibly empty); drains the buffer.

        After a failure this may hold a :class:`HandshakeReject`: write it (best
        effort) before closing.
        """
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def next_event(self) -> HandshakeComplete | None:
        """The completion event, once, when the handshake has succeeded."""
        return self._events.pop() if self._events else None

    @property
    def established(self) -> bool:
        return self.state is _S.ESTABLISHED

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the last handshake message (they belong to the
        frame layer: feed them to the frame decoder)."""
        return self._trailing

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called, or None."""
        return self._deadline if self.state in _WAITING else None

    def handle_timer(self, now: float) -> None:
        """Fail with ``TIMEOUT`` when ``now`` is past the deadline.

        Raises :class:`HandshakeError` in that case.
        """
        if self.state in _WAITING and self._deadline is not None and now >= self._deadline:
            self._fail(
                FailureReason.TIMEOUT,
                f"handshake not finished within the timeout (stuck in {self.state.value})",
            )

    def receive_eof(self) -> None:
        """The remote closed the connection.  Raises :class:`HandshakeError`
        unless the handshake already succeeded."""
        if self.state in _WAITING:
            self._fail(
                FailureReason.CLOSED,
                f"connection closed during the handshake (in {self.state.value})",
                reject=False,
            )

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the remote.

        Raises :class:`HandshakeError` (a :class:`RemoteProtocolError`) on any
        invalid input, and :class:`LocalProtocolError` when called after the
        machine finished or failed.
        """
        if self.state is _S.FAILED:
            raise LocalProtocolError("handshake already failed") from self.error
        if self.state is _S.ESTABLISHED:
            raise LocalProtocolError("handshake already finished: feed the frame decoder")
        self._inbuf += data
        while self.state in _WAITING:
            if len(self._inbuf) < _LEN.size:
                return
            (n,) = _LEN.unpack_from(self._inbuf)
            if n == 0 or n > MAX_HANDSHAKE_MESSAGE:
                self._fail(
                    FailureReason.MALFORMED,
                    f"handshake message of {n} bytes (limit {MAX_HANDSHAKE_MESSAGE}); "
                    "is the remote speaking the p2pfl protocol?",
                )
            if len(self._inbuf) < _LEN.size + n:
                return
            body = bytes(self._inbuf[_LEN.size : _LEN.size + n])
            del self._inbuf[: _LEN.size + n]
            self._handle(body)
        if self.established:
            self._trailing = bytes(self._inbuf)
            self._inbuf = bytearray()

    # -- internals -------------------------------------------------------------------

    def _fail(
        self,
        reason: FailureReason,
        text: str,
        *,
        reject: bool = True,
        remote_reason: FailureReason | None = None,
    ) -> NoReturn:
        err = HandshakeError(
            f"handshake with {self.remote_peer or 'unauthenticated peer'} failed: {text}",
            reason,
            peer=self.remote_peer,
            remote_reason=remote_reason,
        )
        self.state = _S.FAILED
        self.error = err
        self._outbuf.clear()
        if reject:
            self._outbuf += _frame(HandshakeReject(reason, text[:200]))
        self._forget()
        self._inbuf = bytearray()
        raise err

    def _forget(self) -> None:
        """Drop the ephemeral secret and intermediate keys (forward secrecy)."""
        self._secret = None
        self._dh = self._k_auth_i = self._k_auth_r = b""

    def _handle(self, body: bytes) -> None:
        try:
            msg = decode(body, max_size=MAX_HANDSHAKE_MESSAGE)
        except RemoteProtocolError as e:
            self._fail(FailureReason.MALFORMED, f"undecodable handshake message: {e}")
        if isinstance(msg, HandshakeReject):
            self._fail(
                FailureReason.REFUSED,
                f"the remote refused the handshake: {msg.reason.name.lower()}: {msg.detail!r}",
                reject=False,
                remote_reason=msg.reason,
            )
        nxt = _TRANSITIONS.get((self.state, type(msg)))
        if nxt is None:
            self._fail(
                FailureReason.MALFORMED,
                f"unexpected {type(msg).__name__} in state {self.state.value}",
            )
        handler = _HANDLERS[type(msg)]
        handler(self, msg, body)
        self.state = nxt

    def _derive_auth_keys(self, remote_ephemeral: bytes) -> None:
        assert self._secret is not None
        try:
            self._dh = nacl.bindings.crypto_scalarmult(self._secret, remote_ephemeral)
        except nacl.exceptions.CryptoError:
            self._fail(
                FailureReason.AUTHENTICATION, "the remote ephemeral key is a low-order point"
            )
        self._h_a = self._t.digest()
        prk = _extract(self._dh, self._h_a)
        self._k_auth_r = _expand(prk, b"auth responder")
        self._k_auth_i = _expand(prk, b"auth initiator")

    def _seal_auth(self, key: bytes, domain: bytes) -> bytes:
        self._t.absorb(b"identity", self._identity.public_key)
        sig = self._identity.sign(domain, self._t.digest())
        self._t.absorb(b"signature", sig)
        payload = encode(HandshakeAuth(self._identity.public_key, sig))
        return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, payload, self._h_a)

    def _open_auth(self, key: bytes, sealed: bytes, domain: bytes, who: str) -> bytes:
        try:
            payload = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, sealed, self._h_a)
        except InvalidTag:
            self._fail(
                FailureReason.AUTHENTICATION,
                f"cannot open the {who}'s identity (tampered, or replayed from another session)",
            )
        try:
            auth = decode(payload, max_size=MAX_HANDSHAKE_MESSAGE)
        except RemoteProtocolError as e:
            self._fail(FailureReason.MALFORMED, f"bad {who} identity payload: {e}")
        if not isinstance(auth, HandshakeAuth):
            self._fail(FailureReason.MALFORMED, f"bad {who} identity payload")
        self._t.absorb(b"identity", auth.public_key)
        if not verify_signature(auth.public_key, domain, self._t.digest(), auth.signature):
            self._fail(
                FailureReason.AUTHENTICATION,
                f"the {who}'s signature does not verify with the identity key it presented",
            )
        self._t.absorb(b"signature", auth.signature)
        peer = PeerId.from_public_key(auth.public_key)
        self.remote_peer = peer
        if auth.public_key == self._identity.public_key:
            self._fail(FailureReason.SELF, "the remote is this very identity (self-connection)")
        return auth.public_key

    def _complete(self, remote_public_key: bytes) -> bytes:
        """Derive session keys; returns the confirmation MAC."""
        h_f = self._t.digest()
        prk = _extract(self._dh, h_f)
        k_ir = _expand(prk, b"session initiator->responder")
        k_ri = _expand(prk, b"session responder->initiator")
        mac = hashlib.blake2b(h_f, key=_expand(prk, b"confirm"), digest_size=32).digest()
        initiator = self.role is Role.INITIATOR
        assert self.remote_peer is not None and self.suite is not None
        done = HandshakeComplete(
            remote_peer=self.remote_peer,
            remote_public_key=remote_public_key,
            suite=self.suite,
            send_key=k_ir if initiator else k_ri,
            receive_key=k_ri if initiator else k_ir,
            transcript_hash=h_f,
        )
        self.result = done
        self._pending_done = done
        return mac

    def _finish(self) -> None:
        assert self._pending_done is not None
        self._events.append(self._pending_done)
        self._forget()

    # -- per-message handlers (called only for legal transitions) -------------------

    def _on_init(self, msg: HandshakeInit, body: bytes) -> None:
        if msg.version != PROTOCOL_VERSION:
            self._fail(
                FailureReason.VERSION,
                f"protocol version mismatch: remote speaks {msg.version!r}, "
                f"we speak {PROTOCOL_VERSION!r}",
            )
        if not hmac.compare_digest(msg.network, self._network_tag):
            self._fail(
                FailureReason.NETWORK,
                f"network id mismatch: remote is on network {msg.network.hex()}, "
                f"we are on {self._network_tag.hex()}",
            )
        # The initiator's order of preference decides among suites we support.
        common = [x for x in msg.suites if x in self._suites]
        if not common:
            self._fail(
                FailureReason.CIPHER,
                f"no frame cipher suite in common: remote offers {list(msg.suites)}, "
                f"we accept {[int(x) for x in self._suites]}",
            )
        self.suite = CipherSuite(common[0])
        self._t.absorb(b"init", body)
        self._t.absorb(b"e_r", self._ephemeral)
        self._t.absorb(b"suite", bytes([self.suite]))
        self._derive_auth_keys(msg.ephemeral)
        sealed = self._seal_auth(self._k_auth_r, _SIG_DOMAIN_R)
        self._outbuf += _frame(HandshakeResponse(self._ephemeral, int(self.suite), sealed))

    def _on_response(self, msg: HandshakeResponse, body: bytes) -> None:
        if msg.suite not in self._suites:
            self._fail(
                FailureReason.CIPHER,
                f"the responder chose cipher suite {msg.suite}, which we did not offer",
            )
        self.suite = CipherSuite(msg.suite)
        self._t.absorb(b"e_r", msg.ephemeral)
        self._t.absorb(b"suite", bytes([self.suite]))
        self._derive_auth_keys(msg.ephemeral)
        self._remote_pk = self._open_auth(self._k_auth_r, msg.sealed, _SIG_DOMAIN_R, "responder")
        if self._expected is not None and self.remote_peer != self._expected:
            self._fail(
                FailureReason.UNEXPECTED_PEER,
                f"expected peer {self._expected}, but the responder authenticated as "
                f"{self.remote_peer}",
            )
        sealed = self._seal_auth(self._k_auth_i, _SIG_DOMAIN_I)
        self._outbuf += _frame(HandshakeFinish(sealed))

    def _on_finish(self, msg: HandshakeFinish, body: bytes) -> None:
        pk = self._open_auth(self._k_auth_i, msg.sealed, _SIG_DOMAIN_I, "initiator")
        mac = self._complete(pk)
        self._outbuf += _frame(HandshakeConfirm(mac))
        self._finish()

    def _on_confirm(self, msg: HandshakeConfirm, body: bytes) -> None:
        mac = self._complete(self._remote_pk)
        if not hmac.compare_digest(mac, msg.mac):
            self.result = None
            self._fail(
                FailureReason.AUTHENTICATION,
                "key confirmation failed (the responder does not hold our keys)",
            )
        self._finish()


_HANDLERS: Final[dict[type, Callable[[Handshake, object, bytes], None]]] = {
    HandshakeInit: Handshake._on_init,  # type: ignore[dict-item]
    HandshakeResponse: Handshake._on_response,  # type: ignore[dict-item]
    HandshakeFinish: Handshake._on_finish,  # type: ignore[dict-item]
    HandshakeConfirm: Handshake._on_confirm,  # type: ignore[dict-item]
}
