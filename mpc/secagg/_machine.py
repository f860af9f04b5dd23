"""The sans-I/O machinery shared by :class:`Member` and :class:`Aggregator`.

A machine is fed ``receive(sender, msg, now)`` and ``handle_timer(now)`` and hands
back ``messages_to_send()`` and ``next_event()``. Its state is an Enum whose legal
moves are one table (``TRANSITIONS``); any other move is a local bug: the machine
goes to ERROR and reports it (h11's LocalProtocolError), it never raises into the
driver.

Remote input is never trusted: a message is type- and range-checked
(``Message.check``), then offered to the state machine. Each message kind has one
*consuming* state for a given sender (``_consumer``); a message that arrives
before that state is buffered (one per kind and sender: links may reorder across
senders), one that arrives after it is late and dropped, one whose sender may never
send it is evidence. Bad content is recorded as :class:`Evidence` naming the
sender, and the message is ignored.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from ._config import GroupConfig, Stage
from ._events import (
    Aborted,
    Event,
    Evidence,
    EvidenceFound,
    EvidenceKind,
    ProtocolError,
    StageReached,
)
from ._messages import Message, MessageError

__all__ = ["LocalProtocolError", "Machine", "RemoteError", "Sign", "Verify"]

Sign = Callable[[bytes], bytes]
"""Signs bytes with this party's identity key."""
Verify = Callable[[int, bytes, bytes], bool]
"""``verify(party, message, signature)``: is it party's identity signature?"""

S = TypeVar("S", bound=enum.Enum)

_MAX_BUFFERED = 1 << 14


def _same(a: Message, b: Message) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # numpy fields make == ambiguous: treat as different
        return False


class LocalProtocolError(Exception):
    """Our own bug or misuse: an illegal transition or a broken invariant."""


class RemoteError(Exception):
    """A remote party sent something wrong; recorded as evidence against it."""

    def __init__(
        self, accused: int, kind: EvidenceKind, detail: str, proof: tuple[object, ...] = ()
    ) -> None:
        super().__init__(detail)
        self.accused = accused
        self.kind = kind
        self.detail = detail
        self.proof = proof


