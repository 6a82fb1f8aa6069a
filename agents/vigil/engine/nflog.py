"""A raw netlink NFLOG reader (nfnetlink_log), no dependency.

Binds one NFLOG group of this network namespace, asks for packet copies of ``copy_range`` bytes,
and decodes each NFULNL_MSG_PACKET into a ``Sample``: the rule's prefix, the protocol family the
rule ran in (bridge or inet), the ethertype, the physical in-port, the VLAN tag when the kernel
reports one, and the packet from its network header on.  The kernel's ``limit rate`` in each
sampling rule bounds how many samples arrive; a reader that falls behind loses samples to ENOBUFS,
which is counted as ``nflog_overruns``.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass

from .netlink import (BE16 as _BE16, BE32 as _BE32, NLA as _NLA, NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST,
                      NLMSG_ERROR, NetlinkError, attr as _attr, error_code, iter_messages, nfnl_message)

log = logging.getLogger(__name__)

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_NLBUFSIZ, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR, NFULA_MARK, NFULA_TIMESTAMP = 1, 2, 3
NFULA_IFINDEX_INDEV, NFULA_IFINDEX_PHYSINDEV = 4, 6
NFULA_HWADDR, NFULA_PAYLOAD, NFULA_PREFIX, NFULA_VLAN, NFULA_L2HDR = 8, 9, 10, 20, 21
NFULA_VLAN_TCI = 2
AF_BRIDGE = 7


@dataclass(slots=True)
class Sample:
    prefix: str
    family: int          # 2 (inet/IPv4), 10 (IPv6), 7 (bridge)
    ethertype: int       # 0x0800, 0x0806, 0x86dd ...
    payload: bytes       # from the network header on (copy_range bytes at most)
    indev: int = 0
    physindev: int = 0
    mark: int = 0
    hwaddr: bytes = b""  # source MAC when the kernel reports it
    vlan: int | None = None
    ts: float = 0.0


def config_message(group: int, seq: int, *attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    return nfnl_message(NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, family,
                        socket.htons(group), b"".join(attrs))


def parse_packet(data, start: int, end: int) -> Sample:
    """Decode one NFULNL_MSG_PACKET (``start`` at its nfgenmsg header)."""
    family = data[start]
    pos = start + 4
    prefix = ""
    ethertype = 0
    payload = b""
    indev = physindev = mark = 0
    hwaddr = b""
    vlan = None
    ts = 0.0
    unpack = _NLA.unpack_from
    while pos + 4 <= end:
        alen, atype = unpack(data, pos)
        if alen < 4 or pos + alen > end:
            raise struct.error(f"bad attribute length {alen} at {pos}")
        t = atype & 0x3FFF
        p = pos + 4
        if t == NFULA_PAYLOAD:
            payload = bytes(data[p:pos + alen])
        elif t == NFULA_PACKET_HDR:
            ethertype = _BE16.unpack_from(data, p)[0]
        elif t == NFULA_PREFIX:
            prefix = bytes(data[p:pos + alen]).split(b"\0", 1)[0].decode("ascii", "replace")
        elif t == NFULA_IFINDEX_INDEV:
            indev = _BE32.unpack_from(data, p)[0]
        elif t == NFULA_IFINDEX_PHYSINDEV:
            physindev = _BE32.unpack_from(data, p)[0]
        elif t == NFULA_MARK:
            mark = _BE32.unpack_from(data, p)[0]
        elif t == NFULA_HWADDR:
            hlen = _BE16.unpack_from(data, p)[0]
            hwaddr = bytes(data[p + 4:p + 4 + min(hlen, 8)])
        elif t == NFULA_TIMESTAMP:
            sec, usec = struct.unpack_from(">QQ", data, p)
            ts = sec + usec / 1e6
        elif t == NFULA_VLAN:
            q, qe = p, pos + alen
            while q + 4 <= qe:
                blen, btype = unpack(data, q)
                if blen < 4:
                    break
                if btype & 0x3FFF == NFULA_VLAN_TCI:
                    vlan = _BE16.unpack_from(data, q + 4)[0] & 0x0FFF
                q += (blen + 3) & ~3
        pos += (alen + 3) & ~3
    return Sample(prefix, family, ethertype, payload, indev, physindev, mark, hwaddr, vlan, ts)


class NflogReader:
    def __init__(self, group: int, copy_range: int = 2048, counters=None, rcvbuf: int = 8 << 20):
        self.group = group
        self.counters = counters
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.bind((0, 0))
        self._buf = bytearray(1 << 18)
        self._seq = 0
        self._request(_attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
        self._request(_attr(NFULA_CFG_MODE, struct.pack(">IBB", copy_range, NFULNL_COPY_PACKET, 0)))
        # deliver at once: samples are few (rate-limited) and the detector wants them now
        self._request(_attr(NFULA_CFG_QTHRESH, _BE32.pack(1)))
        self._request(_attr(NFULA_CFG_TIMEOUT, _BE32.pack(1)))

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    def _request(self, *attrs: bytes) -> None:
        self._seq += 1
        self._sock.send(config_message(self.group, self._seq, *attrs))
        self._sock.settimeout(2.0)
        while True:
            n = self._sock.recv_into(self._buf)
            for mtype, _flags, start, _end in iter_messages(memoryview(self._buf), n):
                if mtype == NLMSG_ERROR:
                    code = error_code(self._buf, start)
                    if code:
                        raise NetlinkError(code, f"nflog group {self.group}: {errno.errorcode.get(code, code)}")
                    return

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout: float | None = 1.0) -> list[Sample]:
        self._sock.settimeout(timeout)
        try:
            n = self._sock.recv_into(self._buf)
        except socket.timeout:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self._count("nflog_overruns")
                return []
            raise
        return parse_samples(memoryview(self._buf), n, self._count)

    def close(self) -> None:
        try:
            self._seq += 1
            self._sock.send(config_message(self.group, self._seq,
                                           _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))))
        except OSError:
            pass
        self._sock.close()


def parse_samples(view, n: int, count=lambda name, k=1: None) -> list[Sample]:
    out = []
    try:
        for mtype, _flags, start, end in iter_messages(view, n):
            if mtype != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                continue
            try:
                out.append(parse_packet(view, start, end))
            except (struct.error, IndexError, ValueError):
                count("nflog_messages_malformed")
    except struct.error:
        count("nflog_messages_malformed")
    return out
