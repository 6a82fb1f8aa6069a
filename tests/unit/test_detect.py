"""The fast scan detector with a controlled clock, a recorded-style event sequence and a fake
enforcement part (the real one is exercised in tests/lab/test_engine_detection.py)."""
from __future__ import annotations

import pytest

from vigil.engine.config import DetectConfig
from vigil.engine.detect import ScanDetector

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Enforcer:
    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail

    def block_local(self, address, ttl, reason):
        if self.fail:
            raise OSError("nft: writer gone")
        self.calls.append((address, ttl, reason))


def make(mode="enforcing", enforcer=None, **cfg):
    clock = Clock()
    events = []
    enf = enforcer if enforcer is not None else Enforcer()
    det = ScanDetector(DetectConfig(**cfg), mode=lambda: mode, emit=events.append,
                       enforcer=lambda: enf, clock=clock)
    return det, clock, events, enf


def syn_scan(det, clock, src="10.77.0.66", dst="10.77.0.10", ports=range(1, 1001), step=0.0003):
    """What conntrack reports for nmap -sS: one NEW per port, no ASSURED ever."""
    for i, port in enumerate(ports):
        det.on_new((i, src, port), src, dst, 6, port)
        clock.t += step


def test_syn_scan_is_blocked_quickly_in_enforcing_mode():
    det, clock, events, enf = make()
    start = clock.t
    syn_scan(det, clock, ports=range(1, 101))
    assert not events  # 100 probes in 30 ms: none is old enough to judge yet
    clock.t = start + 0.2
    det.evaluate()
    (ev,) = events
    assert ev["action"] == "block" and ev["src"] == "10.77.0.66" and ev["distinct_ports"] == 100
    assert enf.calls[0][:2] == ("10.77.0.66", 600) and enf.calls[0][2].startswith("scan: 100 ports")
    # the rest of the scan does not decide again while the block lasts
    syn_scan(det, clock, ports=range(101, 1001))
    clock.t += 1
    det.evaluate()
    assert len(events) == 1 and len(enf.calls) == 1


def test_learning_mode_reports_would_block_and_enforces_nothing():
    det, clock, events, enf = make(mode="learning")
    syn_scan(det, clock)
    clock.t += 0.3
    det.evaluate()
    assert [e["action"] for e in events] == ["would-block"] and enf.calls == []


def test_busy_client_that_completes_handshakes_is_never_blocked():
    det, clock, events, enf = make()
    # a client opening 200 connections to 60 ports of one server: every handshake completes
    for i in range(200):
        key = (i, "10.77.0.2")
        det.on_new(key, "10.77.0.2", "10.77.0.10", 6, 8000 + i % 60)
        clock.t += 0.001
        det.on_answer(key, established=True, proto=6)
    clock.t += 1
    det.evaluate()
    assert events == [] and enf.calls == []


def test_replied_but_not_established_tcp_counts_as_failed():
    # SYN answered by RST (closed port): REPLY event, never ASSURED
    det, clock, events, enf = make()
    for i in range(40):
        det.on_new((i,), "10.77.0.66", "10.77.0.10", 6, 1000 + i)
        det.on_answer((i,), established=False, proto=6)
    clock.t += 0.5
    det.evaluate()
    assert events and events[0]["action"] == "block"


def test_host_sweep_counts_distinct_hosts():
    det, clock, events, _ = make(min_ports=1000, min_hosts=20)
    for h in range(30):
        det.on_new((h,), "10.77.0.66", f"10.77.0.{100 + h}", 6, 22)
    clock.t += 0.5
    det.evaluate()
    assert events[0]["distinct_hosts"] == 30 and events[0]["distinct_ports"] == 1


def test_slow_probes_outside_the_window_do_not_add_up_in_the_fast_window_alone():
    det, clock, events, _ = make(window=5.0, scales=[])
    for port in range(100):
        det.on_new((port,), "10.77.0.66", "10.77.0.10", 6, port)
        clock.t += 1.0  # one probe per second: never 25 distinct ports within 5 s
    det.evaluate()
    assert events == []


