"""Baselines (Welford then EWMA, persistence) and flow detections on synthetic batches."""
from __future__ import annotations

import json
import random
import statistics

import pytest

from vigil.manager.policy.baselines import Baseline, BaselineStore, Stat
from vigil.manager.policy.detections import Detector, Thresholds

pytestmark = pytest.mark.unit

CLIENTS = [f"10.77.0.{i}" for i in range(20, 30)]
SERVER = "10.77.0.10"
ATTACKER = "10.77.0.66"


def flow(src, dst, dport, proto="tcp", new=True, conn_state="SF", pkts=(10, 8), nbytes=(800, 12000)):
    return {"src": src, "dst": dst, "sport": random.randint(30000, 60000), "dport": dport, "proto": proto,
            "new": new, "end": None, "conn_state": conn_state, "replied": conn_state != "S0",
            "assured": conn_state in ("SF", "S1", "RST"), "orig_pkts": pkts[0], "resp_pkts": pkts[1],
            "orig_bytes": nbytes[0], "resp_bytes": nbytes[1]}


def normal_batch(rng: random.Random) -> list[dict]:
    out = []
    for c in CLIENTS:
        for _ in range(rng.randint(0, 3)):
            out.append(flow(c, SERVER, rng.choice([80, 443, 5201])))
        if rng.random() < 0.05:  # the odd refused connection happens in normal traffic too
            out.append(flow(c, SERVER, 8443, conn_state="REJ", pkts=(1, 1), nbytes=(60, 40)))
    return out


def learn(det: Detector, base: Baseline, intervals: int = 120, seed: int = 1) -> None:
    rng = random.Random(seed)
    for _ in range(intervals):
        _, summary = det.evaluate(normal_batch(rng), 1.0, base, learned=False)
        base.observe(summary, learning=True, alpha=0.01, alpha_suspicious=0.001, suspicious=False)


def test_welford_matches_statistics_and_ewma_adapts_slowly():
    xs = [3.0, 5.0, 4.0, 10.0, 7.5, 6.0]
    s = Stat()
    for x in xs:
        s.update(x)
    assert s.mean == pytest.approx(statistics.mean(xs)) and s.var == pytest.approx(statistics.variance(xs))
    fast, slow = Stat.from_json(s.to_json()), Stat.from_json(s.to_json())
    for _ in range(10):
        fast.update(100.0, alpha=0.1)
        slow.update(100.0, alpha=0.001)
    assert slow.mean < fast.mean < 100.0
    assert slow.mean - s.mean < 1.0 and fast.mean - s.mean > 30


def test_baseline_persists(storage):
    st = BaselineStore(storage.db("baselines"))
    det, base = Detector("e1", Thresholds()), st.get("e1")
    learn(det, base, 30)
    assert base.known_service(f"tcp/{SERVER}/80") and not base.known_service(f"tcp/{SERVER}/22")
    assert st.save() == 1 and st.save() == 0          # only what changed is written
    again = BaselineStore(storage.db("baselines")).get("e1")
    assert again.to_json() == base.to_json()
    assert again.services[f"tcp/{SERVER}/443"]["sources_n"] == len(CLIENTS)
    st.reset("e1")
    assert "e1" not in BaselineStore(storage.db("baselines")).baselines


def test_baseline_files_of_earlier_versions_are_imported_once(storage, tmp_path):
    det, base = Detector("e3", Thresholds()), Baseline("e3")
    learn(det, base, 10)
    old = tmp_path / "old-baselines"
    old.mkdir()
    (old / "e3.json").write_text(json.dumps(base.to_json()))
    (old / "e2.json").write_text("{not json")
    st = BaselineStore(storage.db("baselines"), import_dir=old)
    assert st.baselines["e3"].to_json() == base.to_json()
    assert "e2" not in st.baselines                   # unreadable: logged, starts afresh
    assert (old / "e3.json.imported").exists() and not (old / "e3.json").exists()
    assert BaselineStore(storage.db("baselines"), import_dir=old).baselines["e3"].to_json() == base.to_json()


def _kinds(findings):
    return sorted({f.kind for f in findings})