class Machine(Generic[S]):
    """Base class: outbox, events, evidence, buffering and the transition table."""

    TRANSITIONS: Mapping[S, frozenset[S]]
    TERMINAL: frozenset[S]
    ERROR: S
    ABORTED: S

    def __init__(self, cfg: GroupConfig, party: int, sign: Sign, verify: Verify, state: S) -> None:
        self.cfg = cfg
        self.party = party
        self._sign = sign
        self._verify_fn = verify
        self._state = state
        self._now = 0.0
        self._outbox: list[tuple[int, Message]] = []
        self._events: deque[Event] = deque()
        self.evidence: list[Evidence] = []
        self._buffer: dict[tuple[str, int, int], tuple[int, Message]] = {}
        self.late_messages = 0

    # ------------------------------------------------------------ public API

    @property
    def state(self) -> S:
        """The current state."""
        return self._state

    @property
    def finished(self) -> bool:
        """True in a terminal state (done, aborted or error)."""
        return self._state in self.TERMINAL

    def messages_to_send(self) -> list[tuple[int, Message]]:
        """Return and forget the ``(recipient party, message)`` pairs queued so far."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Event | None:
        """Pop the oldest pending event, or None."""
        return self._events.popleft() if self._events else None

    def receive(self, sender: int, msg: object, now: float) -> None:
        """Feed one message from party ``sender``; never raises for bad input."""
        self._now = now
        if self.finished:
            return
        try:
            if not isinstance(msg, Message):
                raise RemoteError(
                    sender, EvidenceKind.MALFORMED, f"not a protocol message: {type(msg).__name__}"
                )
            try:
                msg.check(self.cfg)
            except MessageError as e:
                raise RemoteError(
                    sender, EvidenceKind.MALFORMED, f"{type(msg).__name__}: {e}"
                ) from e
            self._offer(sender, msg)
        except RemoteError as e:
            self._blame(e.accused, e.kind, e.detail, e.proof)
        except LocalProtocolError as e:
            self._fail(str(e))
        except Exception as e:  # a bug surfaced by odd input: stop, never crash the driver
            self._fail(f"unexpected {type(e).__name__}: {e}")

    def handle_timer(self, now: float) -> None:
        """Advance time; acts on every deadline that has passed."""
        self._now = now
        guard = 0
        while not self.finished:
            d = self.next_deadline()
            if d is None or now < d:
                return
            guard += 1
            if guard > 64:
                self._fail("deadline handling does not progress")
                return
            try:
                self._on_deadline()
            except RemoteError as e:
                self._blame(e.accused, e.kind, e.detail, e.proof)
            except LocalProtocolError as e:
                self._fail(str(e))
            except Exception as e:
                self._fail(f"unexpected {type(e).__name__}: {e}")

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must next be called, or None."""
        raise NotImplementedError

    # ------------------------------------------------------------ subclass hooks

    def _consumer(self, sender: int, msg: Message) -> S | None:
        """The state that consumes ``msg`` from ``sender``; None if never legal."""
        raise NotImplementedError

    def _handle(self, sender: int, msg: Message) -> None:
        """Consume ``msg`` (the machine is in its consumer state)."""
        raise NotImplementedError

    def _on_deadline(self) -> None:
        raise NotImplementedError

    def _stage_of(self, state: S) -> Stage | None:
        """Stage to report when entering ``state`` (None: no event)."""
        return None

    # ------------------------------------------------------------ helpers

    def _order(self, s: S) -> int:
        return list(type(s)).index(s)

    def _offer(self, sender: int, msg: Message) -> None:
        target = self._consumer(sender, msg)
        if target is None:
            raise RemoteError(
                sender,
                EvidenceKind.UNEXPECTED,
                f"{type(msg).__name__} may not come from party {sender}",
            )
        here, there = self._order(self._state), self._order(target)
        if there < here:
            self.late_messages += 1
            return
        if there > here:
            key = (type(msg).__name__, sender, int(getattr(msg, "stage", 0)))
            old = self._buffer.get(key)
            if old is not None and not _same(old[1], msg):
                raise RemoteError(
                    sender, EvidenceKind.UNEXPECTED, f"two different early {type(msg).__name__}"
                )
            if len(self._buffer) >= _MAX_BUFFERED:
                raise RemoteError(sender, EvidenceKind.UNEXPECTED, "buffer full")
            self._buffer[key] = (sender, msg)
            return
        self._handle(sender, msg)

    def _replay_buffer(self) -> None:
        """Offer buffered messages whose consumer state has been reached."""
        progress = True
        while progress and not self.finished:
            progress = False
            for key, (sender, msg) in list(self._buffer.items()):
                target = self._consumer(sender, msg)
                if target is None or self._order(target) <= self._order(self._state):
                    del self._buffer[key]
                    try:
                        self._offer(sender, msg)
                    except RemoteError as e:
                        self._blame(e.accused, e.kind, e.detail, e.proof)
                    progress = True
                    break

    def _goto(self, new: S) -> None:
        if new not in self.TRANSITIONS.get(self._state, frozenset()):
            raise LocalProtocolError(f"illegal transition {self._state.name} -> {new.name}")
        self._state = new
        stage = self._stage_of(new)
        if stage is not None:
            self._events.append(StageReached(stage))
        if new in self.TERMINAL:
            self._buffer.clear()

    def _send(self, to: int, msg: Message) -> None:
        self._outbox.append((to, msg))

    def _emit(self, ev: Event) -> None:
        self._events.append(ev)

    def _verify(self, party: int, data: bytes, sig: bytes) -> bool:
        try:
            return bool(self._verify_fn(party, data, sig))
        except Exception:
            return False

    def _blame(
        self, accused: int, kind: EvidenceKind, detail: str, proof: tuple[object, ...] = ()
    ) -> Evidence:
        ev = Evidence(accused, kind, self._current_stage(), detail, proof)
        self.evidence.append(ev)
        self._events.append(EvidenceFound(ev))
        return ev

    def _current_stage(self) -> Stage:
        return Stage.KEYS

    def _abort(self, reason: str, evidence: tuple[Evidence, ...] = ()) -> None:
        if self.finished:
            return
        self._on_abort()
        self._goto(self.ABORTED)
        self._emit(Aborted(reason, evidence))

    def _on_abort(self) -> None:
        """Called before entering ABORTED (wipe secrets, notify peers)."""

    def _fail(self, report: str) -> None:
        if self._state is self.ERROR:
            return
        self._on_abort()
        self._state = self.ERROR  # always legal: the table cannot forbid a bug report
        self._buffer.clear()
        self._outbox = [(to, m) for to, m in self._outbox if self._may_flush(m)]
        self._emit(ProtocolError(report))

    def _may_flush(self, msg: Message) -> bool:
        """Which queued messages still go out after a local error."""
        return False
