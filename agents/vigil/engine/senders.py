"""Who sends with an address: each address's learned owner (MAC + bridge port) and who forges it.

The engine sits on the wire and sees what no log does: the MAC and bridge port each frame came
from.  An address's *owner* is learned only from evidence a blind spoofer cannot produce:

- an ARP request or reply whose sender fields match the frame's own source MAC (the host speaks
  for the address; a rebinding reply is the ARP check's business and moves nothing here while the
  known owner keeps confirming), and
- a flow from the address that conntrack marked ASSURED (the handshake completed, so the sender
  receives what is sent to the address), joined to the sampled first packet of that flow (MAC and
  port come from the NFLOG sample, the flow's state from conntrack).

Owners go into the kernel (``bridge vigil_flow`` sets ``owner4/6``, ``owned4/6``, ``hostmac4``):
bridge prerouting sets bit 31 of the packet mark (``FORGED``) on a frame whose source address has
an owner other than its source MAC, or whose source MAC is a host's (a MAC owning at most
``host_max_addresses`` IPv4 addresses: not a router) and whose address is not one it owns.  The mark
rides into the conntrack entry of the flow the frame starts, so every flow is known exactly to be
forged or not at flow start; a rate-limited NFLOG rule samples forged frames, which names the MAC
and port that forge each address (``forgers``).

Memory is bounded: ``max_addresses`` owners (least recently confirmed forgotten first, counted
``owners_evicted``), ``max_pending`` sampled flow starts, ``max_forged`` forged addresses with at
most 8 senders each.  Owners unconfirmed for ``owner_ttl`` expire (in the kernel by timeout).
"""
from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from ..files import atomic_write

log = logging.getLogger(__name__)

FORGED = 0x80000000          # packet/conntrack mark bit set by bridge prerouting (datapath.py)
FORGED_PREFIX = "forged"     # NFLOG prefix of the forged-frame sampling rule
ETH_IP, ETH_ARP, ETH_IP6 = 0x0800, 0x0806, 0x86DD
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ZERO_MACS = ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff")


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b[:6])


