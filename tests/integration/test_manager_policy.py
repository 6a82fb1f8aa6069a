"""The policy component in a real vigil-manager with real Mosquitto and InfluxDB.

The test plays two engines on MQTT (retained statuses, flow batches, events) and reads what the
manager publishes back (signed rule sets) and answers on its control socket through vigilctl.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from vigil import payload, ruleset, topics

pytestmark = pytest.mark.integration

VIGILCTL = [str(Path(sys.executable).parent / "vigilctl")]
ATTACKER = "10.77.0.66"
SERVER = "10.77.0.10"


class Peer:
    """A paho client standing in for engines: publishes their messages, records what it receives."""

    def __init__(self, port: int):
        self.msgs: "queue.Queue[paho.MQTTMessage]" = queue.Queue()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.c.on_message = lambda c, u, m: self.msgs.put(m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def sub(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)

    def pub(self, topic: str, kind: str, sender: str, body: dict, retain: bool = False) -> None:
        self.c.publish(topic, payload.encode(kind, sender, body), qos=1, retain=retain).wait_for_publish(5)

    def wait(self, pred, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.msgs.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if pred(m):
                return m
        raise TimeoutError("no matching message")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def status(engine: str, mode: str, tags=()) -> dict:
    return {"engine": engine, "state": "running", "mode": mode, "tags": list(tags),
            "learning": {"progress": 0.5 if mode == "learning" else 1.0}, "ruleset_generation": None}


def scan_batch(engine: str, seq: int, src: str = ATTACKER) -> dict:
    now = payload.now_ms()
    flows = [{"src": src, "dst": SERVER, "sport": 40000, "dport": p, "proto": "tcp", "new": True, "end": now,
              "conn_state": "REJ", "replied": True, "assured": False, "orig_pkts": 1, "resp_pkts": 1,
              "orig_bytes": 44, "resp_bytes": 40} for p in range(1, 101)]
    return {"engine": engine, "seq": seq, "interval": {"start": now - 1000, "end": now}, "flows": flows}


def ctl(lab, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*VIGILCTL, "--socket", str(lab.run_dir / "manager.sock"), *args],
                       capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"vigilctl {args} -> {r.returncode}: {r.stderr}")
    return r


def ctl_json(lab, *args: str):
    return json.loads(ctl(lab, "--json", *args).stdout)


def snapshot_on(peer: Peer, engine: str, pub, pred=lambda s: True, timeout=10.0):
    topic = topics.engine(engine, "ruleset")
    m = peer.wait(lambda m: m.topic == topic and pred(ruleset.decode_snapshot(m.payload, pub, engine)), timeout)
    return ruleset.decode_snapshot(m.payload, pub, engine)


POLICY = {"ladder": [30, 120, 600], "unblock_suppress": 60, "allowlist": ["10.77.0.1/32"],
          "detection": {"min_intervals": 1000}}


def test_decisions_rule_sets_and_vigilctl(lab):
    mgr = lab.start_manager(policy=POLICY)
    lab.wait_log("manager", "mqtt: connected")
    pub = ruleset.load_public_key(lab.run_dir / "state" / "manager" / "signing.pub")
    peer = Peer(lab.mosquitto.port)
    try:
        peer.sub("vigil/v1/engine/+/ruleset")
        peer.sub("vigil/v1/engine/+/ruleset/delta")
        peer.pub(topics.engine("e1", "status"), "status", "e1", status("e1", "enforcing"), retain=True)
        peer.pub(topics.engine("e2", "status"), "status", "e2", status("e2", "learning", ["dmz"]), retain=True)
        snapshot_on(peer, "e1", pub)
        # a scan seen by e1 (enforcing) is blocked on e1 only
        peer.pub(topics.engine("e1", "flows"), "flows", "e1", scan_batch("e1", 1))
        s1 = snapshot_on(peer, "e1", pub, lambda s: any(e.value == ATTACKER for e in s.entries))
        drop = [e for e in s1.entries if e.value == ATTACKER][0]
        assert drop.origin == "flow-anomaly:vertical-scan" and 25 <= drop.ttl <= 30
        assert ("allow", "cidr", "10.77.0.1/32") in {e.key for e in s1.entries}
        # the same scan seen by e2 (learning) is only a would-block there
        peer.pub(topics.engine("e2", "flows"), "flows", "e2", scan_batch("e2", 1, src="10.77.0.67"))
        deadline = time.monotonic() + 10
        while not ctl_json(lab, "engines", "report", "e2") and time.monotonic() < deadline:
            time.sleep(0.2)
        report = ctl_json(lab, "engines", "report", "e2")
        assert [d["value"] for d in report] == ["10.77.0.67"] and report[0]["would_block_on"] == ["e2"]
        assert "10.77.0.67" in ctl(lab, "engines", "report").stdout           # table output
        s2 = ruleset.decode_snapshot(_retained(lab, "e2"), pub, "e2")
        assert "10.77.0.67" not in {e.value for e in s2.entries}

        engines = {e["engine"]: e for e in ctl_json(lab, "engines")}
        assert engines["e1"]["mode"] == "enforcing" and engines["e2"]["mode"] == "learning"
        assert engines["e2"]["would_block"] == 1 and engines["e1"]["enforced"] == 1
        assert "e2" in ctl(lab, "engines").stdout

        # bad input: exit code 2 and a clear message
        r = ctl(lab, "decisions", "add", "10.1.2.300", check=False)
        assert r.returncode == 2 and "10.1.2.300" in r.stderr
        r = ctl(lab, "decisions", "add", "10.1.2.3", "--engine", "e9", check=False)
        assert r.returncode == 2 and "unknown engine 'e9'" in r.stderr
        r = ctl(lab, "decisions", "add", "10.1.2.3", "--duration", "soon", check=False)
        assert r.returncode == 2 and "duration" in r.stderr
        r = ctl(lab, "allowlist", "add", "not-an-address", check=False)
        assert r.returncode == 2
        r = ctl(lab, "decisions", "add", "10.77.0.1", check=False)   # allowlisted: refused
        assert r.returncode == 1 and "allowlisted" in r.stderr

        # an operator block applies even to the learning engine, as a signed delta
        added = ctl_json(lab, "decisions", "add", "10.77.0.99", "-d", "10m", "-e", "tag:dmz", "-r", "test")[0]
        assert added["engines"] == ["tag:dmz"] and added["origin"] == "operator"
        dm = peer.wait(lambda m: m.topic == topics.engine("e2", "ruleset/delta"))
        delta = ruleset.decode_delta(dm.payload, pub, "e2")
        assert [e.value for e in delta.add] == ["10.77.0.99"] and 590 <= delta.add[0].ttl <= 600
        # extend and unblock
        ext = ctl_json(lab, "decisions", "extend", "10.77.0.99", "1h")[0]
        assert ext["remaining"] > 3600
        t0 = time.monotonic()
        ctl(lab, "decisions", "unblock", added["id"])
        dm = peer.wait(lambda m: m.topic == topics.engine("e2", "ruleset/delta")
                       and ruleset.decode_delta(m.payload, pub, "e2").remove)
        assert time.monotonic() - t0 < 2.0
        assert ruleset.decode_delta(dm.payload, pub, "e2").remove == (("drop", "ip", "10.77.0.99"),)
        assert ctl_json(lab, "decisions", "list", "--state", "removed")[0]["id"] == added["id"]
        listed = ctl(lab, "decisions", "list").stdout
        assert ATTACKER in listed and "vertical scan" in listed

        # restart: decisions, allowlist and generations survive
        ctl(lab, "allowlist", "add", "192.0.2.0/24", "--note", "ops")
        gen_before = snapshot_on(peer, "e1", pub, lambda s: ("allow", "cidr", "192.0.2.0/24") in
                                 {e.key for e in s.entries}).generation
        mgr.stop()
        lab.start_manager(name="manager2", policy=POLICY)
        lab.wait_log("manager2", "mqtt: connected")
        s1b = snapshot_on(peer, "e1", pub, lambda s: s.generation > gen_before, timeout=15)
        assert ATTACKER in {e.value for e in s1b.entries}
        assert ("allow", "cidr", "192.0.2.0/24") in {e.key for e in s1b.entries}
        assert any(d["value"] == ATTACKER for d in ctl_json(lab, "decisions", "list"))

        # decisions reached InfluxDB as points with string fields
        rows = lab.influx.query("SELECT count(value) FROM decisions")
        assert rows and rows[0]["count"] >= 2
    finally:
        peer.close()


def _retained(lab, engine: str) -> bytes:
    r = subprocess.run(["mosquitto_sub", "-p", str(lab.mosquitto.port), "-t", topics.engine(engine, "ruleset"),
                        "-C", "1", "-W", "5"], capture_output=True, timeout=10)
    return r.stdout.strip()


def test_engine_events_and_collector_style_proposals(lab):
    lab.start_manager(policy=POLICY)
    lab.wait_log("manager", "mqtt: connected")
    peer = Peer(lab.mosquitto.port)
    try:
        peer.pub(topics.engine("e1", "status"), "status", "e1", status("e1", "enforcing"), retain=True)
        time.sleep(0.5)
        peer.pub(topics.engine("e1", "events"), "events", "e1", {"engine": "e1", "events": [
            {"type": "scan", "detail": "scan: 40 ports", "src": "10.77.0.70", "severity": "high",
             "action": "block"},
            {"type": "arp-spoof", "detail": "mac changed", "src": "10.77.0.71", "severity": "warning"}]})
        deadline = time.monotonic() + 10
        got = []
        while time.monotonic() < deadline and not got:
            got = ctl_json(lab, "decisions", "list", "--origin", "engine-local")
            time.sleep(0.2)
        assert [(d["value"], d["origin"]) for d in got] == [("10.77.0.70", "engine-local:scan")]
        # a malformed event batch is counted, never fatal
        peer.c.publish(topics.engine("e1", "events"), b"{broken", qos=1).wait_for_publish(5)
        time.sleep(0.5)
        st = json.loads(ctl(lab, "--json", "engines").stdout)
        assert st and st[0]["engine"] == "e1"
    finally:
        peer.close()