def test_never_block_list_and_failing_writer_are_reported_not_raised():
    det, clock, events, enf = make(never_block=["10.77.0.0/28"])
    syn_scan(det, clock, src="10.77.0.5")
    clock.t += 0.5
    det.evaluate()
    assert events[0]["action"] == "none" and enf.calls == []
    det, clock, events, _ = make(enforcer=Enforcer(fail=True))
    syn_scan(det, clock)
    clock.t += 0.5
    det.evaluate()
    assert events[0]["action"] == "block-failed" and "writer gone" in events[0]["error"]


def test_missing_enforcement_part_degrades_to_would_block():
    clock = Clock()
    events = []
    det = ScanDetector(DetectConfig(), mode=lambda: "enforcing", emit=events.append,
                       enforcer=lambda: None, clock=clock)
    syn_scan(det, clock)
    clock.t += 0.5
    det.evaluate()
    assert events[0]["action"] == "would-block" and "not enforced" in events[0]["detail"]


def test_source_table_is_bounded():
    det, clock, _, _ = make(max_sources=100)
    for i in range(1000):
        det.on_new((i,), f"10.1.{i // 250}.{i % 250}", "10.77.0.10", 6, 80)
    assert len(det.sources) == 100


def test_block_refused_by_the_enforcement_part_is_reported_as_such():
    class Refusing:
        def block_local(self, address, ttl, reason):
            return False  # e.g. a guarded management address
    det, clock, events, _ = make(enforcer=Refusing())
    syn_scan(det, clock)
    clock.t += 0.5
    det.evaluate()
    assert events[0]["action"] == "block-refused"


def test_a_scan_at_one_probe_per_15s_adds_up_on_the_minutes_scale():
    det, clock, events, enf = make()
    for port in range(1, 14):
        det.on_new((port,), "10.77.0.66", "10.77.0.10", 6, port)
        clock.t += 15.0
        det.evaluate()
    (ev,) = events
    assert ev["action"] == "block" and ev["src"] == "10.77.0.66" and ev["time_scale"] == 300.0
    assert ev["detail"].startswith("slow (300s scale) scan: 10 ports") and ev["success_ratio"] == 0.0


def test_a_busy_client_with_some_failures_never_adds_up_over_an_hour():
    """Hundreds of completed connections an hour and a refused one every 30 s (a closed port, a
    stale bookmark): the failures are a small share of what the source does."""
    det, clock, events, _ = make()
    i = 0
    for minute in range(60):
        for _ in range(20):
            i += 1
            det.on_new((i,), "10.77.0.2", "10.77.0.10", 6, 443)
            det.on_answer((i,), True, 6)
            clock.t += 1.5
        for j in range(2):
            i += 1
            det.on_new((i,), "10.77.0.2", f"10.77.1.{(minute * 2 + j) % 250}", 6, 8000 + minute)
        det.evaluate()
    assert events == []


def test_slow_state_is_bounded_per_source_and_sources_are_evicted_counted():
    from vigil.counters import Counters
    counters = Counters()
    clock = Clock()
    det = ScanDetector(DetectConfig(max_sources=1000, max_probes_per_source=64), mode=lambda: "learning",
                       emit=lambda ev: None, clock=clock, counters=counters)
    for i in range(200):                       # one source, 200 probes in a second
        det.on_new((i,), "10.0.0.1", "10.0.0.2", 6, 7)
    assert len(det.sources["10.0.0.1"].probes) == 64 and counters.get("detector_probes_capped") == 136
    for s in range(3000):
        det.on_new(("s", s), f"10.1.{s // 250}.{s % 250}", "10.0.0.2", 6, 7)
    assert len(det.sources) == 1000 and counters.get("detector_sources_forgotten") >= 2000
    for st in det.sources.values():
        assert st.slow is None or all(len(sc.targets) <= 25 for sc in st.slow)
