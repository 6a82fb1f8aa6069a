"""Configuration of vigil-engine (``/etc/vigil/engine.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..common import LogConfig, MqttConfig
from ..contracts.ids import check_id


@dataclass(frozen=True)
class BridgeConfig:
    name: str = "br0"
    ports: list[str] = field(default_factory=lambda: ["eth0", "eth1"])

    def __post_init__(self):
        if len(self.ports) != 2:
            raise ValueError(f"ports: the bridge has exactly two data ports, got {len(self.ports)}")


@dataclass(frozen=True)
class FlowConfig:
    interval: float = 10.0
    max_flows: int = 200_000
    # auto / conntrack: conntrack (bridge conntrack, or br_netfilter); flowset: no conntrack, the
    # kernel counts flows in bridge-family sets (datapath.flowset_script; what it gives up:
    # docs/DESIGN-NOTES.md "The flow-set datapath"); flowset_timeout: its one idle timeout
    source: Literal["auto", "conntrack", "flowset"] = "auto"
    flowset_timeout: int = 120
    # Services (proto/port) with fewer than this many flows in a batch are still reported per
    # flow; the manager aggregates. Kept here so the engine can cap batch size.
    max_records_per_batch: int = 50_000
    # Per-protocol idle timeouts (seconds), applied as this namespace's conntrack timeouts:
    # tcp (established), tcp_closed (time_wait/close linger), udp (replied), udp_unreplied, icmp, other.
    idle_timeouts: dict[str, int] = field(default_factory=lambda: {
        "tcp": 3600, "tcp_closed": 10, "udp": 120, "udp_unreplied": 30, "icmp": 30, "other": 600})
    # On-disk buffer of batches the broker has not acknowledged (bounded; overflow is counted).
    spool_max_mb: float = 64.0

    def __post_init__(self):
        if not 0.2 <= self.interval <= 3600:
            raise ValueError(f"interval: must be between 0.2 and 3600 seconds, got {self.interval}")
        if self.max_flows < 100:
            raise ValueError("max_flows: must be at least 100")
        if self.source not in ("auto", "conntrack", "flowset"):
            raise ValueError(f"source: must be auto, conntrack or flowset, got {self.source!r}")
        if not 10 <= self.flowset_timeout <= 3600:
            raise ValueError(f"flowset_timeout: must be 10..3600 seconds, got {self.flowset_timeout}")
        known = {"tcp", "tcp_closed", "udp", "udp_unreplied", "icmp", "other"}
        for k, v in self.idle_timeouts.items():
            if k not in known:
                raise ValueError(f"idle_timeouts: unknown protocol {k!r} (known: {', '.join(sorted(known))})")
            if not 1 <= v <= 864000:
                raise ValueError(f"idle_timeouts: {k} must be 1..864000 seconds, got {v}")
        if not 0.1 <= self.spool_max_mb <= 100_000:
            raise ValueError(f"spool_max_mb: must be 0.1..100000, got {self.spool_max_mb}")


@dataclass(frozen=True)
class SamplesConfig:
    """NFLOG packet samples for protocol checks (kernel rate limit per sampling rule)."""
    enabled: bool = True
    group: int = 7
    rate: int = 100            # samples per second per rule
    new_flow_rate: int = 200   # samples of new flows per second
    flow_signal_rate: int = 2000   # flow-set datapath: each flow signal (new, reply, ack) per second
    copy_range: int = 2048     # bytes of each sampled packet
    dhcp_servers: list[str] = field(default_factory=list)  # known servers; others are reported
    max_events_per_interval: int = 1000
    events_spool_mb: float = 16.0  # on-disk buffer of event batches while the broker is unreachable
    arp_binding_ttl: float = 14400.0  # an IP->MAC binding unconfirmed this long yields to a new MAC

    def __post_init__(self):
        if not 1 <= self.group <= 65535:
            raise ValueError(f"group: must be 1..65535, got {self.group}")
        if not 1 <= self.rate <= 100_000 or not 1 <= self.new_flow_rate <= 100_000 \
                or not 1 <= self.flow_signal_rate <= 100_000:
            raise ValueError("rate: must be 1..100000 per second")
        if not 64 <= self.copy_range <= 65535:
            raise ValueError(f"copy_range: must be 64..65535, got {self.copy_range}")
        if not 60 <= self.arp_binding_ttl <= 30 * 86400:
            raise ValueError(f"arp_binding_ttl: must be 60..2592000 seconds, got {self.arp_binding_ttl}")
        if not 0.1 <= self.events_spool_mb <= 100_000:
            raise ValueError(f"events_spool_mb: must be 0.1..100000, got {self.events_spool_mb}")


@dataclass(frozen=True)
class DetectConfig:
    """Fast local scan detector: blocks (enforcing) or reports would-block (learning)."""
    enabled: bool = True
    window: float = 10.0          # seconds over which distinct targets are counted
    min_ports: int = 25           # distinct destination ports of one source ...
    min_hosts: int = 25           # ... or distinct destination hosts
    max_success_ratio: float = 0.2  # and at most this share of its probes established
    grace: float = 0.15           # a probe counts as failed once this old and not established
    block_ttl: int = 600          # seconds; longer reactions are the manager's
    never_block: list[str] = field(default_factory=list)  # CIDRs the detector never blocks
    max_sources: int = 20_000     # sources followed at once (oldest forgotten first)
    spoof_min_flows: int = 20     # unanswered flows with a forged source that make a finding
    # slower time scales [seconds, distinct failed targets]: a source whose probes mostly fail
    # (at most max_success_ratio established) and that reaches that many distinct (host, port)
    # targets within the scale is a slow scanner (nmap -T1/-T0, one probe per 15 s or slower)
    scales: list[list[float]] = field(default_factory=lambda: [[300.0, 10], [3600.0, 25]])
    max_probes_per_source: int = 1024   # fast-window probes kept per source (oldest judged early)
    block_all_addresses_of_mac: bool = False  # a blocked address's MAC's other v4/v6 addresses too
    attribution_wait: float = 2.0  # seconds to wait for a sampled frame naming a forger

    def __post_init__(self):
        if not 0.5 <= self.window <= 3600:
            raise ValueError(f"window: must be 0.5..3600 seconds, got {self.window}")
        if self.min_ports < 3 or self.min_hosts < 3:
            raise ValueError("min_ports: min_ports and min_hosts must be at least 3")
        if not 0.0 <= self.max_success_ratio < 1.0:
            raise ValueError("max_success_ratio: must be in [0, 1)")
        if not 0 <= self.grace <= 10:
            raise ValueError("grace: must be 0..10 seconds")
        if not 1 <= self.block_ttl <= 86400:
            raise ValueError("block_ttl: must be 1..86400 seconds")
        for i, sc in enumerate(self.scales):
            if not isinstance(sc, (list, tuple)) or len(sc) != 2:
                raise ValueError(f"scales[{i}]: must be [seconds, distinct failed targets]")
            if not self.window < float(sc[0]) <= 86400:
                raise ValueError(f"scales[{i}]: seconds must be above window and at most 86400")
            if not 3 <= int(sc[1]) <= 10_000:
                raise ValueError(f"scales[{i}]: targets must be 3..10000")
        if not 64 <= self.max_probes_per_source <= 1_000_000:
            raise ValueError("max_probes_per_source: must be 64..1000000")
        if self.spoof_min_flows < 3:
            raise ValueError("spoof_min_flows: must be at least 3")
        if not 0 <= self.attribution_wait <= 60:
            raise ValueError("attribution_wait: must be 0..60 seconds")
        import ipaddress
        for c in self.never_block:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise ValueError(f"never_block: not an address or CIDR: {c!r}") from None


@dataclass(frozen=True)
class EnforcementConfig:
    """Manager rule sets and local blocks in the kernel table ``bridge vigil`` (engine/enforce.py)."""
    enabled: bool = True
    manager_public_key: Path | None = None  # PEM; without it every rule set is rejected (no-key)
    # more manager keys trusted beside it: during a signing key's rotation, the new one (or the old)
    manager_public_keys: list[Path] = field(default_factory=list)
    backend: Literal["auto", "lib", "cli", "dry-run"] = "auto"  # auto: libnftables, else nft -f
    max_elements: int = 2_000_000           # kernel elements a rule set may occupy
    max_local: int = 100_000                # engine-local blocks held at once
    max_local_ttl: int = 86400              # seconds; longer reactions are the manager's
    management_networks: list[str] = field(default_factory=list)  # never blocked, whatever a rule set says
    gateways: list[str] = field(default_factory=list)             # idem (addresses)

    def __post_init__(self):
        import ipaddress
        for key in ("management_networks", "gateways"):
            for c in getattr(self, key):
                try:
                    ipaddress.ip_network(c, strict=False)
                except ValueError:
                    raise ValueError(f"{key}: not an address or CIDR: {c!r}") from None
        if not 1 <= self.max_elements <= 20_000_000:
            raise ValueError(f"max_elements: must be 1..20000000, got {self.max_elements}")
        if not 1 <= self.max_local <= 10_000_000:
            raise ValueError(f"max_local: must be 1..10000000, got {self.max_local}")
        if not 1 <= self.max_local_ttl <= 30 * 86400:
            raise ValueError(f"max_local_ttl: must be 1..2592000 seconds, got {self.max_local_ttl}")


@dataclass(frozen=True)
class LearningConfig:
    period: float = 7200.0  # seconds of traffic time
    start_mode: Literal["learning", "enforcing"] = "learning"

    def __post_init__(self):
        if self.period < 0:
            raise ValueError("period: must not be negative")


@dataclass(frozen=True)
class EngineConfig:
    engine_id: str
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    state_dir: Path = Path("/var/lib/vigil/engine")
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    flows: FlowConfig = field(default_factory=FlowConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    enforcement: EnforcementConfig = field(default_factory=EnforcementConfig)
    tags: list[str] = field(default_factory=list)
    status_interval: float = 30.0
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        check_id(self.engine_id, "engine_id")
