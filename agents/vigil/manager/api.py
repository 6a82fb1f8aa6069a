"""Interfaces between the manager's parts.

A *component* is one job of the manager (ingest, policy, collector, verdict service...).  The
manager builds each enabled component with a ``Context`` and drives its life cycle; components never
import each other's internals.  Anything that wants a block proposes a ``DecisionRequest`` through
``Context.decisions``; the policy component owns the decision store, the duration ladder, the
allowlist and rule-set publication.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..control import ControlServer
from ..counters import Counters
from ..influx import InfluxWriter
from ..mqtt import MqttClient


@dataclass
class DecisionRequest:
    """A wish to block something, from any origin.

    scope: ``ip`` (one address), ``cidr`` or ``flow`` (value ``src|dst|proto|dport``).
    origin: ``operator``, ``engine-local``, ``flow-anomaly``, ``correlation:<rule>``,
    ``parser:<name>``, ``endpoint:<rule>``.
    duration: seconds wanted; None lets the ladder decide by offence count.
    engines: target engine ids or ``tag:<tag>``; empty = global (every engine).
    """

    scope: str
    value: str
    origin: str
    reason: str
    duration: float | None = None
    engines: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)


class DecisionSink(Protocol):
    def propose(self, req: DecisionRequest) -> Any: ...


class _NoPolicy:
    """Used until the policy component is loaded: proposals are counted and logged, not lost silently."""

    def __init__(self, counters: Counters):
        self.counters = counters
        self.pending: list[DecisionRequest] = []

    def propose(self, req: DecisionRequest) -> None:
        self.counters.inc("decisions_without_policy")
        self.pending.append(req)


@dataclass
class Context:
    manager_id: str
    state_dir: Path
    mqtt: MqttClient
    writer: InfluxWriter
    counters: Counters
    control: ControlServer
    decisions: DecisionSink
    stop: threading.Event
    storage: Any = None   # StorageConfig of the manager (None: SQLite files under state_dir)


class Component(Protocol):
    name: str

    def start(self) -> None: ...
    def tick(self) -> None: ...          # called about once a second from the supervisor loop
    def close(self) -> None: ...
    def status(self) -> dict[str, Any]: ...
