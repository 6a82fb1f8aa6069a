"""ctnetlink parsing (constructed messages, laid out as the kernel sends them) and flow records."""
from __future__ import annotations

import socket
import struct

import pytest

from vigil.engine import conntrack as ct
from vigil.engine import netlink as nl
from vigil.engine.flows import FlowTable, conn_state

pytestmark = pytest.mark.unit

NESTED = 0x8000


def nla(t: int, value: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), t | (NESTED if nested else 0)) + value
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def ct_message(*, src="10.77.0.2", dst="10.77.0.10", sport=40000, dport=80, proto=6, ct_id=7,
               status=0b110, mark=1, state=3, counters=((3, 180), (2, 120)), start_ns=0, stop_ns=0,
               msg_type=ct.IPCTNL_MSG_CT_NEW, flags=nl.NLM_F_MULTI, family=socket.AF_INET) -> bytes:
    v6 = ":" in src
    af = socket.AF_INET6 if v6 else socket.AF_INET
    ip = nla(ct.CTA_IP_V6_SRC if v6 else ct.CTA_IP_V4_SRC, socket.inet_pton(af, src)) + \
        nla(ct.CTA_IP_V6_DST if v6 else ct.CTA_IP_V4_DST, socket.inet_pton(af, dst))
    pr = nla(ct.CTA_PROTO_NUM, bytes([proto]))
    if proto in (1, 58):
        pr += nla(ct.CTA_PROTO_ICMP_TYPE, bytes([8])) + nla(ct.CTA_PROTO_ICMP_CODE, bytes([0]))
    else:
        pr += nla(ct.CTA_PROTO_SRC_PORT, struct.pack(">H", sport)) + nla(ct.CTA_PROTO_DST_PORT, struct.pack(">H", dport))
    tuple_orig = nla(ct.CTA_TUPLE_ORIG, nla(ct.CTA_TUPLE_IP, ip, True) + nla(ct.CTA_TUPLE_PROTO, pr, True), True)
    reply_ip = ip  # not read by the parser; present as in real messages
    tuple_reply = nla(ct.CTA_TUPLE_REPLY, nla(ct.CTA_TUPLE_IP, reply_ip, True), True)
    attrs = tuple_orig + tuple_reply
    (op, ob), (rp, rb) = counters
    attrs += nla(ct.CTA_COUNTERS_ORIG, nla(1, struct.pack(">Q", op)) + nla(2, struct.pack(">Q", ob)), True)
    attrs += nla(ct.CTA_COUNTERS_REPLY, nla(1, struct.pack(">Q", rp)) + nla(2, struct.pack(">Q", rb)), True)
    if start_ns or stop_ns:
        ts = nla(1, struct.pack(">Q", start_ns)) + (nla(2, struct.pack(">Q", stop_ns)) if stop_ns else b"")
        attrs += nla(ct.CTA_TIMESTAMP, ts, True)
    attrs += nla(ct.CTA_STATUS, struct.pack(">I", status)) + nla(ct.CTA_MARK, struct.pack(">I", mark))
    attrs += nla(ct.CTA_ID, struct.pack(">I", ct_id)) + nla(7, struct.pack(">I", 120))  # CTA_TIMEOUT
    if proto == 6:
        attrs += nla(ct.CTA_PROTOINFO, nla(ct.CTA_PROTOINFO_TCP, nla(ct.CTA_PROTOINFO_TCP_STATE, bytes([state]))
                                               + nla(2, bytes([7])), True), True)
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), (1 << 8) | msg_type, flags, 1, 0) + body


def done() -> bytes:
    return struct.pack("=IHHII", 20, nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, 0) + b"\0" * 4


def parse_all(buf: bytes):
    out = []
    for mtype, _flags, start, end in nl.iter_messages(buf, len(buf)):
        if mtype >> 8 == 1:
            out.append(ct.parse_ct(buf, start + 4, end))
    return out


