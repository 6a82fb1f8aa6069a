"""A site past one InfluxDB is configuration: a real vigil-manager configured with ``influx.api: v2``
writes the flow batches it ingests to a real second target through ``/api/v2/write``.

VictoriaMetrics (Debian's package) accepts line protocol there (docs/SCALING.md); it stores each
field as a metric ``<measurement>_<field>`` with the tags as labels, read back through its export API.
"""
from __future__ import annotations

import json
import urllib.request

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.waiting import wait_for
from vigil import payload, topics
from vigil.control import call
from vigil.lab.services import ManagedProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def victoria(tmp_path):
    port = free_port()
    vm = ManagedProcess("vm", ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{port}",
                               f"-storageDataPath={tmp_path}/vm", "-search.latencyOffset=0s"], tmp_path).start()
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200,
                 20, "victoria-metrics", retry_on=(OSError,))
        yield f"http://127.0.0.1:{port}"
    finally:
        vm.stop()


def exported(url: str, metric: str) -> list[dict]:
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=5).read()
    raw = urllib.request.urlopen(f"{url}/api/v1/export?match[]={metric}", timeout=5).read().decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def test_manager_writes_flow_batches_through_the_v2_api(lab, victoria):
    lab.start_manager(influx={"url": victoria, "api": "v2", "org": "lab", "bucket": "vigil", "token": "t",
                              "flush_interval": 0.2})
    lab.wait_log("manager", "mqtt: connected")
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect("127.0.0.1", lab.mosquitto.port)
    c.loop_start()
    try:
        end = payload.now_ms()
        for seq in range(1, 6):
            flows = [{"src": f"10.77.0.{k}", "dst": "10.77.0.10", "sport": 40000 + k, "dport": 443, "proto": "tcp",
                      "new": True, "orig_bytes": 100, "resp_bytes": 1000, "orig_pkts": 2, "resp_pkts": 3}
                     for k in range(1, seq + 1)]
            body = {"engine": "e1", "seq": seq, "interval": {"start": end - (6 - seq) * 1000 - 1000,
                                                              "end": end - (6 - seq) * 1000}, "flows": flows}
            c.publish(topics.engine("e1", "flows"), payload.encode("flows", "e1", body), qos=1).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()

    def batches():
        series = [s for s in exported(victoria, "flow_batches_records") if s["metric"].get("engine") == "e1"]
        return sum(series[0]["values"]) if series and len(series[0]["values"]) == 5 else None
    total = wait_for(batches, 20, "five flow batches of e1 in victoria-metrics", lab=lab, retry_on=(OSError,))
    assert total == 1 + 2 + 3 + 4 + 5
    counters = call(lab.run_dir / "manager.sock", "manager.status")["counters"]
    assert counters.get("influx_points_written", 0) > 0 and counters.get("influx_points_dropped", 0) == 0
