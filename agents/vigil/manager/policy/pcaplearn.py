"""Learn an engine's baseline from a recorded capture (classic pcap or pcapng), in traffic time.

An operator records the site's normal traffic (``tcpdump -w`` on a span port or a bridge port) and
the manager learns the engine's baseline from it, so the engine can enforce on its first day.

The capture is turned into the flow records the engine would have sent (engine/flows.py,
contracts/engine.py ``FLOW_FIELDS``): a flow table that follows each 5-tuple the way conntrack does
(original direction = first packet; TCP states, "seen reply", "assured"; conntrack's default
timeouts end idle flows), reported once per ``interval`` of *capture* time with per-interval deltas,
``new`` on a flow's first report and ``conn_state`` from ``flows.conn_state``.  Each interval's
records then go through the same ``Detector.evaluate`` + ``Baseline.observe`` the live ingest
path uses in learning mode (component.py ``on_flows``), so the same traffic gives the same
baseline whether it was learned live or from its recording (up to where interval boundaries fall).

Bounded and linear: one pass over the file, one packet in memory at a time, at most ``max_flows``
followed flows (more are counted in ``evicted``).  A bad file never raises past ``read_packets``:
a truncated record, an impossible length or an unknown block ends or skips with a count in
``PcapStats`` (``errors``), and what was read before still counts.
"""
from __future__ import annotations

import contextlib
import heapq
import socket
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

from ...contracts.connstate import PROTO_NAMES, TCP_STATES, conn_state
from .baselines import Baseline
from .detections import Detector, Thresholds

MAX_RECORD = 256 * 1024           # a larger captured packet (or pcapng block) is not a real capture
MAX_BLOCK = 16 * 1024 * 1024

LINK_ETHERNET, LINK_RAW, LINK_SLL, LINK_IPV4, LINK_IPV6, LINK_SLL2 = 1, 101, 113, 228, 229, 276
_SUPPORTED_LINKS = {LINK_ETHERNET, LINK_RAW, LINK_SLL, LINK_IPV4, LINK_IPV6, LINK_SLL2}

# conntrack's default timeouts (nf_conntrack_*_timeout_*), seconds, by TCP state / protocol
_TCP_TIMEOUT = {1: 120, 2: 60, 3: 432000, 4: 120, 5: 60, 6: 30, 7: 120, 8: 10, 9: 120}
_UDP_UNREPLIED, _UDP_REPLIED, _OTHER_TIMEOUT = 30, 120, 30
_SYN, _RST, _FIN, _ACK = 0x02, 0x04, 0x01, 0x10


@dataclass
class PcapStats:
    packets: int = 0          # packets read
    ip_packets: int = 0       # of those, IPv4/IPv6 that made or updated a flow
    non_ip: int = 0           # ARP, LLDP, ...: not flows (the engine does not report them either)
    fragments: int = 0        # non-first IP fragments (conntrack reassembles; the first one counts)
    untracked: int = 0        # ICMP errors, neighbour discovery, MLD: conntrack makes no flow of them
    errors: dict[str, int] = field(default_factory=dict)   # reason -> count
    first_ts: float | None = None
    last_ts: float | None = None
    out_of_order: int = 0     # packets older than the interval being built (counted in it)

    def error(self, reason: str, n: int = 1) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + n


# -- the file formats --------------------------------------------------------------------------

def _read_exact(f: BinaryIO, n: int) -> bytes:
    return f.read(n) if n else b""


def read_packets(f: BinaryIO, stats: PcapStats) -> Iterator[tuple[float, int, bytes]]:
    """(timestamp s, link type, frame) for each packet of a classic pcap or pcapng stream."""
    head = _read_exact(f, 4)
    if len(head) < 4:
        stats.error("truncated-header")
        return
    if head == b"\x0a\x0d\x0d\x0a":
        yield from _pcapng(f, head, stats)
        return
    magic = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
             b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}.get(head)
    if magic is None:
        stats.error("not-a-capture")
        return
    end, scale = magic
    rest = _read_exact(f, 20)
    if len(rest) < 20:
        stats.error("truncated-header")
        return
    link = struct.unpack(end + "I", rest[16:20])[0] & 0xFFFF
    if link not in _SUPPORTED_LINKS:
        stats.error(f"unsupported-link-{link}")
        return
    rec = struct.Struct(end + "IIII")
    while True:
        h = _read_exact(f, 16)
        if not h:
            return
        if len(h) < 16:
            stats.error("truncated-record")
            return
        sec, frac, incl, _orig = rec.unpack(h)
        if incl > MAX_RECORD:
            stats.error("record-too-long")   # garbage: no way to find the next record
            return
        data = _read_exact(f, incl)
        if len(data) < incl:
            stats.error("truncated-record")
            return
        yield sec + frac * scale, link, data


