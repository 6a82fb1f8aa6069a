"""Configuration of vigil-engine (``/etc/vigil/engine.yaml``)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..common import LogConfig, MqttConfig

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_id(value: str, key: str) -> None:
    if not _ID.match(value):
        raise ValueError(f"{key}: must be 1-64 characters of letters, digits, '.', '_' or '-' "
                         f"(it becomes an MQTT topic level), got {value!r}")


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
    source: Literal["auto", "conntrack"] = "auto"
    # Services (proto/port) with fewer than this many flows in a batch are still reported per
    # flow; the manager aggregates. Kept here so the engine can cap batch size.
    max_records_per_batch: int = 50_000

    def __post_init__(self):
        if not 0.2 <= self.interval <= 3600:
            raise ValueError(f"interval: must be between 0.2 and 3600 seconds, got {self.interval}")
        if self.max_flows < 100:
            raise ValueError("max_flows: must be at least 100")


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
    tags: list[str] = field(default_factory=list)
    status_interval: float = 30.0
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        check_id(self.engine_id, "engine_id")
