"""Turn conntrack dumps and DESTROY events into per-interval flow records.

The kernel keeps cumulative counters per flow; a record carries what changed since the previous
report (``orig_bytes`` ...) and the running totals (``orig_bytes_total`` ...).  A flow's last record
has ``end`` set: from its DESTROY event (exact final counters, even for a flow that started and
ended between two polls) or, when that event was lost, from its absence in the next dump.

At most ``max_flows`` flows are followed between polls; a new flow beyond that is counted in
``evicted`` and not followed (its DESTROY event still yields one final record, so bytes are not
lost; the manager sees the counter).  Finished records waiting for the next batch are bounded the
same way; what does not fit is counted in ``records_dropped``.

``conn_state`` summarises a TCP flow the way Zeek's conn.log does, as far as conntrack can tell:

====== =====================================================================================
S0     attempt seen, no reply (half-open / unanswered)
REJ    reply seen but never established, flow closed (SYN answered by RST, or a SYN scan's
       probe of an open port that the scanner reset)
SH     replied, handshake not completed yet (SYN-ACK seen, no final ACK)
S1     established, not terminated
SF     established and closed normally (FIN exchange; or ended by idle timeout)
RST    established, then reset (conntrack does not record which side sent the RST, so Zeek's
       RSTO/RSTR are reported together)
OTH    anything else (e.g. picked up mid-stream)
====== =====================================================================================

For UDP and other protocols: S0 (no reply), S1 (replied, active), SF (replied, ended).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..contracts.connstate import conn_state
from .conntrack import IPS_ASSURED, IPS_SEEN_REPLY, PROTO_NAMES, TCP_STATES, CtEntry
from .senders import FORGED

@dataclass(slots=True)
class _Tracked:
    start_ms: int
    last: CtEntry
    reported: tuple[int, int, int, int] = (0, 0, 0, 0)  # counters at the last report
    missing: bool = False  # absent from the last dump; ended if still absent in the next


@dataclass
class FlowTable:
    port_names: dict[int, str]
    max_flows: int = 200_000
    flows: dict[tuple, _Tracked] = field(default_factory=dict)
    evicted: int = 0
    records_dropped: int = 0
    ended_by_event: int = 0
    ended_by_absence: int = 0
    _pending: list[dict] = field(default_factory=list)
    # keys of destroyed flows -> dump generation; the kernel sends DESTROY just before it unlinks
    # the entry, so the next dump may still list it: such entries are skipped, not re-counted
    _destroyed: dict = field(default_factory=dict)
    _gen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # (src, forged) -> the MAC the flow most likely came from (senders.Senders.mac_for)
    mac_for: Callable[[str, bool], str | None] | None = None

    def update(self, entries: Iterable[CtEntry], now_ms: int) -> list[dict]:
        """Apply one dump; returns finished records (from events) and those of flows that moved
        or vanished since the last dump.

        A flow absent from a dump is ended only when it is still absent from the next one and no
        DESTROY event arrived meanwhile: the event thread may lag the dump by a moment, and the
        event has the exact final counters."""
        seen: set[tuple] = set()
        records: list[dict] = []
        with self._lock:
            self._gen += 1
            gen = self._gen
        for e in entries:
            k = e.key
            with self._lock:
                if k in self._destroyed:  # its DESTROY overtook this dump
                    continue
                t = self.flows.get(k)
                if t is None:
                    if len(self.flows) >= self.max_flows:
                        self.evicted += 1
                        continue
                    t = self.flows[k] = _Tracked(start_ms=_start_ms(e, now_ms), last=e)
                seen.add(k)
                t.last = e
                t.missing = False
                cur = (e.orig_pkts, e.orig_bytes, e.resp_pkts, e.resp_bytes)
                if cur != t.reported:
                    records.append(self._record(t, cur, now_ms, ended=False))
                    t.reported = cur
        with self._lock:
            for k in [k for k in self.flows if k not in seen]:
                t = self.flows[k]
                if not t.missing:
                    t.missing = True
                    continue
                del self.flows[k]
                cur = (t.last.orig_pkts, t.last.orig_bytes, t.last.resp_pkts, t.last.resp_bytes)
                records.append(self._record(t, cur, now_ms, ended=True))
                self.ended_by_absence += 1
            out, self._pending = self._pending, []
            self._destroyed = {k: g for k, g in self._destroyed.items() if g >= gen - 1}
        return out + records

    def known_by_id(self) -> dict[int, CtEntry]:
        """Conntrack id -> last entry of each followed flow (lets a dump skip known tuples)."""
        with self._lock:
            return {t.last.ct_id: t.last for t in self.flows.values() if t.last.ct_id}

    def on_destroy(self, e: CtEntry, now_ms: int) -> None:
        """A DESTROY event: the flow's final record, with the kernel's final counters."""
        end_ms = e.stop_ns // 1_000_000 if e.stop_ns else now_ms
        cur = (e.orig_pkts, e.orig_bytes, e.resp_pkts, e.resp_bytes)
        with self._lock:
            t = self.flows.pop(e.key, None)
            if len(self._destroyed) < self.max_flows:
                self._destroyed[e.key] = self._gen
            if t is None:
                t = _Tracked(start_ms=_start_ms(e, now_ms), last=e)
            t.last = e
            self.ended_by_event += 1
            if len(self._pending) >= self.max_flows:
                self.records_dropped += 1
                return
            self._pending.append(self._record(t, cur, end_ms, ended=True))

    def _record(self, t: _Tracked, cur: tuple[int, int, int, int], now_ms: int, ended: bool) -> dict:
        e = t.last
        prev = t.reported
        d = [max(0, c - p) for c, p in zip(cur, prev)]
        return {
            "id": e.ct_id,
            "family": e.family,
            "proto": PROTO_NAMES.get(e.proto, str(e.proto)),
            "src": e.src, "sport": e.sport, "dst": e.dst, "dport": e.dport,
            "in_port": self.port_names.get(e.mark & 0xFF, ""),
            # the first frame carried an address another MAC owns (kernel mark, exact); src_mac: the
            # owner's MAC, or for a forged flow the latest sampled forger's (senders.py)
            "spoofed": bool(e.mark & FORGED),
            "src_mac": self.mac_for(e.src, bool(e.mark & FORGED)) if self.mac_for else None,
            "vlan": (e.mark >> 8) & 0xFFF or None,  # carried in the mark by vigil_flow
            "start": t.start_ms,
            "end": now_ms if ended else None,
            "duration": round(max(0, now_ms - t.start_ms) / 1000.0, 3),
            "new": prev == (0, 0, 0, 0),
            "state": TCP_STATES.get(e.tcp_state, "") if e.tcp_state is not None else "",
            "conn_state": conn_state(e.proto, e.tcp_state, e.status, ended, cur[2]),
            "replied": bool(e.status & IPS_SEEN_REPLY),
            "assured": bool(e.status & IPS_ASSURED),
            "orig_pkts": d[0], "orig_bytes": d[1], "resp_pkts": d[2], "resp_bytes": d[3],
            "orig_pkts_total": cur[0], "orig_bytes_total": cur[1],
            "resp_pkts_total": cur[2], "resp_bytes_total": cur[3],
        }


def _start_ms(e: CtEntry, now_ms: int) -> int:
    return e.start_ns // 1_000_000 if e.start_ns else now_ms
