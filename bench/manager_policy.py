"""Policy evaluation time for one interval of one engine with 100k active flows (goal <= 1 s).

Builds a synthetic interval (100k flow records: 2,000 clients talking to 50 servers, plus one
scanner) and times ``Detector.evaluate`` + ``Baseline.observe`` — everything the policy does per
batch.  Baseline measured in the same run: one bare Python pass over the same records that only
sums their byte counters (the floor of any per-record work).  Prints the median of 5 runs.
"""
from __future__ import annotations

import random
import statistics
import time

from vigil.manager.policy.baselines import Baseline
from vigil.manager.policy.detections import Detector, Thresholds

N = 100_000


def records(rng: random.Random) -> list[dict]:
    out = []
    servers = [f"10.1.0.{i}" for i in range(1, 51)]
    clients = [f"10.2.{i // 250}.{i % 250}" for i in range(2000)]
    for _i in range(N - 500):
        st = "REJ" if rng.random() < 0.01 else rng.choice(("SF", "S1"))
        out.append({"src": rng.choice(clients), "dst": rng.choice(servers), "sport": rng.randint(1024, 65535),
                    "dport": rng.choice((80, 443, 22, 53, 8080)), "proto": "tcp", "new": rng.random() < 0.3,
                    "end": None, "conn_state": st, "replied": True, "assured": st != "REJ",
                    "orig_pkts": 5, "resp_pkts": 4, "orig_bytes": 600, "resp_bytes": 4000})
    for p in range(500):
        out.append({"src": "10.9.9.9", "dst": servers[0], "sport": 40000, "dport": p + 1, "proto": "tcp",
                    "new": True, "end": None, "conn_state": "REJ", "replied": True, "assured": False,
                    "orig_pkts": 1, "resp_pkts": 1, "orig_bytes": 44, "resp_bytes": 40})
    return out


def bare(flows) -> float:
    t = time.perf_counter()
    total = 0
    for f in flows:
        total += f["orig_bytes"] + f["resp_bytes"]
    return time.perf_counter() - t


def policy(flows, det, base) -> tuple[float, int]:
    t = time.perf_counter()
    findings, summary = det.evaluate(flows, 10.0, base, learned=True)
    base.observe(summary, False, 0.01, 0.001, bool(findings))
    return time.perf_counter() - t, len(findings)


def main() -> None:
    flows = records(random.Random(1))
    det, base = Detector("e1", Thresholds(window=30)), Baseline("e1")
    learn = [f for f in flows if f["src"] != "10.9.9.9"]
    for _ in range(3):  # learn the services, and fill the window (3 intervals of 10 s) as live
        _, summary = det.evaluate(learn, 10.0, base, learned=False)
        base.observe(summary, True, 0.01, 0.001, False)
    runs = [policy(flows, det, base) for _ in range(5)]
    bares = [bare(flows) for _ in range(5)]
    p = statistics.median(r[0] for r in runs)
    b = statistics.median(bares)
    print(f"policy evaluation, {N} active flows in one interval: {p:.3f} s (goal <= 1 s), "
          f"findings {runs[0][1]} (expected 2, both on the one scanner: vertical scan and flood)")
    print(f"baseline, bare pass over the same records: {b:.4f} s; ratio policy/baseline = {p / b:.1f}x")


if __name__ == "__main__":
    main()
