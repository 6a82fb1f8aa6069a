"""Engine flow batches and statuses -> InfluxDB points with bounded cardinality.

Per batch (one engine interval) the manager writes, never one series per flow:

- ``engine_traffic,engine=E``: bytes/packets per direction, flows, new and ended flows;
- ``service_traffic,engine=E,proto=P,port=N``: per destination service.  A port gets its own
  series when it is well known (< 1024), configured, or among the busiest of the interval — and
  at most ``max_service_series`` distinct (proto, port) pairs ever; the rest fold into ``other``;
- ``top_talkers,engine=E,rank=R``: the N busiest sources of the interval, address as a field;
- ``flow_batches,engine=E``: seq, record count, gaps and duplicates seen;
- ``engine_status,engine=E``: mode, learning progress, tracked flows, applied rule-set generation;
- ``engine_counters,engine=E``: the engine's own counters (cumulative since it started);
- ``engine_enforcement,engine=E``: the kernel's rule set: generation, elements (per set as
  ``elements_<set>``), packets dropped (per drop rule as ``drops_<rule>``), rejected rule sets;
- ``engine_events,engine=E,type=T``: engine protocol events (type folded into ``other`` beyond
  ``max_event_types``), details as string fields.

A batch's points carry the interval end plus ``seq mod 10^6`` nanoseconds as their timestamp, so
the chunks of one interval stay distinct points and a batch written twice (a QoS 1 redelivery)
overwrites itself instead of counting twice.

The ingest component is the process's single subscriber of flows, statuses and events (paho keeps
one callback per topic filter); it hands each accepted message to the consumers registered in
``ctx.consumers`` (the policy component).  Flows come through an MQTT v5 shared subscription when
configured, so that several manager processes split the batches between them.
"""
from __future__ import annotations

import heapq
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from .. import payload, topics
from ..counters import Counters
from ..influx import line
from .config import IngestConfig

log = logging.getLogger(__name__)

_SUMS = ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts")


@dataclass
class _SeqState:
    last: int = 0
    seen_recent: set[int] = field(default_factory=set)


class FlowAggregator:
    def __init__(self, cfg: IngestConfig, counters: Counters):
        self.cfg = cfg
        self.counters = counters
        self._services: set[tuple[str, int]] = set()
        self._seq: dict[str, _SeqState] = defaultdict(_SeqState)
        self._lock = threading.Lock()

    def check_seq(self, engine: str, seq: int) -> str:
        """'new', 'duplicate' (already ingested) — and counts gaps."""
        with self._lock:
            st = self._seq[engine]
            if seq in st.seen_recent or (st.last and seq <= st.last - 10_000):
                self.counters.inc("flow_batches_duplicate")
                return "duplicate"
            if st.last and seq > st.last + 1:
                self.counters.inc("flow_batch_gaps", seq - st.last - 1)
            if seq > st.last:
                st.last = seq
            st.seen_recent.add(seq)
            if len(st.seen_recent) > 4096:
                floor = st.last - 2048
                st.seen_recent = {s for s in st.seen_recent if s > floor}
            return "new"

    def _service_key(self, proto: str, port: int, busiest: set[tuple[str, int]]) -> str:
        key = (proto, port)
        if key in self._services:
            return str(port)
        if port < 1024 or port in self.cfg.service_ports or key in busiest:
            if len(self._services) < self.cfg.max_service_series:
                self._services.add(key)
                return str(port)
            self.counters.inc("service_series_capped")
        return "other"

    def batch_points(self, msg: dict) -> list[str]:
        engine = str(msg.get("engine") or msg.get("sender"))
        ts_ns = int(msg.get("interval", {}).get("end", msg["ts"])) * 1_000_000 + int(msg.get("seq", 0)) % 1_000_000
        flows = msg.get("flows") or []
        total = dict.fromkeys(_SUMS, 0)
        new_flows = ended = 0
        svc: dict[tuple[str, int], dict] = defaultdict(lambda: {**dict.fromkeys(_SUMS, 0), "flows": 0,
                                                               "clients": set()})
        talkers: dict[str, int] = defaultdict(int)
        for f in flows:
            try:
                vals = [int(f.get(k, 0) or 0) for k in _SUMS]
                proto, dport, src = str(f.get("proto", "")), int(f.get("dport", 0) or 0), str(f.get("src", ""))
            except (TypeError, ValueError):
                self.counters.inc("flow_records_malformed")
                continue
            for k, v in zip(_SUMS, vals):
                total[k] += v
            if f.get("new"):
                new_flows += 1
            if f.get("end"):
                ended += 1
            s = svc[(proto, dport)]
            for k, v in zip(_SUMS, vals):
                s[k] += v
            s["flows"] += 1
            s["clients"].add(src)
            talkers[src] += vals[0] + vals[1]
        points = [line("engine_traffic", {"engine": engine},
                       {**total, "flows": len(flows), "new_flows": new_flows, "ended_flows": ended,
                        "tracked": int(msg.get("flows_tracked", 0) or 0),
                        "evicted_total": int(msg.get("evicted_total", 0) or 0)}, ts_ns)]
        busiest = set(heapq.nlargest(self.cfg.top_services, svc,
                                     key=lambda k: svc[k]["orig_bytes"] + svc[k]["resp_bytes"]))
        folded: dict[tuple[str, str], dict] = {}
        for (proto, port), s in svc.items():
            tag = self._service_key(proto, port, busiest)
            acc = folded.setdefault((proto, tag), {**dict.fromkeys(_SUMS, 0), "flows": 0, "clients": set()})
            for k in _SUMS:
                acc[k] += s[k]
            acc["flows"] += s["flows"]
            acc["clients"] |= s["clients"]
        for (proto, tag), s in folded.items():
            fields = {k: s[k] for k in _SUMS}
            fields["flows"] = s["flows"]
            fields["clients"] = len(s["clients"])
            points.append(line("service_traffic", {"engine": engine, "proto": proto, "port": tag}, fields, ts_ns))
        top = heapq.nlargest(self.cfg.top_talkers, talkers.items(), key=lambda kv: kv[1])
        for rank, (src, nbytes) in enumerate(top, 1):
            points.append(line("top_talkers", {"engine": engine, "rank": rank}, {"src": src, "bytes": nbytes}, ts_ns))
        points.append(line("flow_batches", {"engine": engine},
                           {"seq": int(msg.get("seq", 0)), "records": len(flows),
                            "poll_ms": float(msg.get("poll_ms", 0.0) or 0.0)}, ts_ns))
        return points


