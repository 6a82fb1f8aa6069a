"""engine/flowset.py: flow records from the bridge flow sets (no conntrack) -- pairing the two
directions, choosing the originator, deltas, ends by expiry, a tuple's return, bounds, garbage
keys, and the set-element decoder on messages laid out as the kernel sends them."""
from __future__ import annotations

import socket
import struct
import time

import pytest

from vigil.contracts.engine import FLOW_FIELDS, FlowBatch
from vigil.engine import flowset as fs
from vigil.engine.conntrack import CtEntry
from vigil.engine.flows import FlowTable
from vigil.engine.flowset import FlowSetTable, flow_key, reverse_key

pytestmark = pytest.mark.unit

T = 120                       # the sets' timeout, s
NOW = 1_700_000_000_000


def k4(src, dst, proto, sport, dport):
    return flow_key(4, src, dst, proto, sport, dport)


C, S = "10.0.0.2", "10.0.0.10"
FWD = k4(C, S, 6, 40000, 443)            # client -> server
REV = k4(S, C, 6, 443, 40000)


def el(key, pk, nb, exp=T * 1000, fam=4):
    return (fam, key, pk, nb, exp)


def one(records):
    assert len(records) == 1, records
    return records[0]


# -- keys ---------------------------------------------------------------------------------------------

def test_key_layout_v4_and_v6_padded_fields_network_order():
    assert FWD == (socket.inet_aton(C) + socket.inet_aton(S) + bytes([6, 0, 0, 0])
                   + struct.pack(">HH", 40000, 0) + struct.pack(">HH", 443, 0))
    k6 = flow_key(6, "fd00::1", "fd00::2", 17, 5353, 53)
    assert len(k6) == 44 and k6[32] == 17 and k6[36:38] == struct.pack(">H", 5353) and k6[40:42] == b"\x00\x35"
    assert reverse_key(FWD) == REV and reverse_key(REV) == FWD
    assert reverse_key(k6) == flow_key(6, "fd00::2", "fd00::1", 17, 53, 5353)


# -- pairing and the originator -----------------------------------------------------------------------

def test_both_directions_are_one_flow_and_the_lower_port_side_is_the_server_without_a_hint():
    t = FlowSetTable({}, T)
    # the reply direction listed first in the dump: the server port still decides
    r = one(t.update([el(REV, 4, 4000), el(FWD, 5, 300)], NOW))
    assert (r["src"], r["sport"], r["dst"], r["dport"]) == (C, 40000, S, 443)
    assert (r["orig_pkts"], r["orig_bytes"], r["resp_pkts"], r["resp_bytes"]) == (5, 300, 4, 4000)
    assert r["new"] and r["replied"] and r["assured"] and r["conn_state"] == "S1" and r["proto"] == "tcp"
    assert len(t.flows) == 1


def test_equal_ports_the_side_with_more_packets_is_the_originator():
    a, b = k4("10.0.0.1", "10.0.0.2", 17, 5000, 5000), k4("10.0.0.2", "10.0.0.1", 17, 5000, 5000)
    r = one(FlowSetTable({}, T).update([el(a, 1, 100), el(b, 7, 700)], NOW))
    assert (r["src"], r["orig_pkts_total"], r["resp_pkts_total"]) == ("10.0.0.2", 7, 1)


def test_a_hint_overrides_the_port_rule_and_gives_port_forgery_and_start():
    t = FlowSetTable({1: "eth0"}, T)
    t.mac_for = lambda src, forged: f"mac-of-{src}-{forged}"
    # a client on port 80 talking to a high port: the port rule alone would pick the wrong side
    hi, lo = k4(C, S, 6, 80, 50000), k4(S, C, 6, 50000, 80)
    assert t.note_first(4, C, S, "tcp", 80, 50000, forged=True, in_port=1, ts_ms=NOW - 5000)
    r = one(t.update([el(lo, 3, 300), el(hi, 2, 120)], NOW))
    assert (r["src"], r["sport"], r["dport"]) == (C, 80, 50000)
    assert r["in_port"] == "eth0" and r["spoofed"] is True and r["src_mac"] == f"mac-of-{C}-True"
    assert r["start"] == NOW - 5000 and r["duration"] == 5.0
    assert t._hints == {}                                   # consumed


