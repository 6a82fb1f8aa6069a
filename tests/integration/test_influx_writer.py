"""The storage writer against real servers: InfluxDB 1.6 (v1 API) and VictoriaMetrics (v2 path),
alone and in a real manager.

Outage, retry and a bounded buffer are exercised by stopping and restarting the real InfluxDB.
"""
from __future__ import annotations

import json
import time
import urllib.request

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support import waiting
from vigil import payload, topics
from vigil.common import InfluxConfig
from vigil.control import call
from vigil.counters import Counters
from vigil.influx import InfluxHTTP, InfluxWriter, line, rows
from vigil.lab.services import InfluxDB, ManagedProcess, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def influx(tmp_path):
    db = InfluxDB(tmp_path).start()
    yield db
    db.stop()


def _count(db: InfluxDB, measurement: str) -> int:
    r = db.query(f"SELECT count(v) FROM {measurement}")
    return int(r[0]["count"]) if r else 0


def test_batches_reach_influxdb(influx):
    c = Counters()
    w = InfluxWriter(InfluxConfig(url=influx.url, database="t1", batch_size=1000, flush_interval=0.1), c).start()
    w.write(line("m", {"k": str(i % 7)}, {"v": i}, 1_000_000_000 + i) for i in range(12_345))
    assert w.flush(20)
    w.close()
    assert rows(InfluxHTTP(InfluxConfig(url=influx.url, database="t1")).query("SELECT count(v) FROM m"))[0]["count"] == 12_345
    assert c.get("influx_points_written") == 12_345 and c.get("influx_points_dropped") == 0


def test_outage_is_retried_and_nothing_is_lost(tmp_path):
    db = InfluxDB(tmp_path)
    port = db.port
    c = Counters()
    cfg = InfluxConfig(url=db.url, database="vigil", batch_size=100, flush_interval=0.05,
                       retry_min=0.1, retry_max=0.5, timeout=2)
    w = InfluxWriter(cfg, c).start()
    try:
        # InfluxDB is not running yet: points wait in the buffer.
        w.write(line("m", {}, {"v": i}, 2_000_000_000 + i) for i in range(500))
        time.sleep(1.0)
        assert c.get("influx_write_retries") >= 1
        assert w.pending() == 500
        db.start()
        assert w.flush(20)
        assert _count(db, "m") == 500
        # A second outage in the middle of a stream.
        db.stop()
        w.write(line("m", {}, {"v": i}, 3_000_000_000 + i) for i in range(300))
        time.sleep(0.5)
        db2 = InfluxDB(tmp_path, port=port)
        db2.rpc_port = db.rpc_port
        db2.start()
        assert w.flush(20)
        assert _count(db2, "m") == 800
        assert c.get("influx_points_dropped") == 0
        db2.stop()
    finally:
        w.close(timeout=1)
        db.stop()


def test_full_buffer_drops_oldest_and_counts(tmp_path):
    c = Counters()
    cfg = InfluxConfig(url=f"http://127.0.0.1:{free_port()}", batch_size=10, buffer_points=100,
                       flush_interval=0.05, retry_min=0.1, timeout=1)
    w = InfluxWriter(cfg, c).start()
    w.write(line("m", {}, {"v": i}) for i in range(250))
    assert c.get("influx_points_dropped") == 150
    assert w.pending() == 100
    w.close(timeout=0.5)
    assert c.get("influx_points_dropped") == 250  # the rest, at shutdown, counted too


def test_bad_points_are_rejected_not_retried(influx):
    c = Counters()
    w = InfluxWriter(InfluxConfig(url=influx.url, database="t3", flush_interval=0.05), c).start()
    w.write(["m v=1i 1000000000", "m v=\"text\" 1000000001", "broken line with no fields"])
    w.write(["m v=2i 1000000002"])
    assert w.flush(10)
    w.close()
    assert c.get("influx_batches_rejected") == 1


@pytest.fixture
def victoria(tmp_path):
    """A real VictoriaMetrics (Debian's package): line protocol on /write and /api/v2/write."""
    port = free_port()
    vm = ManagedProcess("vm", ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{port}",
                               f"-storageDataPath={tmp_path}/vm", "-search.latencyOffset=0s"], tmp_path).start()
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200,
                 20, "victoria-metrics")
        yield f"http://127.0.0.1:{port}"
    finally:
        vm.stop()


def _exported(url: str, metric: str) -> bytes:
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=5).read()
    return urllib.request.urlopen(f"{url}/api/v1/export?match[]={metric}", timeout=5).read()


def test_v2_write_path_against_victoriametrics(victoria):
    c = Counters()
    cfg = InfluxConfig(url=victoria, api="v2", bucket="vigil", org="lab", token="t", flush_interval=0.05)
    w = InfluxWriter(cfg, c).start()
    now = time.time_ns()
    w.write(line("engine_traffic", {"engine": "e1"}, {"orig_bytes": 1000 + i}, now + i) for i in range(10))
    assert w.flush(10)
    w.close()
    assert c.get("influx_points_written") == 10
    wait_for(lambda: b"engine_traffic_orig_bytes" in _exported(victoria, "engine_traffic_orig_bytes"), 10,
             "points in victoria-metrics")


def test_manager_configured_for_the_v2_api_writes_its_batches(lab, victoria):
    """A site past one InfluxDB is configuration (docs/SCALING.md): a real vigil-manager with
    ``influx.api: v2`` writes the flow batches it ingests; VictoriaMetrics stores each field as
    ``<measurement>_<field>`` with the tags as labels."""
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
            t = end - (6 - seq) * 1000
            body = {"engine": "e1", "seq": seq, "interval": {"start": t - 1000, "end": t}, "flows": flows}
            c.publish(topics.engine("e1", "flows"), payload.encode("flows", "e1", body), qos=1).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()

    def records():
        series = [json.loads(x) for x in _exported(victoria, "flow_batches_records").splitlines() if x.strip()]
        series = [x for x in series if x["metric"].get("engine") == "e1"]
        return sum(series[0]["values"]) if series and len(series[0]["values"]) == 5 else None
    assert waiting.wait_for(records, 20, "five flow batches of e1 in victoria-metrics", lab=lab) == 1 + 2 + 3 + 4 + 5
    counters = call(lab.run_dir / "manager.sock", "manager.status")["counters"]
    assert counters.get("influx_points_written", 0) > 0 and counters.get("influx_points_dropped", 0) == 0