def status_points(msg: dict) -> list[str]:
    engine = str(msg.get("engine") or msg.get("sender"))
    learning = msg.get("learning") or {}
    fields = {"state": str(msg.get("state", "")), "mode": str(msg.get("mode", "")),
              "learning_progress": float(learning.get("progress", 0.0) or 0.0),
              "flows_tracked": int(msg.get("flows_tracked", 0) or 0)}
    gen = msg.get("ruleset_generation")
    if isinstance(gen, int):
        fields["ruleset_generation"] = gen
    ts_ns = int(msg["ts"]) * 1_000_000
    points = [line("engine_status", {"engine": engine}, fields, ts_ns)]
    # the engine's own counters (names fixed by its code: bounded), cumulative since it started
    counters = {_field_name(k): v for k, v in (msg.get("counters") or {}).items()
                if isinstance(v, int) and not isinstance(v, bool)}
    if counters:
        points.append(line("engine_counters", {"engine": engine}, dict(list(counters.items())[:MAX_FIELDS]), ts_ns))
    enf = msg.get("enforcement")
    if isinstance(enf, dict):
        points.extend(_enforcement_points(engine, enf, ts_ns))
    return points


MAX_FIELDS = 200


def _field_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in str(name))[:100]


def _enforcement_points(engine: str, enf: dict, ts_ns: int) -> list[str]:
    """The kernel's view of an engine's rule set: applied generation, elements per set and the
    packets each drop rule has dropped (cumulative; from the rule counters)."""
    fields: dict[str, Any] = {}
    if isinstance(enf.get("generation"), int):
        fields["generation"] = enf["generation"]
    counts = {k: v for k, v in (enf.get("counts") or {}).items() if isinstance(v, int)}
    if counts:
        fields["elements"] = sum(counts.values())
        fields.update((f"elements_{_field_name(k)}", v) for k, v in list(counts.items())[:MAX_FIELDS // 2])
    drops = {k: v for k, v in (enf.get("drops") or {}).items() if isinstance(v, int)}
    if drops:
        fields["drops"] = sum(drops.values())
        fields.update((f"drops_{_field_name(k)}", v) for k, v in list(drops.items())[:MAX_FIELDS // 2])
    rejected = enf.get("rejected") or {}
    if isinstance(rejected, dict):
        fields["rejected"] = sum(v for v in rejected.values() if isinstance(v, int))
    if isinstance(enf.get("table_ready"), bool):
        fields["table_ready"] = enf["table_ready"]
    if isinstance(enf.get("last_apply_ms"), (int, float)):
        fields["last_apply_ms"] = float(enf["last_apply_ms"])
    return [line("engine_enforcement", {"engine": engine}, fields, ts_ns)] if fields else []


class IngestComponent:
    """Engine flow batches (shared subscription) and statuses -> InfluxDB."""

    name = "ingest"

    def __init__(self, cfg: IngestConfig, ctx):
        self.cfg = cfg
        self.ctx = ctx
        self.counters = ctx.counters
        self.aggregator = FlowAggregator(cfg, ctx.counters)
        self.engines: dict[str, dict] = {}
        self._event_types: set[str] = set()
        if not hasattr(ctx, "consumers"):
            ctx.consumers = {"flows": [], "status": [], "events": []}
        ctx.ingest_hub = True
        flows = topics.engine("+", "flows")
        if cfg.shared_subscription:
            flows = topics.shared(flows, cfg.share_group)
        ctx.mqtt.subscribe(flows, self.on_flows, qos=1)
        ctx.mqtt.subscribe(topics.engine("+", "status"), self.on_status, qos=1)
        ctx.mqtt.subscribe(topics.engine("+", "events"), self.on_events, qos=1)
        if "engines.list" not in ctx.control.methods:  # the policy component's list is richer
            ctx.control.register("engines.list", self.list_engines)

    def start(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass

    def status(self) -> dict:
        return {"engines": len(self.engines)}

    def list_engines(self) -> list[dict]:
        return [self.engines[k] for k in sorted(self.engines)]

    def _decode(self, msg, kind: str) -> dict | None:
        try:
            return payload.decode(msg.payload, kind)
        except payload.PayloadError as exc:
            self.counters.inc(f"payload_rejected_{exc.reason}")
            self.counters.inc("payload_rejected")
            log.warning("rejected payload on %s: %s", msg.topic, exc)
            return None

    def on_flows(self, msg) -> None:
        data = self._decode(msg, "flows")
        if data is None:
            return
        dev = topics.device_of(msg.topic)
        if dev is None or data.get("engine", dev[1]) != dev[1]:
            self.counters.inc("payload_rejected_wrong_sender")
            log.warning("flow batch on %s claims engine %r; ignored", msg.topic, data.get("engine"))
            return
        if not isinstance(data.get("seq"), int) or not isinstance(data.get("flows", []), list):
            self.counters.inc("payload_rejected_bad_fields")
            log.warning("flow batch on %s lacks an integer seq or a flows list", msg.topic)
            return
        if self.aggregator.check_seq(dev[1], data["seq"]) == "duplicate":
            return
        data["engine"] = dev[1]
        if self.cfg.write_points:
            self.ctx.writer.write(self.aggregator.batch_points(data))
        self.counters.inc("flow_batches_ingested")
        self.counters.inc("flow_records_ingested", len(data.get("flows", [])))
        self._dispatch("flows", dev[1], data)

    def _dispatch(self, kind: str, engine: str, data: dict) -> None:
        for fn in self.ctx.consumers.get(kind, ()):
            try:
                fn(engine, data)
            except Exception:
                self.counters.inc(f"consumer_errors_{kind}")
                log.exception("consumer of %s from %s failed", kind, engine)

    def on_events(self, msg) -> None:
        data = self._decode(msg, "events")
        if data is None:
            return
        dev = topics.device_of(msg.topic)
        if dev is None:
            return
        events = data.get("events") if isinstance(data.get("events"), list) else [data]
        points = []
        for i, ev in enumerate(events):
            if not isinstance(ev, dict):
                self.counters.inc("engine_events_malformed")
                continue
            etype = str(ev.get("type") or ev.get("kind") or "event")[:60]
            if etype not in self._event_types:
                if len(self._event_types) < self.cfg.max_event_types:
                    self._event_types.add(etype)
                else:
                    etype = "other"
            fields = {k: (v if isinstance(v, (int, float, bool)) else str(v)[:500])
                      for k, v in ev.items() if k not in ("type", "kind") and v is not None}
            ts = ev.get("ts") if isinstance(ev.get("ts"), int) else data["ts"]
            points.append(line("engine_events", {"engine": dev[1], "type": etype},
                               fields or {"count": 1}, int(ts) * 1_000_000 + i))
        if self.cfg.write_points and points:
            self.ctx.writer.write(points)
        self.counters.inc("engine_events_ingested", len(points))
        self._dispatch("events", dev[1], data)

    def on_status(self, msg) -> None:
        if not msg.payload:  # a cleared retained status
            return
        data = self._decode(msg, "status")
        if data is None:
            return
        dev = topics.device_of(msg.topic)
        data["engine"] = dev[1] if dev else data.get("sender")
        self.engines[data["engine"]] = data
        if self.cfg.write_points:
            self.ctx.writer.write(status_points(data))
        self._dispatch("status", data["engine"], data)
