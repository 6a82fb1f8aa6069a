"""The engine on the flow-set datapath (flows.source: flowset) against the real kernel and broker:
what it leaves in the kernel (no conntrack, no br_netfilter hooks, one prerouting chain), flow
records from the flow sets for a real download, a block that cuts a flow already running, and the
way back to conntrack.  The attacks against it are in the lab tier (``BOTH_DATAPATHS``)."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_enforcement import pub  # noqa: F401 (fixture)
from tests.integration.test_telemetry import download, download_records, engine_lab  # noqa: F401 (fixture)
from tests.support.rulesets import drop

pytestmark = pytest.mark.integration

FLOWSET = {"source": "flowset", "interval": 1.0, "flowset_timeout": 10}


def _start(lab, publisher=None, **flows):
    over = {"flows": {**FLOWSET, **flows}}
    if publisher is not None:
        over["enforcement"] = {"manager_public_key": str(publisher.public_key_path)}
    lab.start_engine(**over)
    lab.wait_log("engine", "mqtt: connected")
    if publisher is not None:
        publisher.wait_state(lambda s: True)


def _chains(lab) -> dict[str, dict]:
    doc = json.loads(lab.run("engine", ["nft", "-j", "list", "chains"]).stdout)
    return {f'{c["chain"]["family"]} {c["chain"]["table"]} {c["chain"]["name"]}': c["chain"]
            for c in doc["nftables"] if "chain" in c}


def _sysctl(lab, name: str) -> str:
    return lab.run("engine", ["cat", f"/proc/sys/net/bridge/{name}"]).stdout.strip()


def test_the_kernel_holds_one_prerouting_chain_and_no_conntrack(engine_lab):  # noqa: F811
    lab, col = engine_lab
    _start(lab)
    st = col.wait(lambda: [s for s in col.status if s.get("state") == "running"], 15, "a status")[-1]
    assert st["kernel"]["flow_source"] == "bridge-flowset"
    assert st["telemetry"]["ct_events"] is False and st["telemetry"]["flow_signals"] is not None
    chains = _chains(lab)
    assert chains["bridge vigil pre"]["hook"] == "prerouting" and chains["bridge vigil pre"]["prio"] == -300
    assert "bridge vigil forward" not in chains          # the lookups are called from pre
    assert not [c for c in chains if "vigil_flow" in c]  # no conntrack tables
    assert _sysctl(lab, "bridge-nf-call-iptables") == "0" and _sysctl(lab, "bridge-nf-call-ip6tables") == "0"
    # traffic passes and nothing enters conntrack
    lab.run("client", ["ping", "-c", "2", "-i", "0.2", lab.ip("server")])
    ct = lab.run("engine", ["cat", "/proc/net/nf_conntrack"], check=False)
    assert ct.returncode != 0 or ct.stdout.strip() == "", ct.stdout[:500]


def test_a_download_is_one_record_with_both_directions_bytes(engine_lab):  # noqa: F811
    lab, col = engine_lab
    downloaded, sport = download(lab, lambda: _start(lab))
    # the flow ends when both elements expire (flowset_timeout 10 s after its last packet)
    recs, last = download_records(lab, col, downloaded, sport, 30)
    assert last["conn_state"] == "SF" and last["replied"] and last["assured"]
    assert sum(1 for x in recs if x["new"]) == 1
    # the end is the last packet's time (from the element's expiry), not the time it was noticed
    assert last["start"] <= last["end"] <= last["start"] + 5000, last
    # no record was made of the reverse direction as a flow of its own
    assert not col.records(sport=8080, dport=sport)


def _rx(lab) -> int:
    return int(lab.run("server", ["cat", "/sys/class/net/eth0/statistics/rx_bytes"]).stdout)


def test_a_block_cuts_a_flow_already_running(engine_lab, pub):  # noqa: F811
    lab, _col = engine_lab
    _start(lab, pub)
    gen = pub.snapshot([])
    pub.wait_state(lambda s: s["generation"] == gen and s["error"] is None)
    lab.popen("server", ["iperf3", "-s", "-1", "-B", lab.ip("server")], name="iperf3-server")
    time.sleep(0.5)
    lab.popen("client", ["iperf3", "-c", lab.ip("server"), "-t", "30", "-b", "200M"], name="iperf3")
    # the flow is running and cached as checked
    deadline = time.monotonic() + 10
    while True:
        a = _rx(lab)
        time.sleep(0.5)
        if _rx(lab) - a > 1_000_000:
            break
        assert time.monotonic() < deadline, "iperf3 did not start"
    seen = lab.run("engine", ["nft", "list", "set", "bridge", "vigil", "seen4"]).stdout
    assert lab.ip("client") in seen
    t0 = time.monotonic()
    gen = pub.delta(add=[drop(lab.ip("client"), 600)], base=gen)
    pub.wait_state(lambda s: s["generation"] == gen and s["error"] is None)
    applied = time.monotonic() - t0
    time.sleep(0.5)
    a = _rx(lab)
    time.sleep(2.0)
    after = _rx(lab) - a
    # nothing of the flow's 25 MB/s passes (a few ARP or retransmission frames at most)
    assert after < 20_000, (after, applied)
    assert lab.ip("client") not in lab.run("engine", ["nft", "list", "set", "bridge", "vigil", "seen4"]).stdout


def test_back_to_conntrack_the_flowset_leaves_and_the_rule_set_stays(lab, pub):  # noqa: F811
    _start(lab, pub)
    gen = pub.snapshot([drop("10.99.0.1", 600)])
    pub.wait_state(lambda s: s["generation"] == gen and s["error"] is None)
    lab.stop("engine")
    pub.clear_states()
    lab.start_engine(flows={"source": "conntrack", "interval": 1.0},
                     enforcement={"manager_public_key": str(pub.public_key_path)})
    lab.wait_log("engine", "mqtt: connected")
    pub.wait_state(lambda s: s["generation"] == gen and s["error"] is None)
    chains = _chains(lab)
    assert "bridge vigil pre" not in chains and "bridge vigil forward" in chains
    assert "bridge vigil_flow prerouting" in chains
    assert "10.99.0.1" in lab.run("engine", ["nft", "list", "set", "bridge", "vigil", "block4"]).stdout
    sets = lab.run("engine", ["nft", "list", "sets", "bridge"]).stdout
    assert "flows4" not in sets and "seen4" not in sets


def test_flow_signals_lost_to_the_kernels_rate_limit_are_noticed(engine_lab):  # noqa: F811
    """The detector holds decisions while flow signals are lost (flowsignals.SignalLoss): the loss
    is measured from the real rule counters against the samples that reached the engine."""
    lab, col = engine_lab
    lab.start_engine(flows=FLOWSET, samples={"flow_signal_rate": 5})
    lab.wait_log("engine", "mqtt: connected")
    lab.popen("server", ["python3", "-m", "http.server", "8080", "--bind", lab.ip("server")], name="http")
    connect = f"for i in $(seq {{n}}); do nc -z -w1 {lab.ip('server')} 8080; done"
    deadline = time.monotonic() + 10
    while lab.run("client", ["nc", "-z", "-w1", lab.ip("server"), "8080"], check=False).returncode != 0:
        assert time.monotonic() < deadline, "the http server did not come up"
        time.sleep(0.2)
    lab.run("client", ["sh", "-c", connect.format(n=2)])
    time.sleep(5)                 # two readings of the counters: within the limit, nothing lost

    def signals():
        with col.lock:
            return [s["telemetry"]["flow_signals"] for s in col.status if s.get("state") == "running"]
    quiet = col.wait(lambda: [s for s in signals() if s["received"]["new-flow"] >= 3], 15, "the samples counted")
    assert quiet[-1]["lost"] == {"new-flow": 0, "flow-reply": 0, "flow-ack": 0} and quiet[-1]["lossy"] == []
    lab.run("client", ["sh", "-c", connect.format(n=80)], timeout=120)     # far past 5/s
    lossy = col.wait(lambda: [s for s in signals() if "new-flow" in s["lossy"]], 20, "the loss noticed")[-1]
    assert lossy["lost"]["new-flow"] >= 40 and "flow-ack" in lossy["lossy"], lossy