def test_parse_ipv4_tcp_entry_every_field():
    buf = ct_message(start_ns=1_700_000_000_123_456_789) + done()
    (e,) = parse_all(buf)
    assert (e.family, e.proto, e.src, e.dst, e.sport, e.dport) == (4, 6, "10.77.0.2", "10.77.0.10", 40000, 80)
    assert (e.orig_pkts, e.orig_bytes, e.resp_pkts, e.resp_bytes) == (3, 180, 2, 120)
    assert e.ct_id == 7 and e.mark == 1 and e.tcp_state == 3 and e.status == 0b110
    assert e.start_ns == 1_700_000_000_123_456_789 and e.stop_ns == 0


def test_parse_ipv6_and_icmp_type_code_in_port_fields():
    (e6,) = parse_all(ct_message(src="fd00:77::2", dst="fd00:77::10", family=socket.AF_INET6))
    assert e6.family == 6 and e6.src == "fd00:77::2" and e6.dst == "fd00:77::10"
    (ei,) = parse_all(ct_message(proto=1))
    assert ei.proto == 1 and (ei.sport, ei.dport) == (8, 0) and ei.tcp_state is None


def test_events_new_update_destroy_are_told_apart():
    buf = (ct_message(ct_id=1, flags=nl.NLM_F_CREATE | 0x200)
           + ct_message(ct_id=1, status=0b110)
           + ct_message(ct_id=1, msg_type=ct.IPCTNL_MSG_CT_DELETE, start_ns=5_000_000_000, stop_ns=9_000_000_000))
    evs = ct.parse_events(memoryview(buf), len(buf))
    assert [ev for ev, _ in evs] == ["new", "update", "destroy"]
    assert evs[2][1].stop_ns == 9_000_000_000


def test_truncated_message_is_counted_not_raised():
    good = ct_message(ct_id=1)
    bad = bytearray(ct_message(ct_id=2))
    struct.pack_into("=HH", bad, 20, 4000, ct.CTA_TUPLE_ORIG | NESTED)  # attribute longer than message
    counted = []
    buf = bytes(bad) + good
    evs = ct.parse_events(memoryview(buf), len(buf), lambda name, k=1: counted.append(name))
    assert [e.ct_id for _, e in evs] == [1] and counted == ["ct_messages_malformed"]
    # a netlink header whose length runs past the buffer stops the batch, counted
    counted.clear()
    assert ct.parse_events(memoryview(good[:30]), 30, lambda name, k=1: counted.append(name)) == []
    assert counted == ["ct_messages_malformed"]


def test_dump_request_layout():
    req = ct.dump_request(5)
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert length == len(req) == 20 and mtype == (1 << 8) | 1 and flags == 0x301 and seq == 5


@pytest.mark.parametrize("proto,state,status,ended,want", [
    (6, 1, 0, False, "S0"),            # SYN, no answer (half-open)
    (6, 8, 0b010, True, "REJ"),        # SYN answered by RST
    (6, 2, 0b010, False, "SH"),        # SYN-ACK seen, no final ACK
    (6, 3, 0b110, False, "S1"),        # established
    (6, 7, 0b110, True, "SF"),         # FIN exchange, time_wait
    (6, 8, 0b110, True, "RST"),        # established then reset
    (17, None, 0, True, "S0"),
    (17, None, 0b010, False, "S1"),
    (17, None, 0b110, True, "SF"),
])
def test_conn_state(proto, state, status, ended, want):
    assert conn_state(proto, state, status, ended) == want


def _entry(ct_id=1, ob=100, rb=50, op=2, rp=1, stop_ns=0, start_ns=0, state=3, status=0b110):
    return ct.CtEntry(ct_id, 4, 6, "10.0.0.1", "10.0.0.2", 1000 + ct_id, 80, 2, status, state,
                      op, ob, rp, rb, 0, start_ns, stop_ns)


def test_destroy_event_gives_exact_final_record_between_polls():
    t = FlowTable({1: "eth0", 2: "eth1"})
    t.update([_entry(1, ob=100)], now_ms=1000)
    t.on_destroy(_entry(1, ob=400, state=7, stop_ns=1_500_000_000), now_ms=1600)
    # a flow that started and ended between two polls
    t.on_destroy(_entry(2, ob=77, rb=33, state=8, status=0b010, start_ns=1_200_000_000,
                        stop_ns=1_300_000_000), now_ms=1600)
    recs = {r["id"]: r for r in t.update([], now_ms=2000)}
    assert recs[1]["orig_bytes"] == 300 and recs[1]["end"] == 1500 and recs[1]["conn_state"] == "SF"
    assert recs[2]["new"] and recs[2]["orig_bytes"] == 77 and recs[2]["resp_bytes"] == 33
    assert recs[2]["start"] == 1200 and recs[2]["end"] == 1300 and recs[2]["conn_state"] == "REJ"
    assert recs[2]["in_port"] == "eth1"
    assert t.flows == {} and t.update([], now_ms=3000) == []


