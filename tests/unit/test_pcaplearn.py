"""Learning a baseline from a capture: pcap/pcapng written here, flow records as the engine writes
them, the same learning path as live ingest, and hostile files."""
from __future__ import annotations

import io
import json
import random
import socket
import struct

import pytest

from vigil.manager.policy.baselines import Baseline
from vigil.manager.policy.detections import Detector, Thresholds
from vigil.manager.policy.pcaplearn import CaptureFlows, PcapStats, batches, decode, learn, read_packets

pytestmark = pytest.mark.unit

SERVER, ATTACKER = "10.77.0.10", "10.77.0.66"
CLIENTS = [f"10.77.0.{i}" for i in range(20, 26)]
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def ip_tcp(src, dst, sport, dport, flags, payload=b""):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + tcp


def ether(ip: bytes) -> bytes:
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip


def pcap(packets) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, frame in packets:
        sec = int(ts)
        out.append(struct.pack("<IIII", sec, int(round((ts - sec) * 1e6)), len(frame), len(frame)) + frame)
    return b"".join(out)


def pcapng(packets) -> bytes:
    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)
    # interface with if_tsresol = 9 (nanoseconds)
    out = [block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0))]
    for ts, frame in packets:
        t = int(round(ts * 1e9))
        out.append(block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(frame), len(frame)) + frame))
    return b"".join(out)


def connection(t, client, sport, dport=80, nbytes=500):
    """A complete TCP connection: handshake, request, response, FIN exchange."""
    return [(t, ether(ip_tcp(client, SERVER, sport, dport, SYN))),
            (t + 0.001, ether(ip_tcp(SERVER, client, dport, sport, SYN | ACK))),
            (t + 0.002, ether(ip_tcp(client, SERVER, sport, dport, ACK))),
            (t + 0.003, ether(ip_tcp(client, SERVER, sport, dport, PSH | ACK, b"x" * 100))),
            (t + 0.004, ether(ip_tcp(SERVER, client, dport, sport, PSH | ACK, b"y" * nbytes))),
            (t + 0.005, ether(ip_tcp(client, SERVER, sport, dport, FIN | ACK))),
            (t + 0.006, ether(ip_tcp(SERVER, client, dport, sport, FIN | ACK))),
            (t + 0.007, ether(ip_tcp(client, SERVER, sport, dport, ACK)))]


def normal_traffic(seconds=300, seed=3):
    rng = random.Random(seed)
    pkts, sport = [], 20000
    t0 = 1_700_000_000.0
    for s in range(seconds):
        for c in CLIENTS:
            if rng.random() < 0.4:
                sport += 1
                pkts += connection(t0 + s + rng.random() * 0.9, c, sport, rng.choice([80, 443]))
    pkts.sort(key=lambda p: p[0])
    return pkts


def test_records_are_what_the_engine_writes():
    t = 1_700_000_000.0
    pk = connection(t, CLIENTS[0], 40000)
    pk += [(t + 1, ether(ip_tcp(ATTACKER, SERVER, 50000, 22, SYN))),                # unanswered
           (t + 1.1, ether(ip_tcp(ATTACKER, SERVER, 50001, 23, SYN))),              # refused
           (t + 1.101, ether(ip_tcp(SERVER, ATTACKER, 23, 50001, RST | ACK))),
           (t + 12, ether(ip_tcp(CLIENTS[1], SERVER, 40001, 80, SYN)))]             # next interval
    stats = PcapStats()
    out = list(batches(io.BytesIO(pcap(pk)), 10.0, stats))
    # the second interval: the new flow, and the refused one's final record (conntrack's 10 s
    # close timeout ran out, as its DESTROY event would tell the engine)
    assert [len(b.flows) for b in out] == [3, 2] and not stats.errors and stats.packets == len(pk)
    by_port = {f["dport"]: f for f in out[0].flows}
    ok = by_port[80]
    assert (ok["conn_state"], ok["replied"], ok["assured"], ok["new"]) == ("SF", True, True, True)
    assert (ok["orig_pkts"], ok["resp_pkts"]) == (5, 3)
    assert ok["orig_bytes"] == 4 * 40 + 140 and ok["resp_bytes"] == 2 * 40 + 540
    assert by_port[22]["conn_state"] == "S0" and not by_port[22]["replied"]
    assert by_port[23]["conn_state"] == "REJ"
    second = {f["dport"]: f for f in out[1].flows}
    assert second[80]["new"] and second[80]["src"] == CLIENTS[1] and second[80]["end"] is None
    assert not second[23]["new"] and second[23]["end"] == int((t + 11.101) * 1000)
    assert (second[23]["orig_pkts"], second[23]["conn_state"]) == (0, "REJ")
    assert out[0].start_ms == int(t * 1000) and out[0].end_ms == int(t * 1000) + 10000


