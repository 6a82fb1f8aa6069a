"""The storage writer against real servers: InfluxDB 1.6 (v1 API) and VictoriaMetrics (v2 path).

Outage, retry and a bounded buffer are exercised by stopping and restarting the real InfluxDB.
"""
from __future__ import annotations

import time
import urllib.request

import pytest

from vigil.common import InfluxConfig
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


def test_v2_write_path_against_victoriametrics(tmp_path):
    port = free_port()
    vm = ManagedProcess("vm", ["victoria-metrics", f"-httpListenAddr=127.0.0.1:{port}",
                               f"-storageDataPath={tmp_path}/vm", "-search.latencyOffset=0s"], tmp_path).start()
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200,
                 20, "victoria-metrics")
        c = Counters()
        cfg = InfluxConfig(url=f"http://127.0.0.1:{port}", api="v2", bucket="vigil", org="lab", token="t",
                           flush_interval=0.05)
        w = InfluxWriter(cfg, c).start()
        now = time.time_ns()
        w.write(line("engine_traffic", {"engine": "e1"}, {"orig_bytes": 1000 + i}, now + i) for i in range(10))
        assert w.flush(10)
        w.close()
        assert c.get("influx_points_written") == 10
        urllib.request.urlopen(f"http://127.0.0.1:{port}/internal/force_flush", timeout=5).read()

        def seen():
            q = f"http://127.0.0.1:{port}/api/v1/export?match[]=engine_traffic_orig_bytes"
            return b"engine_traffic_orig_bytes" in urllib.request.urlopen(q, timeout=5).read()
        wait_for(seen, 10, "points in victoria-metrics")
    finally:
        vm.stop()
