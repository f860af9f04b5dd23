"""p2pfl: serverless peer-to-peer federated learning with secure aggregation.

The names below are the public entry points (see ``docs/api.md``); the layers live in
sub-packages (``p2pfl.federation``, ``p2pfl.learning``, ``p2pfl.ledger``, ...).  They are
imported on first use, so ``import p2pfl`` (and the CLI's start) does not load torch.

    async with p2pfl.open_peer(config, task) as peer:   # trio
        await peer.wait_round(3)

    with p2pfl.start_peer(config, task) as handle:      # any program: a background thread
        handle.wait_round(3, timeout=600)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ConfigError": "p2pfl.errors",
    "EventStream": "p2pfl.embed",
    "Federation": "p2pfl.federation",
    "GlobalModel": "p2pfl.peer",
    "GlobalState": "p2pfl.federation",
    "Identity": "p2pfl.identity",
    "P2PFLError": "p2pfl.errors",
    "Peer": "p2pfl.peer",
    "PeerConfig": "p2pfl.peer",
    "PeerFailedError": "p2pfl.embed",
    "PeerHandle": "p2pfl.embed",
    "PeerId": "p2pfl.wire",
    "SimConfig": "p2pfl.sim",
    "Task": "p2pfl.learning",
    "federation_from_dict": "p2pfl.federation",
    "hash_vector": "p2pfl.learning",
    "load_federation": "p2pfl.federation",
    "open_peer": "p2pfl.peer",
    "run_simulation": "p2pfl.sim",
    "start_peer": "p2pfl.embed",
    "start_peers": "p2pfl.embed",
}

__all__ = [  # = sorted(_EXPORTS) + __version__ (tests/test_embed.py pins both)
    "ConfigError",
    "EventStream",
    "Federation",
    "GlobalModel",
    "GlobalState",
    "Identity",
    "P2PFLError",
    "Peer",
    "PeerConfig",
    "PeerFailedError",
    "PeerHandle",
    "PeerId",
    "SimConfig",
    "Task",
    "__version__",
    "federation_from_dict",
    "hash_vector",
    "load_federation",
    "open_peer",
    "run_simulation",
    "start_peer",
    "start_peers",
]

if TYPE_CHECKING:
    from p2pfl.embed import EventStream, PeerFailedError, PeerHandle, start_peer, start_peers
    from p2pfl.errors import ConfigError, P2PFLError
    from p2pfl.federation import Federation, GlobalState, federation_from_dict, load_federation
    from p2pfl.identity import Identity
    from p2pfl.learning import Task, hash_vector
    from p2pfl.peer import GlobalModel, Peer, PeerConfig, open_peer
    from p2pfl.sim import SimConfig, run_simulation
    from p2pfl.wire import PeerId


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'p2pfl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