def test_a_long_flow_reports_deltas_and_is_new_only_once():
    t = 1_700_000_000.0
    pk = connection(t, CLIENTS[0], 40000)[:3]
    pk += [(t + 5 + i * 10, ether(ip_tcp(CLIENTS[0], SERVER, 40000, 80, ACK | PSH, b"z" * 60))) for i in range(3)]
    out = list(batches(io.BytesIO(pcap(pk)), 10.0, PcapStats()))
    recs = [b.flows[0] for b in out]
    assert [r["new"] for r in recs] == [True, False, False]
    assert [r["orig_pkts"] for r in recs] == [3, 1, 1] and recs[-1]["orig_pkts_total"] == 5
    assert all(r["conn_state"] == "S1" and r["end"] is None for r in recs)


def learned_from(data: bytes) -> Baseline:
    base = Baseline("e1")
    learn(io.BytesIO(data), base, Thresholds(), interval=10.0)
    return base


def test_pcap_and_pcapng_learn_the_same_baseline_and_it_detects_a_scan():
    traffic = normal_traffic()
    a, b = learned_from(pcap(traffic)), learned_from(pcapng(traffic))
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)
    assert a.intervals == 30 and a.learned_seconds == pytest.approx(300.0)
    assert a.known_source(CLIENTS[0]) and not a.known_source(ATTACKER)
    assert a.known_service(f"tcp/{SERVER}/80") and a.known_service(f"tcp/{SERVER}/443")
    assert not a.known_service(f"tcp/{SERVER}/22")
    # the learned baseline judges a scan from the attacker and leaves normal traffic alone
    t = 1_700_001_000.0
    scan = [(t + i * 0.01, ether(ip_tcp(ATTACKER, f"10.77.1.{i}", 51000 + i, 22, SYN))) for i in range(1, 40)]
    det = Detector("e1", Thresholds())
    findings = []
    for batch in batches(io.BytesIO(pcap(scan + normal_traffic(10, seed=9))), 10.0, PcapStats()):
        f, _ = det.evaluate(batch.flows, 10.0, a, learned=True)
        findings += f
    assert {(f.kind, f.value) for f in findings} == {("horizontal-scan", ATTACKER)}


def test_learning_from_a_capture_matches_feeding_its_batches_live():
    """The capture path calls the live path (Detector.evaluate + Baseline.observe): fed the same
    batches as an engine would send them, the live path learns the same baseline."""
    data = pcap(normal_traffic(120))
    via_pcap = learned_from(data)
    live, det, last_end = Baseline("e1"), Detector("e1", Thresholds()), None
    for b in batches(io.BytesIO(data), 10.0, PcapStats()):
        # the same arithmetic as PolicyComponent.on_flows
        rates = last_end is not None and b.start_ms - last_end <= max(5000, 3 * (b.end_ms - b.start_ms))
        findings, summary = det.evaluate(json.loads(json.dumps(b.flows)), (b.end_ms - b.start_ms) / 1000, live,
                                         False, rates=rates, since_ms=b.start_ms - max(2000, b.end_ms - b.start_ms))
        live.observe(summary, True, 0.01, 0.001, suspicious=bool(findings))
        last_end = b.end_ms
    assert live.to_json() == via_pcap.to_json()


def test_quiet_gaps_are_not_traffic_time():
    traffic = normal_traffic(50)
    later = [(ts + 86400, fr) for ts, fr in normal_traffic(50, seed=4)]
    base = learned_from(pcap(traffic + later))
    assert base.learned_seconds == pytest.approx(100.0, abs=10.1)


