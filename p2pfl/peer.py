"""The composition root: one federated-learning peer in one ``async with`` block.

Theory of operation
-------------------
:func:`open_peer` wires the layers together for one peer and owns them in one nursery::

    identity (key file or object)
      └─ transport  (TCP from ``listen``; or one you pass, e.g. a MemoryNetwork's)
           └─ overlay  (network id = the federation id; joins through ``bootstrap``)
                └─ FederationDriver  (rounds, training, checkpoints, catch-up)

and yields a :class:`Peer`.  Leaving the block cancels the driver, leaves the overlay
(DISCONNECT to the neighbours) and closes every link.  Errors in the configuration are
:class:`~p2pfl.errors.ConfigError` raised before anything starts.

The round-0 model is ``task.model_factory(federation.seed)`` flattened (every peer
builds the same one); a checkpoint in ``checkpoint_dir`` takes precedence, so a
restarted peer resumes where it was and catches up if the federation moved on.
With ``keep_models = N`` the peer also keeps the state of each of the last ``N``
rounds it started (:func:`model_path`, in ``checkpoint_dir/models/``), so that a
monitor can evaluate every round's global model (``p2pfl sim --transport tcp``).

Example (trio)::

    config = PeerConfig(identity="peer.key", federation="federation.toml",
                        listen="tcp:0.0.0.0:7000", bootstrap=("tcp:10.0.0.2:7000",),
                        checkpoint_dir="state/")
    async with open_peer(config, task) as peer:
        state = await peer.wait_round(4)       # the state after round 4
        model = peer.global_model()            # vector + hash
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trio

from mpc.rand import Rng, SystemRng
from p2pfl.errors import ConfigError
from p2pfl.federation import (
    Federation,
    GlobalState,
    PlaintextAggregation,
    TrainRequested,
    load_checkpoint,
    load_federation,
    save_checkpoint,
)
from p2pfl.federation.adversary import Adversary
from p2pfl.federation.aggregation import AggregationFactory
from p2pfl.federation.driver import (
    DriverEvent,
    DriverStatistics,
    FaultHook,
    FederationDriver,
    RoundStarted,
    Trainer,
)
from p2pfl.identity import Identity
from p2pfl.learning.strategy import hash_vector
from p2pfl.ledger import Ledger, RoundLedger
from p2pfl.overlay import Offense, Overlay, OverlayConfig, open_overlay
from p2pfl.transport import IceServer, Transport
from p2pfl.transport.hybrid import HybridTransport
from p2pfl.wire import PeerId

if TYPE_CHECKING:
    from p2pfl.learning.task import Task

__all__ = [
    "AGGREGATION_BACKENDS",
    "GlobalModel",
    "Peer",
    "PeerConfig",
    "checkpoint_path",
    "initial_model",
    "ledger_path",
    "model_path",
    "open_peer",
    "overlay_penalizer",
    "register_aggregation",
    "resolve_aggregation",
    "resume_state",
    "save_model",
    "task_trainer",
]

log = logging.getLogger("p2pfl.peer")

AGGREGATION_BACKENDS: dict[str, AggregationFactory | str] = {
    "plaintext": PlaintextAggregation,
    "secure": "p2pfl.federation.secure:SecureAggregation",  # imported on first use
}
"""Group-aggregation backends by name; a ``"module:attribute"`` string is imported lazily."""


def register_aggregation(name: str, factory: AggregationFactory | str) -> None:
    """Make ``factory`` (or a lazily imported ``"module:attribute"``) available as ``name``."""
    AGGREGATION_BACKENDS[name] = factory


def resolve_aggregation(spec: str | AggregationFactory | None,
                        federation: Federation) -> AggregationFactory:
    """The backend for ``spec``: a registered name, a factory, or None for what the
    federation file asks for (``secure = true`` → ``"secure"``, else ``"plaintext"``).

    Raises :class:`ConfigError` for an unknown name, a backend that cannot be imported,
    or ``"secure"``/``"plaintext"`` contradicting the federation's ``secure`` flag (peers
    of one federation must run the same protocol).
    """
    if spec is not None and not isinstance(spec, str):
        return spec
    name = spec if spec is not None else ("secure" if federation.secure else "plaintext")
    if name not in AGGREGATION_BACKENDS:
        known = ", ".join(sorted(AGGREGATION_BACKENDS))
        raise ConfigError(f"aggregation: unknown backend {name!r} (known: {known})")
    if name in ("secure", "plaintext") and (name == "secure") != federation.secure:
        raise ConfigError(f"aggregation: {name!r} contradicts the federation file "
                          f"(secure = {str(federation.secure).lower()})")
    entry = AGGREGATION_BACKENDS[name]
    if not isinstance(entry, str):
        return entry
    module_name, _, attr = entry.partition(":")
    try:
        factory: AggregationFactory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"aggregation: the {name!r} backend ({entry}) is not available: {e}") from e
    AGGREGATION_BACKENDS[name] = factory
    return factory


def overlay_penalizer(overlay: Overlay) -> Callable[[PeerId, str], None]:
    """``penalize(peer, reason)`` for the driver: an ``INVALID`` offence on the overlay's
    scoreboard (a graylisting's disconnect takes effect at the overlay's next step)."""
    proto = overlay.protocol
    return lambda peer, reason: proto.penalize(peer, Offense.INVALID, trio.current_time())


def checkpoint_path(directory: str | Path, federation: Federation) -> Path:
    """Where a peer keeps its checkpoint of ``federation`` in ``directory``."""
    return Path(directory) / f"state-{federation.id_hex[:16]}.ckpt"


def ledger_path(directory: str | Path, federation: Federation) -> Path:
    """Where a peer keeps its ledger file of ``federation`` in ``directory``."""
    return Path(directory) / f"ledger-{federation.id_hex[:16]}.bin"


def model_path(directory: str | Path, federation: Federation, completed: int) -> Path:
    """Where a peer with ``keep_models`` keeps its state after ``completed`` rounds of
    ``federation`` (a checkpoint file: the model round ``completed - 1`` produced; 0:
    the initial model) in ``directory``."""
    return Path(directory) / "models" / f"state-{federation.id_hex[:16]}-{completed:08d}.ckpt"


def save_model(directory: str | Path, federation: Federation, state: GlobalState,
               keep: int) -> None:
    """Write ``state`` to :func:`model_path` atomically (:func:`save_checkpoint`) and
    delete the files of rounds ``keep`` or more before it (``keep >= 1``). Raises
    :class:`OSError`."""
    save_checkpoint(model_path(directory, federation, state.round), state)
    prefix = model_path(directory, federation, 0).name.removesuffix("00000000.ckpt")
    for f in (Path(directory) / "models").glob(f"{prefix}*.ckpt"):
        completed = f.name.removeprefix(prefix).removesuffix(".ckpt")
        if completed.isdigit() and int(completed) <= state.round - keep:
            f.unlink(missing_ok=True)


def resume_state(federation: Federation, initial: np.ndarray,
                 checkpoint_dir: str | Path | None = None) -> GlobalState:
    """The checkpoint in ``checkpoint_dir`` when there is one, else round 0 from the
    ``initial`` model. Raises :class:`~p2pfl.federation.CheckpointError` for a corrupt
    or foreign checkpoint (a peer never silently starts over)."""
    if checkpoint_dir is not None:
        path = checkpoint_path(checkpoint_dir, federation)
        if path.exists():
            return load_checkpoint(path, federation)
    return GlobalState.initial(federation, initial)


@dataclass(frozen=True)
class PeerConfig:
    """What one peer needs.

    ``identity``: an :class:`Identity` or the path of a key file (``p2pfl keygen``).
    ``federation``: a :class:`Federation` or the path of a federation file.
    ``listen``: ``tcp:HOST:PORT`` (ignored when a transport is passed to
    :func:`open_peer`). ``bootstrap``: addresses to join through. ``checkpoint_dir``:
    where to keep the round checkpoint (None: none). ``keep_models``: also keep the
    state of each of the last ``keep_models`` rounds there (:func:`model_path`; 0:
    none; needs ``checkpoint_dir``). ``device``: ``auto | cpu | cuda[:N]``
    for local training. ``train_inline``: train on the event loop (simulations under a
    mock clock only; see :mod:`p2pfl.federation.driver`). ``aggregation``: backend name
    (None: what the federation file says). ``candidates``: agreed cohort candidates
    (None: the permissioned member list). ``warmup``: seconds between joining and the
    first round. ``overlay``: overlay parameters (its ``network_id`` is replaced by the
    federation id).

    Reachability (see ``docs/webrtc.md``; ignored when a transport is passed, except
    ``reachable = False`` without ``webrtc``, which stops the overlay accepting links):
    ``reachable``: listen on ``listen`` (False: no listening socket; the peer dials
    out only). ``webrtc``: also accept and dial WebRTC links, signaled over the overlay
    (:class:`~p2pfl.transport.hybrid.HybridTransport`; needs aiortc) -- an unreachable
    peer with ``webrtc`` is reachable as ``webrtc:PEERID``. ``ice_servers``: STUN/TURN
    servers (URL strings or :class:`~p2pfl.transport.IceServer`; none by default, none
    needed on one host or a LAN). ``webrtc_host_addresses``: local addresses to gather
    ICE host candidates on (None: every interface but loopback; ``("127.0.0.1",)`` on
    one host).
    """

    identity: Identity | str | Path
    federation: Federation | str | Path
    listen: str = "tcp:127.0.0.1:0"
    bootstrap: tuple[str, ...] = ()
    checkpoint_dir: str | Path | None = None
    keep_models: int = 0
    device: str = "auto"
    train_inline: bool = False
    aggregation: str | None = None
    candidates: tuple[PeerId, ...] | None = None
    warmup: float = 2.0
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    reachable: bool = True
    webrtc: bool = False
    ice_servers: tuple[IceServer | str, ...] = ()
    webrtc_host_addresses: tuple[str, ...] | None = None


@dataclass(frozen=True, eq=False)
class GlobalModel:
    """The global model a peer holds: after ``round`` completed rounds (0: the initial
    model). ``vector`` is the read-only float32 parameter vector, ``hash`` its
    BLAKE2b-256 hex digest (:func:`p2pfl.learning.hash_vector`)."""

    round: int
    vector: np.ndarray
    hash: str


def task_trainer(task: Task, federation: Federation, device: str = "auto") -> Trainer:
    """A :data:`~p2pfl.federation.driver.Trainer` running
    :func:`p2pfl.learning.local_update` on ``task`` with the federation's local-training
    settings and the round's seed. Not reentrant (one scratch model)."""
    from p2pfl.learning.task import local_update

    scratch = task.model_factory(federation.seed)

    def train(ev: TrainRequested) -> tuple[np.ndarray, int]:
        config = federation.train_config(seed=ev.seed, device=device)
        update = local_update(task, scratch, ev.global_vector.copy(), config)  # writable copy
        return update, int(task.num_samples)

    return train


