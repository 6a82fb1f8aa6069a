"""NFLOG message parsing and the protocol checks, on packets crafted with scapy (annotated)."""
from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP

from vigil.counters import Counters
from vigil.engine import nflog
from vigil.engine.checks import ProtocolChecks, run_checks, tcp_flag_anomaly

pytestmark = pytest.mark.unit


def nla(t: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), t) + value
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def nflog_message(pkt: bytes, prefix: str, ethertype: int = 0x0800, family: int = nflog.AF_BRIDGE,
                  mark: int = 1, physin: int = 3, vlan: int | None = None) -> bytes:
    attrs = nla(nflog.NFULA_PACKET_HDR, struct.pack(">HBB", ethertype, 0, 0))
    attrs += nla(nflog.NFULA_MARK, struct.pack(">I", mark))
    attrs += nla(nflog.NFULA_TIMESTAMP, struct.pack(">QQ", 1_700_000_000, 250_000))
    attrs += nla(nflog.NFULA_IFINDEX_INDEV, struct.pack(">I", 2))
    attrs += nla(nflog.NFULA_IFINDEX_PHYSINDEV, struct.pack(">I", physin))
    attrs += nla(nflog.NFULA_HWADDR, struct.pack(">HH", 6, 0) + bytes.fromhex("027700000066") + b"\0\0")
    if vlan is not None:
        attrs += nla(nflog.NFULA_VLAN | 0x8000, nla(1, struct.pack(">H", 0x8100)) + nla(2, struct.pack(">H", vlan)))
    attrs += nla(nflog.NFULA_PREFIX, prefix.encode() + b"\0")
    attrs += nla(nflog.NFULA_PAYLOAD, pkt)
    body = struct.pack("=BBH", family, 0, socket.htons(7)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (4 << 8) | 0, 0, 0, 0) + body


def sample(pkt, prefix="tcp-xmas", **kw) -> nflog.Sample:
    raw = nflog_message(bytes(pkt), prefix, **kw)
    (s,) = nflog.parse_samples(memoryview(raw), len(raw))
    return s


def test_parse_packet_attributes():
    pkt = bytes(IP(src="10.77.0.66", dst="10.77.0.10") / TCP(flags="FPU", dport=22))
    s = sample(pkt, vlan=0x2000 | 42)
    assert s.prefix == "tcp-xmas" and s.family == 7 and s.ethertype == 0x0800
    assert s.payload == pkt and s.mark == 1 and s.physindev == 3 and s.indev == 2
    assert s.hwaddr == bytes.fromhex("027700000066") and s.vlan == 42 and s.ts == 1_700_000_000.25


def test_config_message_layout():
    m = nflog.config_message(7, 1, nflog._attr(nflog.NFULA_CFG_CMD, bytes([nflog.NFULNL_CFG_CMD_BIND])))
    length, mtype, flags, _, _ = struct.unpack_from("=IHHII", m)
    assert length == len(m) and mtype == (4 << 8) | 1 and flags & 0x1
    assert struct.unpack_from(">H", m, 18)[0] == 7  # res_id = group, network order


def test_malformed_nflog_message_is_counted():
    raw = bytearray(nflog_message(b"\x45" + b"\0" * 19, "x"))
    struct.pack_into("=HH", raw, 20, 9000, 1)  # an attribute running past the message
    counted = []
    assert nflog.parse_samples(memoryview(raw), len(raw), lambda n, k=1: counted.append(n)) == []
    assert counted == ["nflog_messages_malformed"]


@pytest.mark.parametrize("flags,want", [
    ("", "NULL"), ("FPU", "XMAS"), ("SF", "SYN+FIN"), ("SR", "SYN+RST"),
    ("S", None), ("SA", None), ("A", None), ("FA", None), ("R", None), ("PA", None),
])
def test_tcp_flag_combinations(flags, want):
    assert tcp_flag_anomaly(int(TCP(flags=flags).flags)) == want


def _checks(**kw):
    return ProtocolChecks(copy_range=2048, port_names={1: "eth0", 2: "eth1"}, **kw)


def test_xmas_and_null_produce_events_and_repeats_fold():
    c = _checks()
    evs = run_checks(c, sample(IP(src="10.77.0.66", dst="10.77.0.10") / TCP(flags="FPU", dport=22)))
    assert [(e["type"], e["detail"], e["src"], e["dport"], e["in_port"]) for e in evs] == \
        [("tcp-flags", "XMAS", "10.77.0.66", 22, "eth0")]
    # 50 more probes of the same kind within the window fold into the next event's count
    for port in range(50):
        assert run_checks(c, sample(IP(src="10.77.0.66", dst="10.77.0.10") / TCP(flags="FPU", dport=port))) == []
    evs = run_checks(c, sample(IP(src="10.77.0.66", dst="10.77.0.10") / TCP(flags="", dport=80), "tcp-null"))
    assert evs[0]["detail"] == "NULL"


def test_arp_reply_rebinding_known_ip_is_reported():
    c = _checks()
    real = ARP(op=2, psrc="10.77.0.10", hwsrc="02:77:00:00:00:10", pdst="10.77.0.2", hwdst="02:77:00:00:00:02")
    spoof = ARP(op=2, psrc="10.77.0.10", hwsrc="02:77:00:00:00:66", pdst="10.77.0.2", hwdst="02:77:00:00:00:02")
    assert run_checks(c, sample(real, "arp-reply", ethertype=0x0806)) == []       # learns the binding
    assert run_checks(c, sample(real, "arp-reply", ethertype=0x0806)) == []       # same binding: fine
    (ev,) = run_checks(c, sample(spoof, "arp-reply", ethertype=0x0806))
    assert ev["type"] == "arp-rebind" and ev["ip"] == "10.77.0.10"
    assert ev["known_mac"] == "02:77:00:00:00:10" and ev["new_mac"] == "02:77:00:00:00:66"