def _pcapng(f: BinaryIO, first: bytes, stats: PcapStats) -> Iterator[tuple[float, int, bytes]]:
    end = "<"
    ifaces: list[tuple[int, float]] = []     # (link, seconds per timestamp unit), per section
    btype_raw = first
    while True:
        if btype_raw is None:
            btype_raw = _read_exact(f, 4)
            if not btype_raw:
                return
            if len(btype_raw) < 4:
                stats.error("truncated-block")
                return
        lenb = _read_exact(f, 4)
        if len(lenb) < 4:
            stats.error("truncated-block")
            return
        shb = btype_raw == b"\x0a\x0d\x0d\x0a"
        if shb:                                 # section header: its byte-order magic sets the order
            bom = _read_exact(f, 4)
            if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                stats.error("bad-section-header")
                return
            end = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        btype = struct.unpack(end + "I", btype_raw)[0]
        blen = struct.unpack(end + "I", lenb)[0]
        btype_raw = None
        done = 12 if shb else 8                 # bytes of the block already read
        if blen < done + 4 + (12 if shb else 0) or blen % 4 or blen > MAX_BLOCK:
            stats.error("bad-block-length")
            return
        body = _read_exact(f, blen - done)
        if len(body) < blen - done:
            stats.error("truncated-block")
            return
        if shb:
            continue
        body = body[:-4]
        if btype == 1:                          # interface description
            if len(body) < 8:
                stats.error("bad-interface-block")
                continue
            link = struct.unpack(end + "H", body[:2])[0]
            ifaces.append((link, _tsresol(body[8:], end)))
        elif btype == 6:                        # enhanced packet
            if len(body) < 20:
                stats.error("bad-packet-block")
                continue
            iface, hi, lo, cap, _orig = struct.unpack(end + "IIIII", body[:20])
            if iface >= len(ifaces) or cap > len(body) - 20:
                stats.error("bad-packet-block")
                continue
            link, unit = ifaces[iface]
            if link not in _SUPPORTED_LINKS:
                stats.error(f"unsupported-link-{link}")
                continue
            yield ((hi << 32) | lo) * unit, link, body[20:20 + cap]
        elif btype == 3:                        # simple packet: no timestamp, cannot be placed in time
            stats.error("simple-packet-block")
        # other blocks (name resolution, statistics, custom) carry no packets


def _tsresol(opts: bytes, end: str) -> float:
    """if_tsresol (option 9) of an interface block; microseconds without one."""
    i = 0
    while i + 4 <= len(opts):
        code, ln = struct.unpack(end + "HH", opts[i:i + 4])
        if code == 0:
            break
        if code == 9 and ln >= 1 and i + 5 <= len(opts):
            v = opts[i + 4]
            exp = v & 0x7F
            if exp > 60:
                return 1e-6
            return 2.0 ** -exp if v & 0x80 else 10.0 ** -exp
        i += 4 + ((ln + 3) & ~3)
    return 1e-6


# -- packets -> (family, proto, addresses, ports, flags, length) ---------------------------------

@dataclass(slots=True)
class Packet:
    ts: float
    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    flags: int          # TCP flags (0 for others)
    length: int         # IP total length: what conntrack counts


def decode(ts: float, link: int, frame: bytes, stats: PcapStats) -> Packet | None:
    off = 0
    if link == LINK_ETHERNET:
        if len(frame) < 14:
            stats.error("short-frame")
            return None
        etype = struct.unpack_from("!H", frame, 12)[0]
        off = 14
        for _ in range(2):                 # 802.1Q / 802.1ad tags
            if etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
                etype = struct.unpack_from("!H", frame, off + 2)[0]
                off += 4
    elif link == LINK_SLL:
        if len(frame) < 16:
            stats.error("short-frame")
            return None
        etype, off = struct.unpack_from("!H", frame, 14)[0], 16
    elif link == LINK_SLL2:
        if len(frame) < 20:
            stats.error("short-frame")
            return None
        etype, off = struct.unpack_from("!H", frame, 0)[0], 20
    else:                                   # raw IP
        if not frame:
            stats.error("short-frame")
            return None
        etype = {4: 0x0800, 6: 0x86DD}.get(frame[0] >> 4, 0)
    if etype == 0x0800:
        return _ipv4(ts, frame, off, stats)
    if etype == 0x86DD:
        return _ipv6(ts, frame, off, stats)
    stats.non_ip += 1
    return None


