"""Attacks spread over time (engine/detect.py time scales): ``nmap --scan-delay 15s`` — one probe
every 15 s, far below the 10 s window's thresholds — is found on the minutes scale and blocked,
while a bursty benign client beside it (many short requests, parallel downloads, an iperf3 run)
is never flagged and never loses a request.  About 3 minutes of real time."""
from __future__ import annotations

import time

import pytest

from tests.support.engine_lab import Bursts, ClientLoop, _http, _reaches

pytestmark = pytest.mark.lab


def test_one_probe_per_15s_is_found_on_the_minutes_scale_beside_a_bursty_client(lab, events):
    lab.start_engine(learning={"period": 0})
    lab.wait_log("engine", "mqtt: connected")
    _http(lab)
    lab.popen("server", ["iperf3", "-s", "-B", lab.ip("server")], name="iperf3-server")
    client, bursts = ClientLoop(lab), Bursts(lab)
    client.start()
    bursts.start()
    t0 = time.monotonic()
    try:
        lab.popen("attacker", ["nmap", "-sS", "-n", "-Pn", "--scan-delay", "15s", "--max-retries", "0",
                               "-p", "1-14", lab.ip("server")], name="nmap")
        ev = events.wait(timeout=220, type="scan", src=lab.ip("attacker"))[0]
        took = time.monotonic() - t0
        lab.stop("nmap")
        assert ev["action"] == "block" and ev["time_scale"] == 300.0, ev
        assert ev["detail"].startswith("slow (300s scale) scan"), ev
        assert 120 <= took <= 200, took          # 10 failed targets at 15 s each, then the next probe
        assert not _reaches(lab, "attacker")
    finally:
        client.stop.set()
        bursts.stop.set()
        client.join(5)
        bursts.join(45)
    assert client.ok >= 100 and client.failed == [], (client.ok, client.failed)
    assert bursts.rounds >= 10 and bursts.failed == [], bursts.failed
    assert not events.find(src=lab.ip("client"))
    assert _reaches(lab, "client")
