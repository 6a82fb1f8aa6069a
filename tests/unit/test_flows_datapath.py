"""The flow-accounting / sampling nft script (kernel acceptance is covered by the integration tests)."""
from __future__ import annotations

import pytest

from vigil.engine import datapath

pytestmark = pytest.mark.unit


def _features(source="br_netfilter-conntrack", nflog=True):
    return datapath.KernelFeatures(True, True, True, source == "bridge-conntrack", nflog, source)


def test_sampling_rules_are_rate_limited_and_events_narrowed():
    script = datapath.flow_accounting_script(_features(), ["eth0", "eth1"], datapath.SampleSpec(9, 50, 70))
    logs = [l for l in script.splitlines() if "log group" in l]
    assert len(logs) == len(datapath.SAMPLE_RULES) + 1
    assert all("log group 9" in l and "limit rate" in l for l in logs)
    assert sum("limit rate 50/second" in l for l in logs) == len(datapath.SAMPLE_RULES)
    assert 'limit rate 70/second burst 70 packets log group 9 prefix "new-flow"' in script
    assert "ct event set new,reply,assured,destroy" in script
    # sampling of crafted flags happens in bridge prerouting, before conntrack judges the packet
    bridge = script.split("table bridge vigil_flow {\n")[1].split("table inet")[0]
    assert 'prefix "tcp-xmas"' in bridge and 'prefix "arp-reply"' in bridge


def test_no_sampling_without_group_or_nflog():
    for script in (datapath.flow_accounting_script(_features(), ["a", "b"], datapath.SampleSpec(0)),
                   datapath.flow_accounting_script(_features(nflog=False), ["a", "b"], datapath.SampleSpec(5))):
        assert "log group" not in script and "ct event set" in script


def test_bridge_conntrack_variant_has_one_table():
    script = datapath.flow_accounting_script(_features("bridge-conntrack"), ["eth0", "eth1"], datapath.SampleSpec(3))
    assert "table inet vigil_flow {\n" not in script and "ct mark set meta mark" in script