def test_ipv6_vlan_and_cooked_captures_decode():
    src6, dst6 = "2001:db8::1", "2001:db8::2"
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, SYN, 65535, 0, 0)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, socket.inet_pton(socket.AF_INET6, src6),
                      socket.inet_pton(socket.AF_INET6, dst6)) + tcp
    vlan = b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00\x00\x0a\x86\xdd" + ip6
    st = PcapStats()
    p = decode(1.0, 1, vlan, st)
    assert (p.family, p.src, p.dst, p.dport, p.flags, p.length) == (6, src6, dst6, 443, SYN, 60)
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, 0x0800) + ip_tcp(CLIENTS[0], SERVER, 1, 2, SYN)
    p = decode(1.0, 113, sll, st)
    assert (p.src, p.sport, p.dport) == (CLIENTS[0], 1, 2)
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    assert decode(1.0, 1, arp, st) is None and st.non_ip == 1 and not st.errors


# -- hostile input ------------------------------------------------------------------------------

def run(data: bytes) -> tuple[Baseline, dict]:
    base = Baseline("e1")
    return base, learn(io.BytesIO(data), base, Thresholds())


@pytest.mark.parametrize("fmt", [pcap, pcapng])
def test_every_truncation_is_counted_and_keeps_what_came_before(fmt):
    pk = connection(1_700_000_000.0, CLIENTS[0], 40000) + connection(1_700_000_001.0, CLIENTS[1], 40001)
    data = fmt(pk)
    whole = {len(fmt(pk[:k])): k for k in range(len(pk) + 1)}   # cuts between records: valid files
    if fmt is pcapng:
        whole[28] = 0                                              # the section header alone
    for cut in range(0, len(data)):
        _, rep = run(data[:cut])
        if cut in whole:
            assert rep["errors"] == {} and rep["packets"] == whole[cut], cut
        else:
            assert len(rep["errors"]) == 1 and rep["packets"] == max((k for c, k in whole.items() if c < cut), default=0), cut
    _, rep = run(data)
    assert rep["errors"] == {} and rep["packets"] == 16 and rep["flow_records"] == 2


def test_garbage_and_impossible_lengths_are_counted_not_raised():
    rng = random.Random(7)
    for n in (0, 3, 24, 200, 5000):
        _, rep = run(bytes(rng.getrandbits(8) for _ in range(n)))
        assert rep["errors"] and rep["learned_seconds"] == 0
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    _, rep = run(hdr + struct.pack("<IIII", 0, 0, 0xFFFFFFF0, 0xFFFFFFF0))
    assert rep["errors"] == {"record-too-long": 1}
    _, rep = run(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147))
    assert rep["errors"] == {"unsupported-link-147": 1}
    ng = pcapng([])
    _, rep = run(ng + struct.pack("<II", 6, 13) + b"\0" * 5)
    assert rep["errors"] == {"bad-block-length": 1}
    _, rep = run(ng + struct.pack("<II", 6, 0x7FFFFFF0))
    assert rep["errors"] == {"bad-block-length": 1}
    # a packet block naming an interface that was never described, and packets of garbage
    body = struct.pack("<IIIII", 5, 0, 0, 4, 4) + b"abcd"
    bad_iface = struct.pack("<II", 6, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    junk = [(1.0 + i, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))) for i in range(200)]
    base, rep = run(pcapng(junk)[:len(ng)] + bad_iface + pcapng(junk)[len(ng):])
    assert rep["errors"].get("bad-packet-block") == 1 and rep["packets"] == 200


def test_flow_table_is_bounded():
    t = 1_700_000_000.0
    pk = [(t + i * 0.001, ether(ip_tcp(ATTACKER, SERVER, 1000 + i, 80, SYN))) for i in range(500)]
    stats = PcapStats()
    table_max = 100
    out = list(batches(io.BytesIO(pcap(pk)), 10.0, stats, max_flows=table_max))
    assert sum(len(b.flows) for b in out) == table_max and stats.errors == {"evicted-flows": 400}
    assert CaptureFlows(5).max_flows == 5
    assert list(read_packets(io.BytesIO(b""), stats)) == []


# -- the manager's control method and vigilctl ---------------------------------------------------