def test_the_direction_seen_in_an_earlier_dump_is_the_originator_whatever_the_ports():
    t = FlowSetTable({}, T)
    one(t.update([el(REV, 1, 60)], NOW))                    # the server spoke first (e.g. a callback)
    r = one(t.update([el(REV, 2, 120), el(FWD, 1, 60)], NOW + 10_000))
    assert (r["src"], r["sport"], r["orig_pkts"], r["resp_pkts"], r["new"]) == (S, 443, 1, 1, False)
    assert len(t.flows) == 1


def test_a_hint_for_the_reverse_of_a_lone_element_makes_the_unseen_side_the_originator():
    t = FlowSetTable({}, T)
    t.note_first(4, C, S, 6, 40000, 443)
    r = one(t.update([el(REV, 1, 60)], NOW))
    assert (r["src"], r["orig_pkts_total"], r["resp_pkts_total"], r["conn_state"]) == (C, 0, 1, "OTH")


def test_hints_are_bounded_and_expire_and_bad_ones_are_refused():
    t = FlowSetTable({}, T, max_hints=3)
    for i in range(5):
        assert t.note_first(4, C, S, 6, 1000 + i, 80)
    assert len(t._hints) == 3 and t.hints_dropped == 2
    for bad in ((5, C, S, 6, 1, 2), (4, "nope", S, 6, 1, 2), (4, C, S, 6, 70000, 2), (4, C, S, "bogus", 1, 2),
                (4, C, S, 300, 1, 2), (4, C, S, 6, "1", 2), (4, "fd00::1", S, 6, 1, 2), (4, C, S, 6, 80.5, 2),
                (4, None, S, 6, 1, 2), (4, C, S, None, 1, 2)):
        assert not t.note_first(*bad)
    assert not t.note_first(4, C, S, 6, 1, 2, in_port=["eth0"]) and not t.note_first(4, C, S, 6, 1, 2, ts_ms="now")
    assert t.hints_invalid == 12
    for i in range(FlowSetTable.HINT_DUMPS):
        t.update([], NOW + i)
    assert t._hints == {} and t.hints_expired == 3


# -- deltas, states, ends -----------------------------------------------------------------------------

def test_records_carry_deltas_and_totals_and_only_when_something_moved():
    t = FlowSetTable({}, T)
    t.update([el(FWD, 3, 180), el(REV, 2, 120)], NOW)
    assert t.update([el(FWD, 3, 180, 110_000), el(REV, 2, 120, 110_000)], NOW + 10_000) == []
    r = one(t.update([el(FWD, 10, 800), el(REV, 9, 9000)], NOW + 20_000))
    assert (r["orig_pkts"], r["orig_bytes"], r["resp_pkts"], r["resp_bytes"]) == (7, 620, 7, 8880)
    assert (r["orig_pkts_total"], r["resp_bytes_total"], r["new"], r["end"]) == (10, 9000, False, None)


def test_a_flow_ends_when_both_elements_expired_with_the_last_packets_time():
    t = FlowSetTable({}, T)
    t.update([el(FWD, 3, 180, 119_000), el(REV, 2, 120, 119_500)], NOW)
    t.update([el(FWD, 5, 300, 100_000), el(REV, 4, 240, 115_000)], NOW + 10_000)
    assert t.update([el(REV, 4, 240, 105_000)], NOW + 20_000) == []      # orig alone gone: still alive
    r = one(t.update([], NOW + 20_000 + 105_000))
    # freshest element: REV, last present at NOW+20 s with 105 s of its 120 left -> last packet NOW+5 s
    assert r["end"] == NOW + 5_000 and r["start"] == NOW - 1_000
    assert r["conn_state"] == "SF" and (r["orig_pkts"], r["resp_pkts"]) == (0, 0)
    assert (r["orig_pkts_total"], r["resp_pkts_total"]) == (5, 4)
    assert t.flows == {} and t._by_resp == {} and t.ended_by_absence == 1
    assert t.ended_by_event == 0 and t.records_dropped == 0


def test_an_element_absent_before_its_expiry_was_missed_by_the_dump_not_ended():
    t = FlowSetTable({}, T)
    t.update([el(FWD, 3, 180), el(REV, 2, 120)], NOW)
    assert t.update([], NOW + 10_000) == []
    assert t.elements_missed == 2 and len(t.flows) == 1
    r = one(t.update([el(FWD, 4, 240), el(REV, 2, 120)], NOW + 20_000))
    assert (r["orig_pkts"], r["new"]) == (1, False)


