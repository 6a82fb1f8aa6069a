"""Benchmark: a rule set of 100k and 1M addresses from received bytes to drops in force.

Runs in a private network namespace (created and removed here).  For each size it measures
- baseline: plain ``nft -f`` of a bare hash set with the same elements and timeouts;
- ``vrs1`` (the binary format, rulewire.py): bytes per entry; the engine's path as
  Enforcement.handle runs it -- decode + verify + validate, plan, netlink batch + kernel
  transaction, and their total -- for a first load, the same set again (nothing to write), a set
  with ~3 % changed (only that written), and a one-element delta on the full set;
- ``json`` (the earlier format; ``--no-json`` skips it): bytes per entry and the same stages;
and prints each figure with its ratio to the baseline.  Goals: vrs1 total <= 1.0x nft -f,
<= 20 bytes per entry.

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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _netns import reexec_inner  # noqa: E402


def _addrs(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    seen: set[int] = set()
    while len(seen) < n:
        seen.add(rnd.getrandbits(24) | (11 << 24))   # 11.0.0.0/8: far from the lab's addresses
    return [f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}" for a in seen]


def _entries(n: int, addrs: list[str], ttls: list[int]) -> list[dict]:
    """Entries as the manager publishes them: decision ids ``d-`` + 12 hex digits, a few origins."""
    from vigil import ruleset as rs
    rnd = random.Random(n)
    origins = [("flow-anomaly:horizontal-scan", "scan"), ("correlation", "feed"), ("operator", "")]
    out = []
    for i, (a, t) in enumerate(zip(addrs, ttls)):
        o, r = origins[i % len(origins)]
        out.append({"id": f"d-{rnd.getrandbits(48):012x}", "action": "drop", "scope": "ip", "value": a,
                    "ttl": t, "origin": o, "reason": r})
    rs.snapshot_body("b", 1, out[:1000])        # the shape is a valid rule set
    return out


def _row(label: str, secs: float, base: float, digits: int = 3) -> None:
    print(f"{label:60s} {secs:9.{digits}f} {secs / base:7.2f}")


def _load(data: bytes, tag: str, pub, pol, w, base: float) -> float:
    """One binary snapshot through the engine's stages (as Enforcement.handle runs them)."""
    from vigil import rulewire as rw
    t0 = time.monotonic()
    snap = rw.decode(data, pub, "b", kind="ruleset", max_entries=pol.max_elements, check_ip_duplicates=False)
    t1 = time.monotonic()
    now = time.time()
    plan = pol.plan_packed(snap, now)
    t2 = time.monotonic()
    pol.apply(w, plan, now)
    pol.commit(plan)
    t3 = time.monotonic()
    _row(f"[vrs1] {tag}: decode + verify + validate", t1 - t0, base)
    _row(f"[vrs1] {tag}: plan", t2 - t1, base)
    _row(f"[vrs1] {tag}: netlink batch + kernel transaction", t3 - t2, base)
    _row(f"[vrs1] {tag}: TOTAL received bytes -> drops in force", t3 - t0, base)
    return t3 - t0


def inner(sizes: list[int], json_path: bool) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from vigil import ruleset as rs, rulewire as rw
    from vigil.engine import nftables as nft
    from vigil.engine.enforce_plan import Policy

    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    print(f"{'figure':60s} {'seconds':>9s} {'ratio':>7s}")
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
        _row(f"baseline nft -f, bare set, {n} elements", base, base)

        entries = _entries(n, addrs, ttls)
        issued = (int(time.time()) - 1) * 1000
        body = rs.snapshot_body("b", 1, entries, issued_at=issued)
        t = time.monotonic()
        raw = rw.encode("ruleset", "bench", body, key)
        enc = time.monotonic() - t
        print(f"{f'[vrs1] snapshot {len(raw)} bytes: bytes per entry':60s} {len(raw) / n:9.1f}")
        _row("[vrs1] manager: encode + sign (not in the total)", enc, base)

        # -- the engine's path from received bytes, as Enforcement.handle runs it ----------------
        w = nft.NftWriter(nft.make_backend("lib"))
        w.delete_table()
        w.ensure_table()
        pol = Policy(max_elements=2 * n)

        _load(raw, "first load", pub, pol, w, base)
        t = time.monotonic()
        pol.warm()
        _row("[vrs1] index the packed set (after the kernel has it, worker idle)", time.monotonic() - t, base)
        raw2 = rw.encode("ruleset", "bench", rs.snapshot_body("b", 2, entries, issued_at=issued), key)
        _load(raw2, "same set again", pub, pol, w, base)
        changed = [dict(e, ttl=e["ttl"] + 60) if i % 100 == 0 else e for i, e in enumerate(entries)]
        changed = changed[n // 100:] + _entries(n // 100, _addrs(n // 100, n + 7), ttls[:n // 100])
        changed = list({e["value"]: e for e in changed}.values())
        raw3 = rw.encode("ruleset", "bench", rs.snapshot_body("b", 3, changed, issued_at=issued), key)
        _load(raw3, "~3% changed", pub, pol, w, base)
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
        _row("[vrs1] one-element delta on the full set, p50", lat[10], base, 4)
        w.delete_table()
        del pol, raw2, raw3, changed

        if json_path:
            raw = rs.encode_signed("ruleset", "bench", body, key)
            print(f"{f'[json] snapshot {len(raw)} bytes: bytes per entry':60s} {len(raw) / n:9.1f}")
            w.ensure_table()
            pol = Policy(max_elements=2 * n)
            t0 = time.monotonic()
            snap = rs.decode_snapshot(raw, pub, "b")
            t1 = time.monotonic()
            now = time.time()
            plan = pol.plan_snapshot(snap.entries, snap.issued_at, now)
            t2 = time.monotonic()
            pol.apply(w, plan, now)
            pol.commit(plan)
            t3 = time.monotonic()
            _row("[json] decode + verify + validate", t1 - t0, base)
            _row("[json] plan", t2 - t1, base)
            _row("[json] netlink batch + kernel transaction", t3 - t2, base)
            _row("[json] TOTAL received bytes -> drops in force", t3 - t0, base)
            w.delete_table()
            del snap, plan, pol
        del raw, body, entries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--no-json", action="store_true", help="skip the JSON path (the earlier format)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.inner:
        inner(sizes, not args.no_json)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespace, nftables)", file=sys.stderr)
        return 2
    print(f"enforcement load benchmark in a netns of its own (shared, noisy machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f})")
    return reexec_inner("benf", __file__, ["--sizes", args.sizes] + (["--no-json"] if args.no_json else []))


if __name__ == "__main__":
    raise SystemExit(main())
