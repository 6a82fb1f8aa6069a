"""Benchmark: what reading flow telemetry from a bridge-family flow set costs the agent.

The datapath variants of bridge_throughput.py (issue 16) keep per-flow packets and bytes in a
dynamic set with per-element counters instead of conntrack; the agent would read them by dumping
the set (NFT_MSG_GETSETELEM) at its flow interval.  This loads N flow elements with known counters
into a set in a private network namespace and times, in the same run: ``nft -j list set`` (the
baseline any tool would use) and ``dump()`` below (one raw netlink dump, decoded in Python without
an object per attribute), and checks that both read the same counters.

    sudo flock /tmp/vigil-bench.lock .venv/bin/python bench/flowset_dump.py [--elements 10000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agents"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _netns import reexec_inner  # noqa: E402

from vigil.engine.netlink import (NLA, NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE,  # noqa: E402
                                  NLMSG_ERROR, attr, error_code, iter_messages, nfnl_message, open_socket)

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 12, 13
NFPROTO_BRIDGE = 7
LIST_TABLE, LIST_SET, LIST_ELEMENTS = 1, 2, 3          # NFTA_SET_ELEM_LIST_*
LIST_ELEM = 1                                          # NFTA_LIST_ELEM
ELEM_KEY, ELEM_EXPIRATION, ELEM_EXPR, ELEM_EXPRESSIONS = 1, 5, 7, 11   # NFTA_SET_ELEM_*
DATA_VALUE = 1                                         # NFTA_DATA_VALUE
EXPR_NAME, EXPR_DATA = 1, 2                            # NFTA_EXPR_*
COUNTER_BYTES, COUNTER_PACKETS = 1, 2                  # NFTA_COUNTER_*
BE64 = struct.Struct(">Q")


def _attrs(data, pos: int, end: int):
    """(type, value start, value end) of each attribute in data[pos:end]."""
    while pos + 4 <= end:
        alen, kind = NLA.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            raise ValueError(f"bad attribute length {alen} at {pos}")
        yield kind & NLA_TYPE_MASK, pos + 4, pos + alen
        pos += (alen + 3) & ~3


def _counter(data, pos: int, end: int) -> tuple[int, int] | None:
    """(packets, bytes) of one NFTA_SET_ELEM_EXPR nest if it is a counter."""
    name = b""
    packets = nbytes = 0
    for kind, a, b in _attrs(data, pos, end):
        if kind == EXPR_NAME:
            name = bytes(data[a:b]).rstrip(b"\0")
        elif kind == EXPR_DATA:
            for k2, c, _d in _attrs(data, a, b):
                if k2 == COUNTER_BYTES:
                    nbytes = BE64.unpack_from(data, c)[0]
                elif k2 == COUNTER_PACKETS:
                    packets = BE64.unpack_from(data, c)[0]
    return (packets, nbytes) if name == b"counter" else None


def parse_elements(data, pos: int, end: int, out: list) -> None:
    """Append (key bytes, packets, bytes, expires ms) of each element of one NEWSETELEM payload."""
    for kind, a, b in _attrs(data, pos, end):
        if kind != LIST_ELEMENTS:
            continue
        for k_elem, ea, eb in _attrs(data, a, b):
            if k_elem != LIST_ELEM:
                continue
            key, counts, expires = b"", None, 0
            for k, c, d in _attrs(data, ea, eb):
                if k == ELEM_KEY:
                    for k2, e, f in _attrs(data, c, d):
                        if k2 == DATA_VALUE:
                            key = bytes(data[e:f])
                elif k == ELEM_EXPIRATION:
                    expires = BE64.unpack_from(data, c)[0]
                elif k == ELEM_EXPR:
                    counts = _counter(data, c, d)
                elif k == ELEM_EXPRESSIONS:
                    for _k3, e, f in _attrs(data, c, d):
                        counts = counts or _counter(data, e, f)
            packets, nbytes = counts or (0, 0)
            out.append((key, packets, nbytes, expires))


def dump(table: str, set_name: str, family: int = NFPROTO_BRIDGE, sock: socket.socket | None = None) -> list:
    """Every element of one set: (key bytes, packets, bytes, expires ms), by one netlink dump."""
    own = sock is None
    sock = sock or open_socket(8 << 20)
    try:
        payload = attr(LIST_TABLE, table.encode() + b"\0") + attr(LIST_SET, set_name.encode() + b"\0")
        sock.send(nfnl_message(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, 1,
                               family=family, payload=payload))
        out: list = []
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            n = sock.recv_into(buf)
            for mtype, _flags, start, end in iter_messages(view, n):
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    code = error_code(view, start)
                    raise OSError(code, f"set dump {table} {set_name}: {os.strerror(code)}")
                if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM:
                    parse_elements(view, start + 4, end, out)
    finally:
        if own:
            sock.close()


def flow4_key(saddr: str, daddr: str, proto: int, sport: int, dport: int) -> bytes:
    """The set's key bytes for an ipv4 5-tuple (each field padded to 4 bytes, ports big-endian)."""
    return (socket.inet_aton(saddr) + socket.inet_aton(daddr) + bytes([proto, 0, 0, 0])
            + struct.pack(">HH", sport, 0) + struct.pack(">HH", dport, 0))


