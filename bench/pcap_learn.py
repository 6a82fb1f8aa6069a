"""Benchmark: learning a baseline from a capture, packets per second, against only reading the file.

A synthetic classic pcap of complete TCP connections (8 packets each, many clients, one server) is
written to a temporary file.  Baseline: ``read_packets`` alone (the file's framing, no decoding).
Figure: ``learn`` (decode, conntrack-like table, interval records, Detector + Baseline), the whole
path ``vigilctl engines learn-pcap`` runs.  Runs alternate; the ratio is of the medians.  A second
figure doubles the file to show the cost is linear in it.

    .venv/bin/python bench/pcap_learn.py [--connections 50000] [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agents"))
sys.path.insert(0, str(ROOT))

from tests.unit.test_pcaplearn import connection, pcap  # noqa: E402  (the test's own writer)
from vigil.manager.policy.baselines import Baseline  # noqa: E402
from vigil.manager.policy.detections import Thresholds  # noqa: E402
from vigil.manager.policy.pcaplearn import PcapStats, learn, read_packets  # noqa: E402


def capture(n: int) -> bytes:
    pkts = []
    t0 = 1_700_000_000.0
    for i in range(n):
        pkts += connection(t0 + i * 0.01, f"10.77.{1 + i % 200}.{1 + (i // 200) % 250}", 20000 + i % 40000,
                           80 if i % 3 else 443)
    return pcap(pkts)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=50000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        results = {}
        for scale in (1, 2):
            path = Path(d) / f"x{scale}.pcap"
            path.write_bytes(capture(a.connections * scale))
            packets = a.connections * scale * 8
            read_t, learn_t = [], []
            for _ in range(a.runs):
                with path.open("rb") as f:
                    read_t.append(timed(lambda: sum(1 for _ in read_packets(f, PcapStats()))))
                with path.open("rb") as f:
                    learn_t.append(timed(lambda: learn(f, Baseline("b"), Thresholds(), interval=10.0)))
            r, lt = statistics.median(read_t), statistics.median(learn_t)
            results[scale] = lt
            print(f"{packets} packets ({path.stat().st_size / 1e6:.1f} MB): learn {packets / lt:,.0f} pkt/s, "
                  f"read only {packets / r:,.0f} pkt/s, ratio {r / lt:.2f}")
        print(f"linearity: twice the file took {results[2] / results[1]:.2f}x the time")


if __name__ == "__main__":
    main()
