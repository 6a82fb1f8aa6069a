"""vigil-engine: the appliance agent.

A small supervisor loop around replaceable parts: it probes the kernel, installs flow accounting,
and every ``flows.interval`` reads the kernel's flow counters and publishes one batch; a retained
status (with a last-will) tells everyone what the engine is doing.  Python never sits on the
forwarding path: if this process dies, the bridge keeps forwarding.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from .. import __version__, payload, topics
from ..counters import Counters
from ..daemon import StartupError, main as daemon_main
from ..mqtt import MqttClient, Will
from . import datapath
from .api import EngineContext
from .config import EngineConfig
from .conntrack import ConntrackReader
from .flows import FlowTable

log = logging.getLogger(__name__)

# (config section, "module:factory"): each factory takes (section_config, EngineContext) and returns
# a part; a section that is absent or has enabled: false is not started.
PARTS: list[tuple[str, str]] = [
]


class Learning:
    """Learning progress in traffic time: only intervals that carried traffic count."""

    def __init__(self, cfg, state_path: Path):
        self.period = cfg.period
        self.path = state_path
        self.elapsed = 0.0
        self.mode = cfg.start_mode
        try:
            saved = json.loads(state_path.read_text())
            self.elapsed = float(saved.get("elapsed", 0.0))
            self.mode = saved.get("mode", self.mode)
        except (OSError, ValueError):
            pass
        if self.period == 0:
            self.mode = "enforcing"

    def advance(self, seconds: float) -> None:
        if self.mode != "learning":
            return
        self.elapsed += seconds
        if self.elapsed >= self.period:
            self.mode = "enforcing"
            log.info("learning period of %.0fs traffic time complete; mode is now enforcing", self.period)

    @property
    def progress(self) -> float:
        return 1.0 if self.period == 0 else min(1.0, self.elapsed / self.period)

    def save(self) -> None:
        _atomic_write(self.path, json.dumps({"elapsed": self.elapsed, "mode": self.mode}))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class EngineService:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.counters = Counters()
        self.state_dir = cfg.state_dir
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create state_dir {self.state_dir}: {exc}") from None
        self.seq_path = self.state_dir / "flows.seq"
        try:
            self.seq = int(self.seq_path.read_text())
        except (OSError, ValueError):
            self.seq = 0
        self.learning = Learning(cfg.learning, self.state_dir / "learning.json")
        self.features: datapath.KernelFeatures | None = None
        self.status_topic = topics.engine(cfg.engine_id, "status")
        will = Will(self.status_topic, payload.encode("status", cfg.engine_id, {"state": "offline"}))
        self.mqtt = MqttClient(cfg.mqtt, f"engine-{cfg.engine_id}", self.counters, will=will,
                               on_connected=self.publish_status)
        marks = datapath.port_marks(cfg.bridge.ports)
        self.table = FlowTable({m: p for p, m in marks.items()}, max_flows=cfg.flows.max_flows)
        self.reader: ConntrackReader | None = None
        self.stop_event = threading.Event()
        self.ctx = EngineContext(cfg, self.mqtt, self.counters, self.state_dir, self.stop_event,
                                 mode=lambda: self.learning.mode)
        self.parts = []
        for section, target in PARTS:
            sub = getattr(cfg, section, None)
            if sub is None or not getattr(sub, "enabled", True):
                continue
            mod, _, factory = target.partition(":")
            part = getattr(importlib.import_module(mod), factory)(sub, self.ctx)
            self.parts.append(part)
            self.ctx.parts[part.name] = part

    # -- status ---------------------------------------------------------------------------
    def status_body(self, state: str = "running") -> dict:
        return {
            "state": state,
            "engine": self.cfg.engine_id,
            "mode": self.learning.mode,
            "learning": {"progress": round(self.learning.progress, 4),
                         "elapsed": round(self.learning.elapsed, 1), "period": self.learning.period},
            "ruleset_generation": None,
            "kernel": self.features.as_dict() if self.features else None,
            "flows_tracked": len(self.table.flows),
            "flow_interval": self.cfg.flows.interval,
            "tags": self.cfg.tags,
            "version": __version__,
            "counters": {**self.counters.snapshot(), "flows_evicted": self.table.evicted},
            **{p.name: _safe_status(p) for p in self.parts},
        }

    def publish_status(self, state: str = "running") -> None:
        self.mqtt.publish(self.status_topic, payload.encode("status", self.cfg.engine_id, self.status_body(state)),
                          qos=1, retain=True)

    # -- flows ----------------------------------------------------------------------------
    def poll_flows(self, interval_start_ms: int) -> None:
        now_ms = payload.now_ms()
        t0 = time.monotonic()
        records = self.table.update(self.reader.dump(), now_ms)
        self.counters.inc("flow_polls")
        poll_s = time.monotonic() - t0
        if records:
            self.learning.advance((now_ms - interval_start_ms) / 1000.0)
        cap = self.cfg.flows.max_records_per_batch
        for i in range(0, max(1, len(records)), cap):
            chunk = records[i:i + cap]
            if not chunk and i > 0:
                break
            self.seq += 1
            body = {"engine": self.cfg.engine_id, "seq": self.seq, "source": self.features.flow_source,
                    "interval": {"start": interval_start_ms, "end": now_ms}, "mode": self.learning.mode,
                    "flows_tracked": len(self.table.flows), "evicted_total": self.table.evicted,
                    "poll_ms": round(poll_s * 1000, 2), "flows": chunk}
            self.mqtt.publish(topics.engine(self.cfg.engine_id, "flows"),
                              payload.encode("flows", self.cfg.engine_id, body), qos=1)
            self.counters.inc("flow_batches")
            self.counters.inc("flow_records", len(chunk))
        _atomic_write(self.seq_path, str(self.seq))
        self.learning.save()

    # -- supervisor -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.features = datapath.probe()
        log.info("kernel features: %s", self.features.as_dict())
        try:
            datapath.install_flow_accounting(self.features, list(self.cfg.bridge.ports))
        except datapath.NftError as exc:
            raise StartupError(f"flow accounting: {exc}") from None
        self.ctx.features = self.features
        self.reader = ConntrackReader()
        for p in self.parts:
            p.start()
        self.mqtt.start()
        interval = self.cfg.flows.interval
        next_poll = time.monotonic() + interval
        next_status = time.monotonic() + self.cfg.status_interval
        interval_start = payload.now_ms()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    try:
                        self.poll_flows(interval_start)
                    except Exception:
                        self.counters.inc("flow_poll_errors")
                        log.exception("flow poll failed")
                    interval_start = payload.now_ms()
                    next_poll += interval
                    if next_poll < now:  # we fell behind (suspend, overload): skip, do not burst
                        next_poll = now + interval
                for p in self.parts:
                    try:
                        p.tick()
                    except Exception:
                        self.counters.inc(f"part_errors_{p.name}")
                        log.exception("part %s failed in tick", p.name)
                if now >= next_status:
                    self.publish_status()
                    next_status = now + self.cfg.status_interval
                stop.wait(max(0.0, min(next_poll, next_status, time.monotonic() + 1.0) - time.monotonic()))
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.stop_event.set()
        for p in reversed(self.parts):
            try:
                p.close()
            except Exception:
                log.exception("part %s failed to close", p.name)
        # A clean stop says so (retained) rather than leaving the last-will to the broker.
        if self.mqtt.connected.is_set():
            self.mqtt.publish_wait(self.status_topic,
                                   payload.encode("status", self.cfg.engine_id, self.status_body("stopped")),
                                   retain=True, timeout=2.0)
        self.mqtt.stop()
        if self.reader is not None:
            self.reader.close()


def _safe_status(part) -> dict:
    try:
        return part.status()
    except Exception as exc:
        return {"error": str(exc)}


def main(argv: list[str] | None = None) -> int:
    return daemon_main("engine", EngineConfig, EngineService, argv,
                       description="Vigil engine agent: flow telemetry and dynamic policy on a bridge")


if __name__ == "__main__":
    raise SystemExit(main())
