"""Learning from a recording of the lab's normal traffic gives the baseline and the decisions that
learning the same traffic live gives (issue 15).

While the engine learns live, tcpdump in the server's namespace records the same traffic (the
client's requests).  The manager then learns a second baseline (``p1``) from the recording with
``engines.learn_pcap``.  Both baselines know the same services and sources.  Then nmap scans
the server: the decisions the live path makes for the scanner (``flow-anomaly:*``) are compared with
the findings the capture-learned baseline gives on the recording of the same scan."""
from __future__ import annotations

import time

import pytest

from tests.support.waiting import wait_for
from vigil import control
from vigil.manager.policy.baselines import Baseline
from vigil.manager.policy.config import PolicyConfig
from vigil.manager.policy.detections import Detector
from vigil.manager.policy.pcaplearn import PcapStats, batches, learn

pytestmark = pytest.mark.lab

LEARN_S = 20
INTERVAL = 1.0          # the lab engine's flows.interval


def reaches(lab, host: str) -> bool:
    r = lab.run(host, ["curl", "-sS", "-o", "/dev/null", "--max-time", "1", f"http://{lab.ip('server')}:8080/"],
                check=False)
    return r.returncode == 0


def record(lab, path, name):
    # -Z root: tcpdump would otherwise drop to its own user, who cannot write the lab's directory
    lab.popen("server", ["tcpdump", "-i", "eth0", "-n", "-U", "-Z", "root", "-w", str(path), "ip or ip6"], name=name)
    wait_for(lambda: path.exists(), 10, "tcpdump to start", lab=lab)
    time.sleep(0.5)


def test_capture_learning_gives_the_live_baseline_and_decisions(lab):
    lab.start_manager(policy={"detection": {"enabled": True}})
    lab.wait_log("manager", "mqtt: connected", timeout=20)
    sock = lab.run_dir / "manager.sock"
    lab.start_engine(learning={"period": 3600})
    lab.wait_log("engine", "mqtt: connected", timeout=30)
    lab.popen("server", ["python3", "-m", "http.server", "8080", "--bind", lab.ip("server")], name="http")
    wait_for(lambda: reaches(lab, "client"), 10, "the http server", lab=lab)
    normal = lab.run_dir / "normal.pcap"
    record(lab, normal, "tcpdump-normal")
    t_end = time.monotonic() + LEARN_S
    while time.monotonic() < t_end:
        reaches(lab, "client")
        time.sleep(0.5)         # about 15 connections in the 10 s window: under the floor of 25
    time.sleep(1.5)
    lab.stop("tcpdump-normal")
    time.sleep(INTERVAL * 3)    # the engine's last batches reach the manager
    live = control.call(sock, "engines.baseline", engine="e1")
    rep = control.call(sock, "engines.learn_pcap", timeout=120, engine="p1", file=str(normal), interval=INTERVAL)
    assert rep["errors"] == {} and rep["packets"] > 100, rep
    cap = control.call(sock, "engines.baseline", engine="p1")
    srv = lab.ip("server")
    # the live engine also reports its namespace's own loopback flows (its broker connection):
    # the capture on the server's port cannot see those
    learned = {k for k, v in live["services"].items() if v["learned"] and "/127." not in k}
    assert f"tcp/{srv}/8080" in learned
    assert {k for k, v in cap["services"].items() if v["learned"]} == learned
    assert cap["services"][f"tcp/{srv}/8080"]["sources"] == live["services"][f"tcp/{srv}/8080"]["sources"]
    assert cap["known_sources"] == 1 and live["known_sources"] >= 1      # the client
    # traffic time: the live engine also learned before and after the recording (its loopback
    # broker traffic makes every interval count): a few seconds more, never fewer
    assert -2 * INTERVAL <= live["learned_seconds"] - cap["learned_seconds"] <= 15, (cap, live)
    for m in ("src_new_per_service", "src_hosts", "src_ports_per_host"):
        assert abs(cap["sources"][m]["max"] - live["sources"][m]["max"]) <= 2, (m, cap["sources"], live["sources"])

    # the same attack: live detections vs the capture-learned baseline's findings on its recording.
    # A finding on a value that already has a decision merges into it (the engine's own scan
    # event usually comes first), so the live side is read from the manager's detection counters.
    def detections():
        st = control.call(sock, "manager.status")
        return {k: v for k, v in st.get("counters", {}).items() if k.startswith("detections_")}
    before = detections()
    attack = lab.run_dir / "attack.pcap"
    record(lab, attack, "tcpdump-attack")
    lab.run("attacker", ["nmap", "-sS", "-n", "-Pn", "-p", "1-1000", srv], check=False, timeout=120)
    time.sleep(1.5)
    lab.stop("tcpdump-attack")
    attacker = lab.ip("attacker")

    def live_kinds():
        after = detections()
        return {k.removeprefix("detections_").replace("_", "-") for k, v in after.items() if v > before.get(k, 0)}
    wait_for(lambda: live_kinds(), 15, "a live detection of the scan", lab=lab)
    time.sleep(INTERVAL * 3)
    base = Baseline("p1")
    with normal.open("rb") as f:
        learn(f, base, PolicyConfig().detection.thresholds(), interval=INTERVAL)
    assert base.report()["services"] == cap["services"]      # what the manager learned, reproduced
    det, found = Detector("p1", PolicyConfig().detection.thresholds()), set()
    with attack.open("rb") as f:
        for b in batches(f, INTERVAL, PcapStats()):
            # the engine is still learning, live: no new-service findings on either side
            fs, _ = det.evaluate(b.flows, INTERVAL, base, learned=False)
            found |= {x.kind for x in fs if x.value == attacker}
            assert not [x for x in fs if x.value == lab.ip("client")]
    assert found == live_kinds(), (found, live_kinds())
    assert not [d for d in control.call(sock, "decisions.list") if d["value"] == lab.ip("client")]
    print(f"live {live['learned_seconds']} s / capture {cap['learned_seconds']} s learned; decisions {sorted(found)}")
