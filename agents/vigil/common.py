"""Configuration sections shared by several daemons."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class MqttConfig:
    """How a daemon reaches the broker.

    ``transport: unix`` connects to a Mosquitto unix-socket listener at ``path``; the lab uses it
    so that agents inside network namespaces reach the broker on the host without routing.
    """

    host: str = "localhost"
    port: int = 1883
    transport: Literal["tcp", "unix", "websockets"] = "tcp"
    path: Path | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 30
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0

    def __post_init__(self):
        if self.transport == "unix" and self.path is None:
            raise ValueError("path: required when transport is unix")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: must be 1..65535, got {self.port}")
        if self.keepalive < 5:
            raise ValueError("keepalive: must be at least 5 seconds")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise ValueError("reconnect_min: must be > 0 and <= reconnect_max")

    def secret(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return self.password


@dataclass(frozen=True)
class InfluxConfig:
    """Where statistics and events are written.

    ``api: v1`` posts line protocol to ``/write?db=`` (InfluxDB 1.x, and 2.x/3.x through their v1
    compatibility API); ``api: v2`` posts to ``/api/v2/write?bucket=&org=`` with a token.
    Queries always use InfluxQL on ``/query``.
    """

    url: str = "http://127.0.0.1:8086"
    api: Literal["v1", "v2"] = "v1"
    database: str = "vigil"
    retention_policy: str | None = None
    org: str | None = None
    bucket: str | None = None
    token: str | None = None
    token_file: Path | None = None
    username: str | None = None
    password: str | None = None
    batch_size: int = 5000
    flush_interval: float = 1.0
    buffer_points: int = 200_000
    timeout: float = 10.0
    retry_min: float = 0.5
    retry_max: float = 30.0
    create_database: bool = True

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: must start with http:// or https://, got {self.url!r}")
        if self.api == "v2" and not self.bucket:
            raise ValueError("bucket: required when api is v2")
        if self.batch_size < 1 or self.buffer_points < self.batch_size:
            raise ValueError("buffer_points: must be at least batch_size")

    def secret(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip()
        return self.token


@dataclass(frozen=True)
class LogConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json: bool = False


@dataclass(frozen=True)
class Empty:
    pass


def default(factory):
    return field(default_factory=factory)
