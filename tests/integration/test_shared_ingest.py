"""Two manager ingest processes share the flow topic through an MQTT v5 shared subscription:
every batch is written exactly once (none lost, none twice), and both processes take a share."""
from __future__ import annotations

import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from vigil import payload, topics
from vigil.control import call

pytestmark = pytest.mark.integration

ENGINES = ["e1", "e2", "e3", "e4"]
PER_ENGINE = 250


def test_two_ingest_processes_split_batches_without_loss_or_duplicates(lab):
    socks = {}
    for name in ("ingest-a", "ingest-b"):
        socks[name] = lab.run_dir / f"{name}.sock"
        lab.start_manager(name=name, manager_id=name, control_socket=str(socks[name]),
                          state_dir=str(lab.run_dir / "state" / name),
                          ingest={"shared_subscription": True})
    for name in socks:
        lab.wait_log(name, "mqtt: connected")
    time.sleep(0.5)  # both subscriptions are in place once connected; leave the SUBACKs a moment

    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    c.connect("127.0.0.1", lab.mosquitto.port)
    c.loop_start()
    base = payload.now_ms() - 3_600_000
    records = 0
    try:
        infos = []
        for seq in range(1, PER_ENGINE + 1):
            for i, eng in enumerate(ENGINES):
                flows = [{"src": f"10.77.{i}.{k}", "dst": "10.77.0.10", "sport": 40000 + k, "dport": 443,
                          "proto": "tcp", "new": True, "orig_bytes": 100 * k, "resp_bytes": 1000,
                          "orig_pkts": 2, "resp_pkts": 3} for k in range(1, 1 + seq % 7)]
                records += len(flows)
                end = base + seq * 1000
                body = {"engine": eng, "seq": seq, "interval": {"start": end - 1000, "end": end}, "flows": flows}
                infos.append(c.publish(topics.engine(eng, "flows"), payload.encode("flows", eng, body), qos=1))
        for info in infos:
            info.wait_for_publish(10)
        # one batch delivered again (as after a lost PUBACK): dedupe or an idempotent overwrite
        dup = {"engine": "e1", "seq": 7, "interval": {"start": base + 6000, "end": base + 7000},
               "flows": [{"src": "10.77.0.1", "dst": "10.77.0.10", "dport": 443, "proto": "tcp",
                          "orig_bytes": 100, "resp_bytes": 1000, "orig_pkts": 2, "resp_pkts": 3}]}
        c.publish(topics.engine("e1", "flows"), payload.encode("flows", "e1", dup), qos=1).wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()

    total = len(ENGINES) * PER_ENGINE
    deadline = time.monotonic() + 30
    ingested = {}
    while time.monotonic() < deadline:
        ingested = {n: call(s, "manager.status")["counters"].get("flow_batches_ingested", 0)
                    for n, s in socks.items()}
        if sum(ingested.values()) >= total + 1 or (sum(ingested.values()) >= total and
                                                      time.monotonic() > deadline - 25):
            break
        time.sleep(0.3)
    # the redelivered batch is either dropped as a duplicate (same process) or ingested again by the
    # other process, where it overwrites its own points (same series and timestamp)
    dropped = sum(call(s, "manager.status")["counters"].get("flow_batches_duplicate", 0) for s in socks.values())
    assert sum(ingested.values()) + dropped == total + 1, (ingested, dropped)
    assert all(v > total * 0.1 for v in ingested.values()), f"one process took (almost) nothing: {ingested}"

    q = "SELECT count(records), sum(records) FROM flow_batches WHERE time >= {}ms".format(base)
    deadline = time.monotonic() + 20
    row = {}
    while time.monotonic() < deadline:
        rows = lab.influx.query(q)
        row = rows[0] if rows else {}
        if row.get("count") == total:
            break
        time.sleep(0.5)
    assert row.get("count") == total and row.get("sum") == records, (row, total, records)
    per_engine = lab.influx.query("SELECT count(records) FROM flow_batches WHERE time >= {}ms GROUP BY engine"
                                  .format(base))
    assert sorted((r["engine"], r["count"]) for r in per_engine) == [(e, PER_ENGINE) for e in ENGINES]
