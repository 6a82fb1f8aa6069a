"""vigil-manager: the management host's daemon.

A supervisor loop around components (ingest, policy, collector, verdict service...), each built from
its own config section with a shared ``Context`` (MQTT client, InfluxDB writer, counters, control
socket, decision sink).  A failing component tick is logged and counted; it never stops the others.
"""
from __future__ import annotations

import logging
import threading
import time

from .. import plugins
from ..control import ControlServer
from ..counters import Counters
from ..daemon import FatalError, StartupError, main as daemon_main
from ..influx import InfluxWriter, line
from ..mqtt import MqttClient, new_client_id
from .api import Context, _NoPolicy
from .config import ManagerConfig

log = logging.getLogger(__name__)

# (config section, "module:factory"). The factory takes (section_config, context) and returns a
# component. Order matters: policy first, so that later components can propose decisions.
COMPONENTS: list[tuple[str, str]] = [
    ("policy", "vigil.manager.policy.component:PolicyComponent"),
    ("collector", "vigil.collector.component:CollectorComponent"),
    ("ingest", "vigil.manager.ingest.component:IngestComponent"),
    ("verdicts", "vigil.manager.verdicts.service:VerdictService"),
]


class ManagerService:
    def __init__(self, cfg: ManagerConfig):
        self.cfg = cfg
        self.counters = Counters()
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create state_dir {cfg.state_dir}: {exc}") from None
        self.stop_event = threading.Event()
        self.writer = InfluxWriter(cfg.influx, self.counters)
        ing = cfg.ingest
        # a persistent session needs a stable client id: the broker keeps this manager's queue
        # under it while the process is gone (and hands it to the next process with the same id)
        client_id = f"manager-{cfg.manager_id}" if ing.session_expiry else new_client_id(f"manager-{cfg.manager_id}")
        self.mqtt = MqttClient(cfg.mqtt, client_id, self.counters, session_expiry=ing.session_expiry,
                               manual_ack=ing.ack_after_write, receive_maximum=ing.receive_maximum)
        self.control = ControlServer(cfg.control_socket)
        self.ctx = Context(cfg.manager_id, cfg.state_dir, self.mqtt, self.writer, self.counters,
                           self.control, _NoPolicy(self.counters), self.stop_event, cfg.storage)
        self.components = plugins.build(COMPONENTS, cfg, self.ctx)
        self.control.register("manager.status", self.status)

    def status(self) -> dict:
        return {"manager": self.cfg.manager_id, "mqtt_connected": self.mqtt.connected.is_set(),
                "influx_pending": self.writer.pending(), "counters": self.counters.snapshot(),
                "components": {c.name: c.status() for c in self.components}}

    def publish_self_stats(self) -> None:
        fields = self.counters.snapshot() or {"up": 1}
        self.writer.write([line("manager_stats", {"manager": self.cfg.manager_id}, fields, time.time_ns())])

    def run(self, stop: threading.Event) -> None:
        self.writer.start()
        for c in self.components:
            c.start()
        self.control.start()
        self.mqtt.start()
        next_stats = time.monotonic() + 10
        try:
            while not stop.wait(1.0):
                for c in self.components:
                    try:
                        c.tick()
                    except Exception:
                        self.counters.inc(f"component_errors_{c.name}")
                        log.exception("component %s failed in tick", c.name)
                if time.monotonic() >= next_stats:
                    self.publish_self_stats()
                    next_stats = time.monotonic() + 10
                if self.mqtt.fatal:
                    raise FatalError(f"MQTT broker refused the manager: {self.mqtt.fatal}")
        finally:
            self.stop_event.set()
            self.mqtt.stop()
            for c in reversed(self.components):
                try:
                    c.close()
                except Exception:
                    log.exception("component %s failed to close", c.name)
            self.control.stop()
            self.publish_self_stats()
            self.writer.close(timeout=5.0)
            log.info("counters at exit: %s", self.counters.snapshot())


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manager", ManagerConfig, ManagerService, argv,
                       description="Vigil manager: ingest, policy and rule sets for a fleet of engines")


if __name__ == "__main__":
    raise SystemExit(main())
