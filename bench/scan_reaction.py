"""nmap SYN scan (`nmap -sS -p 1-1000` attacker -> server) against an enforcing engine: time from
the first probe to the kernel dropping the attacker, p50/p95 over 10 runs (goal p95 <= 1 s).

Measured on the wire inside the engine namespace with tcpdump: t0 = the attacker's first SYN
arriving on the outside port eth0; t_drop = the attacker's last packet leaving on the server port
eth1 (IPv4 only: the block is an address block, ARP still passes; a ping every 2 ms from the
attacker keeps packets coming, so the resolution is ~2 ms and a
block after the scan's end is still seen).  A run counts only if attacker packets kept arriving on
eth0 after t_drop (the kernel was dropping them, the traffic had not just stopped).

Baseline in the same run: how long the same nmap scan takes with the engine only watching
(learning mode), median of 3 - a reaction below that blocks the scanner before it is done.
For context: a 10 s conntrack poll would react after 5 s on average; CrowdSec's bouncer polls every
10 s.  Run as root; figures from a shared, noisy 2-core machine.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from vigil.lab.lab import Lab

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def _times(path: Path, want) -> list[float]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if want(line):
            try:
                out.append(float(line.split()[0]))
            except (ValueError, IndexError):
                pass
    return out


def one_run(lab: Lab, i: int) -> dict:
    state = lab.run_dir / "state" / "engine"
    shutil.rmtree(state, ignore_errors=True)
    subprocess.run(["ip", "netns", "exec", lab.ns("engine"), "nft", "delete", "table", "bridge", "vigil"],
                   capture_output=True)
    eng = lab.start_engine(learning={"period": 0})
    lab.wait_log("engine", "mqtt: connected")
    time.sleep(0.5)
    att, srv = lab.ip("attacker"), lab.ip("server")
    caps = {}
    for port in ("eth0", "eth1"):
        out = lab.run_dir / f"cap-{i}-{port}.txt"
        caps[port] = out
        p = subprocess.Popen(["ip", "netns", "exec", lab.ns("engine"), "tcpdump", "-i", port, "-n", "-tt", "-l",
                              "-Q", "in" if port == "eth0" else "out", f"ip and src host {att}"],
                             stdout=open(out, "w"), stderr=subprocess.DEVNULL)
        lab.procs[f"tcpdump-{port}"] = _Wrap(p)
    time.sleep(1.0)  # tcpdump attaches
    lab.popen("attacker", ["ping", "-q", "-i", "0.002", srv], name="ping")
    time.sleep(0.3)
    lab.popen("attacker", ["nmap", "-sS", "-n", "-Pn", "-p", "1-1000", srv], name="nmap")
    deadline = time.monotonic() + 15
    while "detector: block" not in eng.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)
    for name in ("nmap", "ping", "tcpdump-eth0", "tcpdump-eth1"):
        lab.stop(name)
    lab.stop("engine")
    syn_in = _times(caps["eth0"], lambda l: "Flags [S]" in l and f"> {srv}." in l)
    all_in = _times(caps["eth0"], lambda l: True)
    out = _times(caps["eth1"], lambda l: True)
    if not syn_in or not out:
        return {"ok": False, "why": "no capture"}
    t0, t_drop = syn_in[0], out[-1]
    dropped_after = sum(1 for t in all_in if t > t_drop + 0.01)
    line = next((l for l in reversed(eng.log_text().splitlines()) if "detector: block" in l), "")
    return {"ok": dropped_after > 10, "reaction": t_drop - t0, "dropped_after": dropped_after, "log": line}


class _Wrap:
    """Lets Lab.stop() end a plain Popen (tcpdump)."""

    def __init__(self, p):
        self.proc = p

    def stop(self, timeout=5.0):
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def scan_duration(lab: Lab) -> float:
    lab.start_engine(learning={"period": 3600})
    lab.wait_log("engine", "mqtt: connected")
    t = time.monotonic()
    lab.run("attacker", ["nmap", "-sS", "-n", "-Pn", "-p", "1-1000", lab.ip("server")], timeout=120)
    d = time.monotonic() - t
    lab.stop("engine")
    return d


def main() -> None:
    lab = Lab("sr" + uuid.uuid4().hex[:4])
    try:
        lab.up()
        base = statistics.median(scan_duration(lab) for _ in range(3))
        results = []
        for i in range(RUNS):
            r = one_run(lab, i)
            results.append(r)
            print(f"run {i + 1:2}: " + (f"reaction {r['reaction'] * 1000:7.1f} ms, {r['dropped_after']} attacker "
                                        f"packets dropped after; {r['log'].split('detector: ', 1)[-1]}"
                                        if r["ok"] else f"invalid ({r.get('why', 'attacker not dropped')})"))
        good = sorted(r["reaction"] for r in results if r["ok"])
        print("\nnmap -sS -p 1-1000, first probe -> kernel drops the attacker (shared noisy 2-core machine)")
        if not good:
            print("no valid run")
            return
        p95 = good[min(len(good) - 1, int(round(0.95 * len(good) + 0.5)) - 1)]
        print(f"valid runs {len(good)}/{RUNS}: p50 {statistics.median(good) * 1000:.0f} ms, "
              f"p95 {p95 * 1000:.0f} ms, max {good[-1] * 1000:.0f} ms  (goal p95 <= 1000 ms)")
        print(f"baseline: the same scan unblocked takes {base * 1000:.0f} ms (median of 3); "
              f"ratio p95/baseline {p95 / base:.2f}; ratio p95 / 10 s poll interval {p95 / 10:.3f}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