def initial_model(task: Task, federation: Federation) -> np.ndarray:
    """The round-0 global model: ``task.model_factory(federation.seed)`` as a vector."""
    from p2pfl.learning.vector import model_to_vector

    return model_to_vector(task.model_factory(federation.seed))


class Peer:
    """A running peer (made by :func:`open_peer`; valid inside its block)."""

    def __init__(self, identity: Identity, federation: Federation, overlay: Overlay,
                 driver: FederationDriver, ledger: Ledger | None = None) -> None:
        self.identity = identity
        self.federation = federation
        self.overlay = overlay
        self.driver = driver
        self.ledger = ledger

    def reputation(self) -> dict[str, float]:
        """Peer id (base32) -> reputation score in (0, 1), from this peer's ledger."""
        if self.ledger is None:
            return {}
        return {str(p): s for p, s in sorted(self.ledger.standing.reputation().items())}

    def credits(self) -> dict[str, float]:
        """Peer id (base32) -> credits earned, from this peer's ledger."""
        if self.ledger is None:
            return {}
        return {str(p): c for p, c in sorted(self.ledger.standing.credits().items())}

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def address(self) -> str | None:
        """The address others dial (None when not listening)."""
        return self.overlay.address

    @property
    def round(self) -> int:
        """The round this peer is running (= rounds completed so far)."""
        return self.driver.round

    @property
    def state(self) -> GlobalState:
        """The full global state the current round starts from."""
        return self.driver.state

    def global_model(self) -> GlobalModel:
        s = self.driver.state
        return GlobalModel(s.round, s.model, hash_vector(s.model))

    async def wait_round(self, r: int | None = None) -> GlobalState:
        """Wait until round ``r`` (default: the current one) is done here; returns the
        state the next round starts from. Rounds skipped by a catch-up count as done."""
        return await self.driver.wait_round(r)

    def events(self, *, buffer: int = 1024) -> trio.MemoryReceiveChannel[DriverEvent]:
        """A new subscription to this peer's events (RoundStarted, RoundCompleted, ...)."""
        return self.driver.subscribe(buffer=buffer)

    def statistics(self) -> DriverStatistics:
        return self.driver.statistics()

    def __repr__(self) -> str:
        return f"Peer({self.peer_id.short()}, round {self.round})"


