"""The collector inside a real vigil-manager, with real Mosquitto and InfluxDB, fed over every
transport: TCP (octet counting and LF framing), UDP and TLS with a CA made here by openssl.

Real sample lines from ../shared/samples go in; their events must be stored in InfluxDB with the
normalised fields; garbage on one connection must be counted without disturbing the others; and a
burst of WAF SQL-injection alerts must become a decision in the policy, published to an
enforcing engine's signed rule set.
"""
from __future__ import annotations

import json
import queue
import socket
import ssl
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.pki import make_pki
from tests.support.waiting import wait_for
from vigil import control, payload, ruleset, topics
from vigil.influx import InfluxError
from vigil.lab.services import free_port

pytestmark = pytest.mark.integration

ATTACKER = "10.77.0.66"
POLICY = {"ladder": [300, 600], "allowlist": ["10.77.0.1/32"]}


def sample_lines(samples_dir: Path, rel: str) -> list[str]:
    return [ln for ln in (samples_dir / rel).read_text(encoding="utf-8").split("\n") if ln.strip()]


def octet(msgs: list[str]) -> bytes:
    """RFC 6587 octet counting frames syslog messages: lines without a PRI get RFC 3164's default
    (13, user.notice), as a relay would add it; the collector frames by count only before a PRI."""
    out = b""
    for m in msgs:
        b = m.encode()
        if not b.startswith(b"<"):
            b = b"<13>" + b
        out += b"%d " % len(b) + b
    return out


def sqli_line(i: int) -> str:
    """An Apache error-log line as mod_security2 with CRS writes it (synthetic, not a sample)."""
    return (f"<131>Nov 23 10:00:0{i % 10} www apache-error: [Mon Nov 23 10:00:0{i % 10}.{i:06d} 2026] "
            f"[security2:error] [pid 10:tid 11] [client {ATTACKER}:{40000 + i}] [client {ATTACKER}] "
            f"ModSecurity: Warning. detected SQLi using libinjection. [file \"/usr/share/modsecurity-crs/"
            f"rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf\"] [line \"65\"] [id \"942100\"] "
            f"[msg \"SQL Injection Attack Detected via libinjection\"] [severity \"CRITICAL\"] "
            f"[tag \"attack-sqli\"] [hostname \"10.77.0.10\"] [uri \"/\"] [unique_id \"u{i}\"]")


def count(lab, where: str) -> int:
    try:
        rows = lab.influx.query(f"SELECT count(raw) FROM security_event WHERE {where}")
    except InfluxError:      # the database appears with the first write
        return 0
    return int(rows[0]["count"]) if rows else 0


