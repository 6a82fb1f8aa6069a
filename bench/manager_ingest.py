"""Ingest throughput: flow records/s from MQTT through vigil-manager's ingest into InfluxDB.

Starts its own Mosquitto and InfluxDB (as the lab does, on free loopback ports, under a temporary
run directory) and a real vigil-manager with the default aggregation.  Publishes BATCHES flow
batches of RECORDS records each (QoS 1, as engines do) and times until the manager has ingested
them all and its InfluxDB writer has nothing pending.

Baseline in the same run: the same batches through the same broker to ``mosquitto_sub`` (a C
client that only receives) — the transport's ceiling on this machine.  Prints records/s, InfluxDB
points/s and the ratio to the baseline.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from vigil import payload, topics
from vigil.control import call
from vigil.lab.services import InfluxDB, ManagedProcess, Mosquitto, vigil_command

BATCHES = int(os.environ.get("BATCHES", "200"))
RECORDS = int(os.environ.get("RECORDS", "1000"))
ENGINES = 4


def batches() -> list[tuple[str, bytes]]:
    out = []
    for seq in range(1, BATCHES // ENGINES + 1):
        for e in range(ENGINES):
            eng = f"e{e + 1}"
            now = payload.now_ms()
            flows = [{"id": i, "family": 4, "proto": "tcp", "src": f"10.2.{i % 200}.{i % 250}", "sport": 30000 + i % 30000,
                      "dst": f"10.1.0.{i % 50}", "dport": (80, 443, 22, 8080, 5201)[i % 5], "in_port": "eth0",
                      "start": now - 5000, "end": None, "new": i % 3 == 0, "state": "established",
                      "conn_state": "S1", "replied": True, "assured": True, "orig_pkts": 5, "orig_bytes": 600,
                      "resp_pkts": 4, "resp_bytes": 4000, "orig_pkts_total": 50, "orig_bytes_total": 6000,
                      "resp_pkts_total": 40, "resp_bytes_total": 40000} for i in range(RECORDS)]
            body = {"engine": eng, "seq": seq, "interval": {"start": now - 1000, "end": now},
                    "mode": "enforcing", "flows": flows}
            out.append((topics.engine(eng, "flows"), payload.encode("flows", eng, body)))
    return out


def publish(port: int, msgs) -> float:
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = time.perf_counter()
    infos = [c.publish(tp, data, qos=1) for tp, data in msgs]
    for i in infos:
        i.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()
    return t


def main() -> None:
    run = Path(tempfile.mkdtemp(prefix="vigil-bench-ingest-"))
    run.chmod(0o755)  # Mosquitto drops to its own user and must read its config
    mq = Mosquitto(run).start()
    influx = InfluxDB(run).start()
    procs: list[ManagedProcess] = []
    try:
        msgs = batches()
        total = len(msgs) * RECORDS
        # -- baseline: the broker to a receive-only C client ----------------------------------
        sub = subprocess.Popen(["mosquitto_sub", "-p", str(mq.port), "-q", "1", "-t", "vigil/v1/engine/+/flows",
                                "-C", str(len(msgs))], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = publish(mq.port, msgs)
        sub.wait(120)
        base_s = time.perf_counter() - t0
        # -- the manager's ingest -----------------------------------------------------------
        cfg = {"manager_id": "bench", "mqtt": mq.mqtt_config(), "state_dir": str(run / "state"),
               "control_socket": str(run / "manager.sock"),
               "influx": {"url": influx.url, "database": "vigil", "flush_interval": 0.2},
               "log": {"level": "WARNING"}}
        (run / "manager.yaml").write_text(yaml.safe_dump(cfg))
        mgr = ManagedProcess("manager", [*vigil_command("vigil-manager"), "-c", str(run / "manager.yaml")], run).start()
        procs.append(mgr)
        sock = run / "manager.sock"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if call(sock, "manager.status")["mqtt_connected"]:
                    break
            except Exception:
                pass
            time.sleep(0.1)
        time.sleep(0.5)
        t0 = publish(mq.port, msgs)
        while True:
            st = call(sock, "manager.status")
            c = st["counters"]
            if c.get("flow_records_ingested", 0) >= total and st["influx_pending"] == 0:
                break
            if time.perf_counter() - t0 > 300:
                print("timed out", c, file=sys.stderr)
                break
            time.sleep(0.05)
        ing_s = time.perf_counter() - t0
        points = c.get("influx_points_written", 0)
        rate, base_rate = total / ing_s, total / base_s
        print(f"ingest: {total} flow records in {len(msgs)} batches in {ing_s:.2f} s = {rate:,.0f} records/s "
              f"(goal >= 50,000/s); InfluxDB points written {points} = {points / ing_s:,.0f} points/s; "
              f"dropped {c.get('influx_points_dropped', 0)}")
        print(f"baseline, the same batches to mosquitto_sub: {base_s:.2f} s = {base_rate:,.0f} records/s; "
              f"ratio ingest/baseline = {rate / base_rate:.2f}")
    finally:
        for p in procs:
            p.stop()
        mq.stop()
        influx.stop()
        subprocess.run(["rm", "-rf", str(run)])


if __name__ == "__main__":
    main()
