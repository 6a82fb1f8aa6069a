"""engine/flowset.py against the real kernel, in network namespaces of the test's own (always removed):

- FlowSetReader reads ``flows4`` and ``flows6`` of ``table bridge vigil`` exactly as loaded (keys,
  counters, per-element timeouts), one socket for both sets and for later dumps; a missing set or
  table reads empty and is counted.
- Real traffic through a bridge whose prerouting chain updates the flow sets as the engine's
  "bridge-flowset" datapath does: FlowSetTable's records show each exchange as one flow, the client
  as originator, the packets and IP bytes that were sent each way, and its end after expiry."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.netns import run_probe
from vigil.engine.flowset import FlowSetTable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PYPATH = [str(ROOT / "agents"), str(ROOT)]

SETS = textwrap.dedent("""\
    table bridge vigil {{
      set flows4 {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service;
                   flags dynamic,timeout; timeout {t}s; size 262144; counter; }}
      set flows6 {{ type ipv6_addr . ipv6_addr . inet_proto . inet_service . inet_service;
                   flags dynamic,timeout; timeout {t}s; size 262144; counter; }}
      set flowsn4 {{ type ipv4_addr . ipv4_addr . inet_proto; flags dynamic,timeout; timeout {t}s;
                    size 262144; counter; }}
      set flowsn6 {{ type ipv6_addr . ipv6_addr . inet_proto; flags dynamic,timeout; timeout {t}s;
                    size 262144; counter; }}
""")

LOADED = textwrap.dedent('''
    import subprocess
    from vigil.counters import Counters
    from vigil.engine.flowset import FlowSetReader, flow_key

    subprocess.run(["nft", "-f", "-"], check=True, text=True, input=__SETS__ + """
      }
      add element bridge vigil flows4 { 10.0.0.1 . 10.0.0.2 . tcp . 40000 . 443 counter packets 5 bytes 500 timeout 60s,
                                        10.0.0.2 . 10.0.0.1 . tcp . 443 . 40000 counter packets 4 bytes 4096,
                                        0.0.0.0 . 255.255.255.255 . 0 . 0 . 0 counter packets 1099511627776 bytes 7 }
      add element bridge vigil flows6 { fd00::1 . fd00::2 . udp . 5353 . 53 counter packets 2 bytes 200 timeout 30s,
                                        fd00::2 . fd00::1 . udp . 53 . 5353 counter packets 1 bytes 300 }
      add element bridge vigil flowsn4 { 10.0.0.1 . 10.0.0.2 . icmp counter packets 3 bytes 252 }
    """)
    counters = Counters()
    reader = FlowSetReader("vigil", counters)
    want = {(4, flow_key(4, "10.0.0.1", "10.0.0.2", 6, 40000, 443)): (5, 500, 60),
            (4, flow_key(4, "10.0.0.2", "10.0.0.1", 6, 443, 40000)): (4, 4096, 600),
            (4, flow_key(4, "0.0.0.0", "255.255.255.255", 0, 0, 0)): (2**40, 7, 600),
            (6, flow_key(6, "fd00::1", "fd00::2", 17, 5353, 53)): (2, 200, 30),
            (6, flow_key(6, "fd00::2", "fd00::1", 17, 53, 5353)): (1, 300, 600),
            (4, flow_key(4, "10.0.0.1", "10.0.0.2", 1, 0, 0)): (3, 252, 600)}   # portless: ports 0
    for _ in range(2):                       # the kept socket serves a second dump just the same
        got = reader.dump()
        assert [f for f, *_x in got] == [4, 4, 4, 6, 6, 4], got       # flows4, flows6, flowsn4
        assert {(f, k): (p, b) for f, k, p, b, _e in got} == {k: v[:2] for k, v in want.items()}, got
        for f, k, _p, _b, e in got:                                   # ms left of each element's own timeout
            assert want[(f, k)][2] * 1000 - 10_000 < e <= want[(f, k)][2] * 1000, (k, e)
    sock = reader._sock
    assert sock is not None and counters.snapshot() == {}
    subprocess.run(["nft", "delete set bridge vigil flows6"], check=True)
    assert len(reader.dump()) == 4 and reader._sock is sock and counters.snapshot() == {"flowset_missing": 1}
    subprocess.run(["nft", "delete table bridge vigil"], check=True)
    assert reader.dump() == [] and counters.snapshot() == {"flowset_missing": 5}
    assert FlowSetReader("nosuchtable", counters).dump() == []
    print("ok", counters.snapshot())
''')


def test_reader_returns_both_sets_exactly_as_loaded_and_counts_missing_ones():
    code = LOADED.replace("__SETS__", repr(SETS.format(t=600)))
    out = run_probe("fsr", code, PYPATH)
    assert out.split() == ["ok", "{'flowset_missing':", "9}"], out


# -- real traffic ----------------------------------------------------------------------------------

TIMEOUT_S = 6       # long enough for the four exchanges and a dump on a loaded 2-core machine
DATAPATH = SETS.format(t=TIMEOUT_S) + textwrap.dedent("""\
      chain prerouting {
        type filter hook prerouting priority -300; policy accept;
        ether type ip update @flows4 { ip saddr . ip daddr . meta l4proto . th sport . th dport }
        ether type ip6 update @flows6 { ip6 saddr . ip6 daddr . meta l4proto . th sport . th dport }
      }
    }
