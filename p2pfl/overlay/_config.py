"""Parameters of the overlay protocols (one frozen dataclass, validated once).

Defaults suit networks of 10 to ~10,000 peers with LAN/WAN latencies of a few
to a few hundred milliseconds.  The ones to tune first are ``active_size``
(≈ log2(n) + 1 .. + 3), ``probe_interval`` and ``suspicion_timeout`` (detection
time vs. false positives), ``graft_timeout`` (≥ a few one-way latencies) and the
rate limits (above the legitimate peak of a neighbour's traffic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from p2pfl.errors import ConfigError

__all__ = ["OverlayConfig", "ScoreParams"]


@dataclass(frozen=True)
class ScoreParams:
    """Local neighbour scoring, after gossipsub v1.1 (weights are per event).

    ``score = reward * min(first_deliveries, reward_cap) - Σ weight_k * counter_k^p_k``
    where invalid messages and broken promises count squared (one accident is
    cheap, a habit is not) and floods count linearly.  Every counter decays with
    its half-life; a peer whose score falls below ``graylist_threshold`` is
    disconnected and graylisted for ``graylist_duration`` seconds.
    """

    invalid_weight: float = 10.0  # bad signature / undecodable body / bad field
    malformed_weight: float = 10.0  # undecodable frame, unknown or misplaced message
    broken_promise_weight: float = 4.0  # IHAVE not served after our GRAFT
    flood_weight: float = 0.5  # each message above the link's rate
    reward: float = 0.1  # each first delivery of a valid broadcast
    reward_cap: float = 100.0
    half_life: float = 60.0  # decay of the penalty counters
    flood_half_life: float = 10.0
    graylist_threshold: float = -50.0
    graylist_duration: float = 600.0
    max_tracked: int = 16384


@dataclass(frozen=True)
class OverlayConfig:
    """All overlay parameters; ``network_id`` must match across a federation."""

    network_id: bytes = b"p2pfl"
    # -- membership (HyParView) -------------------------------------------------
    active_size: int = 6
    passive_size: int = 30
    arwl: int = 6  # active random walk length (FORWARDJOIN)
    prwl: int = 3  # passive random walk length
    high_priority_below: int = 3  # NEIGHBOR is HIGH when the active view is smaller
    neighbor_timeout: float = 4.0
    repair_interval: float = 0.5
    repair_parallel: int = 2
    shuffle_interval: float = 10.0
    shuffle_ttl: int = 4
    shuffle_active: int = 3
    shuffle_passive: int = 4
    join_timeout: float = 5.0
    rejoin_after: float = 5.0  # active view empty this long → JOIN through a bootstrap
    reconnect_interval: float = 5.0  # retry one failed peer per interval (heals partitions)
    reconnect_backoff_max: float = 60.0
    #: While the active view is not full, dial one bootstrap address whose peer is not
    #: a neighbour every this many seconds (0: never).  Peers that joined at the same
    #: moment through different bootstraps can end up in separate components that know
    #: nothing of each other; this merges them.
    bootstrap_refresh: float = 10.0
    dead_retention: float = 600.0
    dead_table_size: int = 64
    # -- failure detection (SWIM) -----------------------------------------------
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_probes: int = 3
    suspicion_timeout: float = 3.0
    piggyback_max: int = 6
    piggyback_transmissions: int = 4
    max_forwarded_probes: int = 16
    # -- broadcast (Plumtree) ---------------------------------------------------
    max_payload: int = 1 << 20
    max_message_age: float = 60.0  # older publications are refused (replay window)
    clock_skew: float = 10.0
    seen_ttl: float = 90.0  # must exceed max_message_age + clock_skew
    seen_max: int = 200_000
    rejected_max: int = 4096
    store_ttl: float = 30.0  # how long a message is served on GRAFT
    store_max: int = 8192
    store_max_bytes: int = 64 << 20
    graft_timeout: float = 0.4
    graft_retry: float = 0.25
    promise_timeout: float = 2.0
    ihave_delay: float = 0.02  # IHAVE batching
    max_missing: int = 8192
    origin_rate: float = 50.0  # publications per second per origin
    origin_burst: float = 200.0
    # -- links and direct messages ----------------------------------------------
    link_rate: float = 2000.0  # messages per second a neighbour may send us
    link_burst: float = 4000.0
    link_byte_rate: float = 64e6
    link_byte_burst: float = 128e6
    direct_max_age: float = 60.0
    address_book_size: int = 16384
    #: Address schemes whose dialing needs the overlay itself (WebRTC: its signaling
    #: rides on direct messages).  A peer with such an address lists relays in its
    #: publications like a peer without one, and such peers are never used as relays.
    relayed_schemes: tuple[str, ...] = ("webrtc",)
    #: Linked neighbours asked to relay a signaling message (``send_direct(dial=False)``)
    #: to a peer whose relays we do not know yet.
    relay_fanout: int = 4
    scoring: ScoreParams = field(default_factory=ScoreParams)

    def __post_init__(self) -> None:
        if not isinstance(self.network_id, bytes) or not 0 < len(self.network_id) <= 64:
            raise ConfigError("overlay.network_id must be 1..64 bytes")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or f.name in ("network_id", "relayed_schemes") or isinstance(
                v, ScoreParams
            ):
                continue
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"overlay.{f.name} must be a finite number >= 0, got {v!r}")
        if self.active_size < 1 or self.passive_size < 1:
            raise ConfigError("overlay.active_size and passive_size must be >= 1")
        if not 0 < self.prwl <= self.arwl <= 32 or not 0 < self.shuffle_ttl <= 32:
            raise ConfigError("overlay: need 0 < prwl <= arwl <= 32 and 0 < shuffle_ttl <= 32")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError("overlay.probe_timeout must be < probe_interval")
        if self.seen_ttl < self.max_message_age + self.clock_skew:
            raise ConfigError("overlay.seen_ttl must be >= max_message_age + clock_skew")
        if not isinstance(self.relayed_schemes, tuple) or not all(
            isinstance(x, str) and x.isalnum() for x in self.relayed_schemes
        ):
            raise ConfigError("overlay.relayed_schemes must be a tuple of scheme names")
        if self.store_ttl < self.promise_timeout:
            raise ConfigError("overlay.store_ttl must be >= promise_timeout")

    @property
    def gossip_domain(self) -> bytes:
        """Signature domain of broadcast publications on this network."""
        return b"p2pfl/overlay/gossip/" + self.network_id.hex().encode()

    def needs_relay(self, address: str | None) -> bool:
        """Whether a peer at ``address`` is reached only through the overlay (no
        address, or one of :attr:`relayed_schemes`)."""
        return address is None or address.partition(":")[0] in self.relayed_schemes

    @property
    def direct_domain(self) -> bytes:
        """Signature domain of relayed direct messages on this network."""
        return b"p2pfl/overlay/direct/" + self.network_id.hex().encode()