def test_normal_traffic_after_learning_gives_no_findings():
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    learn(det, base)
    rng = random.Random(99)  # other random normal traffic than was learned
    for _ in range(300):
        findings, _ = det.evaluate(normal_batch(rng), 1.0, base, learned=True)
        assert findings == []


def test_scans_floods_brute_force_and_new_services_are_found():
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    learn(det, base)
    rng = random.Random(5)
    vscan = normal_batch(rng) + [flow(ATTACKER, SERVER, p, conn_state="REJ", pkts=(1, 1), nbytes=(44, 40))
                                 for p in range(1, 200)]
    f, _ = det.evaluate(vscan, 1.0, base, learned=True)
    assert _kinds(f) == ["vertical-scan"] and f[0].value == ATTACKER and "199 ports" in f[0].reason

    det = Detector("e1", Thresholds())
    hscan = [flow(ATTACKER, f"10.77.0.{h}", 80, conn_state="S0", pkts=(1, 0), nbytes=(44, 0))
             for h in range(100, 160)]
    f, _ = det.evaluate(hscan, 1.0, base, learned=True)
    assert _kinds(f) == ["horizontal-scan"]

    det = Detector("e1", Thresholds())
    flood = [flow(ATTACKER, SERVER, 80, conn_state="SH", pkts=(1, 1), nbytes=(40, 44)) for _ in range(3000)]
    f, _ = det.evaluate(flood, 1.0, base, learned=True)
    assert _kinds(f) == ["flood"]

    # brute force spread over several intervals still adds up within the window
    det = Detector("e1", Thresholds())
    found = []
    for _ in range(5):
        batch = normal_batch(rng) + [flow(ATTACKER, SERVER, 80, pkts=(6, 5), nbytes=(400, 700)) for _ in range(8)]
        f, _ = det.evaluate(batch, 1.0, base, learned=True)
        found += f
    assert _kinds(found) == ["brute-force"] and found[0].value == ATTACKER

    det = Detector("e1", Thresholds())
    f, _ = det.evaluate([flow(CLIENTS[0], SERVER, 2222)], 1.0, base, learned=True)
    assert _kinds(f) == ["new-service"] and f[0].value == f"{CLIENTS[0]}|{SERVER}|tcp|2222"
    f, _ = det.evaluate([flow(CLIENTS[0], SERVER, 2222)], 1.0, base, learned=False)
    assert f == []  # not while learning


def test_thresholds_follow_a_busier_baseline():
    th = Thresholds(vscan_ports=12)
    det, base = Detector("e1", th), Baseline("e1")
    rng = random.Random(3)
    for _ in range(50):  # a monitoring host that normally probes 30 ports
        batch = normal_batch(rng) + [flow("10.77.0.5", SERVER, p, conn_state="REJ", pkts=(1, 1), nbytes=(44, 40))
                                     for p in range(1000, 1030)]
        _, s = det.evaluate(batch, 1.0, base, learned=False)
        base.observe(s, True, 0.01, 0.001, False)
    assert base.threshold("src_ports_per_host", 12, th.k, th.factor, th.min_intervals) >= 60
    det = Detector("e1", th)
    f, _ = det.evaluate([flow("10.77.0.5", SERVER, p, conn_state="REJ") for p in range(1000, 1030)], 1.0, base, True)
    assert f == []


def test_malformed_records_are_skipped():
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    f, s = det.evaluate([{"src": "x"}, {"src": "y", "dst": "z", "proto": "tcp", "dport": "nan"},
                         flow(CLIENTS[0], SERVER, 80)], 1.0, base, learned=False)
    assert f == [] and s.flows == 3 and s.new_flows == 1


def test_repeated_attacks_after_learning_stay_detectable():
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    learn(det, base)
    rng = random.Random(8)
    scan = [flow(ATTACKER, SERVER, p, conn_state="REJ", pkts=(1, 1), nbytes=(44, 40)) for p in range(1, 500)]
    for i in range(30):  # an attacker returning again and again must not teach the baseline
        f, s = det.evaluate(scan if i % 3 == 0 else normal_batch(rng), 1.0, base, learned=True)
        base.observe(s, False, 0.01, 0.001, bool(f))
        if i % 3 == 0:
            assert "vertical-scan" in _kinds(f), i
        else:
            assert not [x for x in f if x.value != ATTACKER], f