def five_tuple(payload: bytes) -> tuple | None:
    """(proto, src, sport, dst, dport) of an IPv4/IPv6 packet (ports 0 when not TCP/UDP/SCTP), or
    None when too short.  ICMP type/code go in the port fields, as conntrack.py reports them."""
    if len(payload) < 20:
        return None
    v = payload[0] >> 4
    if v == 4:
        ihl = (payload[0] & 0x0F) * 4
        proto = payload[9]
        src, dst = socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20])
        off = ihl
    elif v == 6 and len(payload) >= 40:
        proto = payload[6]
        src = socket.inet_ntop(socket.AF_INET6, payload[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
        off = 40
    else:
        return None
    sport = dport = 0
    if proto in (6, 17, 132) and len(payload) >= off + 4:
        sport, dport = struct.unpack_from(">HH", payload, off)
    elif proto in (1, 58) and len(payload) >= off + 2:
        sport, dport = payload[off], payload[off + 1]
    return proto, src, sport, dst, dport


class _Owner:
    __slots__ = ("mac", "port", "confirmed", "written")

    def __init__(self, mac: str, port: str, now: float):
        self.mac, self.port, self.confirmed, self.written = mac, port, now, 0.0


class Senders:
    def __init__(self, port_names: dict[int, str], counters=None, clock: Callable[[], float] = time.monotonic,
                 owner_ttl: float = 4 * 3600.0, max_addresses: int = 65536, max_pending: int = 65536,
                 max_forged: int = 16384, host_max_addresses: int = 4, forger_window: float = 60.0):
        self.port_names = port_names
        self.counters = counters
        self.clock = clock
        self.owner_ttl = owner_ttl
        self.max_addresses = max_addresses
        self.max_pending = max_pending
        self.max_forged = max_forged
        self.host_max = host_max_addresses
        self.forger_window = forger_window
        self.owners: OrderedDict[str, _Owner] = OrderedDict()     # address -> owner (LRU by confirmation)
        self.by_mac: dict[str, set[str]] = {}                     # mac -> addresses it owns
        self.pending: OrderedDict[tuple, tuple[str, str]] = OrderedDict()  # flow 5-tuple -> (mac, port)
        self.forgers: OrderedDict[str, dict] = OrderedDict()      # address -> {(mac, port): [n, last]}
        self.lock = threading.Lock()
        self._kernel_add: dict[str, tuple[str, int]] = {}         # address -> (mac, family) to (re)write
        self._kernel_del: dict[str, tuple[str, int]] = {}         # address -> (old mac, family) to delete
        self._hostmac: dict[str, bool] = {}                       # mac -> is a host MAC (to write)

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    # -- samples --------------------------------------------------------------------------------
    def on_sample(self, s) -> None:
        """Every NFLOG sample: ARP (owner evidence), new-flow and forged samples (who sent)."""
        mac = mac_text(s.hwaddr) if len(s.hwaddr) >= 6 else ""
        port = self.port_names.get(s.mark & 0xFF, "")
        if s.ethertype == ETH_ARP:
            self._arp(s.payload, mac, port)
            return
        if not mac:
            return
        ft = five_tuple(s.payload)
        if ft is None:
            return
        now = self.clock()
        with self.lock:
            if s.prefix == FORGED_PREFIX or s.mark & FORGED:
                self._forger(ft[1], mac, port, now)
            if s.prefix in ("new-flow", FORGED_PREFIX):
                self.pending[ft] = (mac, port)
                self.pending.move_to_end(ft)
                while len(self.pending) > self.max_pending:
                    self.pending.popitem(last=False)
                    self._count("senders_pending_evicted")

    def _forger(self, addr: str, mac: str, port: str, now: float) -> None:
        d = self.forgers.get(addr)
        if d is None:
            d = self.forgers[addr] = {}
            while len(self.forgers) > self.max_forged:
                self.forgers.popitem(last=False)
                self._count("senders_forged_evicted")
        else:
            self.forgers.move_to_end(addr)
        k = (mac, port)
        rec = d.get(k)
        if rec is None:
            if len(d) >= 8:
                oldest = min(d, key=lambda x: d[x][1])
                del d[oldest]
            d[k] = [1, now]
        else:
            rec[0] += 1
            rec[1] = now

    def _arp(self, p: bytes, frame_mac: str, port: str) -> None:
        if len(p) < 28:
            return
        htype, ptype, hlen, plen, op = struct.unpack_from(">HHBBH", p, 0)
        if htype != 1 or ptype != ETH_IP or hlen != 6 or plen != 4 or op not in (1, 2):
            return
        sha, spa = mac_text(p[8:14]), socket.inet_ntoa(p[14:18])
        if spa == "0.0.0.0" or sha in _ZERO_MACS or (frame_mac and frame_mac != sha):
            return   # a probe, or a frame whose ARP sender is not its own source: no evidence
        with self.lock:
            self._learn(spa, sha, port, self.clock(), move=False)

    # -- conntrack ------------------------------------------------------------------------------
    def on_assured(self, proto: int, src: str, sport: int, dst: str, dport: int) -> None:
        """A flow completed its handshake: whoever sent its first packet receives for ``src``."""
        with self.lock:
            hit = self.pending.pop((proto, src, sport, dst, dport), None)
            if hit is not None:
                self._learn(src, hit[0], hit[1], self.clock(), move=True)

    def forget_flow(self, proto: int, src: str, sport: int, dst: str, dport: int) -> None:
        with self.lock:
            self.pending.pop((proto, src, sport, dst, dport), None)

    # -- owners ---------------------------------------------------------------------------------
    def _learn(self, addr: str, mac: str, port: str, now: float, move: bool) -> None:
        if not MAC_RE.match(mac) or mac in _ZERO_MACS:
            return
        fam = 6 if ":" in addr else 4
        o = self.owners.get(addr)
        if o is not None and now - o.confirmed > self.owner_ttl:
            self._drop_owner(addr, o, fam)       # expired (the kernel's element timed out too)
            o = None
        if o is None:
            o = self.owners[addr] = _Owner(mac, port, now)
            self.by_mac.setdefault(mac, set()).add(addr)
            self._count("owners_learned")
            self._kernel_add[addr] = (mac, fam)
            self._host_changed(mac)
            while len(self.owners) > self.max_addresses:
                old, oo = self.owners.popitem(last=False)
                self._drop_owner(old, oo, 6 if ":" in old else 4, popped=True)
                self._count("owners_evicted")
            log.info("senders: %s is owned by %s on %s", addr, mac, port or "?")
            return
        self.owners.move_to_end(addr)
        if o.mac == mac:
            o.confirmed, o.port = now, port or o.port
            if now - o.written > self.owner_ttl / 4:   # refresh the kernel's timeout now and then
                self._kernel_add[addr] = (mac, fam)
            return
        if not move:
            return      # ARP naming another MAC: the ARP check reports it; the owner stays
        # an established flow from another MAC: the address moved (new NIC, DHCP reassignment)
        log.warning("senders: %s moved from %s (%s) to %s (%s)", addr, o.mac, o.port, mac, port)
        self._count("owners_moved")
        self._drop_owner(addr, o, fam)
        self._learn(addr, mac, port, now, move=False)

    def _drop_owner(self, addr: str, o: _Owner, fam: int, popped: bool = False) -> None:
        if not popped:
            self.owners.pop(addr, None)
        s = self.by_mac.get(o.mac)
        if s is not None:
            s.discard(addr)
            if not s:
                del self.by_mac[o.mac]
        self._kernel_add.pop(addr, None)
        self._kernel_del[addr] = (o.mac, fam)
        self._host_changed(o.mac)

    def _host_changed(self, mac: str) -> None:
        n4 = sum(1 for a in self.by_mac.get(mac, ()) if ":" not in a)
        self._hostmac[mac] = 1 <= n4 <= self.host_max

    def owner(self, addr: str) -> tuple[str, str] | None:
        with self.lock:
            o = self.owners.get(addr)
            return (o.mac, o.port) if o is not None else None

    def owned_by(self, mac: str) -> set[str]:
        with self.lock:
            return set(self.by_mac.get(mac, ()))

    def senders_of(self, addr: str, since: float | None = None) -> list[tuple[str, str, int]]:
        """Sampled MAC/port pairs that forged ``addr`` recently, most frequent first; never the
        address's learned owner."""
        now = self.clock()
        horizon = now - self.forger_window if since is None else since
        with self.lock:
            o = self.owners.get(addr)
            d = self.forgers.get(addr) or {}
            out = [(m, p, rec[0]) for (m, p), rec in d.items()
                   if rec[1] >= horizon and not (o is not None and o.mac == m)]
        return sorted(out, key=lambda x: -x[2])

    def mac_for(self, src: str, forged: bool) -> str | None:
        """The MAC a flow from ``src`` most likely came from: the owner's, or the latest forger's."""
        with self.lock:
            if not forged:
                o = self.owners.get(src)
                return o.mac if o is not None else None
            d = self.forgers.get(src)
            if not d:
                return None
            return max(d.items(), key=lambda kv: kv[1][1])[0][0]

    # -- kernel ---------------------------------------------------------------------------------
    def kernel_script(self, table: str = "bridge vigil_flow") -> str:
        """The owner changes since the last call as one nft script ('' when none)."""
        with self.lock:
            adds, dels, hosts = self._kernel_add, self._kernel_del, self._hostmac
            self._kernel_add, self._kernel_del, self._hostmac = {}, {}, {}
            now = self.clock()
            for a in adds:
                o = self.owners.get(a)
                if o is not None:
                    o.written = now
        ttl = int(self.owner_ttl)
        lines = []
        for a, (mac, fam) in dels.items():
            # add-then-delete cannot fail on an element that already timed out
            lines.append(f"add element {table} owner{fam} {{ {a} . {mac} }}")
            lines.append(f"delete element {table} owner{fam} {{ {a} . {mac} }}")
            if a not in adds:
                lines.append(f"add element {table} owned{fam} {{ {a} }}")
                lines.append(f"delete element {table} owned{fam} {{ {a} }}")
        for a, (mac, fam) in adds.items():
            for s, k in ((f"owner{fam}", f"{a} . {mac}"), (f"owned{fam}", a)):
                lines.append(f"add element {table} {s} {{ {k} }}")
                lines.append(f"delete element {table} {s} {{ {k} }}")
                lines.append(f"add element {table} {s} {{ {k} timeout {ttl}s }}")
        for mac, host in hosts.items():
            lines.append(f"add element {table} hostmac4 {{ {mac} }}")
            lines.append(f"delete element {table} hostmac4 {{ {mac} }}")
            if host:
                lines.append(f"add element {table} hostmac4 {{ {mac} timeout {ttl}s }}")
        return "\n".join(lines) + "\n" if lines else ""

    def requeue_all(self) -> None:
        """After the kernel tables were recreated: write every owner again."""
        with self.lock:
            for a, o in self.owners.items():
                self._kernel_add[a] = (o.mac, 6 if ":" in a else 4)
            for mac in self.by_mac:
                self._host_changed(mac)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        now, wall = self.clock(), time.time()
        with self.lock:
            doc = {a: [o.mac, o.port, wall - (now - o.confirmed)] for a, o in self.owners.items()}
        atomic_write(path, json.dumps({"owners": doc}))

    def load(self, path: Path) -> int:
        try:
            doc = json.loads(path.read_text())
            owners = doc.get("owners", {})
            if not isinstance(owners, dict):
                raise ValueError("owners is not an object")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("senders: cannot read %s (%s); learning owners afresh", path, exc)
            self._count("senders_state_unreadable")
            return 0
        now, wall, n = self.clock(), time.time(), 0
        with self.lock:
            for a, v in owners.items():
                try:
                    mac, port, seen = str(v[0]), str(v[1]), float(v[2])
                    socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a)
                except (TypeError, ValueError, IndexError, OSError):
                    self._count("senders_state_invalid")
                    continue
                age = wall - seen
                if age > self.owner_ttl or not MAC_RE.match(mac):
                    continue
                self._learn(a, mac, port, now - max(0.0, age), move=False)
                n += 1
        return n

    def status(self) -> dict:
        with self.lock:
            return {"owners": len(self.owners), "macs": len(self.by_mac), "forged_addresses": len(self.forgers),
                    "pending": len(self.pending)}
