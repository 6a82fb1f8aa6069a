"""Turn successive conntrack dumps into per-interval flow records.

The kernel keeps cumulative counters per flow; a record carries what changed since the previous
dump (``orig_bytes`` ...) and the running totals (``orig_bytes_total`` ...).  A flow that has
disappeared from the table is reported once more with ``end`` set.  At most ``max_flows`` flows are
tracked; new flows beyond that are counted in ``evicted`` and not followed (the kernel still counts
them; the manager sees the eviction counter).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .conntrack import IPS_ASSURED, IPS_SEEN_REPLY, PROTO_NAMES, TCP_STATES, CtEntry


@dataclass(slots=True)
class _Tracked:
    start_ms: int
    last: CtEntry
    reported: tuple[int, int, int, int] = (0, 0, 0, 0)  # counters at the last report


@dataclass
class FlowTable:
    port_names: dict[int, str]
    max_flows: int = 200_000
    flows: dict[tuple, _Tracked] = field(default_factory=dict)
    evicted: int = 0

    def update(self, entries: Iterable[CtEntry], now_ms: int) -> list[dict]:
        """Apply one dump; returns the records of flows that moved or ended since the last one."""
        seen: set[tuple] = set()
        records: list[dict] = []
        for e in entries:
            k = e.key
            seen.add(k)
            t = self.flows.get(k)
            if t is None:
                if len(self.flows) >= self.max_flows:
                    self.evicted += 1
                    continue
                t = self.flows[k] = _Tracked(start_ms=now_ms, last=e)
            t.last = e
            cur = (e.orig_pkts, e.orig_bytes, e.resp_pkts, e.resp_bytes)
            if cur != t.reported:
                records.append(self._record(t, cur, now_ms, ended=False))
                t.reported = cur
        for k in [k for k in self.flows if k not in seen]:
            t = self.flows.pop(k)
            cur = (t.last.orig_pkts, t.last.orig_bytes, t.last.resp_pkts, t.last.resp_bytes)
            records.append(self._record(t, cur, now_ms, ended=True))
        return records

    def _record(self, t: _Tracked, cur: tuple[int, int, int, int], now_ms: int, ended: bool) -> dict:
        e = t.last
        prev = t.reported
        d = [max(0, c - p) for c, p in zip(cur, prev)]
        return {
            "id": e.ct_id,
            "family": e.family,
            "proto": PROTO_NAMES.get(e.proto, str(e.proto)),
            "src": e.src, "sport": e.sport, "dst": e.dst, "dport": e.dport,
            "in_port": self.port_names.get(e.mark, ""),
            "start": t.start_ms,
            "end": now_ms if ended else None,
            "new": prev == (0, 0, 0, 0),
            "state": TCP_STATES.get(e.tcp_state, "") if e.tcp_state is not None else "",
            "replied": bool(e.status & IPS_SEEN_REPLY),
            "assured": bool(e.status & IPS_ASSURED),
            "orig_pkts": d[0], "orig_bytes": d[1], "resp_pkts": d[2], "resp_bytes": d[3],
            "orig_pkts_total": cur[0], "orig_bytes_total": cur[1],
            "resp_pkts_total": cur[2], "resp_bytes_total": cur[3],
        }