def test_packet_flood_and_the_first_batch_after_a_restart():
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    learn(det, base)
    udp = [flow(ATTACKER, SERVER, 53, proto="udp", new=False, conn_state="S1", pkts=(60000, 0), nbytes=(3_600_000, 0))]
    f, _ = det.evaluate(udp, 1.0, base, learned=True)
    assert _kinds(f) == ["flood"] and "small packets/s" in f[0].reason
    # an engine that restarted reports old flows' whole history at once: no rate verdict on it
    det = Detector("e1", Thresholds())
    f, _ = det.evaluate(udp, 0.2, base, learned=True, rates=False)
    assert f == []


def test_flows_that_began_before_the_interval_are_not_new_connections():
    """A restarted engine's first batch lists every flow conntrack still holds (TIME_WAIT ones for
    two minutes) as new: a client's ordinary curl loop must not look like brute force then."""
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    learn(det, base)
    start_ms = 1_800_000_000_000
    client = CLIENTS[0]

    def curls(first_ms: int) -> list[dict]:
        out = []
        for i in range(60):   # one short request every 2 s
            f = flow(client, SERVER, 80, nbytes=(300, 900))
            f["start"] = first_ms + 2000 * i
            out.append(f)
        return out
    history = curls(start_ms - 125_000)                  # the two minutes before the restart
    f, summary = det.evaluate(history, 1.0, base, learned=True, rates=False, since_ms=start_ms - 2000)
    assert f == [] and summary.new_flows == 0
    # the same connections opened within the interval are brute force
    det = Detector("e1", Thresholds())
    f, summary = det.evaluate(curls(start_ms), 1.0, base, learned=True, since_ms=start_ms - 2000)
    assert "brute-force" in _kinds(f) and summary.new_flows == 60


def test_uncompleted_connections_are_never_brute_force():
    """hping3 -S --flood: hundreds of SYNs a second that never complete are a flood (once over its
    threshold), not brute force, whatever interval boundary they straddle."""
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    learn(det, base)
    syns = [flow(ATTACKER, SERVER, 80, conn_state="S0", pkts=(1, 0), nbytes=(60, 0)) for _ in range(200)]
    f, _ = det.evaluate(syns, 1.0, base, learned=True)
    assert "brute-force" not in _kinds(f)
    f, _ = det.evaluate(syns * 2, 1.0, base, learned=True)
    assert "flood" in _kinds(f) and "brute-force" not in _kinds(f)


def test_credential_guessing_from_a_new_source_is_found_despite_a_learned_bursty_client(tmp_path):
    """Why it was missed: the brute-force threshold is the busiest *learned* source's maximum times
    ``factor``; a client that made bursts of parallel requests while the engine learned raised it
    for everyone.  Now a source the baseline never saw gets the floor."""
    det, base = Detector("e1", Thresholds()), Baseline("e1")
    burst = "10.77.0.2"
    for i in range(30):   # learning: every 3rd interval a burst of 60 parallel short requests
        n = 60 if i % 3 == 0 else 2
        _, summary = det.evaluate([flow(burst, SERVER, 8080, nbytes=(300, 700)) for _ in range(n)], 1.0, base,
                                  learned=False)
        base.observe(summary, learning=True, alpha=0.01, alpha_suspicious=0.001, suspicious=False)
    assert base.known_source(burst) and not base.known_source(ATTACKER)
    assert base.threshold("src_new_per_service", 25, 6.0, 2.0, 10) > 120   # the learned allowance: over 120
    det = Detector("e1", Thresholds())
    guesses = [flow(ATTACKER, SERVER, 8080, nbytes=(250, 500)) for _ in range(120)]
    bursty = [flow(burst, SERVER, 8080, nbytes=(300, 700)) for _ in range(60)]
    findings, _ = det.evaluate(guesses + bursty, 2.0, base, learned=True)
    assert [(f.kind, f.value) for f in findings] == [("brute-force", ATTACKER)]
    assert "not seen while learning" in findings[0].reason
    # the known sources survive a restart of the manager
    st = BaselineStore(tmp_path)
    st.baselines["e1"] = base
    base.dirty = True
    st.save()
    assert BaselineStore(tmp_path).get("e1").known_source(burst)