@pytest.mark.parametrize("proto, opk, rpk, ended, state, assured", [
    (6, 1, 0, False, "S0", False),
    (6, 1, 1, False, "REJ", False),      # SYN answered by RST, as counters show it
    (6, 1, 1, True, "REJ", False),
    (6, 2, 1, False, "SH", False),      # handshake under way, or a SYN-ACK the client reset
    (6, 2, 1, True, "REJ", False),       # ... which it was, once ended (a forged SYN's victim)
    (6, 5, 4, False, "S1", True),
    (6, 5, 4, True, "SF", True),
    (17, 1, 0, True, "S0", False),
    (17, 1, 1, False, "S1", True),
    (17, 3, 1, True, "SF", True),
])
def test_conn_state_and_assured_from_counters(proto, opk, rpk, ended, state, assured):
    t = FlowSetTable({}, T)
    f, r = k4(C, S, proto, 40000, 53), k4(S, C, proto, 53, 40000)
    rec = one(t.update([el(f, opk, 60 * opk)] + ([el(r, rpk, 60 * rpk)] if rpk else []), NOW))
    if ended:
        rec = one(t.update([], NOW + T * 1000))
    assert (rec["conn_state"], rec["assured"], rec["replied"], rec["end"] is not None) == (state, assured, rpk > 0,
                                                                                           ended)


# -- a tuple coming back ------------------------------------------------------------------------------

def test_a_tuple_back_with_lower_counters_ends_the_old_flow_and_starts_a_new_one():
    t = FlowSetTable({}, T)
    first = one(t.update([el(FWD, 9, 900, 1_000), el(REV, 8, 800, 1_000)], NOW))
    recs = t.update([el(FWD, 1, 60), el(REV, 1, 40)], NOW + 10_000)    # both expired and came back
    assert len(recs) == 2
    old, new = sorted(recs, key=lambda r: r["end"] is None)
    assert old["id"] == first["id"] and old["end"] == old["start"] == NOW - 119_000
    assert (old["orig_pkts_total"], old["resp_pkts_total"], old["orig_pkts"]) == (9, 8, 0)
    assert new["id"] != first["id"] and new["new"] and (new["orig_pkts_total"], new["resp_pkts_total"]) == (1, 1)
    assert (new["src"], new["dport"]) == (C, 443) and t.restarts == 2 and len(t.flows) == 1


def test_one_direction_back_while_the_other_is_alive_carries_the_totals_on():
    t = FlowSetTable({}, T)
    t.update([el(FWD, 9, 900), el(REV, 8, 800, 5_000)], NOW)
    t.update([el(FWD, 10, 960)], NOW + 10_000)               # the reply element expired
    r = one(t.update([el(FWD, 11, 1020), el(REV, 2, 100)], NOW + 20_000))   # and a new one began
    assert (r["new"], r["resp_pkts"], r["resp_pkts_total"], r["resp_bytes_total"]) == (False, 2, 10, 900)
    assert t.restarts == 1 and len(t.flows) == 1


def test_a_lone_element_gone_then_back_is_a_new_flow_with_its_own_id():
    t = FlowSetTable({}, T)
    a = one(t.update([el(FWD, 1, 60, 2_000)], NOW))
    end = one(t.update([], NOW + 10_000))
    b = one(t.update([el(FWD, 1, 60)], NOW + 20_000))
    assert end["id"] == a["id"] and end["end"] == a["start"] == NOW - 118_000
    assert b["new"] and b["id"] != a["id"] and b["start"] == NOW + 20_000 and t.ended_by_absence == 1


# -- bounds and garbage -------------------------------------------------------------------------------

def test_more_flows_than_the_cap_are_counted_not_followed():
    t = FlowSetTable({}, T, max_flows=3)
    dump = [el(k4(C, S, 17, 1000 + i, 53), 1, 60) for i in range(5)]
    assert len(t.update(dump, NOW)) == 3 and len(t.flows) == 3 and t.evicted == 2
    t.update(dump, NOW + 10_000)
    assert len(t.flows) == 3 and t.evicted == 4


