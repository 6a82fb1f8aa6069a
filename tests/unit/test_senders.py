"""Owners of addresses and forgers (engine/senders.py) and the detector's attribution of forged
flows, with hand-built samples and a controlled clock (the kernel side is in
tests/lab/test_engine_attribution.py)."""
from __future__ import annotations

import socket
import struct

import pytest

from vigil.counters import Counters
from vigil.engine.config import DetectConfig
from vigil.engine.detect import ScanDetector
from vigil.engine.nflog import Sample
from vigil.engine.senders import FORGED, Senders, five_tuple

pytestmark = pytest.mark.unit

CLIENT, ATTACKER, SERVER = "10.77.0.2", "10.77.0.66", "10.77.0.10"
CMAC, AMAC = "02:77:00:00:00:02", "02:77:00:00:00:66"
PORTS = {1: "eth0", 2: "eth1"}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return ip + struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 1024, 0, 0)


def arp(op: int, sha: str, spa: str, tpa: str = SERVER) -> bytes:
    return struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac(sha), socket.inet_aton(spa), b"\0" * 6,
                       socket.inet_aton(tpa))


def sample(prefix: str, payload: bytes, frame_mac: str, port: int = 1, ethertype: int = 0x0800,
           forged: bool = False) -> Sample:
    return Sample(prefix, 7, ethertype, payload, mark=port | (FORGED if forged else 0), hwaddr=mac(frame_mac))


def make(**kw):
    clock = Clock()
    counters = Counters()
    return Senders(PORTS, counters, clock=clock, **kw), clock, counters


def test_five_tuple_matches_conntrack_field_order():
    assert five_tuple(tcp_syn(CLIENT, SERVER, 40000, 80)) == (6, CLIENT, 40000, SERVER, 80)
    assert five_tuple(b"\x45" + b"\0" * 10) is None


def test_arp_from_the_host_itself_makes_it_the_owner_and_a_forged_arp_moves_nothing():
    s, clock, counters = make()
    s.on_sample(sample("arp-request", arp(1, CMAC, CLIENT), CMAC, ethertype=0x0806))
    assert s.owner(CLIENT) == (CMAC, "eth0")
    # the attacker's reply claims the client's address: the ARP check reports it; the owner stays
    s.on_sample(sample("arp-reply", arp(2, AMAC, CLIENT), AMAC, ethertype=0x0806))
    assert s.owner(CLIENT) == (CMAC, "eth0")
    # an ARP whose sender field is not the frame's own source MAC is no evidence at all
    s.on_sample(sample("arp-reply", arp(2, "02:00:00:00:00:09", "10.77.0.9"), AMAC, ethertype=0x0806))
    assert s.owner("10.77.0.9") is None
    assert counters.get("owners_learned") == 1


def test_an_established_flow_teaches_and_moves_the_owner():
    s, clock, counters = make()
    s.on_sample(sample("new-flow", tcp_syn(CLIENT, SERVER, 40000, 80), CMAC))
    s.on_assured(6, CLIENT, 40000, SERVER, 80)
    assert s.owner(CLIENT) == (CMAC, "eth0")
    # a flow without a sampled first packet teaches nothing
    s.on_assured(6, ATTACKER, 1, SERVER, 80)
    assert s.owner(ATTACKER) is None
    # the address now completes handshakes from another NIC: it moved
    s.on_sample(sample("new-flow", tcp_syn(CLIENT, SERVER, 40001, 80), "02:77:00:00:00:aa", port=2))
    s.on_assured(6, CLIENT, 40001, SERVER, 80)
    assert s.owner(CLIENT) == ("02:77:00:00:00:aa", "eth1")
    assert counters.get("owners_moved") == 1
    assert s.owned_by(CMAC) == set()


def test_forgers_are_named_and_never_the_owner():
    s, clock, _ = make()
    s.on_sample(sample("arp-reply", arp(2, CMAC, CLIENT), CMAC, ethertype=0x0806))
    for i in range(5):
        s.on_sample(sample("forged", tcp_syn(CLIENT, SERVER, 1000 + i, 80), AMAC, forged=True))
    assert s.senders_of(CLIENT) == [(AMAC, "eth0", 5)]
    assert s.mac_for(CLIENT, forged=True) == AMAC and s.mac_for(CLIENT, forged=False) == CMAC
    clock.t += 61
    assert s.senders_of(CLIENT) == []      # older than the attribution window


