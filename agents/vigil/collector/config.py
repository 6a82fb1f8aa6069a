"""The ``collector:`` section of the manager's configuration."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .correlation import DEFAULT_RULES, RuleError, load_rules

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Format = Literal["auto", "checkpoint", "snort", "modsecurity", "suricata", "cef", "syslog"]


def split_hostport(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdecimal() or not 0 <= int(port) < 65536:
        raise ValueError(f"{key}: must be ADDRESS:PORT (port 0 picks a free one), got {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{key}: {host!r} is not an IP address") from None
    return host, int(port)


@dataclass(frozen=True)
class SourceConfig:
    """A known sender: its address (or network), a name for dashboards and rules, a format hint."""
    name: str
    address: _IPNetwork
    format: Format = "auto"
    rate: float | None = None          # messages/s; None = the collector's rate_per_source

    def __post_init__(self):
        if not self.name or len(self.name) > 64 or any(c in self.name for c in " ,=\"\n"):
            raise ValueError("name: 1..64 characters without spaces, commas, '=' or quotes")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate: must be positive")


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    ca: Path | None = None             # CA for client certificates
    require_client_cert: bool = False

    def __post_init__(self):
        if self.require_client_cert and self.ca is None:
            raise ValueError("ca: required when require_client_cert is true")


@dataclass(frozen=True)
class CollectorConfig:
    enabled: bool = True
    udp: str | None = None             # e.g. "0.0.0.0:514"
    tcp: str | None = None             # e.g. "0.0.0.0:514" (RFC 6587: octet counting or LF)
    tls: str | None = None             # e.g. "0.0.0.0:6514" (RFC 5425)
    tls_files: TlsConfig | None = None
    max_message_size: int = 65536     # bytes; larger messages are dropped and counted
    max_connections: int = 1000
    idle_timeout: float = 600.0        # seconds without data before a TCP/TLS connection is closed
    rate_per_source: float = 20000.0   # messages/s per sender address (token bucket)
    burst_per_source: int = 40000
    queue_size: int = 100000           # messages waiting for the parser; UDP drops, TCP waits
    sources: list[SourceConfig] = field(default_factory=list)
    default_rules: bool = True         # load agents/vigil/collector/rules/*.yaml
    rule_files: list[Path] = field(default_factory=list)   # files or directories of *.yaml
    raw_max: int = 4096                # characters of the raw message stored with each event
    max_groups: int = 100000           # correlation state per rule

    def __post_init__(self):
        if not (self.udp or self.tcp or self.tls):
            raise ValueError("udp: at least one of udp, tcp, tls must be set")
        for key in ("udp", "tcp", "tls"):
            v = getattr(self, key)
            if v is not None:
                split_hostport(v, key)
        if self.tls and self.tls_files is None:
            raise ValueError("tls_files: required when tls is set (cert and key)")
        if not 512 <= self.max_message_size <= 16 * 1024 * 1024:
            raise ValueError("max_message_size: must be 512..16777216")
        for key in ("rate_per_source", "idle_timeout"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be positive")
        for key in ("burst_per_source", "queue_size", "max_connections", "raw_max", "max_groups"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be at least 1")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError("sources: names must be unique")
        try:
            load_rules(self.rule_paths())
        except RuleError as exc:
            raise ValueError(f"rule_files: {exc}") from None

    def rule_paths(self) -> list[Path]:
        return ([DEFAULT_RULES] if self.default_rules else []) + list(self.rule_files)
