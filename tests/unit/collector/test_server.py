"""The syslog listeners on loopback (no root): rate limits, size caps, isolation, backpressure,
and the component's path from a message to a stored point and a proposed decision."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from vigil.collector.component import CollectorComponent
from vigil.collector.config import CollectorConfig, SourceConfig
from vigil.collector.server import SourceMap, SyslogServer, TokenBuckets
from vigil.control import ControlServer
from vigil.counters import Counters
from vigil.manager.api import Context, _NoPolicy
from ipaddress import ip_network

pytestmark = pytest.mark.unit


def drain(srv: SyslogServer, want: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            sender, msgs = srv.queue.get(timeout=0.1)
        except Exception:
            continue
        out += [(sender, m) for m in msgs]
    return out


def wait_counter(c: Counters, name: str, want: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while c.get(name) < want and time.monotonic() < deadline:
        time.sleep(0.02)
    return c.get(name)


def test_token_bucket():
    tb = TokenBuckets(10, 20, lambda a: None)
    assert tb.take("a", 50, 0.0) == 20
    assert tb.take("a", 50, 1.0) == 10
    assert tb.take("b", 5, 1.0) == 5


def test_source_map_most_specific_wins():
    sm = SourceMap([SourceConfig("net", ip_network("10.0.0.0/8")), SourceConfig("host", ip_network("10.1.2.3/32"))])
    assert sm.lookup("10.1.2.3").name == "host"
    assert sm.lookup("10.9.9.9").name == "net"
    assert sm.lookup("::ffff:10.1.2.3").name == "host"
    assert sm.lookup("192.0.2.1") is None and sm.lookup("junk") is None


def test_udp_rate_limit_is_per_sender_and_counted():
    c = Counters()
    cfg = CollectorConfig(udp="127.0.0.1:0", rate_per_source=1, burst_per_source=5, default_rules=False)
    srv = SyslogServer(cfg, c, SourceMap([]))
    srv.start()
    try:
        port = srv.bound["udp"][1]
        noisy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        noisy.bind(("127.0.0.2", 0))
        quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        quiet.bind(("127.0.0.3", 0))
        for i in range(50):
            noisy.sendto(b"<13>noise %d" % i, ("127.0.0.1", port))
        wait_counter(c, "syslog_udp_datagrams", 50)
        for i in range(3):
            quiet.sendto(b"<13>quiet %d" % i, ("127.0.0.1", port))
        got = drain(srv, 8)
        assert sum(1 for s, _ in got if s == "127.0.0.2") == 5
        assert sum(1 for s, _ in got if s == "127.0.0.3") == 3
        assert c.get("syslog_rate_limited") == 45
        assert srv.per_source_dropped == {"127.0.0.2": 45}
    finally:
        srv.stop()


def test_oversized_datagram_and_tcp_frame_are_counted():
    c = Counters()
    cfg = CollectorConfig(udp="127.0.0.1:0", tcp="127.0.0.1:0", max_message_size=1024, default_rules=False)
    srv = SyslogServer(cfg, c, SourceMap([]))
    srv.start()
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"z" * 5000, ("127.0.0.1", srv.bound["udp"][1]))
        with socket.create_connection(("127.0.0.1", srv.bound["tcp"][1])) as s:
            s.sendall(b"5000 <13>" + b"q" * 4996 + b"4 <1>a" + b"<13>" + b"w" * 3000 + b"\n<13>ok\n")
        got = drain(srv, 2)
        assert [m for _, m in got] == [b"<1>a", b"<13>ok"]
        assert wait_counter(c, "syslog_oversized", 3) == 3
    finally:
        srv.stop()


def test_a_stalled_parser_pushes_back_on_tcp_without_loss():
    c = Counters()
    cfg = CollectorConfig(tcp="127.0.0.1:0", queue_size=64, default_rules=False)   # queue of one batch
    srv = SyslogServer(cfg, c, SourceMap([]))
    srv.start()
    try:
        n = 5000
        chunks = [b"".join(b"<13>m %d\n" % i for i in range(k, k + 100)) for k in range(0, n, 100)]

        def send():
            with socket.create_connection(("127.0.0.1", srv.bound["tcp"][1])) as s:
                for ch in chunks:          # many reads, so many batches for a one-batch queue
                    s.sendall(ch)
                    time.sleep(0.002)
        t = threading.Thread(target=send)
        t.start()
        time.sleep(0.5)                      # nobody drains: the listener must pause, not drop
        got = drain(srv, n, timeout=20)
        t.join(5)
        assert len(got) == n
        assert c.get("syslog_backpressure_pauses") >= 1 and c.get("syslog_queue_full_dropped") == 0
    finally:
        srv.stop()


class _Writer:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, lines):
        self.lines.extend(lines)


def test_component_stores_events_and_proposes_from_tick(tmp_path: Path):
    counters = Counters()
    policy = _NoPolicy(counters)
    ctx = Context("m", tmp_path, None, _Writer(), counters, ControlServer(tmp_path / "c.sock"), policy,
                  threading.Event())
    cfg = CollectorConfig(tcp="127.0.0.1:0", sources=[SourceConfig("waf", ip_network("127.0.0.1/32"))])
    comp = CollectorComponent(cfg, ctx)
    msgs = [(f'[Mon Nov 23 10:00:0{i}.1 2026] [security2:error] [pid 1:tid 2] [client 10.77.0.66:4{i}] '
             f'[client 10.77.0.66] ModSecurity: Warning. [id "942100"] [tag "attack-sqli"]').encode() for i in range(5)]
    evs = comp.handle("127.0.0.1", msgs + [b"", b"\xff\xfe<13>bad utf8"], keep=True)
    assert len(evs) == 6 and evs[0].source == "waf"
    assert len(ctx.writer.lines) == 6
    assert ctx.writer.lines[0].startswith("security_event,action=alert,format=modsecurity-apache,source=waf,"
                                          "source_type=modsecurity ")
    assert "source=waf" in ctx.writer.lines[0] and 'src="10.77.0.66"' in ctx.writer.lines[0]
    assert policy.pending == []          # decisions go out from tick(), on the supervisor thread
    comp.tick()
    assert [(r.value, r.origin) for r in policy.pending] == [("10.77.0.66", "correlation:waf-sqli-burst")]
    assert policy.pending[0].evidence["count"] == 5
    st = comp.status()
    assert st["rules"]["waf-sqli-burst"] == 1 and st["parsed"]["modsecurity"] == 5


def test_event_line_matches_the_generic_line_protocol_writer():
    from vigil.collector.component import event_line
    from vigil.collector.parsers import parse
    from vigil.influx import line
    ev = parse('<134>1 2023-03-01T07:57:07Z gw CheckPoint 1 - [action:"Key Install"; src:"10.0.0.9"; '
               'service:"22"; proto:"6"; product:"a \\"b\\" c,d=e"]')
    ev.source = "fw 1"
    got = event_line(ev, "127.0.0.1", 123, 20)
    want = line("security_event",
                {"source_type": "checkpoint", "format": "checkpoint-kv", "action": "other", "source": "fw 1"},
                {"peer": "127.0.0.1", "device": "gw", "src": "10.0.0.9", "proto": "tcp",
                 "action_raw": "key install", "category": 'a "b" c,d=e', "dport": 22,
                 "event_time": int(ev.time * 1000), "raw": ev.raw[:20]}, 123)
    assert got.split(" ", 1)[0] == want.split(" ", 1)[0]
    assert sorted(got.split(" ", 1)[1].rsplit(" ", 1)[0].split(",")) == \
        sorted(want.split(" ", 1)[1].rsplit(" ", 1)[0].split(","))


def test_tcp_stream_mixing_octet_counting_and_lines_keeps_every_message_whole(tmp_path: Path):
    """Real socket to the real collector (listener, framer, worker): octet-counted frames and LF
    lines in one connection, many lines starting with digits, sent in odd-sized pieces; every
    message must be stored whole, in order (issue 14: a year-first "2015 Nov 13 ..." line was read
    as a 2015-byte frame and swallowed the messages after it)."""
    counters = Counters()
    ctx = Context("m", tmp_path, None, _Writer(), counters, ControlServer(tmp_path / "c.sock"), _NoPolicy(counters),
                  threading.Event())
    comp = CollectorComponent(CollectorConfig(tcp="127.0.0.1:0", default_rules=False), ctx)
    lf = ["2015 Nov 13 10:00:%02d fw01 sshd[1]: Failed password for root from 10.0.0.%d port 22",
          "1 2019-05-15T16:25:%02dZ gw CheckPoint 1 - [action:\"Drop\"; src:\"10.1.0.%d\"]",
          "12/30-14:09:%02d.116402  [**] [1:1917:6] SCAN UPnP [**] {UDP} 10.2.0.%d:1 -> 10.0.0.2:1900",
          "681: Aug 17 17:41:%02d.776 AEST: %%SYS-5-CONFIG_I: by 10.3.0.%d",
          "2019 May 06 09:28:%02d vm->10.0.0.16 May 6 07:28:11 10.4.0.%d %%ASA-3-1: x"]
    octet = ["<13>Nov 13 10:00:%02d h app: octet %d with\nan embedded LF",
             "<134>1 2026-11-23T10:00:%02dZ gw CheckPoint 1 - [src:\"10.5.0.%d\"] 2015 Nov 13",
             "<38>Nov 23 10:00:%02d ids snort: [1:1:1] x {TCP} 10.6.0.%d:1 -> 10.0.0.1:2"]
    msgs, stream = [], b""
    for i in range(300):
        if i % 3:
            m = lf[i % len(lf)] % (i % 60, i % 250)
            stream += m.encode() + b"\n"
        else:
            m = octet[i % len(octet)] % (i % 60, i % 250)
            stream += b"%d %s" % (len(m.encode()), m.encode())
        msgs.append(m)
    comp.start()
    try:
        with socket.create_connection(("127.0.0.1", comp.server.bound["tcp"][1])) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            i, step = 0, 1
            while i < len(stream):
                s.sendall(stream[i:i + step])
                i += step
                step = step * 7 % 1499 + 1           # 1 to 1499 bytes, boundaries everywhere
                if i % 5 == 0:
                    time.sleep(0.001)
        deadline = time.monotonic() + 10
        while len(ctx.writer.lines) < len(msgs) and time.monotonic() < deadline:
            time.sleep(0.05)
        raws = [ln.rsplit(",raw=", 1)[1].rsplit(" ", 1)[0] for ln in ctx.writer.lines]
        want = ['"' + m.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"' for m in msgs]
        assert raws == want
        assert counters.get("syslog_malformed_frames") == 0 and counters.get("syslog_oversized") == 0
    finally:
        comp.close()


def test_pathological_datagrams_do_not_stall_the_other_senders(tmp_path: Path):
    """Issue 14: one UDP datagram (a CEF extension of spaces, ~70 s at 64 KB) blocked the single
    worker, so every source waited.  Datagrams of the slowest families at ~64 KB, then a valid
    message: all stored within a few seconds."""
    from vigil.collector.pathological import SEEDS, family
    counters = Counters()
    ctx = Context("m", tmp_path, None, _Writer(), counters, ControlServer(tmp_path / "c.sock"), _NoPolicy(counters),
                  threading.Event())
    comp = CollectorComponent(CollectorConfig(udp="127.0.0.1:0", default_rules=False), ctx)
    hostile = ["CEF:0|a|b|c|d|e|5|k=" + " " * 64000 + "x",
               '<134>1 2026-11-23T10:00:01Z gw CheckPoint 1 - [' + "a" * 64000,
               "[Mon Nov 23 10:00:01 2026] [error] " + "[client " * 7900 + " ModSecurity: x",
               family(SEEDS["checkpoint-sd"], 83, 'k="', None, 64000),
               family(SEEDS["snort-full"], 39, "\n", None, 64000)]
    comp.start()
    try:
        port = comp.server.bound["udp"][1]
        t0 = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            for m in hostile:
                u.sendto(m.encode(), ("127.0.0.1", port))
                time.sleep(0.01)            # one 64 KB datagram at a time into the socket buffer
            u.sendto(b"<13>Nov 23 10:00:01 host app: after the hostile ones", ("127.0.0.1", port))
        deadline = t0 + 10
        while len(ctx.writer.lines) < len(hostile) + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(ctx.writer.lines) == len(hostile) + 1
        assert "after the hostile ones" in ctx.writer.lines[-1]
        assert time.monotonic() - t0 < 3
    finally:
        comp.close()
