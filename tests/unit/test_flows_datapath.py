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


def test_bulk_traffic_skips_the_sampling_rules_and_forgery_checks_start_with_the_owner():
    script = datapath.flow_accounting_script(_features(), ["eth0", "eth1"], datapath.SampleSpec(9))
    lines = [l.strip() for l in script.split("chain prerouting {")[1].split("}\n}")[0].splitlines()]
    fast = [i for i, l in enumerate(lines) if l.endswith(" accept") and "hook" not in l]
    samples = [i for i, l in enumerate(lines) if "log group" in l]
    forged = [i for i, l in enumerate(lines) if "meta mark set meta mark |" in l or "jump forged4" in l]
    # the fast path comes after every rule that sets the forged bit and before every sample
    assert len(fast) == 3 and max(forged) < min(fast) and max(fast) < min(samples)
    # each fast-path rule excludes what a sample rule needs: SYN/FIN/RST or no ACK, DHCP server
    # port, IP options, fragments, the forged bit
    for i in fast:
        assert "meta mark & 0x80000000 == 0" in lines[i]
        assert "tcp flags & (fin|syn|rst|ack) == ack" in lines[i] or "udp sport != 67" in lines[i]
        assert "ether type ip6" in lines[i] or ("ip hdrlength 5" in lines[i] and "frag-off & 0x3fff == 0" in lines[i])
    # owner4 is looked up first; owned4 / hostmac4 only for frames that are not their owner's
    assert "ip saddr . ether saddr != @owner4 jump forged4" in lines
    forged4 = script.split("chain forged4 {")[1].split("}")[0]
    assert "@owned4" in forged4 and "@hostmac4" in forged4


def test_bridge_conntrack_variant_marks_new_flows_before_the_fast_path():
    script = datapath.flow_accounting_script(_features("bridge-conntrack"), ["eth0", "eth1"], datapath.SampleSpec(3))
    pre = script.split("chain prerouting {")[1]
    assert pre.index("ct mark set meta mark") < pre.index(" accept\n") < pre.index('prefix "tcp-null"')
    assert pre.index("jump forged4") < pre.index("ct mark set meta mark")