def _ipv4(ts: float, b: bytes, off: int, stats: PcapStats) -> Packet | None:
    if len(b) < off + 20 or b[off] >> 4 != 4:
        stats.error("bad-ipv4")
        return None
    ihl = (b[off] & 0x0F) * 4
    total, frag, proto = struct.unpack_from("!H", b, off + 2)[0], struct.unpack_from("!H", b, off + 6)[0], b[off + 9]
    if ihl < 20 or total < ihl:
        stats.error("bad-ipv4")
        return None
    if frag & 0x1FFF:
        stats.fragments += 1
        return None
    src, dst = socket.inet_ntop(socket.AF_INET, b[off + 12:off + 16]), socket.inet_ntop(socket.AF_INET, b[off + 16:off + 20])
    return _l4(ts, 4, proto, src, dst, b, off + ihl, total, stats)


def _ipv6(ts: float, b: bytes, off: int, stats: PcapStats) -> Packet | None:
    if len(b) < off + 40 or b[off] >> 4 != 6:
        stats.error("bad-ipv6")
        return None
    plen, nxt = struct.unpack_from("!H", b, off + 4)[0], b[off + 6]
    src, dst = socket.inet_ntop(socket.AF_INET6, b[off + 8:off + 24]), socket.inet_ntop(socket.AF_INET6, b[off + 24:off + 40])
    p = off + 40
    for _ in range(8):                      # hop-by-hop, routing, destination options, fragment
        if nxt not in (0, 43, 60, 44) or len(b) < p + 8:
            break
        if nxt == 44:
            if struct.unpack_from("!H", b, p + 2)[0] & 0xFFF8:
                stats.fragments += 1
                return None
            nxt, p = b[p], p + 8
        else:
            nxt, p = b[p], p + (b[p + 1] + 1) * 8
    return _l4(ts, 6, nxt, src, dst, b, p, plen + 40, stats)


# ICMP types conntrack follows as flows (queries and their replies); errors are "related" to the
# flow they answer, and IPv6 neighbour discovery / MLD are never tracked
_ICMP_TRACKED = {1: {0, 8, 13, 14, 15, 16, 17, 18}, 58: {128, 129, 139, 140}}


def _l4(ts, family, proto, src, dst, b, p, length, stats) -> Packet | None:
    sport = dport = flags = 0
    if proto in (6, 17, 132, 136) and len(b) >= p + 4:
        sport, dport = struct.unpack_from("!HH", b, p)
        if proto == 6 and len(b) >= p + 14:
            flags = b[p + 13]
    elif proto in (1, 58):
        if len(b) < p + 8 or b[p] not in _ICMP_TRACKED[proto]:
            stats.untracked += 1
            return None
        # conntrack keys a query by its identifier; the engine reports ICMP flows with ports 0
        sport = dport = struct.unpack_from("!H", b, p + 4)[0]   # both ways: the reply finds the query
    stats.ip_packets += 1
    return Packet(ts, family, proto, src, dst, sport, dport, flags, length)


# -- a conntrack-like flow table over capture time ----------------------------------------------

@dataclass(slots=True)
class _Flow:
    key: tuple
    family: int
    start_ms: int
    last_ts: float
    tcp_state: int | None
    status_reply: bool = False
    assured: bool = False
    fin_orig: bool = False
    fin_resp: bool = False
    counters: list = field(default_factory=lambda: [0, 0, 0, 0])
    reported: tuple = (0, 0, 0, 0)
    ident: int = 0

    def timeout(self) -> float:
        if self.key[0] == 6:
            return _TCP_TIMEOUT.get(self.tcp_state or 0, 120)
        if self.key[0] == 17:
            return _UDP_REPLIED if self.status_reply else _UDP_UNREPLIED
        return _OTHER_TIMEOUT