def test_arp_binding_confirmed_by_the_genuine_host_keeps_catching_a_spoofer_and_ages_otherwise():
    now = [1000.0]
    counters = Counters()
    c = _checks(clock=lambda: now[0], arp_binding_ttl=3600, repeat_window=0.0, counters=counters)
    real = ARP(op=2, psrc="10.77.0.10", hwsrc="02:77:00:00:00:10", pdst="10.77.0.2", hwdst="02:77:00:00:00:02")
    spoof = ARP(op=2, psrc="10.77.0.10", hwsrc="02:77:00:00:00:66", pdst="10.77.0.2", hwdst="02:77:00:00:00:02")
    arp = lambda pkt: run_checks(c, sample(pkt, "arp-reply", ethertype=0x0806))  # noqa: E731
    assert arp(real) == []
    for _ in range(3):                    # the genuine host answers every 50 min: the binding holds
        now[0] += 3000
        assert arp(real) == []
        assert [e["type"] for e in arp(spoof)] == ["arp-rebind"]
    # the genuine host goes quiet for more than the TTL (replaced NIC): the new MAC takes over quietly
    now[0] += 3601
    assert arp(spoof) == [] and counters.get("arp_bindings_replaced") == 1
    assert arp(spoof) == []
    # and now the old MAC answering for the address is the odd one out
    assert [e["new_mac"] for e in arp(real)] == ["02:77:00:00:00:10"]


def test_ip_header_anomalies():
    c = _checks()
    bad_ihl = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP()))
    bad_ihl[0] = 0x44  # header length 16
    assert run_checks(c, sample(bytes(bad_ihl), "ip-options"))[0]["detail"] == "header length 16 < 20"
    long_total = bytearray(bytes(IP(src="10.0.0.3", dst="10.0.0.2") / TCP()))
    struct.pack_into(">H", long_total, 2, 1400)  # says 1400 bytes, carries 40
    assert "total length 1400 > packet length 40" in run_checks(c, sample(bytes(long_total), "new-flow"))[0]["detail"]
    bad_doff = bytearray(bytes(IP(src="10.0.0.4", dst="10.0.0.2") / TCP(flags="S")))
    bad_doff[32] = 0x30  # TCP data offset 12 bytes
    assert "TCP data offset 12" in run_checks(c, sample(bytes(bad_doff), "new-flow"))[0]["detail"]
    # a normal SYN raises nothing
    assert run_checks(c, sample(IP(src="10.0.0.5", dst="10.0.0.2") / TCP(flags="S"), "new-flow")) == []


def test_overlapping_fragments_are_reported():
    c = _checks()
    first = IP(src="10.77.0.66", dst="10.77.0.10", id=4242, flags="MF", frag=0, proto=17) / (b"A" * 64)
    second = IP(src="10.77.0.66", dst="10.77.0.10", id=4242, frag=4, proto=17) / (b"B" * 64)  # offset 32 < 64
    assert run_checks(c, sample(first, "ip-frag")) == []
    (ev,) = run_checks(c, sample(second, "ip-frag"))
    assert ev["type"] == "ip-fragment-overlap" and ev["ip_id"] == 4242
    # fragments that only touch do not overlap
    c2 = _checks()
    assert run_checks(c2, sample(first, "ip-frag")) == []
    assert run_checks(c2, sample(IP(src="10.77.0.66", dst="10.77.0.10", id=4242, frag=8, proto=17) / (b"C" * 8),
                                 "ip-frag")) == []


def _offer(server: str) -> bytes:
    return bytes(IP(src=server, dst="255.255.255.255") / UDP(sport=67, dport=68)
                 / BOOTP(op=2, yiaddr="10.77.0.50", chaddr=b"\x02\x77\0\0\0\x02")
                 / DHCP(options=[("message-type", "offer"), ("server_id", server), "end"]))


def test_dhcp_offer_from_unknown_server():
    c = _checks(dhcp_servers=["10.77.0.1"])
    assert run_checks(c, sample(_offer("10.77.0.1"), "dhcp-server")) == []
    (ev,) = run_checks(c, sample(_offer("10.77.0.66"), "dhcp-server"))
    assert ev["type"] == "dhcp-unknown-server" and ev["server"] == "10.77.0.66"


def test_dhcp_servers_seen_while_learning_are_learned():
    mode = ["learning"]
    c = _checks(mode=lambda: mode[0])
    assert run_checks(c, sample(_offer("10.77.0.1"), "dhcp-server")) == []
    mode[0] = "enforcing"
    assert run_checks(c, sample(_offer("10.77.0.1"), "dhcp-server")) == []
    assert run_checks(c, sample(_offer("10.77.0.66"), "dhcp-server"))[0]["server"] == "10.77.0.66"


def test_garbage_samples_never_raise():
    c = _checks()
    for junk in (b"", b"\x45", b"\x45" + b"\xff" * 30, b"\x60" * 10, b"\x00\x01\x08\x00\x06\x04\x00\x02"):
        for et in (0x0800, 0x0806, 0x86DD, 0):
            run_checks(c, nflog.Sample("x", 7, et, junk))
