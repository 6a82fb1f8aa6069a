"""Flow batches -> detections (scans, floods, brute force, new services) for one engine.

One pass over the flow records of an interval builds per-source aggregates; the last
``window`` seconds of intervals are kept so that a slow scan spread over several intervals still
adds up.  Thresholds are the larger of a configured floor and what the engine's baseline says the
busiest normal source does (``Baseline.threshold``), so a network whose normal traffic is busier
raises them on its own.

Spoofed flows (the engine flags a flow whose first frame carried an address another MAC owns,
engine/senders.py) never count for their source address: they are aggregated under the sender
that forged them, ``mac:<mac>|<port>`` (the record's ``src_mac`` and ``in_port``), and a finding on
such a sender is a ``mac`` decision.  A spoofed record without a sender is left out and counted
(``Detector.spoofed_unattributed``).

A *failed* connection is one the server never completed: a TCP flow that conntrack never marked
assured (SYN unanswered, answered by RST, or half-open), or one the engine labels with a rejected
or half-open ``conn_state``; a UDP flow with no answer.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Iterable

from .baselines import Baseline, IntervalSummary

# conn_state as the engine reports it (Zeek's conn.log letters, engine/flows.py)
_FAILED_STATES = {"S0", "REJ", "SH", "RSTOS0", "RSTRH", "SHR"}
_HALFOPEN_STATES = {"S0", "SH"}


@dataclass(frozen=True)
class Finding:
    kind: str            # horizontal-scan, vertical-scan, flood, brute-force, new-service
    scope: str           # ip or flow
    value: str
    src: str
    reason: str
    evidence: dict[str, Any]


class _Src:
    __slots__ = ("hosts", "ports", "failed_dst", "new_svc", "bytes_svc", "pkts", "bytes", "forged")

    def __init__(self):
        self.hosts: dict[tuple, set] = defaultdict(set)    # (proto, dport) -> failed dsts
        self.ports: dict[str, set] = defaultdict(set)      # dst -> failed dports
        self.failed_dst: dict[str, int] = defaultdict(int)  # dst -> failed new flows
        self.new_svc: dict[tuple, int] = defaultdict(int)   # (dst, proto, dport) -> new flows
        self.bytes_svc: dict[tuple, int] = defaultdict(int)
        self.pkts = 0
        self.bytes = 0
        self.forged: set[str] = set()                       # addresses a mac: sender forged


MAC_KEY = "mac:"


def target(key: str) -> tuple[str, str, str]:
    """Per-source key -> (decision scope, value, how a reason names it)."""
    if key.startswith(MAC_KEY):
        value = key[len(MAC_KEY):]
        mac, _, port = value.partition("|")
        return "mac", value, f"{mac} on {port}"
    return "ip", key, key


def _failed(f: dict) -> tuple[bool, bool]:
    """(failed, half-open) for one record."""
    cs = f.get("conn_state")
    if cs:
        cs = str(cs)
        return cs in _FAILED_STATES, cs in _HALFOPEN_STATES
    proto = f.get("proto")
    if proto == "tcp":
        if f.get("assured"):
            return False, False
        st = f.get("state", "")
        return True, st in ("syn_sent", "syn_recv", "syn_sent2") or not f.get("replied")
    if proto == "udp":
        no_answer = not f.get("replied") and not f.get("resp_pkts_total", f.get("resp_pkts"))
        return no_answer, False
    return False, False


@dataclass
class Thresholds:
    window: float = 10.0
    hscan_hosts: int = 8          # distinct hosts on one port with failed connections
    vscan_ports: int = 12         # distinct ports on one host with failed connections
    flood_failed: int = 400       # failed connections from one source to one host in the window
    flood_pps: float = 4000.0     # packets/s of small packets (< flood_max_pkt_bytes) from one source
    flood_max_pkt_bytes: int = 200
    brute_new: int = 25           # new connections from one source to one service in the window
    brute_max_bytes: int = 20000  # ... each carrying on average fewer bytes than this
    k: float = 6.0
    factor: float = 2.0
    min_intervals: int = 10
    new_service: bool = True


class Detector:
    """Per-engine detector; ``evaluate`` is called once per flow batch."""

    def __init__(self, engine: str, th: Thresholds):
        self.engine = engine
        self.th = th
        self.window: deque[tuple[float, dict[str, _Src]]] = deque()
        self.traffic_time = 0.0
        self.spoofed_unattributed = 0      # spoofed flow records that named no sender

    def summarise(self, flows: Iterable[dict], seconds: float,
                  since_ms: int | None = None) -> tuple[dict[str, _Src], IntervalSummary]:
        """Per-source aggregates of one batch.  A record counts as a new connection only if it is the
        flow's first report and the flow started at or after ``since_ms`` (when given): an engine
        that restarts reports every flow it finds in conntrack as new, minutes of history at once."""
        by_src: dict[str, _Src] = {}
        n = new = pkts = nbytes = rejected = halfopen = unattributed = 0
        services: dict[str, list] = {}
        for f in flows:
            n += 1
            try:
                src = f["src"]
                dst = f["dst"]
                proto = f["proto"]
                dport = int(f.get("dport") or 0)
                p = int(f.get("orig_pkts") or 0) + int(f.get("resp_pkts") or 0)
                b = int(f.get("orig_bytes") or 0) + int(f.get("resp_bytes") or 0)
            except (KeyError, TypeError, ValueError):
                continue
            forged = None
            if f.get("spoofed"):
                mac, port = f.get("src_mac"), f.get("in_port")
                if not (isinstance(mac, str) and mac and isinstance(port, str) and port):
                    unattributed += 1      # never against the forged address; no sender to name
                    continue
                forged, src = src, f"{MAC_KEY}{mac}|{port}"
            s = by_src.get(src)
            if s is None:
                s = by_src[src] = _Src()
            if forged is not None and len(s.forged) < 8:
                s.forged.add(forged)
            s.pkts += p
            s.bytes += b
            pkts += p
            nbytes += b
            is_new = bool(f.get("new"))
            if is_new and since_ms is not None:
                try:
                    is_new = int(f.get("start") or since_ms) >= since_ms
                except (TypeError, ValueError):
                    pass
            failed, half = _failed(f)
            if is_new:
                new += 1
                if not failed:   # brute force is completed short connections; a SYN flood is not
                    svc = (dst, proto, dport)
                    s.new_svc[svc] += 1
                    s.bytes_svc[svc] += int(f.get("orig_bytes_total", f.get("orig_bytes")) or 0) + \
                        int(f.get("resp_bytes_total", f.get("resp_bytes")) or 0)
                if failed:
                    rejected += not half
                    halfopen += half
                    s.hosts[(proto, dport)].add(dst)
                    s.ports[dst].add(dport)
                    s.failed_dst[dst] += 1
            if not failed and proto in ("tcp", "udp") and (f.get("replied") or f.get("resp_pkts")):
                key = f"{proto}/{dst}/{dport}"
                acc = services.get(key)
                if acc is None:
                    acc = services[key] = [0, 0, set()]
                acc[0] += b
                acc[1] += is_new
                if len(acc[2]) < 64:
                    acc[2].add(src)
        secs = max(seconds, 1e-3)
        smax = {"src_pps": max((s.pkts / secs for s in by_src.values()), default=0.0)}
        self.spoofed_unattributed += unattributed
        summary = IntervalSummary(seconds=secs, flows=n, new_flows=new, pkts=pkts, bytes=nbytes,
                                  rejected=rejected, halfopen=halfopen, source_max=smax,
                                  services={k: (v[0], v[1], v[2]) for k, v in services.items()},
                                  sources=frozenset(k for k in by_src if not k.startswith(MAC_KEY)))
        return by_src, summary

    def evaluate(self, flows: list[dict], seconds: float, baseline: Baseline,
                 learned: bool, rates: bool = True,
                 since_ms: int | None = None) -> tuple[list[Finding], IntervalSummary]:
        """Findings for this interval. ``learned``: the baseline's learning phase is over (new-service).

        ``rates`` False for the first batch after a gap (an engine that restarted reports the
        whole history of the flows it finds in conntrack as one interval): no packet-rate flood.
        ``since_ms``: flows that started earlier are not new connections of this interval
        (``summarise``)."""
        th = self.th
        by_src, summary = self.summarise(flows, seconds, since_ms)
        if summary.flows:
            self.traffic_time += summary.seconds
        self.window.append((self.traffic_time, by_src))
        while self.window and self.window[0][0] <= self.traffic_time - th.window:
            self.window.popleft()
        t_hosts = baseline.threshold("src_hosts", th.hscan_hosts, th.k, th.factor, th.min_intervals)
        t_ports = baseline.threshold("src_ports_per_host", th.vscan_ports, th.k, th.factor, th.min_intervals)
        t_failed = baseline.threshold("src_failed_per_host", th.flood_failed, th.k, th.factor, th.min_intervals)
        t_new = baseline.threshold("src_new_per_service", th.brute_new, th.k, th.factor, th.min_intervals)
        t_pps = baseline.threshold("src_pps", th.flood_pps, th.k, th.factor, th.min_intervals)
        win = f"{min(th.window, self.traffic_time):.0f}s"
        out: list[Finding] = []
        smax = summary.source_max
        for k in ("src_hosts", "src_ports_per_host", "src_failed_per_host", "src_new_per_service"):
            smax[k] = 0.0
        older = [b for _, b in list(self.window)[:-1]]
        for src, cur in by_src.items():
            parts = [cur] + [b[src] for b in older if src in b]
            scope, value, who = target(src)
            forged = sorted(set().union(*(p.forged for p in parts)))
            if forged:
                who += f" forging {', '.join(forged)}"
            hosts: dict[tuple, set] = defaultdict(set)
            ports: dict[str, set] = defaultdict(set)
            failed_dst: dict[str, int] = defaultdict(int)
            new_svc: dict[tuple, int] = defaultdict(int)
            bytes_svc: dict[tuple, int] = defaultdict(int)
            for p in parts:
                for k, v in p.hosts.items():
                    hosts[k] |= v
                for k, v in p.ports.items():
                    ports[k] |= v
                for k, v in p.failed_dst.items():
                    failed_dst[k] += v
                for k, v in p.new_svc.items():
                    new_svc[k] += v
                for k, v in p.bytes_svc.items():
                    bytes_svc[k] += v
            # what the busiest source did over the window: the baseline learns these
            if hosts:
                smax["src_hosts"] = max(smax["src_hosts"], max(len(v) for v in hosts.values()))
            if ports:
                smax["src_ports_per_host"] = max(smax["src_ports_per_host"], max(len(v) for v in ports.values()))
            if failed_dst:
                smax["src_failed_per_host"] = max(smax["src_failed_per_host"], max(failed_dst.values()))
            if new_svc:
                smax["src_new_per_service"] = max(smax["src_new_per_service"], max(new_svc.values()))
            if hosts:
                (proto, dport), dsts = max(hosts.items(), key=lambda kv: len(kv[1]))
                all_dsts = set().union(*hosts.values())
                if len(dsts) >= t_hosts or len(all_dsts) >= max(t_hosts * 2, t_hosts + 8):
                    n = max(len(dsts), len(all_dsts))
                    out.append(Finding("horizontal-scan", scope, value, src,
                                       f"horizontal scan: {who} tried {n} hosts without completing a "
                                       f"connection (busiest: {proto}/{dport} on {len(dsts)}) in {win}; "
                                       f"threshold {t_hosts:.0f}",
                                       {"hosts": n, "port": f"{proto}/{dport}", "threshold": t_hosts}))
            if ports:
                dst, dports = max(ports.items(), key=lambda kv: len(kv[1]))
                if len(dports) >= t_ports:
                    out.append(Finding("vertical-scan", scope, value, src,
                                       f"vertical scan: {who} tried {len(dports)} ports on {dst} without "
                                       f"completing a connection in {win}; threshold {t_ports:.0f}",
                                       {"dst": dst, "ports": len(dports), "threshold": t_ports}))
            if failed_dst:
                dst, nfail = max(failed_dst.items(), key=lambda kv: kv[1])
                if nfail >= t_failed:
                    out.append(Finding("flood", scope, value, src,
                                       f"flood: {who} opened {nfail} connections to {dst} that never "
                                       f"completed in {win}; threshold {t_failed:.0f}",
                                       {"dst": dst, "failed": nfail, "threshold": t_failed}))
                    continue
            pps = cur.pkts / max(summary.seconds, 1.0)
            if rates and pps >= t_pps and cur.pkts and cur.bytes / cur.pkts < th.flood_max_pkt_bytes:
                out.append(Finding("flood", scope, value, src,
                                   f"flood: {who} sent {pps:.0f} small packets/s "
                                   f"({cur.bytes / cur.pkts:.0f} bytes each); threshold {t_pps:.0f}/s",
                                   {"pps": round(pps), "threshold": t_pps}))
                continue
            if new_svc:
                svc, nnew = max(new_svc.items(), key=lambda kv: kv[1])
                avg = bytes_svc[svc] / max(nnew, 1)
                # a learned busy client's bursts are its own allowance, not a newcomer's
                limit = t_new if baseline.known_source(src) else float(th.brute_new)
                if nnew >= limit and avg < th.brute_max_bytes:
                    dst, proto, dport = svc
                    out.append(Finding("brute-force", scope, value, src,
                                       f"brute force: {who} opened {nnew} short connections to "
                                       f"{proto}/{dport} on {dst} in {win} ({avg:.0f} bytes each); "
                                       f"threshold {limit:.0f}"
                                       f"{'' if baseline.known_source(src) else ' (a source not seen while learning)'}",
                                       {"service": f"{proto}/{dst}/{dport}", "connections": nnew,
                                        "threshold": limit}))
        if learned and th.new_service:
            seen: set[str] = set()
            for f in flows:
                if not f.get("new") or f.get("proto") not in ("tcp", "udp") or f.get("spoofed"):
                    continue
                if _failed(f)[0] or not (f.get("replied") or f.get("resp_pkts")):
                    continue
                key = f"{f['proto']}/{f['dst']}/{int(f.get('dport') or 0)}"
                if key in seen or baseline.known_service(key):
                    continue
                seen.add(key)
                value = f"{f['src']}|{f['dst']}|{f['proto']}|{int(f.get('dport') or 0)}"
                out.append(Finding("new-service", "flow", value, f["src"],
                                   f"new service: {f['src']} reached {f['proto']}/{f.get('dport')} on "
                                   f"{f['dst']}, which never received traffic while the engine learned",
                                   {"service": key}))
        return out, summary