class CaptureFlows:
    """Packets in capture order -> per-interval flow records, as engine/flows.py writes them."""

    def __init__(self, max_flows: int = 200_000):
        self.max_flows = max_flows
        self.flows: dict[tuple, _Flow] = {}
        self.evicted = 0
        self._next_id = 1
        self._touched: dict[tuple, None] = {}        # flows with packets since the last report
        self._ended: list[dict] = []                  # final records of reused tuples (≤ one per packet)
        self._deadlines: list[tuple[float, tuple]] = []   # (idle deadline, key); stale ones skipped

    def add(self, pk: Packet) -> None:
        key = (pk.proto, pk.src, pk.sport, pk.dst, pk.dport)
        fl = self.flows.get(key)
        orig = True
        if fl is None:
            rkey = (pk.proto, pk.dst, pk.dport, pk.src, pk.sport)
            fl = self.flows.get(rkey)
            orig = False
        if fl is not None and pk.proto == 6 and orig and fl.tcp_state in (7, 8) and pk.flags & _SYN \
                and not pk.flags & _ACK:
            # a new SYN on a closed tuple: conntrack ends the old entry and starts a new connection
            self.flows.pop(fl.key)
            self._ended.append(self._record(fl, tuple(fl.counters), int(pk.ts * 1000), True))
            fl = None
        if fl is None:
            if len(self.flows) >= self.max_flows:
                self.evicted += 1
                return
            key = (pk.proto, pk.src, pk.sport, pk.dst, pk.dport)
            state = None
            if pk.proto == 6:
                # a SYN starts a connection; anything else is picked up mid-stream (nf_conntrack_tcp_loose)
                state = 1 if pk.flags & _SYN and not pk.flags & _ACK else 3
            fl = self.flows[key] = _Flow(key, pk.family, int(pk.ts * 1000), pk.ts, state, ident=self._next_id)
            self._next_id += 1
            orig = True
        fl.last_ts = pk.ts
        self._touched[fl.key] = None
        c = fl.counters
        if orig:
            c[0] += 1
            c[1] += pk.length
        else:
            c[2] += 1
            c[3] += pk.length
            fl.status_reply = True
        if pk.proto == 6:
            self._tcp(fl, pk.flags, orig)
        elif not orig:
            fl.assured = fl.assured or c[0] > 1

    @staticmethod
    def _tcp(fl: _Flow, flags: int, orig: bool) -> None:
        st = fl.tcp_state
        if flags & _RST:
            fl.tcp_state = 8
            return
        if st == 1 and not orig and flags & _SYN and flags & _ACK:
            fl.tcp_state = 2
        elif st == 2 and orig and flags & _ACK and not flags & _SYN:
            fl.tcp_state = 3
            fl.assured = True
        elif st == 3 and fl.status_reply and not fl.assured:
            fl.assured = True       # picked up mid-stream, both directions seen
        if flags & _FIN and st in (3, 4, 5, 6):
            if orig:
                fl.fin_orig = True
            else:
                fl.fin_resp = True
            fl.tcp_state = 6 if fl.fin_orig and fl.fin_resp else 4
        elif st == 6 and flags & _ACK and not flags & _FIN:
            fl.tcp_state = 7

    def report(self, now: float) -> list[dict]:
        """Records of flows that moved since the last report, and final records of flows whose
        conntrack timeout ran out by ``now`` (capture seconds).  Cost: the flows that moved and
        those whose deadline passed, not the whole table (an idle established flow waits days)."""
        out, self._ended = self._ended, []
        now_ms = int(now * 1000)
        for key in self._touched:
            fl = self.flows.get(key)
            if fl is None:
                continue
            cur = tuple(fl.counters)
            if cur != fl.reported:
                out.append(self._record(fl, cur, now_ms, False))
                fl.reported = cur
            heapq.heappush(self._deadlines, (fl.last_ts + fl.timeout(), key))
        self._touched.clear()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            fl = self.flows.get(key)
            if fl is None or fl.last_ts + fl.timeout() > deadline:
                continue            # gone, or moved since: a later entry stands for it
            out.append(self._record(fl, tuple(fl.counters), int(deadline * 1000), True))
            del self.flows[key]
        if len(self._deadlines) > 4 * len(self.flows) + 1024:   # stale entries of busy flows
            self._deadlines = [(fl.last_ts + fl.timeout(), k) for k, fl in self.flows.items()]
            heapq.heapify(self._deadlines)
        return out

    @staticmethod
    def _record(fl: _Flow, cur: tuple, now_ms: int, ended: bool) -> dict:
        proto, src, sport, dst, dport = fl.key
        icmp = proto in (1, 58)
        d = [max(0, a - b) for a, b in zip(cur, fl.reported)]
        status = (2 if fl.status_reply else 0) | (4 if fl.assured else 0)
        return {"id": fl.ident, "family": fl.family, "proto": PROTO_NAMES.get(proto, str(proto)),
                "src": src, "sport": 0 if icmp else sport, "dst": dst, "dport": 0 if icmp else dport,
                "in_port": "", "spoofed": False, "src_mac": None, "vlan": None,
                "start": fl.start_ms, "end": now_ms if ended else None,
                "duration": round(max(0, now_ms - fl.start_ms) / 1000.0, 3),
                "new": fl.reported == (0, 0, 0, 0),
                "state": "" if fl.tcp_state is None else TCP_STATES[fl.tcp_state],
                "conn_state": conn_state(proto, fl.tcp_state, status, ended, cur[2]),
                "replied": fl.status_reply, "assured": fl.assured,
                "orig_pkts": d[0], "orig_bytes": d[1], "resp_pkts": d[2], "resp_bytes": d[3],
                "orig_pkts_total": cur[0], "orig_bytes_total": cur[1],
                "resp_pkts_total": cur[2], "resp_bytes_total": cur[3]}