def test_vigilctl_learn_pcap_teaches_the_managers_baseline_and_switches_to_enforcing(tmp_path, capsys):
    import threading

    from tests.support.fake_mqtt import FakeMqtt
    from tests.unit.test_policy import FakeWriter, status
    from vigil.cli import vigilctl
    from vigil.control import ControlServer
    from vigil.counters import Counters
    from vigil.manager.api import Context
    from vigil.manager.policy.component import PolicyComponent, PolicyConfig
    ctl = ControlServer(tmp_path / "m.sock")
    counters = Counters()
    ctx = Context("m", tmp_path / "state", FakeMqtt(), FakeWriter(), counters, ctl, None, threading.Event())
    (tmp_path / "state").mkdir()
    comp = PolicyComponent(PolicyConfig(), ctx)
    comp.on_status("e1", status("e1", mode="learning"))
    ctl.start()
    try:
        cap = tmp_path / "normal.pcap"
        cap.write_bytes(pcap(normal_traffic(200)))
        sock = str(tmp_path / "m.sock")
        rc = vigilctl.main(["--socket", sock, "--json", "engines", "learn-pcap", "e1", str(cap), "--enforce"])
        rep = json.loads(capsys.readouterr().out)
        assert rc == 0 and rep["errors"] == {} and rep["intervals"] == 20 and rep["mode"] == "enforcing"
        assert rep["learned_seconds"] == pytest.approx(200.0)
        assert comp.fleet.view("e1").effective_mode == "enforcing"
        assert comp.baselines.get("e1").known_service(f"tcp/{SERVER}/80")
        # stored: a restarted manager has it
        comp.close()
        # a file that is no capture: a clear error, counted, nothing learned, nothing raised
        comp = PolicyComponent(PolicyConfig(), ctx)
        assert comp.baselines.get("e1").learned_seconds == pytest.approx(200.0)
        junk = tmp_path / "junk.pcap"
        junk.write_bytes(b"not a capture at all")
        rep = comp.learn_pcap("e1", str(junk))
        assert rep["errors"] == {"not-a-capture": 1} and counters.get("pcap_learn_errors") == 1
        rc = vigilctl.main(["--socket", sock, "engines", "learn-pcap", "e9", str(tmp_path / "missing.pcap")])
        err = capsys.readouterr().err
        assert rc != 0 and "missing.pcap" in err
        rc = vigilctl.main(["--socket", sock, "engines", "learn-pcap", "e9", str(cap), "--enforce"])
        assert rc != 0 and "unknown engine" in capsys.readouterr().err
    finally:
        ctl.stop()


def test_icmp_queries_are_flows_and_errors_or_neighbour_discovery_are_not():
    def icmp(src, dst, typ, ident=7):
        body = struct.pack("!BBHHH", typ, 0, 0, ident, 1)
        return ether(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 1, 0,
                                 socket.inet_aton(src), socket.inet_aton(dst)) + body)
    src6 = socket.inet_pton(socket.AF_INET6, "fe80::1")
    ns = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, 24, 58, 255, src6, src6) + \
        struct.pack("!BBHI16s", 135, 0, 0, 0, src6)
    t = 1_700_000_000.0
    pk = [(t, icmp(CLIENTS[0], SERVER, 8)), (t + 0.001, icmp(SERVER, CLIENTS[0], 0)),
          (t + 0.002, icmp(SERVER, CLIENTS[0], 3)), (t + 0.003, ns)]
    stats = PcapStats()
    (b,) = batches(io.BytesIO(pcap(pk)), 10.0, stats)
    (f,) = b.flows
    assert (f["proto"], f["src"], f["dport"], f["replied"], f["conn_state"]) == ("icmp", CLIENTS[0], 0, True, "S1")
    assert stats.untracked == 2


def test_a_reused_tuple_ends_the_old_connection_and_starts_a_new_one():
    t = 1_700_000_000.0
    pk = connection(t, CLIENTS[0], 40000) + connection(t + 1, CLIENTS[0], 40000)
    (b,) = batches(io.BytesIO(pcap(pk)), 10.0, PcapStats())
    old, new = sorted(b.flows, key=lambda f: f["start"])
    assert old["end"] == int((t + 1) * 1000) and old["orig_pkts"] == 5 and old["new"]
    assert new["end"] is None and new["orig_pkts"] == 5 and new["new"] and new["conn_state"] == "SF"