def test_dump_racing_a_destroy_does_not_double_count():
    t = FlowTable({})
    t.update([_entry(1, ob=100)], now_ms=1000)
    t.on_destroy(_entry(1, ob=150), now_ms=1500)
    # the dump still carried the entry (read before the DESTROY was processed)
    recs = t.update([_entry(1, ob=150)], now_ms=2000)
    assert sum(r["orig_bytes"] for r in recs) == 50 and len(recs) == 1


def test_cap_counts_evictions_and_evicted_flows_still_end_once():
    t = FlowTable({}, max_flows=2)
    recs = t.update([_entry(i) for i in range(5)], now_ms=1)
    assert len(recs) == 2 and t.evicted == 3
    t.on_destroy(_entry(4, ob=500), now_ms=5)
    (r,) = t.update([_entry(0), _entry(1)], now_ms=10)
    assert r["id"] == 4 and r["orig_bytes"] == 500


def test_syn_answered_by_rst_is_rej_although_conntrack_never_set_seen_reply():
    # conntrack kills a flow whose only reply is a RST before setting SEEN_REPLY; the reply
    # counter still holds the RST
    assert conn_state(6, 8, 0, True, resp_pkts=1) == "REJ"
    assert conn_state(6, 8, 0, True, resp_pkts=0) == "S0"


def test_known_ids_reuse_the_tuple_and_still_read_fresh_counters():
    buf = ct_message(ct_id=9, counters=((5, 500), (4, 400)), state=7)
    known = {9: ct.CtEntry(9, 4, 6, "10.1.1.1", "10.2.2.2", 1111, 443, 1, 0, 3, 1, 1, 1, 1)}
    _, _, start, end = next(nl.iter_messages(buf, len(buf)))
    e = ct.parse_ct(buf, start + 4, end, known)
    assert (e.src, e.dst, e.sport, e.dport) == ("10.1.1.1", "10.2.2.2", 1111, 443)  # from the known entry
    assert (e.orig_bytes, e.resp_bytes, e.tcp_state) == (500, 400, 7)                 # fresh from the message
    e2 = ct.parse_ct(buf, start + 4, end, {8: known[9]})
    assert (e2.src, e2.dport) == ("10.77.0.2", 80)


def test_one_netlink_framing_for_conntrack_nflog_and_the_nft_batch():
    from vigil.engine import nflog, nfnetlink
    assert nfnetlink.NetlinkError is nflog.NetlinkError is ct.NetlinkError is nl.NetlinkError
    assert issubclass(nl.NetlinkError, OSError)
    assert nl.attr(3, b"abcde") == struct.pack("=HH", 9, 3) + b"abcde" + b"\0" * 3   # padded to 4
    msg = nl.nfnl_message(1, 1, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 7, socket.AF_INET)
    assert msg == ct.dump_request(7, socket.AF_INET)
    assert struct.unpack_from("=IHHII", msg) == (20, (1 << 8) | 1, 0x301, 7, 0)
    # a config message of NFLOG: group in res_id, big-endian
    cfg = nflog.config_message(5, 1, nl.attr(1, b"\x01"))
    assert cfg[16:20] == bytes([socket.AF_UNSPEC, 0, 0, 5]) and struct.unpack_from("=H", cfg, 4)[0] == (4 << 8) | 1
    with pytest.raises(struct.error):
        list(nl.iter_messages(struct.pack("=IHHII", 400, 2, 0, 1, 0), 16))      # claims more than was read
    err = struct.pack("=IHHII", 36, nl.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    (mtype, _, start, _), = nl.iter_messages(err, len(err))
    assert mtype == nl.NLMSG_ERROR and nl.error_code(err, start) == 1
