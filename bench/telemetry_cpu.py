"""Engine telemetry CPU at 10k and 100k concurrent flows, default 10 s interval.

Fills the conntrack table of a scratch network namespace with N established TCP entries through
ctnetlink (the same netlink the engine reads), then measures the CPU time (process time, not wall)
of one engine poll:

- steady:   dump + parse + diff of all N flows (none moved since the last poll);
- all-moved: the same, with every flow producing a record (worst case), plus the batch's JSON;

and prints each as % of one core at the default 10 s interval.  Baseline, measured in the same run:
the previous implementation's pyroute2 ``NFCTSocket().dump()`` of the same table (parse only).

Run as root: ``.venv/bin/python bench/telemetry_cpu.py [N ...]``.  Figures from a shared, noisy
2-core machine: compare ratios, not absolutes.
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
import uuid

from pyroute2 import netns

from vigil.engine import conntrack as ct
from vigil.engine import netlink as nl
from vigil.engine.flows import FlowTable

INTERVAL = 10.0


def nla(t: int, value: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), t | (0x8000 if nested else 0)) + value
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def _tuple(t: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ip = nla(ct.CTA_IP_V4_SRC, src) + nla(ct.CTA_IP_V4_DST, dst)
    pr = (nla(ct.CTA_PROTO_NUM, bytes([6])) + nla(ct.CTA_PROTO_SRC_PORT, struct.pack(">H", sport))
          + nla(ct.CTA_PROTO_DST_PORT, struct.pack(">H", dport)))
    return nla(t, nla(ct.CTA_TUPLE_IP, ip, True) + nla(ct.CTA_TUPLE_PROTO, pr, True), True)


def create_message(i: int, seq: int) -> bytes:
    src = socket.inet_aton(f"10.{60 + i // 60000}.{(i // 240) % 250}.{i % 240 + 1}")
    dst = socket.inet_aton("10.99.0.10")
    sport = 1024 + (i % 60000)
    attrs = (_tuple(ct.CTA_TUPLE_ORIG, src, dst, sport, 443) + _tuple(ct.CTA_TUPLE_REPLY, dst, src, 443, sport)
             + nla(7, struct.pack(">I", 3600))  # CTA_TIMEOUT
             + nla(ct.CTA_PROTOINFO, nla(ct.CTA_PROTOINFO_TCP, nla(ct.CTA_PROTOINFO_TCP_STATE, bytes([3])), True), True)
             + nla(ct.CTA_MARK, struct.pack(">I", 1)))
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (1 << 8) | ct.IPCTNL_MSG_CT_NEW,
                       nl.NLM_F_REQUEST | 0x400 | 0x200, seq, 0) + body  # CREATE | EXCL


def fill(n: int) -> None:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_NETFILTER)
    s.bind((0, 0))
    s.setblocking(False)
    chunk = []
    for i in range(n):
        chunk.append(create_message(i, i))
        if len(chunk) == 100 or i == n - 1:
            s.send(b"".join(chunk))
            chunk.clear()
            try:
                while True:
                    s.recv(65536)  # errors (e.g. EEXIST) would show here; drained
            except BlockingIOError:
                pass
    s.close()


def count_entries() -> int:
    r = ct.ConntrackReader()
    n = sum(1 for _ in r.dump())
    r.close()
    return n


def cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def measure(n: int) -> dict:
    name = f"vbench-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_acct=1"],
                       check=False)
        netns.pushns(name)
        try:
            fill(n)
            have = count_entries()
            reader = ct.ConntrackReader()
            table = FlowTable({1: "eth0", 2: "eth1"}, max_flows=max(200_000, n))
            table.update(reader.dump(), 1)  # first poll: all flows new
            steady = min(cpu(lambda: table.update(reader.dump(table.known_by_id()), 2)) for _ in range(3))

            def all_moved():
                for t in table.flows.values():
                    t.reported = (-1, -1, -1, -1)
                recs = table.update(reader.dump(table.known_by_id()), 3)
                json.dumps({"flows": recs}, separators=(",", ":")).encode()
            moved = min(cpu(all_moved) for _ in range(2))
            reader.close()

            from pyroute2 import NFCTSocket

            def pyroute2_dump():
                with NFCTSocket() as s:
                    for msg in s.dump():
                        ct_id = msg.get_attr("CTA_ID")  # noqa: F841  (touch one attribute)
            base = min(cpu(pyroute2_dump) for _ in range(2 if n <= 20_000 else 1))
        finally:
            netns.popns()
    finally:
        netns.remove(name)
    return {"n": have, "steady": steady, "moved": moved, "pyroute2": base}


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    print("engine telemetry CPU per poll (process time), % of one core at a 10 s interval")
    print("shared noisy 2-core machine; baseline = pyroute2 NFCTSocket dump of the same table")
    for n in sizes:
        m = measure(n)
        pct = lambda s: 100 * s / INTERVAL  # noqa: E731
        print(f"\n{m['n']:>7} flows in conntrack")
        print(f"  steady poll (dump+parse+diff): {m['steady'] * 1000:8.1f} ms  = {pct(m['steady']):5.2f} % of a core"
              f"   ratio to baseline {m['steady'] / m['pyroute2']:.3f}")
        print(f"  every flow moved (+records, JSON): {m['moved'] * 1000:8.1f} ms  = {pct(m['moved']):5.2f} % of a core"
              f"   ratio to baseline {m['moved'] / m['pyroute2']:.3f}")
        print(f"  baseline pyroute2 dump only:   {m['pyroute2'] * 1000:8.1f} ms  = {pct(m['pyroute2']):5.2f} % of a core")


if __name__ == "__main__":
    main()