def test_garbage_keys_are_counted_and_forged_ones_stay_bounded():
    t = FlowSetTable({}, T, max_flows=100)
    garbage = [el(b"", 1, 1), el(b"x" * 19, 1, 1), el(FWD + b"\0", 1, 1), el(FWD, 1, 1, fam=6),
               el(b"y" * 44, 1, 1, fam=4), el(b"z" * 20, 1, 1, fam=9)]
    assert t.update(garbage, NOW) == [] and t.keys_malformed == 6 and t.flows == {}
    assert t.stats()["flowset_keys_malformed_table"] == 6
    # an adversary's keys: zero ports, any protocol, ICMP whose "ports" are type/code and checksum
    forged = [el(bytes([10, 0, i >> 8 & 255, i & 255]) + bytes(4) + bytes([i % 256, 0, 0, 0]) + bytes(8), 1, 40)
              for i in range(1000)]
    recs = t.update(forged, NOW)
    assert len(t.flows) == 100 and len(recs) == 100 and t.evicted == 900 == t.stats()["flowset_flows_evicted"]
    icmp = one(FlowSetTable({}, T).update([el(k4(C, S, 1, 0x0800, 0xBEEF), 1, 84)], NOW))
    assert (icmp["proto"], icmp["sport"], icmp["dport"]) == ("icmp", 8, 0)
    one(FlowSetTable({}, T).update([el(k4(C, S, 0, 0, 0), 1, 40), el(k4(S, C, 0, 0, 0), 1, 40)], NOW))


# -- the record contract ------------------------------------------------------------------------------

_TYPES = {"int": int, "str": str, "bool": bool, "float": float}


def test_records_have_flowtables_keys_and_types_and_travel_in_a_flow_batch():
    ct_rec = FlowTable({}).update([CtEntry(1, 4, 6, C, S, 40000, 443, 0, 0b110, 3, 3, 180, 2, 120)], NOW)[0]
    t = FlowSetTable({}, T)
    t.mac_for = lambda src, forged: "02:00:00:00:00:01"
    t.update([el(FWD, 3, 180), el(REV, 2, 120)], NOW)
    k6 = flow_key(6, "fd00::1", "fd00::2", 58, 0x8000, 0x1234)
    recs = t.update([el(FWD, 5, 300), el(REV, 2, 120), el(k6, 1, 104, fam=6)], NOW + 10_000)
    recs += t.update([], NOW + 200_000)
    assert len(recs) == 4
    for r in recs:
        assert list(r) == list(ct_rec) and set(r) == set(FLOW_FIELDS)
        for name, desc in FLOW_FIELDS.items():
            first = desc.split()[0].rstrip(":")
            kinds = tuple(_TYPES[w] for w in first.split("|") if w in _TYPES)
            none_ok = "None" in desc
            assert isinstance(r[name], kinds) or (none_ok and r[name] is None), (name, r[name])
    batch = FlowBatch(engine="e1", seq=1, interval={"start": NOW, "end": NOW + 10_000}, source="bridge-flowset",
                      flows_tracked=len(t.flows), flows=recs)
    back = FlowBatch.decode(batch.encode("e1", NOW))
    assert back.flows == recs and back.invalid == 0


# -- cost ---------------------------------------------------------------------------------------------

def test_update_cost_is_linear_in_the_dump():
    def run(n):
        t = FlowSetTable({}, T)
        d1 = [el(k4(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", S, 6, 1024 + i % 60000, 443), i + 1, 60 * i)
              for i in range(n)]
        t.update(d1, NOW)
        d2 = [(f, k, p + 1, b + 60, e) for f, k, p, b, e in d1]
        t0 = time.perf_counter()
        t.update(d2, NOW + 10_000)
        return time.perf_counter() - t0
    small, big = min(run(2000) for _ in range(3)), min(run(20000) for _ in range(3))
    assert big < small * 10 * 3, (small, big)       # linear with slack for a busy machine


# -- the decoder --------------------------------------------------------------------------------------

NESTED = 0x8000


def nla(t: int, value: bytes, nested: bool = False) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), t | (NESTED if nested else 0)) + value
    return raw + b"\0" * (-len(raw) % 4)


