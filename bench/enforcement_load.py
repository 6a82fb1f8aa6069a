"""Benchmark: loading a rule set of 100k and 1M addresses into ``bridge vigil`` in one transaction.

Runs in a private network namespace (created and removed here).  For each size it measures
- baseline: plain ``nft -f`` of a bare hash set with the same elements and timeouts (what the
  issue measured: 0.27 s / 2.9-4.1 s on a quiet machine);
- ours: the engine's path from signed bytes: decode + verify + validate, plan, and the kernel
  transaction as the engine writes it (``netlink``: one raw nfnetlink batch) and as an nft script
  through libnftables (``lib``, the earlier path); then a second snapshot
  replacing the whole set (flush + refill in one transaction), and a one-element delta on the
  full set (the per-decision cost);
and prints each figure with its ratio to the baseline.  Goals: kernel load 100k <= 0.5 s, 1M <= 5 s.

    sudo flock /tmp/vigil-bench.lock .venv/bin/python bench/enforcement_load.py [--sizes 100000,1000000]
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "agents"))


def _addrs(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    seen: set[int] = set()
    while len(seen) < n:
        seen.add(rnd.getrandbits(24) | (11 << 24))   # 11.0.0.0/8: far from the lab's addresses
    return [f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}" for a in seen]


def inner(sizes: list[int]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from vigil import ruleset as rs
    from vigil.engine import nftables as nft
    from vigil.engine.enforce_plan import Policy

    key = Ed25519PrivateKey.generate()
    print(f"{'figure':52s} {'seconds':>9s} {'ratio':>7s}")
    for n in sizes:
        addrs = _addrs(n, n)
        ttls = [random.Random(i).randint(600, 7200) for i in range(0, n)]
        # -- baseline: plain nft -f of a bare set --------------------------------------------
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
            f.write("table bridge benchbase {\n set s { type ipv4_addr; flags timeout; }\n}\n")
            for i in range(0, n, 20000):
                f.write("add element bridge benchbase s { " +
                        ", ".join(f"{a} timeout {t}s" for a, t in zip(addrs[i:i + 20000], ttls[i:i + 20000])) + " }\n")
            path = f.name
        t = time.monotonic()
        subprocess.run(["nft", "-f", path], check=True)
        base = time.monotonic() - t
        subprocess.run(["nft", "delete", "table", "bridge", "benchbase"], check=True)
        os.unlink(path)
        print(f"{f'baseline nft -f, bare set, {n} elements':52s} {base:9.3f} {1.0:7.2f}")

        # -- ours ----------------------------------------------------------------------------------
        entries = [rs.entry(f"d{i}", "drop", "ip", a, t, "bench", "") for i, (a, t) in enumerate(zip(addrs, ttls))]
        raw = rs.encode_signed("ruleset", "bench", rs.snapshot_body("b", 1, entries), key)
        del entries
        t = time.monotonic()
        snap = rs.decode_snapshot(raw, key.public_key(), "b")
        decode = time.monotonic() - t
        print(f"{f'decode+verify+validate {len(raw) >> 20} MB snapshot':52s} {decode:9.3f} {decode / base:7.2f}")
        for backend, bulk in (("netlink", True), ("lib", False)):
            w = nft.NftWriter(nft.make_backend("lib"))
            w.bulk = bulk
            w.delete_table()
            w.ensure_table()
            pol = Policy(max_elements=2 * n)
            t = time.monotonic()
            now = time.time()
            plan = pol.plan_snapshot(snap.entries, snap.issued_at, now)
            planned = time.monotonic() - t
            t = time.monotonic()
            pol.apply(w, plan, now)
            load = time.monotonic() - t
            pol.commit(plan)
            print(f"{f'[{backend}] plan {n}':52s} {planned:9.3f} {planned / base:7.2f}")
            print(f"{f'[{backend}] script + kernel transaction, first load':52s} {load:9.3f} {load / base:7.2f}")
            t = time.monotonic()
            pol.apply(w, plan, time.time())          # a second snapshot: flush + refill, one transaction
            again = time.monotonic() - t
            print(f"{f'[{backend}] replace full set (flush+refill)':52s} {again:9.3f} {again / base:7.2f}")
            one = [rs.parse_entry({"id": "x", "action": "drop", "scope": "ip", "value": "10.200.0.1", "ttl": 60})]
            lat = []
            for _ in range(20):
                t = time.monotonic()
                now = time.time()
                d = pol.plan_delta(one, [], int(now * 1000), now)
                pol.apply(w, d, now)
                pol.commit(d)
                lat.append(time.monotonic() - t)
            lat.sort()
            print(f"{f'[{backend}] one-element delta on the full set, p50':52s} {lat[10]:9.4f} {lat[10] / base:7.3f}")
            w.delete_table()
        del snap, raw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.inner:
        inner(sizes)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespace, nftables)", file=sys.stderr)
        return 2
    ns = f"benf{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        print(f"enforcement load benchmark in netns {ns} (shared, noisy machine: {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.2f})")
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
                               "--sizes", args.sizes]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns])


if __name__ == "__main__":
    raise SystemExit(main())