def _identity(spec: Identity | str | Path) -> Identity:
    if isinstance(spec, Identity):
        return spec
    return Identity.load(Path(spec))


def _federation(spec: Federation | str | Path) -> Federation:
    if isinstance(spec, Federation):
        return spec
    return load_federation(spec)


@asynccontextmanager
async def open_peer(
    config: PeerConfig,
    task: Task,
    *,
    transport: Transport | None = None,
    state: GlobalState | None = None,
    trainer: Trainer | None = None,
    aggregation: AggregationFactory | None = None,
    rng: Rng | None = None,
    overlay_rng: random.Random | None = None,
    wall_offset: float | None = None,
    limiter: trio.CapacityLimiter | None = None,
    fault: FaultHook | None = None,
    ledger: Ledger | None = None,
    adversary: Adversary | None = None,
) -> AsyncIterator[Peer]:
    """Run one peer for the duration of the block (see the module docstring).

    Keyword arguments are for embedding and simulations: ``transport`` (default: TCP on
    ``config.listen``), ``state`` to start from (default: the checkpoint, else round 0),
    ``trainer`` (default: :func:`task_trainer`), an ``aggregation`` factory overriding
    ``config.aggregation``, ``rng`` for the protocols and ``overlay_rng`` for the
    overlay (default: the OS CSPRNG), ``wall_offset`` (simulations: 0), a shared
    training ``limiter``, and a ``fault`` hook.  ``ledger``: the peer's ledger (default:
    the file :func:`ledger_path` in ``config.checkpoint_dir``, else in memory);
    ``adversary``: a simulated attacker's behaviour (simulations only).

    Raises :class:`ConfigError` (federation file, address, backend, membership) or
    another :class:`~p2pfl.errors.P2PFLError` (key file,
    :class:`~p2pfl.federation.CheckpointError`) before anything runs.
    """
    if config.keep_models < 0 or (config.keep_models > 0 and config.checkpoint_dir is None):
        raise ConfigError(f"keep_models: must be 0, or positive with a checkpoint_dir; got "
                          f"{config.keep_models!r} (checkpoint_dir {config.checkpoint_dir!r})")
    identity = _identity(config.identity)
    fed = _federation(config.federation)
    if not fed.membership.admits(identity.peer_id):
        raise ConfigError(
            f"identity: peer {identity.peer_id} is not a member of the permissioned "
            f"federation {fed.name!r}"
        )
    factory = resolve_aggregation(aggregation if aggregation is not None else config.aggregation,
                                  fed)
    if state is None:
        state = resume_state(fed, initial_model(task, fed), config.checkpoint_dir)
    if trainer is None:
        trainer = task_trainer(task, fed, config.device)
    if transport is None:
        transport = _default_transport(identity, fed, config)
    elif transport.local_peer != identity.peer_id:
        raise ConfigError("transport: belongs to another identity")
    ov_config = _with_network(config.overlay, fed)
    async with open_overlay(transport, identity, ov_config, bootstrap=config.bootstrap,
                            listen=_overlay_listens(config), on_open=_overlay_hook(transport),
                            rng=overlay_rng, wall_offset=wall_offset) as overlay:
        ckpt = (checkpoint_path(config.checkpoint_dir, fed)
                if config.checkpoint_dir is not None else None)
        if ledger is None:
            ledger = (Ledger.open(ledger_path(config.checkpoint_dir, fed), fed)
                      if config.checkpoint_dir is not None else Ledger(fed))
        bound = RoundLedger(ledger, identity.peer_id, rng=rng if rng is not None else SystemRng(),
                            neighbours=overlay.neighbors)
        driver = FederationDriver(
            fed, identity, overlay, trainer, state, aggregation=factory,
            candidates=config.candidates, rng=rng, checkpoint=ckpt,
            penalize=overlay_penalizer(overlay),
            train_inline=config.train_inline,
            limiter=limiter if limiter is not None else trio.CapacityLimiter(1),
            fault=fault, warmup=config.warmup, ledger=bound, adversary=adversary,
            public_key=_key_lookup(fed, identity, overlay),
        )
        async with trio.open_nursery() as nursery:
            if config.keep_models > 0:
                assert config.checkpoint_dir is not None
                nursery.start_soon(_keep_models, driver.subscribe(), config.checkpoint_dir, fed,
                                   config.keep_models, config.train_inline)
            await nursery.start(driver.run)
            try:
                yield Peer(identity, fed, overlay, driver, ledger)
            finally:
                nursery.cancel_scope.cancel()


