"""The policy's configuration section (``policy:`` in manager.yaml), apart from the policy itself so
that loading the manager's configuration imports none of the detection and decision code."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...contracts.vocab import MAX_TTL, SEVERITY_RANK

if TYPE_CHECKING:
    from .detections import Thresholds


@dataclass(frozen=True)
class DetectionConfig:
    enabled: bool = True
    # "engine": a detection blocks on the engine that saw it; "global": on every engine.
    target: str = "engine"
    window: float = 10.0
    hscan_hosts: int = 8
    vscan_ports: int = 12
    flood_failed: int = 400
    flood_pps: float = 4000.0
    brute_new: int = 25
    brute_max_bytes: int = 20000
    k: float = 6.0
    factor: float = 2.0
    min_intervals: int = 10
    new_service: bool = True
    new_service_min_learned: float = 60.0   # traffic seconds learned before unknown services count
    events: bool = True                     # engine protocol events -> decisions
    event_min_severity: str = "high"
    event_max_age: float = 600.0            # older events (replayed after an outage) are stored, not acted on

    def __post_init__(self):
        if self.target not in ("engine", "global"):
            raise ValueError("target: must be engine or global")
        if self.window <= 0:
            raise ValueError("window: must be > 0 seconds")
        for k in ("hscan_hosts", "vscan_ports", "flood_failed", "brute_new"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be at least 1")
        if self.event_min_severity not in SEVERITY_RANK:
            raise ValueError(f"event_min_severity: one of {', '.join(SEVERITY_RANK)}")
        if self.event_max_age <= 0:
            raise ValueError("event_max_age: must be > 0 seconds")

    def thresholds(self) -> Thresholds:
        from .detections import Thresholds
        return Thresholds(window=self.window, hscan_hosts=self.hscan_hosts, vscan_ports=self.vscan_ports,
                          flood_failed=self.flood_failed, flood_pps=self.flood_pps, brute_new=self.brute_new,
                          brute_max_bytes=self.brute_max_bytes, k=self.k, factor=self.factor,
                          min_intervals=self.min_intervals, new_service=self.new_service)


@dataclass(frozen=True)
class PolicyConfig:
    enabled: bool = True
    ladder: list[float] = field(default_factory=lambda: [600.0, 3600.0, 86400.0, 604800.0])
    offence_memory: float = 30 * 86400.0
    unblock_suppress: float = 3600.0
    # management network, gateways: never blocked, published as allow entries
    allowlist: list[str] = field(default_factory=list)
    max_active_decisions: int = 100_000
    baseline_alpha: float = 0.01
    baseline_alpha_suspicious: float = 0.001
    baseline_save_interval: float = 30.0
    resync_after: float = 10.0
    partition_index: int = 0
    partition_count: int = 1
    # where else to put the public half of the signing key (for roles/lab to hand to engines)
    public_key_file: Path | None = None
    # rule sets on the wire: "auto" = binary (vrs1) to engines that advertise it, JSON to others;
    # "json" or "vrs1" for every engine
    ruleset_format: str = "auto"
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def __post_init__(self):
        if not self.ladder or any(d <= 0 or d > MAX_TTL for d in self.ladder):
            raise ValueError("ladder: a non-empty list of durations in seconds, each > 0")
        if list(self.ladder) != sorted(self.ladder):
            raise ValueError("ladder: durations must not decrease")
        for v in self.allowlist:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                raise ValueError(f"allowlist: {v!r} is not an address or CIDR") from None
        if not 0 < self.baseline_alpha <= 1 or not 0 < self.baseline_alpha_suspicious <= self.baseline_alpha:
            raise ValueError("baseline_alpha: 0 < baseline_alpha_suspicious <= baseline_alpha <= 1")
        if self.ruleset_format not in ("auto", "json", "vrs1"):
            raise ValueError("ruleset_format: one of auto, json, vrs1")
        if not 0 <= self.partition_index < self.partition_count:
            raise ValueError("partition_index: must be 0..partition_count-1")
        if self.unblock_suppress < 0 or self.offence_memory <= 0:
            raise ValueError("unblock_suppress: must not be negative (offence_memory > 0)")
