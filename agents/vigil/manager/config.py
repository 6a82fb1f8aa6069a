"""Configuration of vigil-manager (``/etc/vigil/manager.yaml``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..common import InfluxConfig, LogConfig, MqttConfig
from ..contracts.ids import check_id
from .verdicts.config import VerdictsConfig
from .policy.config import PolicyConfig
from .storage.config import StorageConfig
from ..collector.config import CollectorConfig


@dataclass(frozen=True)
class IngestConfig:
    # MQTT v5 shared subscription: several manager processes split the writing of flow batches
    # between them.  The policy takes its own unshared subscription (every batch of its partition's
    # engines), so any policy.partition_count works with it (tests/integration/test_mqtt_bus.py).
    shared_subscription: bool = True
    share_group: str = "vigil"
    top_talkers: int = 10
    # Ports always reported as their own service; others only while among the busiest.
    service_ports: list[int] = field(default_factory=list)
    top_services: int = 20
    max_service_series: int = 2000
    max_event_types: int = 200
    # false in a policy-only process of a scaled-out manager: it reads every batch, writes nothing
    write_points: bool = True
    # Durability across a manager crash (docs/DESIGN-NOTES.md, "Durable ingest"): the manager's
    # MQTT session outlives the process for session_expiry seconds (client id manager-<manager_id>,
    # so two manager processes need two ids); the broker queues what arrives meanwhile.  A flow
    # batch, event batch or status is acknowledged to the broker only once its points have left the
    # InfluxDB writer (ack_after_write), and at most receive_maximum messages wait unacknowledged.
    session_expiry: int = 86400
    ack_after_write: bool = True
    receive_maximum: int = 2000

    def __post_init__(self):
        if not 1 <= self.top_talkers <= 100:
            raise ValueError("top_talkers: must be 1..100")
        for p in self.service_ports:
            if not 0 < p < 65536:
                raise ValueError(f"service_ports: {p} is not a port number")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ValueError("session_expiry: must be 0..4294967295 seconds (0: no persistent session)")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError("receive_maximum: must be 1..65535")


@dataclass(frozen=True)
class ManagerConfig:
    manager_id: str = "manager"
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    influx: InfluxConfig = field(default_factory=InfluxConfig)
    state_dir: Path = Path("/var/lib/vigil/manager")
    control_socket: Path = Path("/run/vigil/manager.sock")
    ingest: IngestConfig = field(default_factory=IngestConfig)
    # where the manager's state lives: SQLite under state_dir, or PostgreSQL shared by managers
    storage: StorageConfig = field(default_factory=StorageConfig)
    policy: PolicyConfig | None = None
    verdicts: VerdictsConfig | None = None
    collector: CollectorConfig | None = None
    # Each further part of the manager has its own section here (policy, collector, verdicts);
    # a part whose section is absent or has enabled: false is not started.
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self):
        check_id(self.manager_id, "manager_id")
        if self.storage.shared and self.policy is not None and self.policy.enabled \
                and self.policy.signing_key_file is None:
            # managers sharing a fleet must sign with one key, or engines refuse the others' rule sets
            raise ValueError("policy.signing_key_file: required with storage.backend postgresql "
                             "(every manager of the fleet signs with the same key)")
