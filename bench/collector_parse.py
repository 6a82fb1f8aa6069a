"""Collector parse rate per format on one core (lines/s), with a same-run baseline.

For each format the benchmark parses a corpus of real lines (the shared samples when present,
otherwise built-in synthetic lines of the same shape) repeated to ``--lines`` lines through the
collector's auto-detecting ``parse()``.  Baseline: a plain ``str.split`` loop over the same lines
(the cheapest thing any parser must at least do).  Goals: >= 50k lines/s for Snort fast and CEF,
>= 20k for Check Point and ModSecurity JSON.

    .venv/bin/python bench/collector_parse.py [--lines 50000]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from vigil.collector.parsers import parse

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"
GOALS = {"snort-fast": 50_000, "cef": 50_000, "checkpoint": 20_000, "modsecurity-json": 20_000}

SYNTHETIC = {
    "snort-fast": ["11/23-10:00:%02d.123456  [**] [1:2012811:2] ET DNS Query to a .tk domain [**] "
                   "[Classification: Potentially Bad Traffic] [Priority: 2] {UDP} 10.0.0.%d:1029 -> 10.0.1.1:53"
                   % (i % 60, i % 250) for i in range(50)],
    "cef": ["CEF:0|Vendor|Product|1.0|100|Threat blocked|8|src=10.0.0.%d spt=4444 dst=10.0.1.1 dpt=80 "
            "proto=TCP act=blocked msg=something happened here cs1=rule-%d cs1Label=Rule" % (i, i) for i in range(50)],
    "checkpoint": ['<134>1 2023-03-01T07:57:07Z gw CheckPoint 16700 - [action:"Drop"; flags:"411908"; '
                   'ifdir:"inbound"; ifname:"eth0"; logid:"0"; loguid:"{0x1,0x2,0x3,0x4}"; origin:"10.0.0.1"; '
                   'originsicname:"cn=cp_mgmt,o=gw..x"; sequencenum:"%d"; time:"1677657427"; version:"5"; '
                   'dst:"10.0.1.1"; inzone:"External"; outzone:"Internal"; product:"VPN-1 & FireWall-1"; '
                   'proto:"6"; rule_name:"Cleanup"; s_port:"4444"; service:"22"; src:"10.0.0.%d"]'
                   % (i, i) for i in range(50)],
    "modsecurity-json": [json.dumps({"transaction": {"time": "23/Nov/2026:10:00:00 +0000", "transaction_id": "x%d" % i,
                                                     "remote_address": "10.0.0.%d" % i, "remote_port": 40000,
                                                     "local_address": "10.0.1.1", "local_port": 80},
                                     "request": {"request_line": "GET /?id=1' OR 1=1 HTTP/1.1"},
                                     "response": {"status": 403},
                                     "audit_data": {"messages": [
                                         'Warning. detected SQLi [file "/r/REQUEST-942-APPLICATION-ATTACK-SQLI.conf"]'
                                         ' [id "942100"] [msg "SQL Injection Attack"] [severity "CRITICAL"]'
                                         ' [tag "attack-sqli"]'], "action": {"intercepted": True}}})
                         for i in range(50)],
}


def corpus(fmt: str) -> tuple[list[str], str]:
    files = {"snort-fast": ["snort/test-log-fast.log"], "cef": ["cef/test-cef.log", "cef/samples.log", "cef/arcsight.log"],
             "checkpoint": ["checkpoint/test-checkpoint.log", "checkpoint/test-r81x.log"],
             "modsecurity-json": ["modsecurity/test-apache-audit.log"]}[fmt]
    lines = []
    if SAMPLES.is_dir():
        for f in files:
            lines += [ln for ln in (SAMPLES / f).read_text(encoding="utf-8").split("\n") if ln.strip()]
    if lines:
        return lines, "shared samples"
    return SYNTHETIC[fmt], "synthetic"


def rate(fn, lines: list[str]) -> float:
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        fn(lines)
        best = max(best, len(lines) / (time.perf_counter() - t0))
    return best


def run_parse(lines):
    for ln in lines:
        parse(ln, ref=1700000000.0)


def run_split(lines):
    for ln in lines:
        ln.split(" ")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=50_000)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})   # one core
    except (AttributeError, OSError):
        pass
    print(f"collector parse rate, one core, {args.lines} lines per format (best of 3)")
    print(f"{'format':18} {'corpus':15} {'lines/s':>10} {'split lines/s':>14} {'ratio':>7} {'goal':>8}")
    for fmt in GOALS:
        base, origin = corpus(fmt)
        lines = (base * (args.lines // len(base) + 1))[:args.lines]
        got = rate(run_parse, lines)
        ref = rate(run_split, lines)
        ok = "met" if got >= GOALS[fmt] else "MISSED"
        print(f"{fmt:18} {origin:15} {got:10,.0f} {ref:14,.0f} {got / ref:7.3f} {GOALS[fmt]:8,} {ok}")


if __name__ == "__main__":
    main()
