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

Nothing is acknowledged to the broker before it is stored: each handler defers the MQTT
acknowledgement of its message until the InfluxDB writer is done with the message's points
(``MqttClient.defer_ack``), and the manager's session is persistent, so a manager killed with
points still in its buffer gets the same messages again when it comes back.

Ingest only writes: it subscribes for itself (``MqttClient.subscribe_kind``), as every other
component does for what it needs.  Flows come through an MQTT v5 shared subscription when
configured, so that several manager processes split the writing between them; the policy takes
its own, unshared subscription (it needs every batch of its engines).
"""
from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from typing import Any

from ... import topics
from ...contracts.engine import EngineStatus, EventBatch, FlowBatch
from ...counters import Counters
from ...influx import line
from ..config import IngestConfig
from ..seqtrack import SeqTracker, sending_engine

log = logging.getLogger(__name__)

_SUMS = ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts")
BROKER_DROPPED = "$SYS/broker/publish/messages/dropped"     # Mosquitto's; other brokers: absent


class FlowAggregator:
    def __init__(self, cfg: IngestConfig, counters: Counters):
        self.cfg = cfg
        self.counters = counters
        self._services: set[tuple[str, int]] = set()
        self._seq = SeqTracker(counters, "flow_batches_duplicate", "flow_batch_gaps")

    def check_seq(self, engine: str, seq: int) -> str:
        """'new', 'duplicate' (already ingested) — and counts gaps."""
        return self._seq.check(engine, seq)

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

    def batch_points(self, batch: FlowBatch) -> list[str]:
        engine = batch.engine
        bounds = batch.interval_bounds()
        ts_ns = (bounds[1] if bounds else batch.ts) * 1_000_000 + batch.seq % 1_000_000
        flows = batch.flows
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
                        "tracked": batch.flows_tracked, "evicted_total": batch.evicted_total}, ts_ns)]
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
                           {"seq": batch.seq, "records": len(flows), "poll_ms": float(batch.poll_ms)}, ts_ns))
        return points


def status_points(engine: str, st: EngineStatus) -> list[str]:
    fields = {"state": st.state, "mode": st.mode or "", "learning_progress": st.learning_progress(),
              "flows_tracked": st.flows_tracked}
    if st.ruleset_generation is not None:
        fields["ruleset_generation"] = st.ruleset_generation
    ts_ns = st.ts * 1_000_000
    points = [line("engine_status", {"engine": engine}, fields, ts_ns)]
    # the engine's own counters (names fixed by its code: bounded), cumulative since it started
    counters = {_field_name(k): v for k, v in st.counters.items()
                if isinstance(v, int) and not isinstance(v, bool)}
    if counters:
        points.append(line("engine_counters", {"engine": engine}, dict(list(counters.items())[:MAX_FIELDS]), ts_ns))
    if st.enforcement is not None:
        points.extend(_enforcement_points(engine, st.enforcement, ts_ns))
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
        flows = topics.engine("+", "flows")
        if cfg.shared_subscription:
            flows = topics.shared(flows, cfg.share_group)
        ctx.mqtt.subscribe_kind(flows, FlowBatch, self.on_flows, qos=1)
        ctx.mqtt.subscribe_kind(topics.engine("+", "status"), EngineStatus, self.on_status, qos=1)
        ctx.mqtt.subscribe_kind(topics.engine("+", "events"), EventBatch, self.on_events, qos=1)
        # what the broker dropped for want of queue room (Mosquitto's max_queued_messages): a
        # manager that was away too long lost messages there, and the count says how many
        self._broker_dropped: int | None = None
        ctx.mqtt.subscribe(BROKER_DROPPED, self.on_broker_dropped, qos=0)
        if "engines.list" not in ctx.control.methods:  # the policy component's list is richer
            ctx.control.register("engines.list", self.list_engines)

    def start(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass

    def status(self) -> dict:
        return {"engines": len(self.engines), "broker_messages_dropped": self._broker_dropped}

    def on_broker_dropped(self, msg) -> None:
        """Mosquitto's cumulative count of messages it dropped (queue full), as counter
        ``broker_messages_dropped``: the first reading whole (drops while this manager was away
        are the ones that matter), then what the broker added (all of it after a broker restart,
        which counts from zero again)."""
        try:
            n = int(msg.payload.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            self.counters.inc("broker_stats_malformed")
            return
        last = self._broker_dropped
        added = n if last is None or n < last else n - last
        self._broker_dropped = n
        if added:
            self.counters.inc("broker_messages_dropped", added)
            log.warning("the broker dropped %d messages (queue full; %d since it started)", added, n)

    def list_engines(self) -> list[dict]:
        return [self.engines[k] for k in sorted(self.engines)]

    def on_flows(self, msg, batch: FlowBatch) -> None:
        engine = sending_engine(msg.topic, batch.engine, self.counters)
        if engine is None:
            return
        if self.aggregator.check_seq(engine, batch.seq) == "duplicate":
            if self.cfg.write_points:
                # a redelivery: acknowledge it only once its first copy's points have left
                self.ctx.writer.write([], on_done=self.ctx.mqtt.defer_ack())
            return
        if self.cfg.write_points:
            self.ctx.writer.write(self.aggregator.batch_points(batch), on_done=self.ctx.mqtt.defer_ack())
        self.counters.inc("flow_batches_ingested")
        self.counters.inc("flow_records_ingested", len(batch.flows))

    def on_events(self, msg, batch: EventBatch) -> None:
        engine = sending_engine(msg.topic, batch.engine, self.counters)
        if engine is None:
            return
        if batch.invalid:
            self.counters.inc("engine_events_malformed", batch.invalid)
        points = []
        for i, ev in enumerate(batch.events):
            etype = ev.type[:60]
            if etype not in self._event_types:
                if len(self._event_types) < self.cfg.max_event_types:
                    self._event_types.add(etype)
                else:
                    etype = "other"
            fields = {k: (v if isinstance(v, (int, float, bool)) else str(v)[:500])
                      for k, v in ev.body().items() if k != "type" and v is not None}
            ts = ev.ts if ev.ts is not None else batch.ts
            points.append(line("engine_events", {"engine": engine, "type": etype},
                               fields or {"count": 1}, ts * 1_000_000 + i))
        if self.cfg.write_points and points:
            self.ctx.writer.write(points, on_done=self.ctx.mqtt.defer_ack())
        self.counters.inc("engine_events_ingested", len(points))

    def on_status(self, msg, st: EngineStatus) -> None:
        dev = topics.device_of(msg.topic)
        if dev is None:
            return
        engine = dev[1]
        self.engines[engine] = {**st.body(), "engine": engine, "ts": st.ts}
        if self.cfg.write_points:
            self.ctx.writer.write(status_points(engine, st), on_done=self.ctx.mqtt.defer_ack())