def test_collector_end_to_end(lab, samples_dir, tmp_path):
    pki = make_pki(tmp_path / "pki")
    tcp, udp, tls = free_port(), free_port(), free_port()
    lab.start_manager(policy=POLICY, collector={
        "tcp": f"127.0.0.1:{tcp}", "udp": f"127.0.0.1:{udp}", "tls": f"127.0.0.1:{tls}",
        "tls_files": {"cert": str(pki["cert"]), "key": str(pki["key"])},
        "max_message_size": 8192,
        "sources": [{"name": "ids", "address": "127.0.0.2/32", "format": "snort"},
                    {"name": "fw", "address": "127.0.0.3/32"}]})
    lab.wait_log("manager", "collector: listening tls", timeout=20)
    lab.wait_log("manager", "mqtt: connected", timeout=20)
    sock_path = lab.run_dir / "manager.sock"

    # an engine in enforcing mode, so that a decision becomes a drop entry in its rule set
    peer = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    got: "queue.Queue[paho.MQTTMessage]" = queue.Queue()
    peer.on_message = lambda c, u, m: got.put(m)
    peer.connect("127.0.0.1", lab.mosquitto.port)
    peer.loop_start()
    try:
        peer.subscribe(topics.engine("e1", "ruleset"), qos=1)
        st = {"engine": "e1", "state": "running", "mode": "enforcing", "tags": [],
              "learning": {"progress": 1.0}, "ruleset_generation": None}
        peer.publish(topics.engine("e1", "status"), payload.encode("status", "e1", st), qos=1,
                     retain=True).wait_for_publish(5)

        snort = sample_lines(samples_dir, "snort/test-log-fast.log")
        checkpoint = sample_lines(samples_dir, "checkpoint/test-checkpoint.log")
        cefs = sample_lines(samples_dir, "cef/samples.log")
        modsec = sample_lines(samples_dir, "modsecurity/modsecurity.log")

        # TCP, octet counting, from the named IDS source
        with socket.create_connection(("127.0.0.1", tcp), source_address=("127.0.0.2", 0)) as s:
            s.sendall(octet(snort))
        # TCP, LF framing, from the firewall; the last line without its LF (closed by EOF)
        with socket.create_connection(("127.0.0.1", tcp), source_address=("127.0.0.3", 0)) as s:
            s.sendall(("\n".join(checkpoint)).encode())
        # UDP, one message per datagram
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for ln in cefs:
                u.sendto(ln.encode(), ("127.0.0.1", udp))
                time.sleep(0.002)
        # TLS (RFC 5425 is octet counting), server verified against our CA
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        with socket.create_connection(("127.0.0.1", tls)) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(octet(modsec))
                s.sendall(octet([sqli_line(i) for i in range(6)]))
        # garbage: an oversized frame, binary noise, a bad TLS client; then a good line on the same TCP
        with socket.create_connection(("127.0.0.1", tcp)) as s:
            s.sendall(b"999999 <13>" + b"A" * 20000)
            s.sendall(b"A" * (999999 - 20004))
            s.sendall(b"\x00\xff\xfe garbage \x01\n" + b"x" * 9000 + b"\n")
            s.sendall(b"<13>Nov 23 10:00:00 host app: still alive\n")
        with socket.create_connection(("127.0.0.1", tls)) as s:
            s.sendall(b"this is not a TLS handshake\n" * 10)
            s.settimeout(5)
            try:
                s.recv(100)
            except OSError:
                pass

        wait_for(lambda: count(lab, "source_type='snort'") == len(snort), 20, "snort events")
        wait_for(lambda: count(lab, "source_type='checkpoint'") == len(checkpoint), 20, "checkpoint events")
        wait_for(lambda: count(lab, "source_type='cef'") == len(cefs), 20, "cef events")
        wait_for(lambda: count(lab, "source_type='modsecurity'") == len(modsec) + 6, 20, "modsecurity events")
        wait_for(lambda: count(lab, "source_type='syslog'") >= 2, 20, "raw events")

        # normalised fields arrive as fields, the named source as a tag
        rows = lab.influx.query("SELECT src, dst, sport, dport, sig_id, sig_name, peer FROM security_event "
                                "WHERE source_type='snort' AND \"source\"='ids'")
        assert len(rows) == len(snort)
        assert {r["peer"] for r in rows} == {"127.0.0.2"}
        assert any(r["sig_id"] == "1:1917" and r["sig_name"] == "SCAN UPnP service discover attempt"
                   and r["src"] == "192.168.15.10" and r["dport"] == 1900 for r in rows)
        fw = lab.influx.query("SELECT src, dport FROM security_event WHERE \"source\"='fw' AND action='allow'")
        assert len(fw) >= 5
        raw = lab.influx.query("SELECT raw FROM security_event WHERE source_type='syslog'")
        assert any("still alive" in r["raw"] for r in raw)

        st = control.call(sock_path, "manager.status")
        c = st["counters"]
        assert c.get("syslog_oversized", 0) >= 2          # the 999999-byte frame and the 9000-byte line
        coll = st["components"]["collector"]
        assert coll["tls_handshake_failures"] == 1          # the client that spoke plain text
        assert c.get("syslog_tls_connections") == 1 and c.get("syslog_tcp_connections") == 3
        assert coll["rules"]["waf-sqli-burst"] >= 1

        # the WAF burst became a decision with the rule as origin ...
        ds = wait_for(lambda: [d for d in control.call(sock_path, "decisions.list")
                               if d["value"] == ATTACKER and d["origin"] == "correlation:waf-sqli-burst"],
                      15, "a correlation decision")
        assert ds[0]["scope"] == "ip"
        # ... and a drop entry in the enforcing engine's signed rule set
        pub = ruleset.load_public_key(lab.run_dir / "state" / "manager" / "signing.pub")
        deadline = time.monotonic() + 15
        entries = []
        while time.monotonic() < deadline and not entries:
            try:
                m = got.get(timeout=1)
            except queue.Empty:
                continue
            snap = ruleset.decode_snapshot(m.payload, pub, "e1")
            entries = [e for e in snap.entries if e.value == ATTACKER and e.action == "drop"]
        assert entries, "the attacker's address never reached e1's rule set"
    finally:
        peer.loop_stop()
        peer.disconnect()