async def _keep_models(events: trio.MemoryReceiveChannel[DriverEvent], directory: str | Path,
                       fed: Federation, keep: int, inline: bool) -> None:
    """:func:`save_model` the state of every round started (in a thread unless
    ``inline``); a failed write is logged, the peer runs on."""
    async with events:
        async for ev in events:
            if not isinstance(ev, RoundStarted):
                continue
            try:
                if inline:
                    save_model(directory, fed, ev.state, keep)
                else:
                    await trio.to_thread.run_sync(save_model, directory, fed, ev.state, keep)
            except OSError as e:
                log.error("keep_models: saving the state of round %d in %s failed: %s",
                          ev.state.round, directory, e)


def _key_lookup(fed: Federation, identity: Identity,
                overlay: Overlay) -> Callable[[PeerId], bytes | None]:
    """Identity keys of other peers (to verify signatures inside secure aggregation and
    results): the member list of a permissioned federation, else the keys the overlay
    saw on verified publications (every peer announces itself with ``Presence``)."""
    def key(peer: PeerId) -> bytes | None:
        if peer == identity.peer_id:
            return identity.public_key
        if fed.membership.policy == "permissioned":
            return fed.membership.public_key(peer)
        return overlay.public_key(peer)

    return key


def _with_network(cfg: OverlayConfig, fed: Federation) -> OverlayConfig:
    return dataclasses.replace(cfg, network_id=fed.id)


