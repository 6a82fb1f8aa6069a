"""The candidate datapath of issue 16 (bench/bridge_throughput.py variant V3: no br_netfilter, no
conntrack; one bridge prerouting chain in which a running flow costs one lookup and one counter
update) keeps Vigil's semantics, shown with real iperf3 flows through br0: the flow set counts the
bytes iperf3 moved; every new flow is signalled on NFLOG group 1; a block of the server alone leaves
a running flow passing (the fast path skips the lookups), and deleting the server's elements from
the ``seen`` set after a dump stops it, for good; so does flushing the ``seen`` set in the block's
own transaction (what the agent would do: every running flow is checked against the rule set once
more, and no dump can race a new flow)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


@pytest.mark.parametrize("cut", ["delete", "flush"])
def test_fast_path_counts_signals_and_cuts_a_blocked_flow(lab, cut):
    import bridge_throughput as bt
    res = bt.check_variant(lab, "V3", n=1000, cut=cut)
    assert res["flows"] == 6                                   # 3 connections, each direction counted
    assert 1.0 <= res["bytes_ratio"] <= 1.1                    # bytes counted vs iperf3's payload
    assert res["new_flow_rule"] == res["flow_elements"]        # one signal per flow, none per packet
    assert res["nflog_new_flow"] >= res["flows"]
    assert res["rx_before"] > 10 << 20
    assert res["rx_after_cut"] < 64 << 10                      # nothing reaches the server any more
    if cut == "delete":
        assert res["rx_after_block"] > res["rx_before"] / 10   # the block alone: the flow runs on
        assert res["cut_elements"] >= 2
