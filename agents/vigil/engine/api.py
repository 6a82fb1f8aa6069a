"""Interfaces between the engine agent's parts (telemetry, enforcement, detection).

The engine builds each part with an ``EngineContext`` and drives it: ``start()`` once the kernel
was probed, ``tick()`` about once a second from the supervisor loop, ``close()`` on shutdown, and
``status()`` merged into the retained status under the part's name.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..counters import Counters
from ..mqtt import MqttClient
from .config import EngineConfig


@dataclass
class EngineContext:
    cfg: EngineConfig
    mqtt: MqttClient
    counters: Counters
    state_dir: Path
    stop: threading.Event
    mode: Callable[[], str]                       # "learning" or "enforcing", current
    features: Any = None                          # datapath.KernelFeatures once probed
    # the flow-set datapath's script (datapath.flowset_script), when that is the datapath: the
    # enforcement table is written with it, and every change flushes its verdict caches
    datapath_script: Callable[[], str] | None = None
    parts: dict[str, Any] = field(default_factory=dict)  # name -> part, for parts that cooperate
    # Sets the mode ("learning"/"enforcing") when the manager's rule set carries an operator's
    # override; the engine fills it in (None: overrides are counted and logged, not applied).
    set_mode: Callable[[str], None] | None = None


class Part(Protocol):
    name: str

    def start(self) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...
    def status(self) -> dict[str, Any]: ...
