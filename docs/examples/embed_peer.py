"""Embed p2pfl peers in an ordinary (non-trio) Python program.

Three peers on this machine, each a real peer over loopback TCP with its own key and
its own background thread -- what a program embedding one peer does, three times.
They train the bundled digits classifier with secure aggregation for 3 rounds; the
script prints each round's global-model hash and test accuracy, checks that every
peer holds the same model, and closes the peers.

    python docs/examples/embed_peer.py
"""

from __future__ import annotations

import p2pfl
from p2pfl.federation.driver import RoundStarted
from p2pfl.learning import digits_tasks, vector_to_model

PEERS, ROUNDS = 3, 3

# Every peer needs an identity key (usually a file made by `p2pfl keygen`) and the same
# federation: here permissioned, listing the members' public keys.
keys = [p2pfl.Identity.generate() for _ in range(PEERS)]
federation = p2pfl.federation_from_dict({
    "name": "embed-demo",
    "task": "digits-mlp",
    "secure": True,
    "cohort": {"size": PEERS, "group_size": PEERS, "min_group_size": PEERS},
    "timeouts": {"train": 10.0, "stage": 2.0, "sign": 2.0, "failover": 2.0, "round": 30.0},
    "membership": {"policy": "permissioned", "members": [k.public_key.hex() for k in keys]},
})
tasks = digits_tasks(PEERS, device="cpu")  # each peer's local data shard


def state_after(events: p2pfl.EventStream, r: int) -> p2pfl.GlobalState:
    """The global state a peer starts round r from, i.e. its model after r rounds."""
    while True:
        ev = events.get(timeout=120)
        if isinstance(ev, RoundStarted) and ev.round == r:
            return ev.state


handles: list[p2pfl.PeerHandle] = []
try:
    for key, task in zip(keys, tasks, strict=True):
        config = p2pfl.PeerConfig(
            identity=key, federation=federation, listen="tcp:127.0.0.1:0",
            bootstrap=(handles[0].address,) if handles else (),  # join through peer 0
            device="cpu", warmup=1.0)
        handles.append(p2pfl.start_peer(config, task))  # returns once the peer runs
        print(f"started {handles[-1].peer_id.short()} at {handles[-1].address}")
    streams = [h.events() for h in handles]

    model = tasks[0].model_factory(0)  # scratch model to evaluate the global vector
    for r in range(1, ROUNDS + 1):
        states = [state_after(s, r) for s in streams]
        hashes = {p2pfl.hash_vector(s.model) for s in states}
        assert len(hashes) == 1, f"round {r}: the peers disagree: {hashes}"
        vector_to_model(model, states[0].model)
        acc = tasks[0].evaluate(model, tasks[0].test_data)["accuracy"]
        print(f"round {r}: model {hashes.pop()[:16]} accuracy {acc:.3f}")
finally:
    for h in handles:
        h.close()
print(f"all {PEERS} peers agree after {ROUNDS} rounds; closed cleanly")