def elem_nest(key: bytes, pk: int, nb: int, exp: int, expressions: bool) -> bytes:
    counter = nla(fs.EXPR_NAME, b"counter\0") + nla(fs.EXPR_DATA, nla(fs.COUNTER_BYTES, struct.pack(">Q", nb))
                                                     + nla(fs.COUNTER_PACKETS, struct.pack(">Q", pk)), True)
    expr = (nla(fs.ELEM_EXPRESSIONS, nla(1, counter, True), True) if expressions
            else nla(fs.ELEM_EXPR, counter, True))
    body = (nla(fs.ELEM_KEY, nla(fs.DATA_VALUE, key), True) + nla(4, struct.pack(">Q", T * 1000))
            + nla(fs.ELEM_EXPIRATION, struct.pack(">Q", exp)) + expr)
    return nla(fs.LIST_ELEM, body, True)


def setelem_message(elems, seq=1, expressions=False) -> bytes:
    attrs = (nla(fs.LIST_TABLE, b"vigil\0") + nla(fs.LIST_SET, b"flows4\0")
             + nla(fs.LIST_ELEMENTS, b"".join(elem_nest(*e, expressions) for e in elems), True))
    body = struct.pack("=BBH", fs.NFPROTO_BRIDGE, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), fs.NEWSETELEM, 2, seq, 0) + body


def done_message(seq=1) -> bytes:
    return struct.pack("=IHHII", 20, 3, 2, seq, 0) + b"\0" * 4


def error_message(code: int, seq=1) -> bytes:
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", -code) + b"\0" * 16


class FakeSock:
    """Replies with prepared receive buffers, as the kernel would to one dump request each."""

    def __init__(self, replies):
        self.replies, self.sent = list(replies), []

    def send(self, data):
        self.sent.append(data)

    def recv_into(self, buf):
        data = self.replies.pop(0)
        buf[:len(data)] = data
        return len(data)

    def settimeout(self, _t):
        pass

    def close(self):
        pass


class Count:
    def __init__(self):
        self.c = {}

    def inc(self, name, n=1):
        self.c[name] = self.c.get(name, 0) + n


def reader_with(replies, sets=fs.SETS[:2]):
    counters = Count()
    r = fs.FlowSetReader(counters=counters, sets=sets)
    r._sock = FakeSock(replies)
    return r, counters


def test_decoder_reads_keys_counters_and_expiry_in_both_expression_layouts():
    e1 = (FWD, 2**40 + 7, 2**50 + 3, 119_000)
    e2 = (REV, 1, 1, 5)
    r, counters = reader_with([setelem_message([e1]) + setelem_message([e2], expressions=True) + done_message(),
                               done_message(2)])
    assert r.dump() == [(4, FWD, 2**40 + 7, 2**50 + 3, 119_000), (4, REV, 1, 1, 5)]
    assert counters.c == {}
    req = r._sock.sent[0]
    assert struct.unpack_from("=HH", req, 4) == ((10 << 8) | 13, 0x301) and req[16] == fs.NFPROTO_BRIDGE


def test_a_garbled_message_is_dropped_whole_and_counted_the_rest_kept():
    good = setelem_message([(FWD, 3, 180, 1000)])
    bad = bytearray(setelem_message([(REV, 1, 1, 1), (FWD, 9, 9, 9)]))
    struct.pack_into("=H", bad, len(bad) - 40, 0xFFF0)            # an attribute length past its nest
    r, counters = reader_with([bytes(bad) + good + done_message(), done_message(2)])
    assert r.dump() == [(4, FWD, 3, 180, 1000)]
    assert counters.c == {"flowset_messages_malformed": 1}


def test_a_missing_set_yields_nothing_and_is_counted_once_per_set():
    k6 = flow_key(6, "fd00::1", "fd00::2", 6, 1, 2)
    msg6 = bytearray(setelem_message([(k6, 1, 2, 3)], seq=2))
    r, counters = reader_with([error_message(2), bytes(msg6) + done_message(2)])
    assert r.dump() == [(6, k6, 1, 2, 3)]
    assert counters.c == {"flowset_missing": 1}


def test_broken_framing_and_socket_errors_are_counted_never_raised():
    class Broken(FakeSock):
        def recv_into(self, buf):
            raise OSError(105, "No buffer space available")
    truncated = setelem_message([(FWD, 1, 1, 1)])[:-8]           # the message's length runs past the read
    r, counters = reader_with([truncated, done_message(1), done_message(2)])
    assert r.dump() == []
    assert counters.c == {"flowset_messages_malformed": 1}
    r = fs.FlowSetReader(counters=counters, sets=(("flows4", 4),))
    r._sock = Broken([])
    assert r.dump() == [] and r._sock is None                   # closed: reopened at the next dump
    assert counters.c == {"flowset_messages_malformed": 1, "flowset_dump_errors": 1}