@dataclass
class Batch:
    start_ms: int
    end_ms: int
    flows: list[dict]


def batches(f: BinaryIO, interval: float, stats: PcapStats, max_flows: int = 200_000) -> Iterator[Batch]:
    """The capture as the engine's flow batches: one per ``interval`` of capture time that carried
    flows (empty intervals add nothing to a baseline, which counts traffic time only)."""
    table = CaptureFlows(max_flows)
    iv_start: float | None = None
    for ts, link, frame in read_packets(f, stats):
        stats.packets += 1
        pk = decode(ts, link, frame, stats)
        if pk is None:
            continue
        if iv_start is None:
            iv_start = ts
            stats.first_ts = ts
        if ts < iv_start:
            stats.out_of_order += 1
            ts = pk.ts = iv_start
        if ts >= iv_start + interval:
            end = iv_start + interval
            recs = table.report(end)
            if recs:
                yield Batch(int(iv_start * 1000), int(end * 1000), recs)
            # skip the empty intervals in between (a quiet night is not traffic time)
            iv_start += interval * int((ts - iv_start) // interval)
        stats.last_ts = ts
        table.add(pk)
    if table.evicted:
        stats.error("evicted-flows", table.evicted)
    if iv_start is not None:
        recs = table.report(iv_start + interval)
        if recs:
            yield Batch(int(iv_start * 1000), int((iv_start + interval) * 1000), recs)


def learn(f: BinaryIO, baseline: Baseline, thresholds: Thresholds, interval: float = 10.0,
          alpha: float = 0.01, alpha_suspicious: float = 0.001, max_flows: int = 200_000,
          locked: Callable | None = None) -> dict:
    """Feed a capture into ``baseline`` as learning intervals, exactly as ``PolicyComponent.on_flows``
    does with an engine's batches while it learns.  ``locked``: a context-manager factory held
    around each interval's update (the component's lock).  Returns what was read and learned."""
    stats = PcapStats()
    det = Detector(baseline.engine, thresholds)
    n_batches = n_records = suspicious = 0
    last_end: int | None = None
    before = baseline.learned_seconds
    for b in batches(f, interval, stats, max_flows):
        seconds = max(0.001, (b.end_ms - b.start_ms) / 1000.0)
        rates = last_end is not None and b.start_ms - last_end <= max(5000, 3 * (b.end_ms - b.start_ms))
        since_ms = b.start_ms - max(2000, b.end_ms - b.start_ms)
        last_end = b.end_ms
        with (locked() if locked is not None else contextlib.nullcontext()):
            findings, summary = det.evaluate(b.flows, seconds, baseline, False, rates=rates, since_ms=since_ms)
            baseline.observe(summary, True, alpha, alpha_suspicious, suspicious=bool(findings))
        n_batches += 1
        n_records += len(b.flows)
        suspicious += bool(findings)
    return {"engine": baseline.engine, "packets": stats.packets, "ip_packets": stats.ip_packets,
            "non_ip": stats.non_ip, "fragments": stats.fragments, "untracked": stats.untracked, "out_of_order": stats.out_of_order,
            "errors": dict(stats.errors), "intervals": n_batches, "flow_records": n_records,
            "suspicious_intervals": suspicious,
            "capture_seconds": round((stats.last_ts or 0) - (stats.first_ts or 0), 3),
            "learned_seconds_added": round(baseline.learned_seconds - before, 3),
            "learned_seconds": round(baseline.learned_seconds, 3)}
