"""Protocol checks on NFLOG samples (struct decoding; scapy is only needed to craft test packets).

``ProtocolChecks.check(sample)`` returns the findings of one sample as event dicts:

- ``tcp-flags``: impossible combinations NULL, XMAS (FIN+PSH+URG), SYN+FIN, SYN+RST;
- ``arp-rebind``: an ARP reply binding a known IP address to a different MAC (ARP spoofing).  A
  binding is confirmed by every reply from its MAC; one not confirmed for ``arp_binding_ttl``
  seconds gives way to the next MAC that answers for the address (a replaced NIC, a reassigned
  address) without an event, counted ``arp_bindings_replaced``.  While the genuine host keeps
  answering, a spoofer's replies keep raising events;
- ``ip-header``: IPv4 header length < 20, total length shorter than the header or longer than the
  packet, TCP data offset out of range;
- ``ip-fragment-overlap``: two sampled fragments of one datagram covering the same bytes;
- ``dhcp-unknown-server``: a DHCP OFFER/ACK from a server that is neither configured nor learned
  (servers seen while the engine is learning are learned).

Repeats of the same finding from the same source within ``repeat_window`` are folded into the
next event's ``count`` rather than reported one by one.  Malformed samples are counted, never fatal.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections import OrderedDict
from typing import Callable

from .nflog import Sample

log = logging.getLogger(__name__)

ETH_IP, ETH_ARP, ETH_IP6 = 0x0800, 0x0806, 0x86DD
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def tcp_flag_anomaly(flags: int) -> str | None:
    f = flags & 0x3F
    if f == 0:
        return "NULL"
    if f & (FIN | PSH | URG) == FIN | PSH | URG:
        return "XMAS"
    if f & (SYN | FIN) == SYN | FIN:
        return "SYN+FIN"
    if f & (SYN | RST) == SYN | RST:
        return "SYN+RST"
    return None


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


class _Bounded(OrderedDict):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, k, v) -> None:
        self[k] = v
        self.move_to_end(k)
        while len(self) > self.limit:
            self.popitem(last=False)


class ProtocolChecks:
    def __init__(self, copy_range: int = 2048, dhcp_servers: list[str] | None = None,
                 mode: Callable[[], str] = lambda: "learning", port_names: dict[int, str] | None = None,
                 counters=None, repeat_window: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 arp_binding_ttl: float = 4 * 3600.0):
        self.copy_range = copy_range
        self.dhcp_known = set(dhcp_servers or [])
        self.dhcp_configured = bool(dhcp_servers)
        self.mode = mode
        self.port_names = port_names or {}
        self.counters = counters
        self.repeat_window = repeat_window
        self.clock = clock
        self.arp = _Bounded(8192)            # ip -> (mac, last confirmed)
        self.arp_binding_ttl = arp_binding_ttl
        self.frags = _Bounded(4096)          # (src, dst, id, proto) -> (t, [(start, end)])
        self._recent = _Bounded(4096)        # finding key -> (t, folded count)

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    def check(self, s: Sample) -> list[dict]:
        self._count("samples")
        try:
            if s.ethertype == ETH_ARP:
                found = self._arp(s)
            elif s.ethertype == ETH_IP or (s.ethertype == 0 and s.payload[:1] and s.payload[0] >> 4 == 4):
                found = self._ipv4(s)
            elif s.ethertype == ETH_IP6 or (s.payload[:1] and s.payload[0] >> 4 == 6):
                found = self._ipv6(s)
            else:
                found = []
        except (struct.error, IndexError, ValueError):
            self._count("samples_malformed")
            found = [self._event(s, "ip-header", "truncated", src=None)]
        out = []
        for ev in found:
            ev = self._fold(ev)
            if ev is not None:
                out.append(ev)
        return out

    # -- folding of repeats ---------------------------------------------------------------------
    def _fold(self, ev: dict) -> dict | None:
        key = (ev["type"], ev.get("detail"), ev.get("src"), ev.get("ip"), ev.get("new_mac"))
        now = self.clock()
        prev = self._recent.get(key)
        if prev is not None and now - prev[0] < self.repeat_window:
            self._recent[key] = (prev[0], prev[1] + 1)
            self._count("sample_events_folded")
            return None
        ev["count"] = 1 + (prev[1] if prev else 0)
        self._recent.put(key, (now, 0))
        return ev

    def _event(self, s: Sample, kind: str, detail: str, src: str | None, **extra) -> dict:
        ev = {"type": kind, "detail": detail, "src": src, "severity": "warning",
              "sample": s.prefix, "in_port": self.port_names.get(s.mark & 0xFF, ""), "vlan": s.vlan}
        ev.update(extra)
        self._count(f"check_{kind}")
        return ev

    # -- ARP --------------------------------------------------------------------------------------
    def _arp(self, s: Sample) -> list[dict]:
        p = s.payload
        htype, ptype, hlen, plen, op = struct.unpack_from(">HHBBH", p, 0)
        if htype != 1 or ptype != ETH_IP or hlen != 6 or plen != 4:
            return []
        sha, spa = p[8:14], p[14:18]
        if len(spa) < 4:
            raise ValueError("short ARP")
        ip = socket.inet_ntoa(spa)
        if ip == "0.0.0.0" or op != 2:
            return []
        mac = _mac(sha)
        now = self.clock()
        binding = self.arp.get(ip)
        if binding is None or binding[0] == mac:
            self.arp.put(ip, (mac, now))
            return []
        known, confirmed = binding
        if now - confirmed > self.arp_binding_ttl:
            self.arp.put(ip, (mac, now))
            self._count("arp_bindings_replaced")
            return []
        # no ``src``: that names an IP address to block (contracts.engine.EngineEvent), and the
        # sender here is known only by its MAC
        return [self._event(s, "arp-rebind", "reply rebinds a known IP to a new MAC", src=None,
                            ip=ip, known_mac=known, new_mac=mac, severity="high")]

    # -- IPv4 -------------------------------------------------------------------------------------
    def _ipv4(self, s: Sample) -> list[dict]:
        p = s.payload
        if len(p) < 20:
            return [self._event(s, "ip-header", "shorter than an IPv4 header", src=None)]
        ihl = (p[0] & 0x0F) * 4
        total = struct.unpack_from(">H", p, 2)[0]
        ident = struct.unpack_from(">H", p, 4)[0]
        fo = struct.unpack_from(">H", p, 6)[0]
        proto = p[9]
        src, dst = socket.inet_ntoa(p[12:16]), socket.inet_ntoa(p[16:20])
        truncated = len(p) >= self.copy_range  # our copy, not the packet, is short
        out = []
        if ihl < 20:
            return [self._event(s, "ip-header", f"header length {ihl} < 20", src=src, dst=dst)]
        if total < ihl:
            return [self._event(s, "ip-header", f"total length {total} < header length {ihl}",
                                src=src, dst=dst)]
        if total > len(p) and not truncated:
            out.append(self._event(s, "ip-header", f"total length {total} > packet length {len(p)}",
                                   src=src, dst=dst))
        offset = (fo & 0x1FFF) * 8
        more = bool(fo & 0x2000)
        if more or offset:
            out.extend(self._fragment(s, src, dst, ident, proto, offset, min(total, len(p)) - ihl))
            if offset:
                return out
        if proto == 6:
            out.extend(self._tcp(s, p, ihl, min(total, len(p)), src, dst, fragment=more))
        return out

    def _fragment(self, s, src, dst, ident, proto, offset, length) -> list[dict]:
        key = (src, dst, ident, proto)
        now = self.clock()
        start, end = offset, offset + max(0, length)
        entry = self.frags.get(key)
        if entry is None or now - entry[0] > 30.0:
            self.frags.put(key, (now, [(start, end)]))
            return []
        spans = entry[1]
        for a, b in spans:
            if start < b and a < end:
                spans.append((start, end))
                return [self._event(s, "ip-fragment-overlap",
                                    f"fragment {start}-{end} overlaps {a}-{b}", src=src, dst=dst,
                                    ip_id=ident, proto=proto)]
        if len(spans) < 64:
            spans.append((start, end))
        return []

    def _tcp(self, s, p, ihl, end, src, dst, fragment: bool) -> list[dict]:
        if end - ihl < 14:
            return [] if fragment else [self._event(s, "ip-header", "TCP header cut short", src=src, dst=dst)]
        sport, dport = struct.unpack_from(">HH", p, ihl)
        doff = (p[ihl + 12] >> 4) * 4
        flags = p[ihl + 13]
        out = []
        if doff < 20 or (not fragment and ihl + doff > end):
            out.append(self._event(s, "ip-header", f"TCP data offset {doff} out of range", src=src,
                                   dst=dst, sport=sport, dport=dport))
        bad = tcp_flag_anomaly(flags)
        if bad:
            out.append(self._event(s, "tcp-flags", bad, src=src, dst=dst, sport=sport, dport=dport,
                                   flags=flags))
        return out

    # -- IPv6 (flags only; extension headers are not walked) ------------------------------------
    def _ipv6(self, s: Sample) -> list[dict]:
        p = s.payload
        if len(p) < 40:
            return [self._event(s, "ip-header", "shorter than an IPv6 header", src=None)]
        nxt = p[6]
        src, dst = socket.inet_ntop(socket.AF_INET6, p[8:24]), socket.inet_ntop(socket.AF_INET6, p[24:40])
        if nxt == 6 and len(p) >= 54:
            bad = tcp_flag_anomaly(p[53])
            if bad:
                sport, dport = struct.unpack_from(">HH", p, 40)
                return [self._event(s, "tcp-flags", bad, src=src, dst=dst, sport=sport, dport=dport,
                                    flags=p[53])]
        return []

    # -- DHCP (called for UDP 67 -> 68 samples) ---------------------------------------------------
    def dhcp(self, s: Sample) -> list[dict]:
        p = s.payload
        if len(p) < 20 or p[0] >> 4 != 4:
            return []
        ihl = (p[0] & 0x0F) * 4
        if p[9] != 17:
            return []
        sport, dport = struct.unpack_from(">HH", p, ihl)
        if sport != 67 or dport != 68:
            return []
        b = ihl + 8
        if len(p) < b + 240 or p[b] != 2 or p[b + 236:b + 240] != b"\x63\x82\x53\x63":
            return []
        src = socket.inet_ntoa(p[12:16])
        msg_type = None
        server = src
        i = b + 240
        while i < len(p):
            code = p[i]
            if code == 255:
                break
            if code == 0:
                i += 1
                continue
            if i + 1 >= len(p):
                break
            ln = p[i + 1]
            val = p[i + 2:i + 2 + ln]
            if code == 53 and ln >= 1:
                msg_type = val[0]
            elif code == 54 and ln == 4:
                server = socket.inet_ntoa(val)
            i += 2 + ln
        if msg_type not in (2, 5):  # OFFER, ACK
            return []
        if server in self.dhcp_known:
            return []
        if not self.dhcp_configured and self.mode() == "learning":
            self.dhcp_known.add(server)
            log.info("dhcp: learned server %s", server)
            return []
        name = "OFFER" if msg_type == 2 else "ACK"
        return [self._event(s, "dhcp-unknown-server", f"DHCP {name} from unknown server {server}",
                            src=src, server=server, severity="high")]


def run_checks(checks: ProtocolChecks, s: Sample) -> list[dict]:
    """All checks that apply to one sample (DHCP only for the DHCP sampling rule)."""
    out = checks.check(s)
    if s.prefix == "dhcp-server":
        try:
            for ev in checks.dhcp(s):
                ev = checks._fold(ev)
                if ev is not None:
                    out.append(ev)
        except (struct.error, IndexError, ValueError):
            checks._count("samples_malformed")
    return out


def in_any(addr: str, nets: list) -> bool:
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(a in n for n in nets)