def test_elements_whose_key_does_not_fit_the_family_are_left_out_and_counted():
    k6 = flow_key(6, "fd00::1", "fd00::2", 6, 1, 2)
    msg = setelem_message([(FWD[:19], 1, 1, 1), (k6, 2, 2, 2), (FWD, 3, 3, 3), (b"", 4, 4, 4)])
    r, counters = reader_with([msg + done_message(), done_message(2)])
    assert r.dump() == [(4, FWD, 3, 3, 3)]
    assert counters.c == {"flowset_keys_malformed": 3}


def test_a_full_set_is_counted_and_each_sets_size_kept():
    counters = Count()
    r = fs.FlowSetReader(counters=counters, set_size=2, sets=fs.SETS[:2])
    r._sock = FakeSock([setelem_message([(FWD, 1, 1, 1), (REV, 1, 1, 1)]) + done_message(), error_message(2)])
    assert len(r.dump()) == 2
    assert r.sizes == {"flows4": 2, "flows6": 0} and counters.c == {"flowset_full": 1, "flowset_missing": 1}


def test_hints_from_another_thread_while_dumps_are_applied():
    import threading
    t = FlowSetTable({}, T, max_hints=500)
    stop = threading.Event()
    errors = []

    def noter():
        i = 0
        try:
            while not stop.is_set():
                t.note_first(4, C, S, 17, 1024 + i % 2000, 53)
                i += 1
        except Exception as exc:          # noqa: BLE001 - any failure of the thread fails the test
            errors.append(exc)

    th = threading.Thread(target=noter)
    th.start()
    try:
        for n in range(30):
            dump = [el(k4(C, S, 17, 1024 + i, 53), n + 1, 100 * (n + 1), 1_000) for i in range(0, 2000, 7)]
            t.update(dump, NOW + n * 10_000)
        deadline = time.monotonic() + 10
        while t.hints_dropped == 0 and time.monotonic() < deadline:     # the noter has filled the table
            time.sleep(0.01)
    finally:
        stop.set()
        th.join()
    assert errors == [] and len(t._hints) <= 500 and t.hints_dropped > 0


# -- hints from the sampled packet itself ---------------------------------------------------------------

def ipv4(src, dst, proto, l4: bytes, frag: int = 0) -> bytes:
    return (struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0) + socket.inet_aton(src)
            + socket.inet_aton(dst) + l4)


def ipv6(src, dst, nxt, rest: bytes) -> bytes:
    return (struct.pack(">IHBB", 6 << 28, len(rest), nxt, 64) + socket.inet_pton(socket.AF_INET6, src)
            + socket.inet_pton(socket.AF_INET6, dst) + rest)


def test_packet_key_is_the_key_the_update_rule_makes():
    udp = struct.pack(">HHHH", 40000, 53, 8, 0)
    assert fs.packet_key(ipv4(C, S, 17, udp)) == (4, k4(C, S, 17, 40000, 53))
    tcp = struct.pack(">HHIIHHHH", 40000, 443, 1, 0, 0x5002, 1024, 0, 0)
    assert fs.packet_key(ipv4(C, S, 6, tcp)) == (4, FWD)
    echo = struct.pack(">BBHHH", 8, 0, 0xBEEF, 1, 1)                   # ICMP: its own sets, no ports
    assert fs.packet_key(ipv4(C, S, 1, echo)) == (4, k4(C, S, 1, 0, 0))
    assert fs.packet_key(ipv4(C, S, 1, echo, frag=0x2000 | 20)) == (4, k4(C, S, 1, 0, 0))  # a fragment too
    hop = bytes([17, 0]) + bytes(6)                                    # hop-by-hop options, then UDP
    assert fs.packet_key(ipv6("fd00::1", "fd00::2", 0, hop + udp)) == (6, flow_key(6, "fd00::1", "fd00::2", 17,
                                                                                   40000, 53))
    first_frag = bytes([17, 0, 0, 1]) + bytes(4)                       # fragment header, offset 0, more
    assert fs.packet_key(ipv6("fd00::1", "fd00::2", 44, first_frag + udp))[1][32] == 17
    later_frag = bytes([17, 0, 0x05, 0x01]) + bytes(4)                 # offset 160: no ports in it
    assert fs.packet_key(ipv6("fd00::1", "fd00::2", 44, later_frag + udp)) is None
    assert fs.packet_key(ipv4(C, S, 17, udp, frag=0x2000 | 20)) is None          # IPv4 non-first fragment
    assert fs.packet_key(ipv4(C, S, 17, udp, frag=0x2000))[0] == 4                # first fragment
    assert fs.packet_key(ipv4(C, S, 17, b"\0\1")) is None                          # truncated transport
    assert fs.packet_key(ipv6("fd00::1", "fd00::2", 0, (bytes([0, 0]) + bytes(6)) * 9 + udp)) is None  # 9 headers
    assert fs.packet_key(b"\x45" + bytes(10)) is None and fs.packet_key(b"\x75" + bytes(40)) is None