SET_DECL = ("table bridge vigil {{ set flows4 {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service . "
            "inet_service; flags dynamic,timeout; timeout {timeout}s; size 262144; counter; }}; }}\n")


def elements(n: int) -> list[tuple[str, str, int, int, int, int, int]]:
    """n distinct flows with distinct counters: (saddr, daddr, proto, sport, dport, packets, bytes)."""
    return [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "10.200.0.1", (6, 17)[i & 1], 1024 + i % 60000,
             (80, 53)[i & 1], i + 1, 1000 * (i + 1)) for i in range(n)]


def load_script(elems, timeout: int = 3600) -> str:
    lines = [SET_DECL.format(timeout=timeout)]
    for lo in range(0, len(elems), 5000):
        lines.append("add element bridge vigil flows4 { " + ", ".join(
            f"{s} . {d} . {p} . {sp} . {dp} counter packets {pk} bytes {b}"
            for s, d, p, sp, dp, pk, b in elems[lo:lo + 5000]) + " }\n")
    return "".join(lines)


def inner(n: int, repeat: int) -> int:
    """Run inside the private namespace: load, then time both readers."""
    elems = elements(n)
    subprocess.run(["nft", "-f", "-"], input=load_script(elems), text=True, check=True)
    want = {flow4_key(s, d, p, sp, dp): (pk, b) for s, d, p, sp, dp, pk, b in elems}
    t_nft, t_dump = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(["nft", "-j", "list", "set", "bridge", "vigil", "flows4"], capture_output=True,
                           text=True, check=True)
        doc = json.loads(r.stdout)
        t_nft.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = dump("vigil", "flows4")
        t_dump.append(time.perf_counter() - t0)
    listed = [x for x in doc["nftables"] if "set" in x][0]["set"]["elem"]
    assert len(listed) == n, len(listed)
    assert len(got) == n and {k: (p, b) for k, p, b, _e in got} == want, "dump differs from what was loaded"
    mn, md = statistics.median(t_nft), statistics.median(t_dump)
    print(f"{n} flow elements with counters, median of {repeat}:")
    print(f"  nft -j list set (baseline)   {mn * 1000:8.1f} ms")
    print(f"  netlink dump + decode        {md * 1000:8.1f} ms   ratio {md / mn:.3f}  "
          f"({md / n * 1e6:.2f} us per element; every element's key and counters as loaded)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args.elements, args.repeat)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    return reexec_inner("fsd", __file__, ["--elements", str(args.elements), "--repeat", str(args.repeat)])

if __name__ == "__main__":
    raise SystemExit(main())
