"""Benchmark: what reading flow telemetry from a bridge-family flow set costs the agent.

The datapath variants of bridge_throughput.py (issue 16) keep per-flow packets and bytes in a
dynamic set with per-element counters instead of conntrack; the agent would read them by dumping
the set (NFT_MSG_GETSETELEM) at its flow interval.  This loads N flow elements with known counters
into a set in a private network namespace and times, in the same run: ``nft -j list set`` (the
baseline any tool would use) and the engine's reader (``vigil.engine.flowset.FlowSetReader``: one raw
netlink dump, decoded in Python without an object per attribute), and checks that both read the same
counters.  ``--update`` also times the engine's ``FlowSetTable.update()`` over the dumped elements
(both directions of n/2 flows) against the dump itself.

    sudo flock /tmp/vigil-bench.lock .venv/bin/python bench/flowset_dump.py [--elements 10000] [--repeat 5] [--update]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agents"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _netns import reexec_inner  # noqa: E402

from vigil.engine.flowset import FlowSetReader, FlowSetTable, flow_key  # noqa: E402

SET_DECL = ("table bridge vigil {{ set flows4 {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service . "
            "inet_service; flags dynamic,timeout; timeout {timeout}s; size 262144; counter; }}; }}\n")


def elements(n: int) -> list[tuple[str, str, int, int, int, int, int]]:
    """n distinct elements with distinct counters, both directions of n/2 flows (client to server
    first): (saddr, daddr, proto, sport, dport, packets, bytes)."""
    out = []
    for i in range(n):
        j = i >> 1
        c, s, p, sp, dp = f"10.{j >> 16 & 255}.{j >> 8 & 255}.{j & 255}", "10.200.0.1", (6, 17)[j & 1], \
            1024 + j % 60000, (80, 53)[j & 1]
        out.append((c, s, p, sp, dp, i + 1, 1000 * (i + 1)) if i % 2 == 0 else (s, c, p, dp, sp, i + 1, 1000 * (i + 1)))
    return out


def load_script(elems, timeout: int = 3600) -> str:
    lines = [SET_DECL.format(timeout=timeout)]
    for lo in range(0, len(elems), 5000):
        lines.append("add element bridge vigil flows4 { " + ", ".join(
            f"{s} . {d} . {p} . {sp} . {dp} counter packets {pk} bytes {b}"
            for s, d, p, sp, dp, pk, b in elems[lo:lo + 5000]) + " }\n")
    return "".join(lines)


def update_figures(got: list, n: int, md: float, repeat: int) -> None:
    """FlowSetTable.update() over the dumped elements: all new (pairing, one record per flow), then
    every counter moved (a record per flow), then nothing moved; us per element and ratio to the dump."""
    now = 1_700_000_000_000
    moved = [(f, k, p + 1, b + 100, e) for f, k, p, b, e in got]
    t_new, t_moved, t_same = [], [], []
    for _ in range(repeat):
        table = FlowSetTable({}, 3600)
        for dump_now, times, elems in ((now, t_new, got), (now + 10_000, t_moved, moved),
                                       (now + 20_000, t_same, moved)):
            t0 = time.perf_counter()
            recs = table.update(elems, dump_now)
            times.append(time.perf_counter() - t0)
            assert len(recs) == (0 if times is t_same else len(table.flows)), len(recs)
    for label, times in (("every flow new", t_new), ("every counter moved", t_moved), ("nothing moved", t_same)):
        mu = statistics.median(times)
        print(f"  FlowSetTable.update, {label:20s}{mu * 1000:6.1f} ms   ratio to the dump {mu / md:.3f}  "
              f"({mu / n * 1e6:.2f} us per element, {len(table.flows)} flows)")


def inner(n: int, repeat: int, update: bool = False) -> int:
    """Run inside the private namespace: load, then time both readers."""
    elems = elements(n)
    subprocess.run(["nft", "-f", "-"], input=load_script(elems), text=True, check=True)
    want = {flow_key(4, s, d, p, sp, dp): (pk, b) for s, d, p, sp, dp, pk, b in elems}
    t_nft, t_dump = [], []
    reader = FlowSetReader("vigil", sets=(("flows4", 4),))     # one socket kept, as the engine does
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(["nft", "-j", "list", "set", "bridge", "vigil", "flows4"], capture_output=True,
                           text=True, check=True)
        doc = json.loads(r.stdout)
        t_nft.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = reader.dump()
        t_dump.append(time.perf_counter() - t0)
    listed = [x for x in doc["nftables"] if "set" in x][0]["set"]["elem"]
    assert len(listed) == n, len(listed)
    assert len(got) == n and {k: (p, b) for _f, k, p, b, _e in got} == want, "dump differs from what was loaded"
    mn, md = statistics.median(t_nft), statistics.median(t_dump)
    print(f"{n} flow elements with counters, median of {repeat}:")
    print(f"  nft -j list set (baseline)   {mn * 1000:8.1f} ms")
    print(f"  netlink dump + decode        {md * 1000:8.1f} ms   ratio {md / mn:.3f}  "
          f"({md / n * 1e6:.2f} us per element; every element's key and counters as loaded)")
    if update:
        update_figures(got, n, md, repeat)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--update", action="store_true", help="also time FlowSetTable.update() over the dump")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args.elements, args.repeat, args.update)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    return reexec_inner("fsd", __file__, ["--elements", str(args.elements), "--repeat", str(args.repeat)]
                        + (["--update"] if args.update else []))

if __name__ == "__main__":
    raise SystemExit(main())
