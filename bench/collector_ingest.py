"""End-to-end TCP syslog ingest: messages/s from a sender to events stored in InfluxDB.

A sender process writes ``--messages`` octet-counted syslog messages (a mix of Snort fast, CEF,
Check Point and ModSecurity error-log lines) to the collector's TCP listener as fast as it can;
the rate is measured from the first byte sent until InfluxDB has acknowledged every event
(``influx_points_written``).  The collector runs as in the manager (listener thread, worker,
batched InfluxDB writer), parsing, correlating (default rules) and storing each message.
Baseline, same run, same sender: a bare TCP read loop that only counts the frames' bytes.
Goal: >= 20k msg/s.  Needs ``influxd`` (the lab's InfluxDB service is started in a temp dir).

    .venv/bin/python bench/collector_ingest.py [--messages 100000]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import tempfile
import threading
import time
from pathlib import Path

from vigil.collector.component import CollectorComponent
from vigil.collector.config import CollectorConfig
from vigil.common import InfluxConfig
from vigil.control import ControlServer
from vigil.counters import Counters
from vigil.influx import InfluxWriter
from vigil.lab.services import InfluxDB, free_port
from vigil.manager.api import Context, _NoPolicy

LINES = [
    "<38>Nov 23 10:00:01 ids snort: [1:2012811:2] ET DNS Query to a .tk domain [Classification: "
    "Potentially Bad Traffic] [Priority: 2] {UDP} 10.1.%d.%d:1029 -> 10.0.1.1:53",
    "<134>Nov 23 10:00:01 fw CEF:0|Vendor|Product|1.0|100|Threat blocked|8|src=10.2.%d.%d spt=4444 "
    "dst=10.0.1.1 dpt=80 proto=TCP act=blocked msg=something happened",
    '<134>1 2026-11-23T10:00:01Z gw CheckPoint 16700 - [action:"Accept"; ifdir:"inbound"; '
    'origin:"10.0.0.1"; src:"10.3.%d.%d"; dst:"10.0.1.1"; proto:"6"; s_port:"4444"; service:"443"; '
    'product:"VPN-1 & FireWall-1"; rule_name:"Allow web"]',
    '<131>Nov 23 10:00:01 www apache-error: [Mon Nov 23 10:00:01.123456 2026] [security2:error] '
    '[pid 1:tid 2] [client 10.4.%d.%d:4000] [client 10.4.0.1] ModSecurity: Warning. Matched phrase '
    '"union select" [file "/usr/share/modsecurity-crs/rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf"] '
    '[line "1"] [id "942190"] [msg "Detects MSSQL code execution"] [severity "CRITICAL"] [tag "attack-sqli"]',
]


def payload(n: int) -> bytes:
    out = bytearray()
    for i in range(n):
        m = (LINES[i % 4] % ((i // 250) % 250, i % 250)).encode()
        out += b"%d %s" % (len(m), m)
    return bytes(out)


def sender(port: int, data: bytes, started) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        started.value = time.time()
        view = memoryview(data)
        for i in range(0, len(data), 65536):
            s.sendall(view[i:i + 65536])


def baseline(data: bytes, n: int) -> float:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    started = mp.Value("d", 0.0)
    p = mp.Process(target=sender, args=(port, data, started))
    p.start()
    conn, _ = srv.accept()
    total = 0
    while True:
        chunk = conn.recv(262144)
        if not chunk:
            break
        total += len(chunk)
    end = time.time()
    p.join()
    conn.close()
    srv.close()
    assert total == len(data)
    return n / (end - started.value)


def collector_run(data: bytes, n: int, influx_url: str, tmp: Path) -> tuple[float, dict]:
    counters = Counters()
    writer = InfluxWriter(InfluxConfig(url=influx_url, database="bench", batch_size=5000,
                                       flush_interval=0.2), counters).start()
    ctx = Context("bench", tmp, None, writer, counters, ControlServer(tmp / "ctl.sock"),
                  _NoPolicy(counters), threading.Event())
    port = free_port()
    comp = CollectorComponent(CollectorConfig(tcp=f"127.0.0.1:{port}", queue_size=200_000,
                                              rate_per_source=1e9, burst_per_source=10**9), ctx)
    comp.start()
    started = mp.Value("d", 0.0)
    p = mp.Process(target=sender, args=(port, data, started))
    p.start()
    deadline = time.time() + 600
    while counters.get("influx_points_written") < n and time.time() < deadline:
        time.sleep(0.01)
    end = time.time()
    p.join()
    comp.close()
    writer.close()
    snap = counters.snapshot()
    if snap.get("influx_points_written", 0) < n:
        raise SystemExit(f"only {snap.get('influx_points_written', 0)} of {n} events stored: {snap}")
    return n / (end - started.value), snap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    args = ap.parse_args()
    n = args.messages
    data = payload(n)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as d:
        tmp = Path(d)
        influx = InfluxDB(tmp).start()
        try:
            base = baseline(data, n)
            got, snap = collector_run(data, n, influx.url, tmp)
        finally:
            influx.stop()
    print(f"collector end-to-end TCP ingest, {n} messages ({len(data) / n:.0f} bytes avg), "
          "sender -> parse -> correlate -> InfluxDB acknowledged")
    print(f"  collector:          {got:10,.0f} msg/s")
    print(f"  bare TCP read loop: {base:10,.0f} msg/s (baseline)")
    print(f"  ratio:              {got / base:10.4f}")
    print(f"  goal 20,000 msg/s:  {'met' if got >= 20000 else 'MISSED'}")
    print(f"  InfluxDB:           {snap.get('influx_points_written', 0) * got / n:10,.0f} points/s acknowledged "
          "(one point per message)")
    print(f"  counters: events={snap.get('collector_events')} written={snap.get('influx_points_written')} "
          f"pauses={snap.get('syslog_backpressure_pauses', 0)} dropped={snap.get('influx_points_dropped', 0)} "
          f"rules_fired={snap.get('correlation_fired', 0)}")


if __name__ == "__main__":
    main()