def test_a_hint_from_the_packet_picks_the_originator_and_matches_icmp_exactly():
    t = FlowSetTable({2: "eth1"}, T)
    # a client on port 53 asking a server on 40000: the port rule alone would pick the server
    a, b = k4(C, S, 17, 53, 40000), k4(S, C, 17, 40000, 53)
    assert t.note_packet(ipv4(C, S, 17, struct.pack(">HHHH", 53, 40000, 8, 0)), in_port=2, forged=True)
    # an echo request: a protocol without ports is keyed with ports 0 (its own sets, flowsn4/6)
    echo = k4(C, S, 1, 0, 0)
    assert t.note_packet(ipv4(C, S, 1, struct.pack(">BBHHH", 8, 0, 0x1111, 1, 1)), in_port="eth0")
    recs = {r["proto"]: r for r in t.update([el(b, 1, 60), el(a, 1, 60), el(echo, 1, 84)], NOW)}
    assert (recs["udp"]["src"], recs["udp"]["sport"], recs["udp"]["in_port"], recs["udp"]["spoofed"]) == \
        (C, 53, "eth1", True)
    assert (recs["icmp"]["in_port"], recs["icmp"]["sport"], recs["icmp"]["dport"]) == ("eth0", 0, 0)
    assert t._hints == {}
    assert not t.note_packet(b"garbage") and not t.note_packet(None) and t.hints_invalid == 2


def test_when_both_directions_were_sampled_the_earlier_sample_names_the_originator():
    for first, second in (((C, S, 53, 40000), (S, C, 40000, 53)), ((S, C, 40000, 53), (C, S, 53, 40000))):
        t = FlowSetTable({}, T)
        for src, dst, sp, dp in (first, second):
            assert t.note_packet(ipv4(src, dst, 17, struct.pack(">HHHH", sp, dp, 8, 0)))
        r = one(t.update([el(k4(S, C, 17, 40000, 53), 1, 60), el(k4(C, S, 17, 53, 40000), 1, 60)], NOW))
        assert (r["src"], r["sport"]) == (first[0], first[2]) and t._hints == {}


def test_portless_sets_read_as_flow_keys_with_ports_zero():
    """flowsn4/flowsn6 (datapath.flowset_script) key ICMP and other portless protocols by addresses
    and protocol: read as the 20/44-byte flow keys with ports 0; a key of another length is left out."""
    icmp4 = flow_key(4, C, S, 1, 0, 0)
    assert icmp4[12:] == bytes(8)
    short = icmp4[:12]
    r, counters = reader_with([done_message(1), done_message(2),
                               setelem_message([(short, 4, 336, 900), (icmp4, 1, 1, 1)], seq=3) + done_message(3),
                               done_message(4)], sets=fs.SETS)
    assert r.dump() == [(4, icmp4, 4, 336, 900)]
    assert counters.c == {"flowset_keys_malformed": 1}
    rec = one(FlowSetTable({}, T).update([el(icmp4, 4, 336), el(flow_key(4, S, C, 1, 0, 0), 4, 336)], NOW))
    assert (rec["proto"], rec["sport"], rec["dport"], rec["orig_pkts"], rec["resp_pkts"]) == ("icmp", 0, 0, 4, 4)
