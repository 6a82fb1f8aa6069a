"""The end-to-end slice: traffic through br0 -> engine -> MQTT -> manager -> InfluxDB."""
from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.integration

# conntrack counts IP packets including IP and TCP headers; iperf3 and curl report payload.
# With offloads on, one counted "packet" is a ~64 KB segment, so headers add well under 1 %;
# 5 % also covers the small iperf3 control connection that shares the port.
TOLERANCE = 0.05


def _wait_sum(lab, q: str, want: float, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    got = 0.0
    while time.monotonic() < deadline:
        rows = lab.influx.query(q)
        got = float(rows[0]["sum"]) if rows and rows[0].get("sum") is not None else 0.0
        if got >= want * (1 - TOLERANCE):
            # one more interval so that nothing is still in flight
            time.sleep(2.0)
            rows = lab.influx.query(q)
            return float(rows[0]["sum"])
        time.sleep(0.5)
    return got


def test_iperf3_bytes_reach_influxdb(lab):
    lab.start_manager()
    lab.start_engine()
    lab.wait_log("engine", "mqtt: connected")
    lab.wait_log("manager", "mqtt: connected")
    server = lab.popen("server", ["iperf3", "-s", "-1", "-B", lab.ip("server")], name="iperf3-server")
    time.sleep(0.3)
    r = lab.run("client", ["iperf3", "-c", lab.ip("server"), "-t", "3", "-J"], timeout=30)
    sent = json.loads(r.stdout)["end"]["sum_sent"]["bytes"]
    server.proc.wait(10)

    q = "SELECT sum(orig_bytes) FROM service_traffic WHERE engine='e1' AND proto='tcp' AND port='5201'"
    got = _wait_sum(lab, q, sent)
    assert sent * (1 - TOLERANCE) <= got <= sent * (1 + TOLERANCE), (sent, got)

    # The engine's retained status and the per-engine totals were recorded too.
    status = lab.influx.query("SELECT last(mode) FROM engine_status WHERE engine='e1'")
    assert status and status[0]["last"] == "learning"
    total = lab.influx.query("SELECT sum(orig_bytes) FROM engine_traffic WHERE engine='e1'")
    assert total[0]["sum"] >= got


def test_curl_download_bytes_reach_influxdb(lab, tmp_path):
    size = 8 * 1024 * 1024
    www = lab.run_dir / "www"
    www.mkdir()
    (www / "blob.bin").write_bytes(bytes(range(256)) * (size // 256))
    lab.start_manager()
    lab.start_engine()
    lab.wait_log("engine", "mqtt: connected")
    lab.popen("server", ["python3", "-m", "http.server", "8080", "--bind", lab.ip("server"),
                         "--directory", str(www)], name="http")
    time.sleep(0.5)
    r = lab.run("client", ["curl", "-sS", "--retry", "5", "--retry-connrefused", "-o", "/dev/null",
                           "-w", "%{size_download}", f"http://{lab.ip('server')}:8080/blob.bin"])
    downloaded = int(r.stdout)
    assert downloaded == size
    q = "SELECT sum(resp_bytes) FROM service_traffic WHERE engine='e1' AND proto='tcp' AND port='8080'"
    got = _wait_sum(lab, q, downloaded)
    assert downloaded <= got <= downloaded * (1 + TOLERANCE), (downloaded, got)


def test_engine_stops_cleanly_and_says_so(lab):
    from vigil import payload
    import subprocess
    lab.start_manager()
    eng = lab.start_engine()
    lab.wait_log("engine", "mqtt: connected")
    assert eng.stop(timeout=10) == 0
    # the retained status now says stopped (not the last-will's offline)
    r = subprocess.run(["mosquitto_sub", "-p", str(lab.mosquitto.port), "-t", "vigil/v1/engine/e1/status",
                        "-C", "1", "-W", "5"], capture_output=True, timeout=10)
    status = payload.decode(r.stdout.strip(), "status")
    assert status["state"] == "stopped"
    assert "vigil-engine stopped" in eng.log_text()
