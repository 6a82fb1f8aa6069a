"""Conntrack over raw nfnetlink: table dumps and NEW/REPLY/ASSURED/DESTROY events, no dependency.

pyroute2's NFCTSocket builds a tree of Python objects per attribute; at 100k flows that costs
seconds per dump.  This module speaks ctnetlink itself and decodes only the attributes a flow
record needs with ``struct`` (a few microseconds per entry):

- ``ConntrackReader.dump()`` lists every entry of the namespace (IPv4 and IPv6);
- ``ConntrackEvents`` is a socket bound to the conntrack event groups; ``read()`` returns
  ``(event, CtEntry)`` pairs.  DESTROY events carry a flow's final counters and its start/stop
  timestamps, so a flow that starts and ends between two polls is still reported exactly.
  Which events the kernel generates is narrowed per flow by ``ct event set`` (datapath.py).

The kernel drops events when a listener falls behind (ENOBUFS); that is counted as
``ct_event_overruns`` and the next dump repairs the table.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterator

from ..contracts.connstate import IPS_ASSURED, IPS_SEEN_REPLY, PROTO_NAMES, TCP_STATES  # noqa: F401 (re-exported)
from .netlink import (BE16, BE32, BE64, NETLINK_ADD_MEMBERSHIP, NFGEN, NLA, NLH, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
                      NLMSG_DONE, NLMSG_ERROR, SOL_NETLINK, NetlinkError, error_code, iter_messages, nfnl_message,
                      open_socket)

log = logging.getLogger(__name__)


NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

# ctnetlink attribute types (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID, CTA_ZONE, CTA_TIMESTAMP = 8, 9, 10, 12, 18, 20
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 5, 6, 8, 9
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 1, 2, 3, 4
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2

_NLH, _NLA, _BE16, _BE32, _BE64, _NFGEN = NLH, NLA, BE16, BE32, BE64, NFGEN   # the hot parsers' local names

EV_NEW, EV_UPDATE, EV_DESTROY = "new", "update", "destroy"


@dataclass(slots=True)
class CtEntry:
    ct_id: int
    family: int  # 4 or 6
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    mark: int
    status: int
    tcp_state: int | None
    orig_pkts: int
    orig_bytes: int
    resp_pkts: int
    resp_bytes: int
    zone: int = 0
    start_ns: int = 0  # CLOCK_REALTIME ns, when nf_conntrack_timestamp is on
    stop_ns: int = 0   # only in DESTROY events

    @property
    def key(self) -> tuple:
        return (self.ct_id, self.proto, self.src, self.dst, self.sport, self.dport)


def _ip(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _tuple(data, pos: int, end: int) -> tuple:
    """CTA_TUPLE_* nest -> (family, src, dst, proto, sport, dport)."""
    family = 0
    src = dst = ""
    proto = sport = dport = 0
    unpack = _NLA.unpack_from
    while pos + 4 <= end:
        alen, atype = unpack(data, pos)
        if alen < 4:
            break
        t = atype & 0x3FFF
        p, e = pos + 4, pos + alen
        if t == CTA_TUPLE_IP:
            while p + 4 <= e:
                blen, btype = unpack(data, p)
                if blen < 4:
                    break
                bt = btype & 0x3FFF
                v = bytes(data[p + 4:p + blen])
                if bt == CTA_IP_V4_SRC:
                    family, src = 4, _ip(v)
                elif bt == CTA_IP_V4_DST:
                    dst = _ip(v)
                elif bt == CTA_IP_V6_SRC:
                    family, src = 6, _ip(v)
                elif bt == CTA_IP_V6_DST:
                    dst = _ip(v)
                p += (blen + 3) & ~3
        elif t == CTA_TUPLE_PROTO:
            icmp_type = icmp_code = None
            while p + 4 <= e:
                blen, btype = unpack(data, p)
                if blen < 4:
                    break
                bt = btype & 0x3FFF
                if bt == CTA_PROTO_NUM:
                    proto = data[p + 4]
                elif bt == CTA_PROTO_SRC_PORT:
                    sport = _BE16.unpack_from(data, p + 4)[0]
                elif bt == CTA_PROTO_DST_PORT:
                    dport = _BE16.unpack_from(data, p + 4)[0]
                elif bt in (CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMPV6_TYPE):
                    icmp_type = data[p + 4]
                elif bt in (CTA_PROTO_ICMP_CODE, CTA_PROTO_ICMPV6_CODE):
                    icmp_code = data[p + 4]
                p += (blen + 3) & ~3
            if icmp_type is not None:  # as Zeek does: ICMP type/code in the port fields
                sport, dport = icmp_type, icmp_code or 0
        pos += (alen + 3) & ~3
    return family, src, dst, proto, sport, dport


def _counters(data, pos: int, end: int) -> tuple[int, int]:
    pkts = nbytes = 0
    while pos + 4 <= end:
        alen, atype = _NLA.unpack_from(data, pos)
        if alen < 4:
            break
        t = atype & 0x3FFF
        if t == CTA_COUNTERS_PACKETS:
            pkts = _BE64.unpack_from(data, pos + 4)[0]
        elif t == CTA_COUNTERS_BYTES:
            nbytes = _BE64.unpack_from(data, pos + 4)[0]
        elif t == CTA_COUNTERS32_PACKETS:
            pkts = _BE32.unpack_from(data, pos + 4)[0]
        elif t == CTA_COUNTERS32_BYTES:
            nbytes = _BE32.unpack_from(data, pos + 4)[0]
        pos += (alen + 3) & ~3
    return pkts, nbytes


def parse_ct(data, pos: int, end: int, known: dict | None = None) -> CtEntry | None:
    """Decode the attributes of one ctnetlink message (``pos`` just after the nfgenmsg header).

    ``known`` maps conntrack ids to entries seen before: their tuple is taken from there instead
    of being decoded again (the kernel's id is a hash over the entry and its tuple, so an equal id
    means the same flow); that is most of the work of a dump at 100k flows.
    Returns None for an entry without an original tuple; raises ``struct.error`` or
    ``IndexError`` for a truncated message (callers count those)."""
    tup = None
    tpos = tend = 0
    status = mark = ct_id = zone = start = stop = 0
    tcp_state = None
    op = ob = rp = rb = 0
    unpack = _NLA.unpack_from
    while pos + 4 <= end:
        alen, atype = unpack(data, pos)
        if alen < 4 or pos + alen > end:
            raise struct.error(f"bad attribute length {alen} at {pos}")
        t = atype & 0x3FFF
        p = pos + 4
        if t == CTA_TUPLE_ORIG:
            tpos, tend = p, pos + alen
        elif t == CTA_COUNTERS_ORIG:
            op, ob = _counters(data, p, pos + alen)
        elif t == CTA_COUNTERS_REPLY:
            rp, rb = _counters(data, p, pos + alen)
        elif t == CTA_STATUS:
            status = _BE32.unpack_from(data, p)[0]
        elif t == CTA_MARK:
            mark = _BE32.unpack_from(data, p)[0]
        elif t == CTA_ID:
            ct_id = _BE32.unpack_from(data, p)[0]
        elif t == CTA_ZONE:
            zone = _BE16.unpack_from(data, p)[0]
        elif t == CTA_PROTOINFO:
            q, qe = p, pos + alen
            while q + 4 <= qe:
                blen, btype = unpack(data, q)
                if blen < 4:
                    break
                if btype & 0x3FFF == CTA_PROTOINFO_TCP:
                    r, re_ = q + 4, q + blen
                    while r + 4 <= re_:
                        clen, ctype = unpack(data, r)
                        if clen < 4:
                            break
                        if ctype & 0x3FFF == CTA_PROTOINFO_TCP_STATE:
                            tcp_state = data[r + 4]
                        r += (clen + 3) & ~3
                q += (blen + 3) & ~3
        elif t == CTA_TIMESTAMP:
            q, qe = p, pos + alen
            while q + 4 <= qe:
                blen, btype = unpack(data, q)
                if blen < 4:
                    break
                bt = btype & 0x3FFF
                if bt == CTA_TIMESTAMP_START:
                    start = _BE64.unpack_from(data, q + 4)[0]
                elif bt == CTA_TIMESTAMP_STOP:
                    stop = _BE64.unpack_from(data, q + 4)[0]
                q += (blen + 3) & ~3
        pos += (alen + 3) & ~3
    prev = known.get(ct_id) if known else None
    if prev is not None and tpos:
        family, src, dst, proto, sport, dport = prev.family, prev.src, prev.dst, prev.proto, prev.sport, prev.dport
    else:
        if not tpos:
            return None
        tup = _tuple(data, tpos, tend)
        if not tup[0]:
            return None
        family, src, dst, proto, sport, dport = tup
    return CtEntry(ct_id, family, proto, src, dst, sport, dport, mark, status, tcp_state,
                   op, ob, rp, rb, zone, start, stop)


def dump_request(seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    return nfnl_message(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family)


_open = open_socket
_nl_error = error_code


class ConntrackReader:
    """Dumps the conntrack table of this network namespace."""

    def __init__(self, counters=None, rcvbuf: int = 4 << 20):
        self.counters = counters
        self.rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._buf = bytearray(1 << 20)
        self._seq = 0

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    def dump(self, known: dict | None = None) -> Iterator[CtEntry]:
        """Every entry, IPv4 and IPv6.  A failed dump is logged, counted, and ends early.
        ``known``: conntrack id -> earlier entry (see ``parse_ct``)."""
        try:
            if self._sock is None:
                self._sock = _open(self.rcvbuf)
            self._seq += 1
            self._sock.send(dump_request(self._seq))
            buf = self._buf
            view = memoryview(buf)
            while True:
                n = self._sock.recv_into(buf)
                for mtype, _flags, start, end in iter_messages(view, n):
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        code = _nl_error(view, start)
                        if code:
                            raise NetlinkError(code, f"conntrack dump: {os.strerror(code)}")
                        return
                    if mtype >> 8 != NFNL_SUBSYS_CTNETLINK:
                        continue
                    try:
                        e = parse_ct(view, start + 4, end, known)
                    except (struct.error, IndexError, ValueError):
                        self._count("ct_messages_malformed")
                        continue
                    if e is not None:
                        yield e
        except (OSError, struct.error) as exc:
            self._count("ct_dump_errors")
            log.warning("conntrack dump failed: %s; reopening the socket", exc)
            self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class ConntrackEvents:
    """A socket on the conntrack event groups; ``read()`` blocks up to ``timeout``."""

    def __init__(self, counters=None, rcvbuf: int = 16 << 20,
                 groups: tuple[int, ...] = (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE,
                                            NFNLGRP_CONNTRACK_DESTROY)):
        self.counters = counters
        self._sock = _open(rcvbuf)
        for g in groups:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
        self._buf = bytearray(1 << 18)

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout: float | None = 1.0) -> list[tuple[str, CtEntry]]:
        self._sock.settimeout(timeout)
        try:
            n = self._sock.recv_into(self._buf)
        except socket.timeout:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped events: the next dump repairs
                self._count("ct_event_overruns")
                return []
            raise
        return parse_events(memoryview(self._buf), n, self._count)

    def close(self) -> None:
        self._sock.close()


def parse_events(view, n: int, count=lambda name, k=1: None) -> list[tuple[str, CtEntry]]:
    out = []
    try:
        for mtype, flags, start, end in iter_messages(view, n):
            if mtype >> 8 != NFNL_SUBSYS_CTNETLINK:
                continue
            kind = mtype & 0xFF
            if kind == IPCTNL_MSG_CT_DELETE:
                ev = EV_DESTROY
            elif kind == IPCTNL_MSG_CT_NEW:
                ev = EV_NEW if flags & NLM_F_CREATE else EV_UPDATE
            else:
                continue
            try:
                e = parse_ct(view, start + 4, end)
            except (struct.error, IndexError, ValueError):
                count("ct_messages_malformed")
                continue
            if e is not None:
                out.append((ev, e))
    except struct.error:
        count("ct_messages_malformed")
    return out