# -- transport selection (reachability, WebRTC) ------------------------------------------


def _default_transport(identity: Identity, fed: Federation, config: PeerConfig) -> Transport:
    """TCP on ``config.listen``; with ``webrtc``, a :class:`HybridTransport` (TCP when
    reachable, WebRTC signaled over the overlay); without it and not reachable, a TCP
    transport that only dials. Raises :class:`ConfigError`."""
    if not config.webrtc:
        return _tcp_transport(identity, fed, config.listen)
    if config.reachable:
        _tcp_transport(identity, fed, config.listen)  # validates the address
    try:
        return HybridTransport(
            identity, fed.id, listen=config.listen if config.reachable else None,
            ice_servers=config.ice_servers, host_addresses=config.webrtc_host_addresses)
    except ImportError as e:
        raise ConfigError(f"webrtc: needs aiortc (pip install p2pfl-mpc[webrtc]): {e}") from e
    except ValueError as e:
        raise ConfigError(f"webrtc: {e}") from e


def _overlay_listens(config: PeerConfig) -> bool:
    """Whether the overlay accepts links: a peer that is not reachable and has no
    WebRTC only connects out."""
    return config.reachable or config.webrtc


def _overlay_hook(transport: Transport) -> Callable[[Overlay], None] | None:
    """What must see the overlay before it runs: a hybrid transport's signaling."""
    return transport.attach if isinstance(transport, HybridTransport) else None


def _tcp_transport(identity: Identity, fed: Federation, listen: str) -> Transport:
    from p2pfl.transport.tcp import TcpTransport

    if not listen.startswith("tcp:"):
        raise ConfigError(f"listen: {listen!r} is not a tcp:HOST:PORT address (other "
                          "transports are passed to open_peer as objects)")
    try:
        return TcpTransport(identity, fed.id, listen=listen)
    except ValueError as e:
        raise ConfigError(f"listen: {e}") from e