def test_memory_is_bounded_and_evictions_are_counted():
    s, clock, counters = make(max_addresses=100, max_pending=50, max_forged=10)
    for i in range(300):
        a = f"10.1.{i // 250}.{i % 250}"
        s.on_sample(sample("arp-reply", arp(2, f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", a), 
                           f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", ethertype=0x0806))
        s.on_sample(sample("forged", tcp_syn(a, SERVER, 1, 80), AMAC, forged=True))
    assert len(s.owners) == 100 and counters.get("owners_evicted") == 200
    assert len(s.pending) == 50 and len(s.forgers) == 10
    assert counters.get("senders_forged_evicted") == 290


def test_kernel_script_writes_owners_host_macs_and_deletes_moved_pairs():
    s, clock, _ = make(host_max_addresses=1)
    s.on_sample(sample("arp-reply", arp(2, CMAC, CLIENT), CMAC, ethertype=0x0806))
    script = s.kernel_script()
    assert f"add element bridge vigil_flow owner4 {{ {CLIENT} . {CMAC} timeout 14400s }}" in script
    assert f"add element bridge vigil_flow owned4 {{ {CLIENT} timeout 14400s }}" in script
    assert f"add element bridge vigil_flow hostmac4 {{ {CMAC} timeout 14400s }}" in script
    assert s.kernel_script() == ""          # nothing changed since
    # a second address: the MAC owns two, more than host_max_addresses: a router, not a host
    s.on_sample(sample("arp-reply", arp(2, CMAC, "10.77.0.3"), CMAC, ethertype=0x0806))
    script = s.kernel_script()
    assert f"delete element bridge vigil_flow hostmac4 {{ {CMAC} }}" in script
    assert f"hostmac4 {{ {CMAC} timeout" not in script


def test_owners_survive_a_restart_and_a_bad_state_file_is_counted(tmp_path):
    s, clock, _ = make()
    s.on_sample(sample("arp-reply", arp(2, CMAC, CLIENT), CMAC, ethertype=0x0806))
    s.save(tmp_path / "senders.json")
    s2, _, counters = make()
    assert s2.load(tmp_path / "senders.json") == 1 and s2.owner(CLIENT) == (CMAC, "eth0")
    (tmp_path / "bad.json").write_text('{"owners": {"10.0.0.1": ["x"], "nonsense": [1, 2, 3]}}')
    assert s2.load(tmp_path / "bad.json") == 0
    assert counters.get("senders_state_invalid") == 2
    (tmp_path / "worse.json").write_text("[")
    assert s2.load(tmp_path / "worse.json") == 0 and counters.get("senders_state_unreadable") == 1


# -- the detector's attribution ---------------------------------------------------------------------

class Enforcer:
    def __init__(self):
        self.ip, self.mac = [], []

    def block_local(self, address, ttl, reason):
        self.ip.append(address)

    def block_local_mac(self, mac, port, ttl, reason, owns=()):
        self.mac.append((mac, port, tuple(owns)))


def detector(senders, clock, mode="enforcing", **cfg):
    events, enf = [], Enforcer()
    det = ScanDetector(DetectConfig(**cfg), mode=lambda: mode, emit=events.append, enforcer=lambda: enf,
                       clock=clock, senders=senders)
    return det, events, enf


def test_forged_flood_blocks_the_forger_by_mac_and_never_the_address():
    s, clock, _ = make()
    s.on_sample(sample("arp-reply", arp(2, CMAC, CLIENT), CMAC, ethertype=0x0806))
    s.on_sample(sample("arp-reply", arp(2, AMAC, ATTACKER), AMAC, ethertype=0x0806))
    det, events, enf = detector(s, clock)
    for i in range(40):          # hping3 --spoof CLIENT -S -p 80: one port, one host
        s.on_sample(sample("forged", tcp_syn(CLIENT, SERVER, 2000 + i, 80), AMAC, forged=True))
        det.on_new((i, CLIENT, 80), CLIENT, SERVER, 6, 80, forged=True)
        clock.t += 0.001
    # the client's own traffic in the same second counts for the client, and stays harmless
    det.on_new(("c", CLIENT, 80), CLIENT, SERVER, 6, 80)
    det.on_answer(("c", CLIENT, 80), True, 6)
    clock.t += 0.3
    det.evaluate()
    (ev,) = events
    assert ev["type"] == "spoofing" and ev["finding"] == "flood" and ev["action"] == "block"
    assert ev["mac"] == AMAC and ev["in_port"] == "eth0" and ev["forged_src"] == CLIENT
    assert ev["owner_mac"] == CMAC and "src" not in ev
    assert enf.ip == [] and enf.mac == [(AMAC, "eth0", (ATTACKER,))]


def test_forged_flows_that_complete_are_not_an_attack():
    """A host that took over an address (its flows are flagged until it is learned) completes its
    handshakes: no finding."""
    s, clock, _ = make()
    det, events, enf = detector(s, clock)
    for i in range(40):
        s.on_sample(sample("forged", tcp_syn(CLIENT, SERVER, 2000 + i, 80), AMAC, forged=True))
        det.on_new((i, CLIENT, 80), CLIENT, SERVER, 6, 80, forged=True)
        det.on_answer((i, CLIENT, 80), True, 6)
    clock.t += 0.3
    det.evaluate()
    assert events == [] and enf.mac == []


def test_unattributed_forged_traffic_waits_for_a_sample_then_reports_without_blocking():
    s, clock, _ = make()
    det, events, enf = detector(s, clock, attribution_wait=1.0)
    for i in range(30):
        det.on_new((i, CLIENT, i), CLIENT, SERVER, 6, i + 1, forged=True)
    clock.t += 0.3
    det.evaluate()
    assert events == []
    clock.t += 1.0
    det.evaluate()
    (ev,) = events
    assert ev["action"] == "none" and "no sampled frame" in ev["detail"] and enf.ip == enf.mac == []


def test_learning_mode_reports_would_block_for_the_forger():
    s, clock, _ = make()
    det, events, enf = detector(s, clock, mode="learning")
    for i in range(30):
        s.on_sample(sample("forged", tcp_syn("10.77.0.99", SERVER, 3000 + i, i + 1), AMAC, forged=True))
        det.on_new((i, "x", i), "10.77.0.99", SERVER, 6, i + 1, forged=True)
    clock.t += 0.3
    det.evaluate()
    (ev,) = events
    assert ev["action"] == "would-block" and ev["finding"] == "scan" and ev["mac"] == AMAC
    assert enf.mac == [] and ev["owner_mac"] is None


# -- the manager: spoofed flow records ---------------------------------------------------------------

def test_manager_attributes_spoofed_flows_to_the_sender_and_never_to_the_forged_address():
    from vigil.manager.policy.baselines import Baseline
    from vigil.manager.policy.detections import Detector, Thresholds

    def rec(i, spoofed, mac):
        return {"src": CLIENT, "dst": SERVER, "sport": 1000 + i, "dport": 8080, "proto": "tcp", "new": True,
                "end": None, "conn_state": "S0", "replied": False, "assured": False, "orig_pkts": 1,
                "resp_pkts": 0, "orig_bytes": 60, "resp_bytes": 0, "in_port": "eth0", "spoofed": spoofed,
                "src_mac": mac}
    det, base = Detector("e1", Thresholds(flood_failed=100)), Baseline("e1")
    flows = [rec(i, True, AMAC) for i in range(500)] + [rec(i, True, None) for i in range(500, 700)]
    findings, _ = det.evaluate(flows, 1.0, base, learned=False)
    assert [(f.kind, f.scope, f.value) for f in findings] == [("flood", "mac", f"{AMAC}|eth0")]
    assert f"{AMAC} on eth0 forging {CLIENT}" in findings[0].reason
    assert det.spoofed_unattributed == 200
    # the same records, not spoofed, are the client's own flood
    findings, _ = Detector("e1", Thresholds(flood_failed=100)).evaluate(
        [rec(i, False, CMAC) for i in range(500)], 1.0, base, learned=False)
    assert [(f.scope, f.value) for f in findings] == [("ip", CLIENT)]


def test_mac_entries_are_part_of_the_rule_set_vocabulary():
    from vigil import ruleset
    assert ruleset.normalise_value("mac", "02:77:00:00:00:AA|eth0") == "02:77:00:00:00:aa|eth0"
    for bad in ("02:77:00:00:00:aa", "02:77:00:00:00|eth0", "02:77:00:00:00:aa|bad port", "x|eth0"):
        with pytest.raises(ValueError):
            ruleset.normalise_value("mac", bad)
    with pytest.raises(ruleset.PayloadError):
        ruleset.parse_entry({"id": "a", "action": "allow", "scope": "mac", "value": "02:77:00:00:00:aa|eth0",
                             "ttl": 5})
    from vigil.engine.enforce_plan import placement
    e = ruleset.parse_entry({"id": "d", "action": "drop", "scope": "mac", "value": "02:77:00:00:00:aa|eth0",
                             "ttl": 5})
    assert placement(e) == ("blockmac", '02:77:00:00:00:aa . "eth0"')


def test_policy_blocks_every_address_of_the_scanners_mac_together():
    s, clock, _ = make()
    v6 = "fd00:77::66"
    s.on_sample(sample("arp-reply", arp(2, AMAC, ATTACKER), AMAC, ethertype=0x0806))
    with s.lock:                          # its IPv6 address, learned from an established flow
        s._learn(v6, AMAC, "eth0", clock(), move=True)
        s._learn(CLIENT, CMAC, "eth0", clock(), move=True)
    for flag, expect in ((False, [ATTACKER]), (True, [ATTACKER, v6])):
        det, events, enf = detector(s, clock, block_all_addresses_of_mac=flag)
        for i in range(30):
            det.on_new((flag, i), ATTACKER, SERVER, 6, i + 1)
        clock.t += 0.3
        det.evaluate()
        (ev,) = events
        assert enf.ip == expect and ev["action"] == "block"
        if flag:
            assert ev["also_blocked"] == [v6] and ev["mac"] == AMAC and CLIENT not in enf.ip
