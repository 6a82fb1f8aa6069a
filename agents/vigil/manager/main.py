"""vigil-manager: ingest engine telemetry into InfluxDB (and, in later parts, policy and rule sets).

Flow batches are received through an MQTT v5 shared subscription, so several manager processes can
split the load; statuses and events go to every manager.  A malformed payload is logged and
counted (``payload_rejected_<reason>``) and never stops ingestion of anything else.
"""
from __future__ import annotations

import logging
import threading
import time

from .. import payload, topics
from ..counters import Counters
from ..daemon import StartupError, main as daemon_main
from ..influx import InfluxWriter, line
from ..mqtt import MqttClient, new_client_id
from .config import ManagerConfig
from .ingest import FlowAggregator, status_points

log = logging.getLogger(__name__)


class ManagerService:
    def __init__(self, cfg: ManagerConfig):
        self.cfg = cfg
        self.counters = Counters()
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create state_dir {cfg.state_dir}: {exc}") from None
        self.writer = InfluxWriter(cfg.influx, self.counters)
        self.aggregator = FlowAggregator(cfg.ingest, self.counters)
        self.mqtt = MqttClient(cfg.mqtt, new_client_id(f"manager-{cfg.manager_id}"), self.counters)
        self.engines: dict[str, dict] = {}

    def _decode(self, msg, kind: str) -> dict | None:
        try:
            return payload.decode(msg.payload, kind)
        except payload.PayloadError as exc:
            self.counters.inc(f"payload_rejected_{exc.reason}")
            self.counters.inc("payload_rejected")
            log.warning("rejected payload on %s: %s", msg.topic, exc)
            return None

    def on_flows(self, msg) -> None:
        data = self._decode(msg, "flows")
        if data is None:
            return
        dev = topics.device_of(msg.topic)
        if dev is None or data.get("engine", dev[1]) != dev[1]:
            self.counters.inc("payload_rejected_wrong_sender")
            log.warning("flow batch on %s claims engine %r; ignored", msg.topic, data.get("engine"))
            return
        if not isinstance(data.get("seq"), int) or not isinstance(data.get("flows", []), list):
            self.counters.inc("payload_rejected_bad_fields")
            log.warning("flow batch on %s lacks an integer seq or a flows list", msg.topic)
            return
        if self.aggregator.check_seq(dev[1], data["seq"]) == "duplicate":
            return
        data["engine"] = dev[1]
        self.writer.write(self.aggregator.batch_points(data))
        self.counters.inc("flow_batches_ingested")
        self.counters.inc("flow_records_ingested", len(data.get("flows", [])))

    def on_status(self, msg) -> None:
        if not msg.payload:  # a cleared retained status
            return
        data = self._decode(msg, "status")
        if data is None:
            return
        dev = topics.device_of(msg.topic)
        data["engine"] = dev[1] if dev else data.get("sender")
        self.engines[data["engine"]] = data
        self.writer.write(status_points(data))

    def publish_self_stats(self) -> None:
        snap = self.counters.snapshot()
        fields = {k: v for k, v in snap.items()} or {"up": 1}
        self.writer.write([line("manager_stats", {"manager": self.cfg.manager_id}, fields, time.time_ns())])

    def run(self, stop: threading.Event) -> None:
        flows = topics.engine("+", "flows")
        if self.cfg.ingest.shared_subscription:
            flows = topics.shared(flows, self.cfg.ingest.share_group)
        self.mqtt.subscribe(flows, self.on_flows, qos=1)
        self.mqtt.subscribe(topics.engine("+", "status"), self.on_status, qos=1)
        self.writer.start()
        self.mqtt.start()
        try:
            while not stop.wait(10.0):
                self.publish_self_stats()
                if self.mqtt.fatal:
                    raise StartupError(f"MQTT broker refused the manager: {self.mqtt.fatal}")
        finally:
            self.mqtt.stop()
            self.publish_self_stats()
            self.writer.close(timeout=5.0)
            log.info("counters at exit: %s", self.counters.snapshot())


def main(argv: list[str] | None = None) -> int:
    return daemon_main("manager", ManagerConfig, ManagerService, argv,
                       description="Vigil manager: ingest, policy and rule sets for a fleet of engines")


if __name__ == "__main__":
    raise SystemExit(main())
