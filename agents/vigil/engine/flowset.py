"""Flow telemetry from the bridge flow sets (datapath "bridge-flowset": no br_netfilter, no conntrack).

The kernel keeps one element per *direction* of a flow in the dynamic sets ``flows4`` / ``flows6`` of
``table bridge vigil`` (key ``ip saddr . ip daddr . meta l4proto . th sport . th dport``, a counter,
and a timeout refreshed by every packet: an element vanishes ``timeout`` seconds after its last
packet).  Two parts turn those sets into the engine's flow records (the keys of flows.FlowTable's,
``contracts.engine.FLOW_FIELDS``):

- ``FlowSetReader.dump()``: one raw NFT_MSG_GETSETELEM netlink dump per set, decoded with ``struct``
  without an object per attribute, into ``(family, key bytes, packets, bytes, expires ms)``.
- ``FlowSetTable.update(elements, now_ms)``: pairs the two directions of each flow, follows them
  between dumps and returns records with deltas and totals, like FlowTable does for conntrack.

Key layout (each field padded to 4 bytes, network order): IPv4 ``saddr(4) daddr(4) proto(1+3)
sport(2+2) dport(2+2)`` = 20 bytes; IPv6 ``16 + 16 + 4 + 4 + 4`` = 44 bytes.  For ICMP the "ports" are
what sits at the transport offset: type/code and the checksum, so every echo packet is an element
of its own and no request pairs with its reply (records show type and code as sport/dport, as
conntrack.py does).

What a set cannot tell, and what is reported instead (documented in the record's ``conn_state``):

====== =====================================================================================
S0     no packet in the reply direction
REJ    TCP with exactly one packet each way (most likely a SYN answered by a RST), or ended
       without two packets each way (a SYN-ACK answered by a RST)
SH     TCP replied, not two packets each way yet (a handshake under way)
S1     replied, still present
SF     replied, ended (both elements expired)
OTH    TCP seen only in the reply direction (picked up mid-stream)
====== =====================================================================================

Counters cannot tell a reset (RST) of an established flow from a normal close: there is no TCP
state; a TCP flow counts as established (S1/SF) once it has two packets each way.  ``assured``:
TCP with >= 2 packets each way; other
protocols: replied.  ``state`` is "" and ``vlan`` None (not in the key).

Which direction is the originator: the one seen in an earlier dump; when both first appear in the
same dump, the one an NFLOG ``new-flow`` sample named first (``note_packet`` with the sampled
packet, which gives the exact key the datapath used, or ``note_first`` with its 5-tuple); without a sample, the side whose destination port is the lower (a server port), and for
equal ports the side with more packets.  A sample also gives the flow its in-port, forgery flag and
start time.  Samples are kept for at most ``max_hints`` tuples (the oldest dropped, counted) and
``HINT_DUMPS`` dumps.  Without a sample, ``start`` is the earliest last-packet estimate (below) of
the flow's elements when first seen (the first packet came no later than that).

When a flow ends: when neither element is in a dump *and* the dump is past the expiry the kernel
gave each element when it was last seen (an element absent before its expiry was skipped by the dump
-- the kernel's set walk can miss elements that move while it runs -- or deleted; it is counted in
``elements_missed`` and the flow kept).  Its ``end`` is the last packet's estimated time: the dump
time when its freshest element was last present minus (timeout - expires then), never before start.
An element that comes back after it was gone, or with counters lower than before, is a new element
of the same tuple: if the flow's other direction is still alive the totals carry on (like one
conntrack entry refreshed from one side); otherwise the old flow ends with its last counters and a
new flow starts.  Packets between an element's last dump and its expiry are not seen by anyone.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
from typing import Callable, Iterable

from ..contracts.connstate import PROTO_NAMES, conn_state
from ..counters import Counters
from .netlink import (NLA, NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attr, error_code,
                      iter_messages, nfnl_message, open_socket)

log = logging.getLogger(__name__)

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 12, 13
NEWSETELEM = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
NFPROTO_BRIDGE = 7
LIST_TABLE, LIST_SET, LIST_ELEMENTS = 1, 2, 3          # NFTA_SET_ELEM_LIST_*
LIST_ELEM = 1                                          # NFTA_LIST_ELEM
ELEM_KEY, ELEM_EXPIRATION, ELEM_EXPR, ELEM_EXPRESSIONS = 1, 5, 7, 11   # NFTA_SET_ELEM_*
DATA_VALUE = 1                                         # NFTA_DATA_VALUE
EXPR_NAME, EXPR_DATA = 1, 2                            # NFTA_EXPR_*
COUNTER_BYTES, COUNTER_PACKETS = 1, 2                  # NFTA_COUNTER_*
BE64 = struct.Struct(">Q")
_NLA, _BE64 = NLA.unpack_from, BE64.unpack_from
KEY_LEN = {4: 20, 6: 44}
# protocols without ports have sets of their own (datapath.flowset_script: an ICMP echo's "ports"
# would be its type and checksum), keyed by addresses and protocol; their keys are read as flow
# keys with ports 0, so the table pairs and reports them like any flow
PORTLESS_KEY_LEN = {4: 12, 6: 36}
SETS = (("flows4", 4), ("flows6", 6), ("flowsn4", 4, True), ("flowsn6", 6, True))
ICMP_PROTOS = (1, 58)
_PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}


# ---------------------------------------------------------------------------------------------------
# Reading the sets

def _attrs(data, pos: int, end: int):
    """(type, value start, value end) of each attribute in data[pos:end]."""
    while pos + 4 <= end:
        alen, kind = NLA.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            raise ValueError(f"bad attribute length {alen} at {pos}")
        yield kind & NLA_TYPE_MASK, pos + 4, pos + alen
        pos += (alen + 3) & ~3


def _counter(data, pos: int, end: int) -> tuple[int, int] | None:
    """(packets, bytes) of one expression nest (NFTA_EXPR_*) if it is a counter."""
    is_counter = False
    packets = nbytes = 0
    while pos + 4 <= end:
        alen, kind = _NLA(data, pos)
        if alen < 4 or pos + alen > end:
            raise ValueError(f"bad expression attribute length {alen} at {pos}")
        kind &= NLA_TYPE_MASK
        if kind == EXPR_NAME:
            is_counter = bytes(data[pos + 4:pos + alen]).rstrip(b"\0") == b"counter"
        elif kind == EXPR_DATA:
            for k2, c, d in _attrs(data, pos + 4, pos + alen):
                if d - c >= 8:
                    if k2 == COUNTER_BYTES:
                        nbytes = _BE64(data, c)[0]
                    elif k2 == COUNTER_PACKETS:
                        packets = _BE64(data, c)[0]
        pos += (alen + 3) & ~3
    return (packets, nbytes) if is_counter else None


def parse_elements(data, pos: int, end: int, family: int, out: list, portless: bool = False) -> int:
    """Append (family, key bytes, packets, bytes, expires ms) of each element of one NEWSETELEM
    payload; returns how many were left out for a key of another length than the family's.  Raises
    ValueError / struct.error on a garbled message (the caller drops it whole).  The element loop is
    written out (no generator per attribute): it runs once per flow direction at every dump."""
    key_len = (PORTLESS_KEY_LEN if portless else KEY_LEN).get(family, -1)
    pad = bytes(KEY_LEN.get(family, 0) - key_len) if portless else b""
    skipped = 0
    for kind, a, b in _attrs(data, pos, end):
        if kind != LIST_ELEMENTS:
            continue
        p = a
        while p + 4 <= b:
            elen, etype = _NLA(data, p)
            if elen < 4 or p + elen > b:
                raise ValueError(f"bad element length {elen} at {p}")
            q, eb = p + 4, p + elen
            p += (elen + 3) & ~3
            if etype & NLA_TYPE_MASK != LIST_ELEM:
                continue
            key, counts, expires = None, None, 0
            while q + 4 <= eb:
                alen, at = _NLA(data, q)
                if alen < 4 or q + alen > eb:
                    raise ValueError(f"bad element attribute length {alen} at {q}")
                at &= NLA_TYPE_MASK
                if at == ELEM_KEY and alen >= 8:
                    klen, kt = _NLA(data, q + 4)
                    if kt & NLA_TYPE_MASK == DATA_VALUE and 4 <= klen <= alen - 4:
                        key = bytes(data[q + 8:q + 4 + klen])
                elif at == ELEM_EXPIRATION and alen >= 12:
                    expires = _BE64(data, q + 4)[0]
                elif at == ELEM_EXPR:
                    counts = _counter(data, q + 4, q + alen)
                elif at == ELEM_EXPRESSIONS:
                    for _k, e, f in _attrs(data, q + 4, q + alen):
                        counts = counts or _counter(data, e, f)
                q += (alen + 3) & ~3
            if key is None or len(key) != key_len:
                skipped += 1
                continue
            packets, nbytes = counts or (0, 0)
            out.append((family, key + pad if pad else key, packets, nbytes, expires))
    return skipped


def dump_set(sock: socket.socket, seq: int, table: str, set_name: str, family: int, out: list,
             buf: bytearray, on_malformed: Callable[[], None] | None = None, portless: bool = False) -> int:
    """Append every element of one bridge-family set to ``out`` by one netlink dump on ``sock``;
    returns how many elements were left out for a key that does not fit ``family``.  The kernel's
    refusal (e.g. ENOENT for a missing set) raises OSError with its errno; a garbled message is
    dropped whole and ``on_malformed()`` called (or ValueError raised without one)."""
    payload = attr(LIST_TABLE, table.encode() + b"\0") + attr(LIST_SET, set_name.encode() + b"\0")
    sock.send(nfnl_message(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq,
                           family=NFPROTO_BRIDGE, payload=payload))
    view = memoryview(buf)
    skipped = 0
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            raise OSError(errno.EIO, f"set dump {table} {set_name}: socket closed")
        try:
            for mtype, _flags, start, end in iter_messages(view, n):
                if mtype == NLMSG_DONE:
                    return skipped
                if mtype == NLMSG_ERROR:
                    code = error_code(view, start)
                    if code == 0:      # an ack: nothing more comes
                        return skipped
                    raise OSError(code, f"set dump {table} {set_name}: {errno.errorcode.get(code, code)}")
                if mtype != NEWSETELEM:
                    continue
                n0 = len(out)
                try:
                    skipped += parse_elements(view, start + 4, end, family, out, portless)
                except (ValueError, struct.error, IndexError):
                    del out[n0:]
                    if on_malformed is None:
                        raise
                    on_malformed()
        except struct.error:       # the framing itself: the rest of this buffer is lost
            if on_malformed is None:
                raise
            on_malformed()


class FlowSetReader:
    """Dumps ``flows4``, ``flows6`` and the portless ``flowsn4``, ``flowsn6`` of ``table bridge <table>``
    over one kept netlink socket.

    Nothing raises: a missing set or table yields nothing for it (``flowset_missing``, once per set
    per dump); a garbled message is dropped (``flowset_messages_malformed``); an element whose key
    does not fit the set's family is left out (``flowset_keys_malformed``); any other failure is
    logged and counted (``flowset_dump_errors``), what was read so far is kept, and the socket is
    reopened at the next dump.  ``sizes`` holds each set's element count at the last dump; a set
    holding ``set_size`` elements (the sets' ``size``) is full: the kernel adds no new flow to it,
    so new flows go unseen by telemetry (enforcement is unaffected) -- counted in ``flowset_full``."""

    def __init__(self, table: str = "vigil", counters=None, rcvbuf: int = 8 << 20, timeout_s: float = 5.0,
                 sets: tuple[tuple, ...] = SETS, set_size: int = 262144):
        self.table, self.rcvbuf, self.timeout_s, self.sets, self.set_size = table, rcvbuf, timeout_s, sets, set_size
        self.counters = counters if counters is not None else Counters()
        self.sizes: dict[str, int] = {}
        self._sock: socket.socket | None = None
        self._buf = bytearray(1 << 20)
        self._seq = 0

    def dump(self) -> list[tuple[int, bytes, int, int, int]]:
        out: list = []
        for set_name, family, *portless in self.sets:
            n0 = len(out)
            try:
                if self._sock is None:
                    self._sock = open_socket(self.rcvbuf)
                    self._sock.settimeout(self.timeout_s)   # a lost NLMSG_DONE must not wedge the loop
                self._seq += 1
                skipped = dump_set(self._sock, self._seq, self.table, set_name, family, out, self._buf,
                                   lambda: self.counters.inc("flowset_messages_malformed"), bool(portless and portless[0]))
                if skipped:
                    self.counters.inc("flowset_keys_malformed", skipped)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    self.counters.inc("flowset_missing")
                else:
                    self.counters.inc("flowset_dump_errors")
                    log.warning("flow set dump %s failed: %s; reopening the socket", set_name, exc)
                    self.close()
            self.sizes[set_name] = len(out) - n0
            if self.sizes[set_name] >= self.set_size:
                self.counters.inc("flowset_full")
        return out

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def flow_key(family: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    """The set's key bytes for a 5-tuple (raises ValueError / OSError on a bad one)."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6 if family == 6 else None
    if af is None or not (0 <= proto <= 255 and 0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError(f"bad flow tuple {family} {proto} {sport} {dport}")
    return (socket.inet_pton(af, src) + socket.inet_pton(af, dst) + bytes((proto, 0, 0, 0))
            + struct.pack(">HHHH", sport, 0, dport, 0))


# tcp, udp, dccp, sctp, udplite: the protocols the datapath keys by ports (datapath.PORT_PROTOS)
PORT_PROTOS = frozenset((6, 17, 33, 132, 136))
_IPV6_EXT = (0, 43, 60)      # hop-by-hop, routing, destination options: (len + 1) * 8 bytes


def packet_key(payload: bytes) -> tuple[int, bytes] | None:
    """(family, set key) of a packet (from its network header on, as NFLOG delivers it) keyed the way
    the datapath's update rules key it: addresses, the transport protocol after any IPv6 extension
    headers, and for a protocol with ports (datapath.PORT_PROTOS) its ports; a protocol without
    ports (ICMP ...) is keyed with ports 0, as its own sets are read.  None when a protocol with
    ports has no transport header there (too short, a non-first fragment)."""
    n = len(payload)
    if n < 20:
        return None
    version = payload[0] >> 4
    if version == 4:
        off, proto, addrs = (payload[0] & 0x0F) * 4, payload[9], payload[12:20]
        if off < 20:
            return None
        if ((payload[6] & 0x1F) or payload[7]) and proto in PORT_PROTOS:
            return None
    elif version == 6 and n >= 40:
        proto, off, addrs = payload[6], 40, payload[8:40]
        for _ in range(8):                     # a bounded walk, whatever the chain of headers
            if proto not in _IPV6_EXT and proto not in (44, 51):
                break
            if n < off + 8:
                return None
            if proto in _IPV6_EXT:
                proto, off = payload[off], off + (payload[off + 1] + 1) * 8
            elif proto == 44:                  # fragment header: only the first fragment has ports
                if (payload[off + 2] << 8 | payload[off + 3]) & 0xFFF8 and payload[off] in PORT_PROTOS:
                    return None
                proto, off = payload[off], off + 8
            else:                              # 51, authentication header: (len + 2) * 4 bytes
                proto, off = payload[off], off + (payload[off + 1] + 2) * 4
        else:
            return None
    else:
        return None
    if proto not in PORT_PROTOS:
        return version, addrs + bytes((proto, 0, 0, 0)) + bytes(8)
    if n < off + 4:
        return None
    return version, addrs + bytes((proto, 0, 0, 0, payload[off], payload[off + 1], 0, 0,
                                   payload[off + 2], payload[off + 3], 0, 0))


def reverse_key(key: bytes) -> bytes:
    """The key of the other direction of the same flow (20- or 44-byte keys)."""
    if len(key) == 20:
        return key[4:8] + key[0:4] + key[8:12] + key[16:20] + key[12:16]
    return key[16:32] + key[0:16] + key[32:36] + key[40:44] + key[36:40]


# ---------------------------------------------------------------------------------------------------
# Following flows between dumps

class _Side:
    """One direction: the kernel element's last counters, plus what earlier elements of the same
    tuple counted while the flow stayed alive (``carry``)."""
    __slots__ = ("pk", "nb", "carry_pk", "carry_nb", "deadline", "last_pkt", "seen", "gone", "obs")

    def __init__(self):
        self.pk = self.nb = self.carry_pk = self.carry_nb = 0
        self.deadline = self.last_pkt = 0
        self.seen = False     # an element of this direction was in some dump
        self.gone = False     # ... and was later absent past its expiry
        self.obs = None       # (packets, bytes, expires) in the dump being applied


class _Flow:
    __slots__ = ("id", "family", "proto", "src", "dst", "sport", "dport", "okey", "rkey", "in_port", "spoofed",
                 "start", "o", "r", "rep", "reported")

    def __init__(self, fid: int, family: int, okey: bytes, rkey: bytes):
        self.id, self.family, self.okey, self.rkey = fid, family, okey, rkey
        a = 4 if family == 4 else 16
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        self.src = socket.inet_ntop(af, okey[0:a])
        self.dst = socket.inet_ntop(af, okey[a:2 * a])
        p = 2 * a
        self.proto = okey[p]
        if self.proto in ICMP_PROTOS:      # type and code, as conntrack.py reports ICMP
            self.sport, self.dport = okey[p + 4], okey[p + 5]
        else:
            self.sport = okey[p + 4] << 8 | okey[p + 5]
            self.dport = okey[p + 8] << 8 | okey[p + 9]
        self.in_port, self.spoofed = "", False
        self.start = 0
        self.o, self.r = _Side(), _Side()
        self.rep = (0, 0, 0, 0)
        self.reported = False


class FlowSetTable:
    """Flow records from successive set dumps (``FlowSetReader.dump()``), with flows.FlowTable's
    public surface.  ``timeout_s``: the sets' element timeout.  At most ``max_flows`` flows are
    followed; a new flow past that is counted in ``evicted`` (at each dump that shows it)."""

    SLACK_MS = 1000       # an element absent within this of its expiry has expired (clock and dump time)
    HINT_DUMPS = 3        # a new-flow hint not matched within this many dumps is dropped

    def __init__(self, port_names: dict[int, str], timeout_s: float, max_flows: int = 200_000,
                 max_hints: int = 65536):
        self.port_names = port_names
        self.timeout_ms = int(timeout_s * 1000)
        self.max_flows, self.max_hints = max_flows, max_hints
        self.flows: dict[bytes, _Flow] = {}          # originator's key -> flow
        self._by_resp: dict[bytes, _Flow] = {}       # reply direction's key -> flow
        self.evicted = 0
        self.records_dropped = 0       # nothing waits between dumps here; kept for FlowTable's surface
        self.ended_by_event = 0        # no events from a set
        self.ended_by_absence = 0
        self.keys_malformed = 0        # elements whose key does not fit the family's layout
        self.elements_missed = 0       # elements absent from a dump before their expiry
        self.restarts = 0              # a tuple's element came back after expiring
        self.hints_invalid = self.hints_dropped = self.hints_expired = 0
        self.mac_for: Callable[[str, bool], str | None] | None = None
        self._hints: dict[bytes, tuple] = {}        # key -> (forged, in_port, ts_ms, dump generation, order)
        self._hint_seq = 0
        self._lock = threading.Lock()               # hints come from the NFLOG thread
        self._gen = 0
        self._next_id = 0

    def stats(self) -> dict[str, int]:
        """This table's own counters, named for the engine's status (``flowset_`` ...)."""
        return {"flowset_flows_evicted": self.evicted, "flowset_flows_ended": self.ended_by_absence,
                "flowset_keys_malformed_table": self.keys_malformed, "flowset_elements_missed": self.elements_missed,
                "flowset_restarts": self.restarts, "flowset_hints_invalid": self.hints_invalid,
                "flowset_hints_dropped": self.hints_dropped, "flowset_hints_expired": self.hints_expired}

    # -- hints --------------------------------------------------------------------------------------
    def note_first(self, family: int, src: str, dst: str, proto, sport: int, dport: int, forged: bool = False,
                   in_port="", ts_ms: int | None = None) -> bool:
        """An NFLOG ``new-flow`` sample: this tuple is its flow's originator.  ``in_port``: a port
        name, or a port index of ``port_names``.  False (and counted in ``hints_invalid``) for a
        tuple that cannot be a key."""
        try:
            if isinstance(proto, str):
                proto = _PROTO_NUMBERS[proto] if proto in _PROTO_NUMBERS else int(proto)
            key = flow_key(family, src, dst, proto, sport, dport)
        except (ValueError, TypeError, OSError, KeyError, struct.error):
            key = None
        return self._note(key, forged, in_port, ts_ms)

    def note_packet(self, payload: bytes, forged: bool = False, in_port="", ts_ms: int | None = None) -> bool:
        """``note_first`` from the sampled packet itself (NFLOG's payload): the exact key the kernel
        used, so ICMP and protocols without ports get their hint too."""
        pk = packet_key(payload) if isinstance(payload, (bytes, bytearray)) else None
        return self._note(pk[1] if pk else None, forged, in_port, ts_ms)

    def _note(self, key: bytes | None, forged: bool, in_port, ts_ms: int | None) -> bool:
        if isinstance(in_port, int):
            in_port = self.port_names.get(in_port, "")
        if key is None or not isinstance(in_port, str) or (ts_ms is not None and not isinstance(ts_ms, int)):
            self.hints_invalid += 1
            return False
        with self._lock:
            if key not in self._hints and len(self._hints) >= self.max_hints:
                del self._hints[next(iter(self._hints))]
                self.hints_dropped += 1
            self._hint_seq += 1
            self._hints[key] = (bool(forged), in_port, ts_ms, self._gen, self._hint_seq)
        return True

    def _take_hints(self, key: bytes, rkey: bytes) -> tuple[tuple | None, tuple | None]:
        with self._lock:
            return self._hints.pop(key, None), self._hints.pop(rkey, None)

    def _expire_hints(self) -> None:
        oldest = self._gen - self.HINT_DUMPS
        with self._lock:
            hints = self._hints
            while hints:
                k = next(iter(hints))
                if hints[k][3] > oldest:
                    break
                del hints[k]
                self.hints_expired += 1

    # -- dumps --------------------------------------------------------------------------------------
    def update(self, elements: Iterable[tuple[int, bytes, int, int, int]], now_ms: int) -> list[dict]:
        """Apply one dump of both sets; the records of flows that moved, started or ended."""
        self._gen += 1
        flows, by_resp = self.flows, self._by_resp
        fresh: dict[bytes, tuple] = {}
        for family, key, pk, nb, exp in elements:
            f = flows.get(key)
            if f is not None:
                f.o.obs = (pk, nb, exp)
                continue
            f = by_resp.get(key)
            if f is not None:
                f.r.obs = (pk, nb, exp)
            else:
                fresh[key] = (family, pk, nb, exp)
        records: list[dict] = []
        ended: list[_Flow] = []
        for f in flows.values():
            rec = self._advance(f, now_ms, fresh)
            if rec is not None:
                records.append(rec)
                if rec["end"] is not None:
                    ended.append(f)
        for f in ended:
            del flows[f.okey]
            by_resp.pop(f.rkey, None)
        self._start_flows(fresh, now_ms, records)
        self._expire_hints()
        return records

    def _advance(self, f: _Flow, now: int, fresh: dict) -> dict | None:
        """Apply this dump's observations to one followed flow; its record if it moved or ended."""
        o, r = f.o, f.r
        alive = False
        restarted = []
        for s in (o, r):
            obs = s.obs
            if obs is None:
                if s.seen and not s.gone:
                    if now >= s.deadline - self.SLACK_MS:
                        s.gone = True
                    else:
                        self.elements_missed += 1
                        alive = True
            elif s.seen and (s.gone or obs[0] < s.pk or obs[1] < s.nb):
                restarted.append(s)
            else:
                alive = True
        if not alive:     # every element gone (or only new ones of the same tuples): the flow ended
            for s, key in ((o, f.okey), (r, f.rkey)):
                if s in restarted:
                    fresh[key] = (f.family, *s.obs)
                    self.restarts += 1
                s.obs = None
            self.ended_by_absence += 1
            end = max(o.last_pkt if o.seen else 0, r.last_pkt if r.seen else 0)
            return self._record(f, self._totals(f), now, max(end, f.start))
        for s in restarted:
            s.carry_pk += s.pk
            s.carry_nb += s.nb
            self.restarts += 1
        for s in (o, r):
            if s.obs is not None:
                self._observe(s, s.obs, now)
        cur = self._totals(f)
        if cur == f.rep:
            return None
        return self._record(f, cur, now, None)

    def _observe(self, s: _Side, obs: tuple, now: int) -> None:
        s.pk, s.nb, exp = obs
        s.deadline = now + exp
        s.last_pkt = min(now, now - (self.timeout_ms - exp))
        s.seen, s.gone, s.obs = True, False, None

    @staticmethod
    def _totals(f: _Flow) -> tuple[int, int, int, int]:
        o, r = f.o, f.r
        return (o.carry_pk + o.pk, o.carry_nb + o.nb, r.carry_pk + r.pk, r.carry_nb + r.nb)

    def _start_flows(self, fresh: dict, now: int, records: list) -> None:
        """New flows from elements of tuples not followed: pair directions, choose the originator."""
        paired: set[bytes] = set()
        flows, by_resp = self.flows, self._by_resp
        for key, (family, pk, nb, exp) in fresh.items():
            if key in paired:
                continue
            if KEY_LEN.get(family) != len(key):
                self.keys_malformed += 1
                continue
            rkey = reverse_key(key)
            partner = fresh.get(rkey)
            if partner is not None and partner[0] != family:
                partner = None
            if partner is not None:
                paired.add(rkey)
            if len(flows) >= self.max_flows:
                self.evicted += 1
                continue
            hk, hr = self._take_hints(key, rkey)
            mine = (pk, nb, exp)
            theirs = partner[1:] if partner is not None else None
            # each direction's first packet misses the set, so both may have been sampled: the earlier wins
            if hk is not None and (hr is None or hk[4] < hr[4]):
                orig_is_key, hint = True, hk
            elif hr is not None:
                orig_is_key, hint = False, hr
            else:
                hint = None
                orig_is_key = theirs is None or _first_is_orig(key, mine, theirs)
            okey, rk = (key, rkey) if orig_is_key else (rkey, key)
            oobs, robs = (mine, theirs) if orig_is_key else (theirs, mine)
            self._next_id += 1
            f = _Flow(self._next_id, family, okey, rk)
            for s, obs in ((f.o, oobs), (f.r, robs)):
                if obs is not None:
                    self._observe(s, obs, now)
            f.start = min(s.last_pkt for s in (f.o, f.r) if s.seen)
            if hint is not None:
                f.spoofed, f.in_port = hint[0], hint[1]
                if hint[2] is not None:
                    f.start = min(max(0, hint[2]), now)
            flows[okey] = f
            by_resp[rk] = f
            cur = self._totals(f)
            if cur != f.rep:
                records.append(self._record(f, cur, now, None))

    def _record(self, f: _Flow, cur: tuple[int, int, int, int], now: int, end: int | None) -> dict:
        prev = f.rep
        new = not f.reported
        f.rep, f.reported = cur, True
        opk, rpk = cur[0], cur[2]
        proto = f.proto
        replied = rpk > 0
        ended = end is not None
        if proto == 6:
            assured = opk >= 2 and rpk >= 2
            # replied but never two packets each way: a SYN answered by a RST (1 + 1), or a SYN-ACK
            # the "client" reset (a forged SYN's victim answers so) -- conntrack's REJ; while the
            # flow lives it may still be a handshake under way (SH); both count as failed
            cs = ("OTH" if opk == 0 else "S0" if not replied else "REJ" if opk == 1 and rpk == 1
                  else ("SF" if ended else "S1") if assured else "REJ" if ended else "SH")
        else:
            cs = conn_state(proto, None, 0, ended, rpk)
            assured = replied
        last = end if ended else now
        return {
            "id": f.id,
            "family": f.family,
            "proto": PROTO_NAMES.get(proto, str(proto)),
            "src": f.src, "sport": f.sport, "dst": f.dst, "dport": f.dport,
            "in_port": f.in_port,
            "spoofed": f.spoofed,
            "src_mac": self.mac_for(f.src, f.spoofed) if self.mac_for else None,
            "vlan": None,
            "start": f.start,
            "end": end,
            "duration": round(max(0, last - f.start) / 1000.0, 3),
            "new": new,
            "state": "",
            "conn_state": cs,
            "replied": replied,
            "assured": assured,
            "orig_pkts": max(0, cur[0] - prev[0]), "orig_bytes": max(0, cur[1] - prev[1]),
            "resp_pkts": max(0, cur[2] - prev[2]), "resp_bytes": max(0, cur[3] - prev[3]),
            "orig_pkts_total": cur[0], "orig_bytes_total": cur[1],
            "resp_pkts_total": cur[2], "resp_bytes_total": cur[3],
        }


def _first_is_orig(key: bytes, mine: tuple, theirs: tuple) -> bool:
    """Without a hint: is ``key``'s direction the originator of the pair first seen together?  The
    side sending to the lower port (a server port); for equal ports the side with more packets."""
    p = 12 if len(key) == 20 else 36
    sport, dport = key[p] << 8 | key[p + 1], key[p + 4] << 8 | key[p + 5]
    if dport != sport:
        return dport < sport
    return (mine[0], mine[1], key) >= (theirs[0], theirs[1], reverse_key(key))
