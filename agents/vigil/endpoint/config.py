"""Configuration of vigil-endpoint (``/etc/vigil/endpoint.yaml``)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..common import LogConfig, MqttConfig
from ..contracts.ids import check_id


@dataclass(frozen=True)
class BehaviourException:
    """Allow one rule (or "*") where every given key matches: ``path`` is a glob on the executed
    file (or the tracer), ``unit`` a glob on the process's systemd unit, ``user`` a user name."""
    rule: str = "*"
    path: str | None = None
    unit: str | None = None
    user: str | None = None

    def __post_init__(self):
        if self.path is None and self.unit is None and self.user is None:
            raise ValueError("give path, unit or user (an exception for everything would disable the rule)")


@dataclass(frozen=True)
class BehaviourConfig:
    """Behavioural protection (agents/vigil/endpoint/behaviour/): rules on what running processes do."""
    enabled: bool = True
    # inherit: monitor in monitor mode, enforce (deny / kill, then report) in the blocking modes.
    mode: Literal["inherit", "monitor", "block"] = "inherit"
    # Rules marked strict (e.g. download-and-run) fire only in lockdown, or everywhere with this.
    strict: bool = False
    rules_file: Path | None = None        # default: the shipped behaviour/default_rules.yaml
    # The kernel's process connector (exec / ptrace events); off leaves only the exec-gate rules.
    connector: bool = True
    # With the connector running (it wakes the decider once per exec on the host), benign files get
    # the kernel's ignore mark as with kernel_cache: no second wake per exec for the gate and no
    # added exec latency; their execs are reported from a fanotify notification group read once per
    # batch interval.  Off: every exec also goes through the gate (twice the wakes).
    kernel_cache: bool = True
    exceptions: list[BehaviourException] = field(default_factory=list)
    hash_max_bytes: int = 32 * 1024 * 1024

    def __post_init__(self):
        from ..config import ConfigError
        from .behaviour.rules import load_rules
        try:
            rules = load_rules(self.rules_file)
        except ConfigError as exc:
            raise ValueError(f"rules_file: {exc}") from None
        ids = {r.id for r in rules}
        for i, e in enumerate(self.exceptions):
            if e.rule != "*" and e.rule not in ids:
                raise ValueError(f"exceptions[{i}].rule: no enabled rule {e.rule!r}")


@dataclass(frozen=True)
class EndpointConfig:
    endpoint_id: str = "endpoint"
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    mode: Literal["monitor", "block-malicious", "lockdown"] = "monitor"   # contracts.vocab.ENDPOINT_MODES
    # Mount points to watch (FAN_MARK_MOUNT: the whole mount each path is on).
    mounts: list[Path] = field(default_factory=lambda: [Path("/")])
    # Also watch plain opens on those mounts to catch programs run through the dynamic loader
    # (`ld-linux-x86-64.so.2 ./prog` opens and mmaps prog: no exec event). Off by default: every
    # open on a watched mount then wakes the decider, which alone costs more than the CPU budget on
    # a busy host (see bench/endpoint_budget.py --loader-coverage); on it closes the loader gap.
    cover_loader: bool = False
    # Paths never decided (answered allow at once, never hashed): the agent's own files, its logs.
    exclude_paths: list[Path] = field(default_factory=list)
    # Kernel-side allow cache: a file allowed as *benign* gets a fanotify ignore mark, so its next
    # execs raise no permission event — no decision CPU, no added latency — until it is written to,
    # a verdict turns non-benign, the mode changes, or every kernel_cache_refresh seconds; its execs
    # are reported from a notification group read in batches.  On by default when the behaviour
    # rules' process connector runs (behaviour.kernel_cache).
    kernel_cache: bool = False
    kernel_cache_refresh: float = 600.0
    # The longest the kernel is kept waiting for a verdict from the manager; then the mode's default.
    decision_deadline: float = 0.5
    # Files larger than this are not hashed in the decision path; the mode's default applies.
    max_hash_bytes: int = 256 * 1024 * 1024
    cache_entries: int = 20000
    # Events are sent in batches at this interval; at most max_pending wait (oldest dropped, counted).
    batch_interval: float = 5.0
    max_pending_events: int = 5000
    status_interval: float = 30.0
    # The address reported to the manager (for quarantine); default: the local end of the MQTT link.
    address: str | None = None
    sample_max_bytes: int = 16 * 1024 * 1024
    state_dir: Path = Path("/var/lib/vigil/endpoint")
    control_socket: Path = Path("/run/vigil/endpoint.sock")
    log: LogConfig = field(default_factory=LogConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)

    def __post_init__(self):
        check_id(self.endpoint_id, "endpoint_id")
        if not self.mounts:
            raise ValueError("mounts: at least one mount point is needed")
        for m in self.mounts:
            if not m.is_absolute():
                raise ValueError(f"mounts: {m} is not an absolute path")
        if not 0.01 <= self.decision_deadline <= 10:
            raise ValueError("decision_deadline: must be 0.01..10 seconds")
        if self.kernel_cache_refresh < 10:
            raise ValueError("kernel_cache_refresh: must be at least 10 seconds")
        if self.cache_entries < 16:
            raise ValueError("cache_entries: must be at least 16")
        if self.batch_interval <= 0 or self.status_interval <= 0:
            raise ValueError("batch_interval: intervals must be > 0")
        if self.max_pending_events < 10:
            raise ValueError("max_pending_events: must be at least 10")
        if self.max_hash_bytes < 1024:
            raise ValueError("max_hash_bytes: must be at least 1024")

    def excluded(self) -> list[str]:
        """Exclusions plus the agent's own installation (its interpreter and package files)."""
        own = {str(Path(sys.prefix).resolve()), str(Path(__file__).resolve().parent.parent)}
        return sorted({str(p) for p in self.exclude_paths} | own | {str(self.state_dir)})