""")

SERVER = textwrap.dedent('''
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.bind((sys.argv[1], 5353))
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((sys.argv[1], 5001))
    t.listen(1)
    print("ready", flush=True)
    for _ in range(5):
        data, peer = u.recvfrom(2000)
        u.sendto(b"r" * 200, peer)
    c, _ = t.accept()
    n = sum(len(b) for b in iter(lambda: c.recv(65536), b""))
    c.sendall(str(n).encode())
    c.close()
''')

CLIENT = textwrap.dedent('''
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.bind((sys.argv[2], 40001))
    u.settimeout(5)
    for _ in range(5):
        u.sendto(b"q" * 100, (sys.argv[1], 5353))
        u.recvfrom(2000)
    t = socket.create_connection((sys.argv[1], 5001), timeout=10, source_address=(sys.argv[2], 40002))
    t.sendall(b"x" * 1_000_000)
    t.shutdown(socket.SHUT_WR)
    print(t.recv(100).decode())
''')

DUMP = ("from vigil.engine.flowset import FlowSetReader\n"
        "print(repr(FlowSetReader('vigil').dump()))\n")


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _dump(ns: str) -> list:
    env = {**os.environ, "PYTHONPATH": ":".join(PYPATH)}
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", DUMP], capture_output=True, text=True,
                       env=env, check=True, timeout=30)
    return ast.literal_eval(r.stdout)


@pytest.fixture
def bridged():
    """Namespaces ``a`` and ``b`` (hosts) joined by ``br0`` in ``e`` (the engine), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test makes network namespaces (CI runs as root)")
    tag = os.getpid()
    a, b, e = f"fsa{tag}", f"fsb{tag}", f"fse{tag}"
    made: list[str] = []
    try:
        for ns in (a, b, e):
            _ip("ip", "netns", "add", ns)
            made.append(ns)
        _ip("ip", "link", "add", "br0", "type", "bridge", "stp_state", "0", ns=e)
        _ip("sysctl", "-qw", "net.ipv6.conf.br0.disable_ipv6=1", ns=e)
        for host, addr4, addr6 in ((a, "10.99.0.1", "fd99::1"), (b, "10.99.0.2", "fd99::2")):
            port = f"p{host[2]}"
            _ip("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host, ns=e)
            _ip("ip", "link", "set", port, "master", "br0", "up", ns=e)
            _ip("ip", "addr", "add", f"{addr4}/24", "dev", "eth0", ns=host)
            _ip("ip", "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad", ns=host)
            _ip("ip", "link", "set", "eth0", "up", ns=host)
            _ip("ip", "link", "set", "lo", "up", ns=host)
        _ip("ip", "link", "set", "br0", "up", ns=e)
        subprocess.run(["ip", "netns", "exec", e, "nft", "-f", "-"], input=DATAPATH, text=True, check=True)
        yield a, b, e
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _exchange(a: str, b: str, server_addr: str, client_addr: str) -> int:
    env = {**os.environ, "PYTHONPATH": ""}
    srv = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", SERVER, server_addr],
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert srv.stdout.readline().strip() == "ready"
        r = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", CLIENT, server_addr, client_addr],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        assert srv.wait(timeout=10) == 0
        return int(r.stdout)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def test_real_traffic_becomes_one_record_per_flow_with_what_was_sent_and_ends_after_expiry(bridged):
    a, b, e = bridged
    assert _exchange(a, b, "10.99.0.2", "10.99.0.1") == 1_000_000
    assert _exchange(a, b, "fd99::2", "fd99::1") == 1_000_000
    table = FlowSetTable({}, TIMEOUT_S)
    t0 = int(time.time() * 1000)
    recs = table.update(_dump(e), t0)
    mine = {(r["family"], r["proto"], r["dport"]): r for r in recs
            if r["src"] in ("10.99.0.1", "fd99::1") and r["proto"] in ("udp", "tcp")}
    # neighbour discovery and the like may add flows of their own; ours are each one flow, client first
    assert set(mine) == {(4, "udp", 5353), (4, "tcp", 5001), (6, "udp", 5353), (6, "tcp", 5001)}, recs
    for (fam, proto, _port), r in mine.items():
        assert r["new"] and r["end"] is None and r["replied"] and r["conn_state"] == "S1" and r["assured"]
        assert r["sport"] == (40001 if proto == "udp" else 40002)
        hdr = 20 if fam == 4 else 40                          # the counters count IP packets
        if proto == "udp":                                    # 5 queries of 100 bytes, 5 answers of 200
            assert (r["orig_pkts"], r["orig_bytes"]) == (5, 5 * (hdr + 8 + 100)), r
            assert (r["resp_pkts"], r["resp_bytes"]) == (5, 5 * (hdr + 8 + 200)), r
        else:                                                 # 1 MB up, the count back; ACKs, headers
            assert 1_000_000 < r["orig_bytes"] < 1_100_000 and r["resp_pkts"] >= 2, r
    time.sleep(TIMEOUT_S + 1.5)
    t1 = int(time.time() * 1000)
    ended = {r["id"]: r for r in table.update(_dump(e), t1)}
    for r0 in mine.values():
        r = ended[r0["id"]]
        assert r["end"] is not None and r0["start"] <= r["end"] <= t1 - TIMEOUT_S * 1000 + 1000, (r0, r)
        assert (r["orig_pkts"], r["resp_pkts"]) == (0, 0) and r["conn_state"] == "SF"
        assert r["orig_bytes_total"] == r0["orig_bytes_total"]
    # ours are no longer followed (link-local neighbour discovery may still be)
    assert {f.id for f in table.flows.values()}.isdisjoint(r["id"] for r in mine.values())


# -- new-flow samples name the originator -------------------------------------------------------------

NEWFLOW_DATAPATH = SETS.format(t=TIMEOUT_S) + textwrap.dedent("""\
      chain prerouting {
        type filter hook prerouting priority -300; policy accept;
        ether type ip ip saddr . ip daddr . meta l4proto . th sport . th dport != @flows4 log group 7 prefix "new-flow"
        ether type ip update @flows4 { ip saddr . ip daddr . meta l4proto . th sport . th dport }
      }
    }
""")

SAMPLER = textwrap.dedent('''
    import json, sys, time
    from vigil.engine.flowset import FlowSetReader
    from vigil.engine.nflog import NflogReader
    r = NflogReader(7)
    print("ready", flush=True)
    sys.stdin.readline()
    samples, deadline = [], time.time() + 3
    while time.time() < deadline and len(samples) < 2:
        samples += [(s.payload.hex(), s.physindev) for s in r.read(0.2) if s.prefix == "new-flow"]
    print(json.dumps({"samples": samples,
                      "dump": [(f, k.hex(), p, b, e) for f, k, p, b, e in FlowSetReader().dump()]}))
''')

ASK = textwrap.dedent('''
    import socket, sys
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((sys.argv[2], 53))
    u.settimeout(5)
    u.sendto(b"q" * 10, (sys.argv[1], 40000))
    u.recvfrom(100)
''')

ANSWER = textwrap.dedent('''
    import socket, sys
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((sys.argv[1], 40000))
    print("ready", flush=True)
    data, peer = u.recvfrom(100)
    u.sendto(b"a" * 10, peer)
''')


def test_new_flow_samples_name_the_originator_the_port_rule_would_miss(bridged):
    """A client on port 53 asks a server on port 40000: both directions first appear in the same
    dump, so without samples the lower destination port would make the server the originator."""
    import json
    a, b, e = bridged
    subprocess.run(["ip", "netns", "exec", e, "nft", "flush ruleset"], check=True)
    subprocess.run(["ip", "netns", "exec", e, "nft", "-f", "-"], input=NEWFLOW_DATAPATH, text=True, check=True)
    links = json.loads(subprocess.run(["ip", "-n", e, "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    port_names = {link["ifindex"]: link["ifname"] for link in links}
    env = {**os.environ, "PYTHONPATH": ":".join(PYPATH)}
    sampler = subprocess.Popen(["ip", "netns", "exec", e, sys.executable, "-c", SAMPLER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env)
    server = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", ANSWER, "10.99.0.2"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert sampler.stdout.readline().strip() == "ready" and server.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", ASK, "10.99.0.2", "10.99.0.1"], check=True,
                       timeout=30)
        assert server.wait(timeout=10) == 0
        out, _ = sampler.communicate("go\n", timeout=30)
    finally:
        for p in (sampler, server):
            if p.poll() is None:
                p.kill()
                p.wait()
    got = json.loads(out)
    dump = [(f, bytes.fromhex(k), p, n, x) for f, k, p, n, x in got["dump"]]
    ours = [d for d in dump if d[1][8] == 17]
    assert len(ours) == 2 and len(got["samples"]) == 2, got      # one sample per direction's first packet

    blind = FlowSetTable({}, TIMEOUT_S).update(ours, int(time.time() * 1000))
    assert [(r["src"], r["sport"]) for r in blind] == [("10.99.0.2", 40000)]      # the port rule's guess

    table = FlowSetTable(port_names, TIMEOUT_S)
    for payload, physindev in got["samples"]:
        assert table.note_packet(bytes.fromhex(payload), in_port=physindev)
    r = one_record(table.update(ours, int(time.time() * 1000)))
    assert (r["src"], r["sport"], r["dst"], r["dport"], r["in_port"]) == ("10.99.0.1", 53, "10.99.0.2", 40000, "pa")
    assert (r["orig_pkts"], r["resp_pkts"], r["conn_state"]) == (1, 1, "S1") and table.hints_invalid == 0


def one_record(records: list) -> dict:
    assert len(records) == 1, records
    return records[0]