def test_collector_config_errors_name_the_key(lab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, type: threshold, window: 10, count: 0, match: {src: a}}\n")
    cfg = lab.write_config("manager", lab.manager_config(collector={"tcp": "127.0.0.1:0",
                                                                    "rule_files": [str(bad)]}))
    from vigil.lab.services import ManagedProcess  # noqa: F401  (the same command the lab uses)
    import sys
    r = subprocess.run([str(Path(sys.executable).parent / "vigil-manager"), "-c", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "bad.yaml: rules[0] (x).count: must be at least 1" in r.stderr + r.stdout


def test_crafted_messages_are_rejected_alone_and_the_rest_reach_influxdb(lab, tmp_path):
    """Issue 14: one message whose event could not become a point (a JSON address of the wrong
    type, a time beyond int64 milliseconds) made the whole batch fail, and values beyond int64 were
    sent to InfluxDB, which refuses the batch they travel in.  Here valid and crafted messages
    share one TCP connection (so one batch): InfluxDB 1.6 must accept every point -- the valid
    events parsed, the crafted ones raw -- and the manager must count each rejection by reason."""
    tcp = free_port()
    lab.start_manager(policy=POLICY, collector={"tcp": f"127.0.0.1:{tcp}", "default_rules": False})
    lab.wait_log("manager", "collector: listening tcp", timeout=20)
    sock_path = lab.run_dir / "manager.sock"
    valid = [f"<134>Nov 23 10:00:01 fw CEF:0|V|P|1.0|100|Threat|8|src=10.44.0.{i} spt=4444 dst=10.0.1.1 "
             f"dpt=80 act=blocked" for i in range(1, 41)]
    crafted = [json.dumps({"seconds": 1700000000, "src_addr": 1234, "sid": 1, "gid": 1, "rev": 1, "msg": "m"}),
               'time:"' + "9" * 22 + '"; action:"Drop"; src:"10.44.1.1"',
               'time:"' + "9" * 400 + '"; action:"Drop"; src:"10.44.1.2"',
               "CEF:0|V|P|1|1|n|5|src=10.44.1.3 rt=" + "9" * 20]
    msgs = valid[:20] + crafted + valid[20:]
    with socket.create_connection(("127.0.0.1", tcp)) as s:
        s.sendall(("\n".join(msgs) + "\n").encode())
    wait_for(lambda: count(lab, "source_type='cef'") == len(valid), 20, "every valid event stored")
    wait_for(lambda: count(lab, "source_type='syslog'") == len(crafted), 20, "the crafted messages stored raw")
    raw = lab.influx.query("SELECT raw FROM security_event WHERE source_type='syslog'")
    assert sorted(r["raw"] for r in raw) == sorted(crafted)
    c = control.call(sock_path, "manager.status")["counters"]
    assert c.get("collector_rejected_field_type") == 1 and c.get("collector_rejected_value_range") == 3
    assert c.get("influx_batches_rejected", 0) == 0 and c.get("collector_worker_errors", 0) == 0
