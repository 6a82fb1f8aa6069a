"""Memory of the engine's detection state at 100k sources (engine/detect.py, engine/senders.py).

Each source sends 3 failed probes to distinct ports, then 11 s later one more, so that the first
three have left the 10 s window and fed the slow time scales (5 min, 1 h): the state every
source carries in the multi-time-scale detector.  Baseline in the same run: the same traffic
through the detector with no slow scales (``scales: []``), the single-window state it had before.
Also: one source probing 100k distinct targets (state per source is bounded), and the senders
table (owners) at 100k addresses.  Memory is what tracemalloc counts as allocated by building the
state (Python objects; no process RSS noise).  Run: ``.venv/bin/python bench/detector_memory.py [N]``.
"""
from __future__ import annotations

import gc
import logging
import sys
import tracemalloc

from vigil.engine.config import DetectConfig
from vigil.engine.detect import ScanDetector
from vigil.engine.senders import Senders

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


class Clock:
    t = 1000.0

    def __call__(self):
        return self.t


def _addr(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def detector_state(scales) -> tuple[int, ScanDetector]:
    gc.collect()
    tracemalloc.start()
    clock = Clock()
    det = ScanDetector(DetectConfig(max_sources=N + 10, scales=scales), mode=lambda: "learning",
                       emit=lambda ev: None, clock=clock)
    k = 0
    for i in range(N):
        src = _addr(i)
        for p in range(3):
            k += 1
            det.on_new(k, src, "192.168.0.1", 6, 1000 + p)
            det.on_destroy(k)
    clock.t += 11.0
    for i in range(N):
        k += 1
        det.on_new(k, _addr(i), "192.168.0.1", 6, 2000)
    det.evaluate()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size, det


class _Sink(list):
    def append(self, item) -> None:
        pass


def one_wide_source() -> tuple[int, int]:
    """Bytes of one source that probed 100k distinct targets over an hour (mostly failed)."""
    clock = Clock()
    # fast thresholds out of reach: the source stays followed and what it holds is measured
    det = ScanDetector(DetectConfig(min_ports=10**9, min_hosts=10**9), mode=lambda: "learning",
                       emit=lambda ev: None, clock=clock)
    det.slow_found = _Sink()              # findings are not what is measured here
    gc.collect()
    tracemalloc.start()
    for k in range(100_000):
        det.on_new(k, "10.0.0.1", _addr(k), 6, 1 + k % 60000)
        clock.t += 0.036
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    st = det.sources["10.0.0.1"]
    return size, len(st.probes) + sum(len(sc.targets) for sc in st.slow or ())


def senders_state() -> int:
    gc.collect()
    tracemalloc.start()
    s = Senders({1: "eth0"}, max_addresses=N + 10)
    with s.lock:
        for i in range(N):
            s._learn(_addr(i), f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                     "eth0", 1000.0, move=False)
    s.kernel_script()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size


def main() -> None:
    logging.disable(logging.WARNING)
    base, det0 = detector_state([])
    multi, det1 = detector_state([[300.0, 10], [3600.0, 25]])
    assert len(det0.sources) == len(det1.sources) == N
    print(f"detection state at {N} sources (3 failed probes each in the slow scales, 1 in the window)")
    print(f"  baseline, single 10 s window : {base / 2**20:8.1f} MiB  ({base / N:6.0f} B/source)")
    print(f"  10 s + 5 min + 1 h scales    : {multi / 2**20:8.1f} MiB  ({multi / N:6.0f} B/source)")
    print(f"  ratio multi / single window  : {multi / base:.2f}x")
    wide, held = one_wide_source()
    print(f"one source, 100k distinct failed targets in 1 h: {wide / 1024:.0f} KiB, {held} entries held "
          f"(fast-window probes + at most 10 + 25 slow-scale targets)")
    own = senders_state()
    print(f"senders table (learned owners) at {N} addresses: {own / 2**20:.1f} MiB ({own / N:.0f} B/address)")


if __name__ == "__main__":
    main()
