"""The ``verdicts:`` section of manager.yaml."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class QuarantineConfig:
    """Turn an endpoint's execution of a malicious file into a network decision on the engines.

    ``on``: which endpoint outcomes trigger it (``executed``: the file ran — monitor mode or a
    verdict that arrived late; ``blocked``: the agent denied it). ``allow_networks``: what the
    quarantined address may still reach (the management network); passed to the policy component
    in the decision's evidence.  ``on_behaviour``: endpoint behaviour rule ids (issue 17; "*" for
    all) whose matches (blocked, killed or would-block) also quarantine the endpoint; none by default.
    """

    enabled: bool = False
    on: list[Literal["executed", "blocked"]] = field(default_factory=lambda: ["executed", "blocked"])
    duration: float = 3600.0
    allow_networks: list[str] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    on_behaviour: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.duration <= 0:
            raise ValueError("duration: must be > 0 seconds")
        for n in self.allow_networks:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"allow_networks: {n!r} is not an address or CIDR") from None


@dataclass(frozen=True)
class VerdictsConfig:
    enabled: bool = True
    # SQLite database (storage.backend sqlite); relative paths are under the manager's state_dir.
    # With storage.backend postgresql the verdicts live in the shared database instead.
    database: Path = Path("verdicts.sqlite")
    # How long an endpoint may cache each verdict (seconds); 'unknown' short so it re-asks.
    ttl_benign: float = 86400.0
    ttl_malicious: float = 86400.0
    ttl_grayware: float = 3600.0
    ttl_unknown: float = 300.0
    # Plain files with one SHA-256 per line ('#' comments; an optional second word is a name).
    known_bad: list[Path] = field(default_factory=list)
    known_good: list[Path] = field(default_factory=list)
    # YARA rule files or directories of *.yar; the shipped set is used when empty and use_shipped_rules.
    yara_rules: list[Path] = field(default_factory=list)
    use_shipped_rules: bool = True
    yara_binary: str = "yara"
    yara_timeout: float = 20.0
    # clamd's unix socket; the backend is used only when the socket exists.
    clamd_socket: Path | None = Path("/run/clamav/clamd.ctl")
    clamd_timeout: float = 30.0
    # Samples: the largest file an endpoint is asked to upload, and where uploads are kept.
    sample_max_bytes: int = 16 * 1024 * 1024
    sample_dir: Path = Path("samples")
    sample_wait: float = 60.0
    # What a completed analysis with no detection yields: 'unknown' keeps lockdown denying it.
    clean_verdict: Literal["unknown", "benign"] = "unknown"
    # Analysis queue: at most this many analyses per minute, at most queue_max waiting.
    analyses_per_minute: int = 60
    queue_max: int = 10000
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)

    def __post_init__(self):
        for name in ("ttl_benign", "ttl_malicious", "ttl_grayware", "ttl_unknown"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0 seconds")
        if not 1024 <= self.sample_max_bytes <= 256 * 1024 * 1024:
            raise ValueError("sample_max_bytes: must be 1 KiB..256 MiB (samples travel over MQTT)")
        if self.analyses_per_minute < 1:
            raise ValueError("analyses_per_minute: must be at least 1")
        if self.queue_max < 1:
            raise ValueError("queue_max: must be at least 1")
        if self.yara_timeout <= 0 or self.clamd_timeout <= 0 or self.sample_wait <= 0:
            raise ValueError("yara_timeout: timeouts must be > 0")

    def ttl(self, verdict: str) -> float:
        return getattr(self, f"ttl_{verdict}")

    def rule_paths(self) -> list[Path]:
        paths = list(self.yara_rules)
        if self.use_shipped_rules:
            paths.append(_HERE / "rules")
        return paths
