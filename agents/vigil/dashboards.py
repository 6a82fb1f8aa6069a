"""Grafana dashboards for Vigil, generated from code (``dashboards/*.json``).

    python -m vigil.dashboards --out dashboards/      # write every dashboard
    python -m vigil.dashboards --check dashboards/    # exit 1 when a committed file differs

Every query is raw InfluxQL (``rawQuery: true``) against what the manager really writes (see
``MEASUREMENTS``): InfluxDB 1.x serves it, 2.x through its v1 compatibility API, 3.x natively.
Grafana's macros are used as Grafana substitutes them for InfluxQL: ``$timeFilter`` (the time
range), ``$__interval`` / ``$__interval_ms`` (the bucket width) and template variables in regex
matches (``"engine" =~ /^$engine$/``, which is how Grafana interpolates a multi-value or "All"
selection: ``(e1|e2)``).  Each dashboard has a datasource variable of type ``influxdb``, so the
same JSON works with whatever InfluxDB datasource the Grafana role provisions.

Rates: flow batches carry per-interval deltas, so a rate is ``sum(x) * 1000 / $__interval_ms``;
manager counters (``manager_stats``) are cumulative since the manager started, so a rate is
``non_negative_derivative(max(x), 1s)`` and a count per bucket ``non_negative_difference(max(x))``
(a restart resets them; non-negative keeps the reset from showing as a dip).

Only what the system writes is charted; what an operator would want but the system does not
store is listed in dashboards/README.md ("Not charted because the system does not write it").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .contracts import influx as influx_schema

SCHEMA_VERSION = 39
DS = {"type": "influxdb", "uid": "${datasource}"}
TF = "$timeFilter"
PER_S = "1000 / $__interval_ms"          # multiply a per-bucket sum by this for a per-second rate

# What the manager writes to InfluxDB: defined with the writers' other contracts; every query
# here is checked against it by tests/unit/test_dashboards.py.
MEASUREMENTS = influx_schema.MEASUREMENTS


# -- building blocks --------------------------------------------------------------------------
def target(query: str, ref: str = "A", alias: str = "", fmt: str = "time_series") -> dict:
    t = {"refId": ref, "datasource": DS, "query": query, "rawQuery": True, "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def _targets(queries) -> list[dict]:
    """A query string, or a list of (query, alias) pairs."""
    if isinstance(queries, str):
        return [target(queries)]
    return [target(q, chr(ord("A") + i), alias) for i, (q, alias) in enumerate(queries)]


def timeseries(title: str, queries, unit: str = "short", description: str = "", bars: bool = False,
               stack: bool = False, alias: str = "", legend_calcs: tuple[str, ...] = ("mean", "max")) -> dict:
    targets = _targets(queries)
    if alias:
        for t in targets:
            t.setdefault("alias", alias)
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": {
            "drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 80 if bars else 10,
            "showPoints": "never", "spanNulls": True,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}},
            "overrides": []},
        "options": {"legend": {"showLegend": True, "displayMode": "table", "placement": "bottom",
                               "calcs": list(legend_calcs)},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, query: str, unit: str = "short", description: str = "", calc: str = "lastNotNull",
         thresholds: list[tuple[float | None, str]] | None = None) -> dict:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "targets": [target(query)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                     "color": {"mode": "thresholds"}}, "overrides": []},
        "options": {"reduceOptions": {"calcs": [calc], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "none", "justifyMode": "auto",
                    "orientation": "auto", "textMode": "auto"},
    }


def table(title: str, query: str, description: str = "", units: dict[str, str] | None = None,
          hide_time: bool = False, sort: str | None = None) -> dict:
    overrides = [{"matcher": {"id": "byName", "options": name},
                  "properties": [{"id": "unit", "value": unit}]} for name, unit in (units or {}).items()]
    transformations = []
    if hide_time:
        transformations.append({"id": "organize", "options": {"excludeByName": {"Time": True}}})
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "targets": [target(query, fmt="table")],
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                                "filterable": True}}, "overrides": overrides},
        "options": {"showHeader": True, "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": ""},
                    "sortBy": [{"displayName": sort, "desc": True}] if sort else []},
        "transformations": transformations,
    }


def query_var(name: str, label: str, measurement: str, key: str) -> dict:
    q = f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "{key}"'
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": q, "definition": q,
            "refresh": 2, "sort": 1, "multi": True, "includeAll": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "hide": 0, "regex": "", "skipUrlSync": False}


DATASOURCE_VAR = {"name": "datasource", "label": "InfluxDB", "type": "datasource", "query": "influxdb",
                  "current": {}, "options": [], "hide": 0, "refresh": 1, "regex": "", "skipUrlSync": False}


class Board:
    """A dashboard whose panels flow left to right in Grafana's 24-column grid."""

    def __init__(self, uid: str, title: str, description: str, variables: list[dict]):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels: list[dict] = []
        self._x = self._y = self._row_h = 0

    def row(self, title: str) -> "Board":
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y}})
        self._y += 1
        return self

    def add(self, panel: dict, w: int = 12, h: int = 8) -> "Board":
        if self._x + w > 24:
            self._newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)
        return self

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
        self._x = self._row_h = 0

    def json(self) -> dict:
        for i, p in enumerate(self.panels, 1):
            p["id"] = i
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["vigil"], "timezone": "browser", "editable": True, "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "fiscalYearStartMonth": 0, "liveNow": False,
            "weekStart": "",
            "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                      "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                      "name": "Annotations & Alerts", "type": "dashboard"}]},
            "links": [{"title": "Vigil", "type": "dashboards", "tags": ["vigil"], "asDropdown": True,
                       "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "templating": {"list": [DATASOURCE_VAR, *self.variables]},
            "panels": self.panels,
        }


def _cnt(field: str, measurement: str, where: str, group: str = "") -> str:
    g = f', {group}' if group else ""
    return (f'SELECT count("{field}") FROM "{measurement}" WHERE {where} AND {TF} '
            f'GROUP BY time($__interval){g} fill(0)')


def _stats_rate(fields: dict[str, str], per_second: bool = True, where: str = '"manager" =~ /^$manager$/') -> str:
    """manager_stats counters as a rate per second (or an increase per bucket)."""
    fn = "non_negative_derivative(max(\"{f}\"), 1s)" if per_second else "non_negative_difference(max(\"{f}\"))"
    cols = ", ".join(f'{fn.format(f=f)} AS "{label}"' for f, label in fields.items())
    return (f'SELECT {cols} FROM "manager_stats" WHERE {where + " AND " if where else ""}{TF} '
            f'GROUP BY time($__interval), "manager"')


ENGINE_F = '"engine" =~ /^$engine$/'


def per_engine(select: str, measurement: str, where: str = "", fill: str = " fill(0)") -> str:
    """One series per selected engine, bucketed by Grafana's interval."""
    extra = f" AND {where}" if where else ""
    return (f'SELECT {select} FROM "{measurement}" WHERE {ENGINE_F}{extra} AND {TF} '
            f'GROUP BY time($__interval), "engine"{fill}')


MANAGER = query_var("manager", "Manager", "manager_stats", "manager")


def _engine_rate(measurement: str, fields: dict[str, str], per_second: bool = True) -> str:
    """Cumulative engine figures (engine_counters, engine_enforcement) as a rate per second or an
    increase per bucket, one series per engine and field."""
    fn = "non_negative_derivative(max(\"{f}\"), 1s)" if per_second else "non_negative_difference(max(\"{f}\"))"
    cols = ", ".join(f'{fn.format(f=f)} AS "{label}"' for f, label in fields.items())
    return f'SELECT {cols} FROM "{measurement}" WHERE {ENGINE_F} AND {TF} GROUP BY time($__interval), "engine"'


# -- the dashboards ---------------------------------------------------------------------------
def fleet() -> dict:
    b = Board("vigil-fleet", "Vigil — Fleet overview",
              "Engines (state, mode, learning), their traffic, engine-local reactions and the manager's "
              "decisions.", [query_var("engine", "Engine", "engine_status", "engine")])
    last_by_engine = 'SELECT last("{f}") AS "v" FROM "engine_status" WHERE {TF} GROUP BY "engine"'
    b.row("Engines")
    b.add(stat("Engines reporting", 'SELECT count("v") FROM (' + last_by_engine.format(f="state", TF=TF) + ')',
               description="Engines that sent a status in the time range."), w=4, h=4)
    b.add(stat("Engines running", 'SELECT count("v") FROM (' + last_by_engine.format(f="state", TF=TF)
               + ") WHERE \"v\" = 'running'",
               description="Engines whose last status in the range says running (not offline/stopped)."),
          w=4, h=4)
    b.add(stat("Engines learning", 'SELECT count("v") FROM (' + last_by_engine.format(f="mode", TF=TF)
               + ") WHERE \"v\" = 'learning'",
               description="Automatic decisions are would-block (reported, not enforced) on these."),
          w=4, h=4)
    b.add(stat("Decisions created", f"SELECT count(\"id\") FROM \"decisions\" WHERE \"event\" = 'created' AND {TF}",
               calc="sum", description="Decisions the policy made in the time range (all origins)."), w=4, h=4)
    b.add(stat("Would-block decisions",
               f"SELECT count(\"id\") FROM \"decisions\" WHERE \"event\" = 'created' AND \"would_block\" != '' AND {TF}",
               calc="sum", description="Decisions not enforced on at least one engine because it was learning."),
          w=4, h=4)
    b.add(stat("Security events", f'SELECT count("raw") FROM "security_event" WHERE {TF}', calc="sum",
               description="Syslog events stored by the collector in the time range."), w=4, h=4)
    b.add(table("Engine status",
                f'SELECT last("state") AS "state", last("mode") AS "mode", last("learning_progress") AS "learning", '
                f'last("flows_tracked") AS "tracked flows" FROM "engine_status" WHERE {ENGINE_F} AND {TF} '
                f'GROUP BY "engine"',
                description="Last status of each engine in the range. Learning is the share of the learning "
                            "period done (traffic time).",
                units={"learning": "percentunit"}, hide_time=True), w=12, h=8)
    b.add(timeseries("Learning progress",
                     per_engine('last("learning_progress")', "engine_status", fill=" fill(previous)"),
                     unit="percentunit", alias="$tag_engine", legend_calcs=("last",)), w=12, h=8)
    b.row("Traffic")
    b.add(timeseries("Throughput by engine",
                     per_engine(f'(sum("orig_bytes") + sum("resp_bytes")) * 8 * {PER_S}', "engine_traffic"),
                     unit="bps", alias="$tag_engine",
                     description="Bytes both ways through the bridge, from the kernel's conntrack counters."))
    b.add(timeseries("New flows per second by engine",
                     per_engine(f'sum("new_flows") * {PER_S}', "engine_traffic"), unit="short", alias="$tag_engine"))
    b.row("Reactions")
    b.add(table("Rule sets in the kernel",
                f'SELECT last("generation") AS "generation", last("elements") AS "elements", '
                f'last("drops") AS "packets dropped", last("rejected") AS "rule sets rejected" '
                f'FROM "engine_enforcement" WHERE {ENGINE_F} AND {TF} GROUP BY "engine"',
                description="Per engine, from its last status: the applied rule-set generation, elements in "
                            "its block/allow sets, packets its drop rules dropped and rule sets it refused "
                            "(bad signature, old generation, malformed) since it started.",
                hide_time=True), w=12, h=8)
    b.add(timeseries("Packets dropped in the kernel",
                     _engine_rate("engine_enforcement", {"drops": "dropped/s"}), unit="pps",
                     alias="$tag_engine",
                     description="All drop rules of the engine's bridge table (rule sets and local "
                                 "reactions), from the rule counters."), w=12, h=8)
    b.add(timeseries("Engine events by type",
                     _cnt("severity", "engine_events", ENGINE_F, '"engine", "type"'),
                     bars=True, stack=True, alias="$tag_engine $tag_type",
                     description="Engine-local detections (scans, TCP flag anomalies, ARP rebinds, ...)."))
    b.add(timeseries("Decisions by origin",
                     _cnt("id", "decisions", "\"event\" = 'created'", '"origin"'),
                     bars=True, stack=True, alias="$tag_origin",
                     description="Decisions created per origin (operator, engine-local, flow-anomaly, "
                                 "correlation, endpoint)."))
    return b.json()


def traffic() -> dict:
    b = Board("vigil-traffic", "Vigil — Traffic",
              "Per engine: throughput and packets by service, top talkers, flows, evictions and the flow "
              "pipeline.", [query_var("engine", "Engine", "engine_traffic", "engine")])
    svc = f'FROM "service_traffic" WHERE {ENGINE_F} AND {TF} GROUP BY time($__interval), "proto", "port" fill(0)'
    b.row("Services")
    b.add(timeseries("Throughput by service",
                     f'SELECT (sum("orig_bytes") + sum("resp_bytes")) * 8 * {PER_S} {svc}', unit="bps",
                     stack=True, alias="$tag_proto/$tag_port",
                     description="Destination services of the selected engines. Ports below 1024, configured "
                                 "ports and the busiest get a series (up to a cap); the rest is 'other'."))
    b.add(timeseries("Packets by service",
                     f'SELECT (sum("orig_pkts") + sum("resp_pkts")) * {PER_S} {svc}', unit="pps", stack=True,
                     alias="$tag_proto/$tag_port"))
    b.add(timeseries("Client → server and server → client",
                     [(per_engine(f'sum("orig_bytes") * 8 * {PER_S}', "engine_traffic"), "$tag_engine client→server"),
                      (per_engine(f'sum("resp_bytes") * 8 * {PER_S}', "engine_traffic"), "$tag_engine server→client")],
                     unit="bps"))
    b.add(table("Services in the time range",
                f'SELECT sum("orig_bytes") AS "client→server", sum("resp_bytes") AS "server→client", '
                f'sum("flows") AS "flow reports", max("clients") AS "max clients per interval" '
                f'FROM "service_traffic" WHERE {ENGINE_F} AND {TF} GROUP BY "engine", "proto", "port"',
                units={"client→server": "bytes", "server→client": "bytes"}, hide_time=True,
                sort="server→client"))
    b.row("Sources")
    b.add(table("Top talkers (busiest source per interval)",
                f'SELECT top("bytes", 20) AS "bytes", "src" FROM "top_talkers" WHERE {ENGINE_F} AND {TF} '
                f'GROUP BY "engine"',
                description="The 20 largest per-interval figures of the engines' top talkers. The source "
                            "address is a field (unbounded), so InfluxQL cannot sum it over the range.",
                units={"bytes": "bytes"}, sort="bytes"))
    b.add(timeseries("Bytes of the busiest source",
                     per_engine(f'max("bytes") * 8 * {PER_S}', "top_talkers", where="\"rank\" = '1'"),
                     unit="bps", alias="$tag_engine"))
    b.row("Flows")
    b.add(timeseries("New and ended flows per second",
                     [(per_engine(f'sum("new_flows") * {PER_S}', "engine_traffic"), "$tag_engine new"),
                      (per_engine(f'sum("ended_flows") * {PER_S}', "engine_traffic"), "$tag_engine ended")]), w=8)
    b.add(timeseries("Tracked flows",
                     per_engine('max("tracked")', "engine_traffic", fill=""), alias="$tag_engine",
                     description="Flows the engine follows (capped by flows.max_flows)."), w=8)
    b.add(timeseries("Flow-table evictions",
                     per_engine('non_negative_difference(max("evicted_total"))', "engine_traffic", fill=""), bars=True,
                     alias="$tag_engine",
                     description="New flows beyond flows.max_flows (they only get their final record)."), w=8)
    b.row("Flow pipeline")
    b.add(timeseries("Flow batches and records per second",
                     [(per_engine(f'count("seq") * {PER_S}', "flow_batches"), "$tag_engine batches"),
                      (per_engine(f'sum("records") * {PER_S}', "flow_batches"), "$tag_engine records")]), w=8)
    b.add(timeseries("Conntrack poll time",
                     per_engine('max("poll_ms")', "flow_batches", fill=""), unit="ms", alias="$tag_engine"), w=8)
    b.add(timeseries("Flow batches lost or repeated (manager)",
                     _stats_rate({"flow_batch_gaps": "lost (seq gaps)", "flow_batches_duplicate": "duplicates",
                                  "flow_records_malformed": "malformed records"}, per_second=False, where=""),
                     bars=True, alias="$tag_manager $col",
                     description="Counted by the manager over all engines: a gap in an engine's batch "
                                 "sequence is a batch that never arrived."), w=8)
    b.add(timeseries("Engine-side losses",
                     _engine_rate("engine_counters", {"flow_batches_dropped": "flow batches dropped",
                                                      "event_batches_dropped": "event batches dropped",
                                                      "events_dropped": "events dropped",
                                                      "flow_records_dropped": "flow records dropped"},
                                  per_second=False),
                     bars=True, alias="$tag_engine $col",
                     description="What an engine itself had to drop: batches that did not fit its on-disk "
                                 "spool during a broker outage, events over the per-interval cap."), w=12)
    b.add(timeseries("Protocol samples per second",
                     _engine_rate("engine_counters", {"samples": "samples"}), alias="$tag_engine",
                     description="NFLOG samples (new flows, odd TCP flags, ARP, DHCP, fragments) the engine "
                                 "checked; the kernel rate-limits them."), w=12)
    return b.json()


def security() -> dict:
    st = '"source_type" =~ /^$source_type$/'
    b = Board("vigil-security", "Vigil — Security events",
              "Syslog from other security systems as the collector normalised it, correlation rules that "
              "fired, and the collector's error counters.",
              [query_var("source_type", "Source type", "security_event", "source_type"), MANAGER])
    b.row("Events")
    b.add(stat("Events", f'SELECT count("raw") FROM "security_event" WHERE {st} AND {TF}', calc="sum"), w=6, h=4)
    b.add(stat("High and critical events",
               f'SELECT count("raw") FROM "security_event" WHERE {st} AND "severity" =~ /^(high|critical)$/ AND {TF}',
               calc="sum", thresholds=[(None, "green"), (1, "red")]), w=6, h=4)
    b.add(stat("Blocked by the reporting device",
               f"SELECT count(\"raw\") FROM \"security_event\" WHERE {st} AND \"action\" = 'block' AND {TF}",
               calc="sum"), w=6, h=4)
    b.add(stat("Correlation firings", f'SELECT count("value") FROM "correlation" WHERE {TF}', calc="sum",
               thresholds=[(None, "green"), (1, "orange")]), w=6, h=4)
    b.add(timeseries("Events by source type", _cnt("raw", "security_event", st, '"source_type"'),
                     bars=True, stack=True, alias="$tag_source_type"), w=8)
    b.add(timeseries("Events by severity", _cnt("raw", "security_event", st, '"severity"'),
                     bars=True, stack=True, alias="$tag_severity"), w=8)
    b.add(timeseries("Events by action", _cnt("raw", "security_event", st, '"action"'),
                     bars=True, stack=True, alias="$tag_action",
                     description="allow / block / alert; other vendor verbs are 'other' (the verb itself is "
                                 "the field action_raw)."), w=8)
    b.row("Signatures")
    sig = table("Top signatures (latest 5000 events)",
                f'SELECT "sig_name", "sig_id", "src" FROM "security_event" WHERE {st} AND "sig_name" != \'\' '
                f'AND {TF} ORDER BY time DESC LIMIT 5000',
                description="Signature names are fields (unbounded), so InfluxQL cannot group by them; the "
                            "latest 5000 events are grouped and counted in Grafana.", sort="count")
    sig["transformations"] = [
        {"id": "groupBy", "options": {"fields": {
            "sig_name": {"operation": "groupby", "aggregations": []},
            "sig_id": {"operation": "aggregate", "aggregations": ["lastNotNull"]},
            "src": {"operation": "aggregate", "aggregations": ["count", "distinctCount"]}}}},
        {"id": "organize", "options": {"renameByName": {"src (count)": "count",
                                                        "src (distinctCount)": "sources",
                                                        "sig_id (lastNotNull)": "sig_id"}}},
        {"id": "sortBy", "options": {"sort": [{"field": "count", "desc": True}]}},
    ]
    b.add(sig, w=12, h=10)
    b.add(table("Recent high and critical events",
                f'SELECT "source_type", "severity", "src", "dst", "dport", "sig_name", "category", "device" '
                f'FROM "security_event" WHERE {st} AND "severity" =~ /^(high|critical)$/ AND {TF} '
                f'ORDER BY time DESC LIMIT 200'), w=12, h=10)
    b.row("Correlation")
    b.add(timeseries("Correlation firings by rule",
                     f'SELECT count("value") FROM "correlation" WHERE {TF} GROUP BY time($__interval), "rule" fill(0)',
                     bars=True, stack=True, alias="$tag_rule"))
    b.add(table("Recent correlation firings",
                f'SELECT "rule", "value", "count", "reason" FROM "correlation" WHERE {TF} ORDER BY time DESC LIMIT 200'))
    b.row("Collector health")
    b.add(timeseries("Collector ingest rate",
                     _stats_rate({"collector_events": "events stored", "syslog_udp_datagrams": "udp datagrams"}),
                     alias="$tag_manager $col", unit="short"))
    b.add(timeseries("Syslog errors and drops",
                     _stats_rate({"syslog_oversized": "oversized", "syslog_malformed_frames": "malformed frames",
                                  "syslog_rate_limited": "rate limited", "syslog_queue_full_dropped": "queue full",
                                  "syslog_connections_refused": "connections refused",
                                  "syslog_idle_closed": "idle closed", "syslog_tls_errors": "tls errors",
                                  "syslog_udp_errors": "udp errors", "collector_empty_messages": "empty messages",
                                  "collector_worker_errors": "worker errors"}, per_second=False),
                     bars=True, stack=True, alias="$tag_manager $col",
                     description="Counts per bucket from the manager's counters (manager_stats)."))
    return b.json()


def decisions() -> dict:
    origin = '"origin" =~ /^$origin$/'
    b = Board("vigil-decisions", "Vigil — Decisions and enforcement",
              "What the policy decided and why, what it would block on learning engines, engine-local "
              "reactions and rule-set publishing.",
              [query_var("origin", "Origin", "decisions", "origin"),
               query_var("engine", "Engine", "engine_events", "engine"), MANAGER])
    b.row("Decisions")
    b.add(stat("Created", f"SELECT count(\"id\") FROM \"decisions\" WHERE {origin} AND \"event\" = 'created' AND {TF}",
               calc="sum"), w=6, h=4)
    b.add(stat("Would-block (learning)",
               f"SELECT count(\"id\") FROM \"decisions\" WHERE {origin} AND \"event\" = 'created' "
               f"AND \"would_block\" != '' AND {TF}", calc="sum"), w=6, h=4)
    b.add(stat("Removed", f"SELECT count(\"id\") FROM \"decisions\" WHERE {origin} AND \"event\" = 'removed' AND {TF}",
               calc="sum", description="Operator unblocks and allowlist overrides."), w=6, h=4)
    b.add(stat("Repeat offences",
               f"SELECT count(\"id\") FROM \"decisions\" WHERE {origin} AND \"event\" = 'created' "
               f"AND \"offences\" > 1 AND {TF}", calc="sum",
               description="Decisions on a value that offended before (a longer step of the ladder)."), w=6, h=4)
    b.add(timeseries("Decisions created by origin",
                     _cnt("id", "decisions", f"{origin} AND \"event\" = 'created'", '"origin"'),
                     bars=True, stack=True, alias="$tag_origin"), w=8)
    b.add(timeseries("Would-block decisions by origin",
                     _cnt("id", "decisions", f"{origin} AND \"event\" = 'created' AND \"would_block\" != ''",
                          '"origin"'), bars=True, stack=True, alias="$tag_origin",
                     description="Made while a targeted engine was learning: reported, not enforced there."),
          w=8)
    b.add(timeseries("Decisions removed by origin",
                     _cnt("id", "decisions", f"{origin} AND \"event\" = 'removed'", '"origin"'),
                     bars=True, stack=True, alias="$tag_origin"), w=8)
    b.add(table("Recent decisions",
                f'SELECT "event", "origin_detail", "scope", "value", "reason", "engines", "would_block", '
                f'"offences", "duration" FROM "decisions" WHERE {origin} AND {TF} ORDER BY time DESC LIMIT 200',
                units={"duration": "s"}), w=24, h=10)
    b.row("Engine-local reactions")
    def scan(action: str) -> str:
        return per_engine('count("severity")', "engine_events", where=f"\"type\" = 'scan' AND \"action\" = '{action}'")
    b.add(timeseries("Scans blocked / would-block by engines",
                     [(scan("block"), "$tag_engine block"), (scan("would-block"), "$tag_engine would-block")],
                     bars=True,
                     description="The engine's own scan detector: blocked in the kernel at once (enforcing) "
                                 "or reported (learning)."))
    b.add(table("Recent engine events",
                f'SELECT "engine", "type", "action", "severity", "src", "detail" FROM "engine_events" '
                f'WHERE {ENGINE_F} AND {TF} ORDER BY time DESC LIMIT 200'))
    b.row("Rule sets")
    b.add(timeseries("Rule sets published (manager)",
                     _stats_rate({"ruleset_snapshots_published": "snapshots", "ruleset_deltas_published": "deltas",
                                  "ruleset_resyncs": "resyncs", "ruleset_publish_errors": "publish errors"},
                                 per_second=False), bars=True, alias="$tag_manager $col",
                     description="Signed rule sets sent to engines."))
    b.add(timeseries("Applied rule-set generation by engine",
                     per_engine('last("generation")', "engine_enforcement", fill=" fill(previous)"),
                     alias="$tag_engine", legend_calcs=("last",),
                     description="What each engine reports as applied in its kernel; compare with what the "
                                 "manager published."))
    b.add(timeseries("Elements in the kernel by engine",
                     per_engine('last("elements")', "engine_enforcement", fill=" fill(previous)"),
                     alias="$tag_engine", legend_calcs=("last", "max")))
    b.add(timeseries("Rule sets rejected by engines",
                     _engine_rate("engine_enforcement", {"rejected": "rejected"}, per_second=False),
                     bars=True, alias="$tag_engine",
                     description="Bad signature, old generation, malformed payload or over the element cap: "
                                 "the engine kept its last good rule set."))
    b.add(timeseries("Proposals merged, expired, refused (manager)",
                     _stats_rate({"decisions_merged": "merged", "decisions_expired": "expired",
                                  "decisions_rejected_allowlisted": "refused: allowlisted",
                                  "decisions_rejected_suppressed": "refused: suppressed",
                                  "decisions_rejected_invalid": "refused: invalid",
                                  "decisions_rejected_full": "refused: full"}, per_second=False),
                     bars=True, alias="$tag_manager $col"))
    return b.json()


def endpoints() -> dict:
    ep = '"endpoint" =~ /^$endpoint$/'
    exe = f'FROM "endpoint_executions" WHERE {ep} AND {TF}'
    b = Board("vigil-endpoints", "Vigil — Endpoints",
              "Executions the endpoint agents allowed, blocked or would have blocked, by verdict, and the "
              "manager's verdict service.",
              [query_var("endpoint", "Endpoint", "endpoint_executions", "endpoint"), MANAGER])
    b.row("Executions")
    for title, act, colour in (("Allowed", "allowed", "green"), ("Blocked", "blocked", "red"),
                               ("Would-block (monitor)", "would-block", "orange")):
        b.add(stat(title, f"SELECT sum(\"count\") FROM \"endpoint_executions\" WHERE {ep} AND \"action\" = '{act}' "
                          f"AND {TF}", calc="sum", thresholds=[(None, "green" if act == "allowed" else "text"),
                                                               (1, colour)]), w=6, h=4)
    b.add(stat("Unknown files executed",
               f"SELECT count(distinct(\"sha256\")) FROM \"endpoint_executions\" WHERE {ep} AND \"verdict\" = 'unknown' "
               f"AND {TF}",
               description="Distinct hashes with verdict unknown in execution reports of the time range."),
          w=6, h=4)
    b.add(timeseries("Executions by action",
                     f'SELECT sum("count") {exe} GROUP BY time($__interval), "action" fill(0)', bars=True, stack=True,
                     alias="$tag_action"), w=8)
    b.add(timeseries("Executions by verdict",
                     f'SELECT sum("count") {exe} GROUP BY time($__interval), "verdict" fill(0)', bars=True, stack=True,
                     alias="$tag_verdict"), w=8)
    b.add(timeseries("Executions by endpoint",
                     f'SELECT sum("count") {exe} GROUP BY time($__interval), "endpoint", "via" fill(0)', bars=True,
                     stack=True, alias="$tag_endpoint ($tag_via)",
                     description="via = exec, or loader when cover_loader catches ld.so running a file."), w=8)
    b.add(table("Blocked and would-block executions",
                f"SELECT \"endpoint\", \"action\", \"verdict\", \"path\", \"sha256\", \"source\", \"count\" "
                f"FROM \"endpoint_executions\" WHERE {ep} AND \"action\" != 'allowed' AND {TF} "
                f"ORDER BY time DESC LIMIT 200"), w=12, h=9)
    b.add(table("Unknown files executed (latest)",
                f"SELECT \"endpoint\", \"action\", \"path\", \"sha256\", \"count\" FROM \"endpoint_executions\" "
                f"WHERE {ep} AND \"verdict\" = 'unknown' AND {TF} ORDER BY time DESC LIMIT 200"), w=12, h=9)
    b.row("Behaviour (running processes)")
    b.add(timeseries("Behaviour rule matches by rule and action",
                     f'SELECT sum("count") FROM "endpoint_behaviour" WHERE {ep} AND {TF} '
                     f'GROUP BY time($__interval), "rule", "action" fill(0)', bars=True, stack=True,
                     alias="$tag_rule ($tag_action)",
                     description="A service running a shell (denied), memfd / deleted-file execs, reverse shells "
                                 "(killed), ptrace by a non-debugger; would-block in monitor mode."), w=8)
    b.add(table("Behaviour events (latest)",
                f"SELECT \"endpoint\", \"rule\", \"technique\", \"action\", \"path\", \"parent\", \"pid\", "
                f"\"sha256\" FROM \"endpoint_behaviour\" WHERE {ep} AND {TF} ORDER BY time DESC LIMIT 200"),
          w=16, h=9)
    b.row("Verdict service (manager)")
    b.add(timeseries("Verdict requests and pushes",
                     _stats_rate({"verdict_requests": "requests", "verdicts_pushed": "verdict changes pushed",
                                  "operator_overrides": "operator overrides"}), alias="$tag_manager $col"))
    b.add(timeseries("Sample analysis",
                     _stats_rate({"analysis_queued": "queued", "analyses_done": "done",
                                  "analysis_errors": "errors", "analysis_queue_full": "queue full",
                                  "samples_requested": "samples requested", "samples_received": "samples received",
                                  "quarantine_proposed": "quarantines proposed"}, per_second=False),
                     bars=True, alias="$tag_manager $col"))
    return b.json()


def health() -> dict:
    b = Board("vigil-health", "Vigil — System health",
              "The manager's own counters (manager_stats, every 10 s): InfluxDB writer, ingest rates, MQTT, "
              "rejected payloads and component errors.", [MANAGER])
    m = '"manager" =~ /^$manager$/'
    b.row("InfluxDB writer")
    b.add(stat("Points dropped (since manager start)",
               f'SELECT last("influx_points_dropped") FROM "manager_stats" WHERE {m} AND {TF}',
               thresholds=[(None, "green"), (1, "red")],
               description="Oldest points dropped because the write buffer was full (InfluxDB down or slow)."),
          w=6, h=4)
    b.add(stat("Write retries (since manager start)",
               f'SELECT last("influx_write_retries") FROM "manager_stats" WHERE {m} AND {TF}',
               thresholds=[(None, "green"), (1, "orange")]), w=6, h=4)
    b.add(stat("Batches rejected by InfluxDB (since manager start)",
               f'SELECT last("influx_batches_rejected") FROM "manager_stats" WHERE {m} AND {TF}',
               thresholds=[(None, "green"), (1, "red")]), w=6, h=4)
    b.add(stat("Points written per second",
               f'SELECT non_negative_derivative(max("influx_points_written"), 1s) FROM "manager_stats" '
               f'WHERE {m} AND {TF} GROUP BY time($__interval)', unit="short"), w=6, h=4)
    b.add(timeseries("Points queued and written per second",
                     _stats_rate({"influx_points_queued": "queued", "influx_points_written": "written"}),
                     alias="$tag_manager $col"))
    b.add(timeseries("Points dropped, retries, rejected batches",
                     _stats_rate({"influx_points_dropped": "points dropped", "influx_write_retries": "retries",
                                  "influx_batches_rejected": "batches rejected"}, per_second=False),
                     bars=True, alias="$tag_manager $col"))
    b.row("Ingest")
    b.add(timeseries("Ingest rates",
                     _stats_rate({"flow_batches_ingested": "flow batches", "flow_records_ingested": "flow records",
                                  "engine_events_ingested": "engine events", "collector_events": "syslog events",
                                  "policy_batches": "policy batches"}), alias="$tag_manager $col"))
    b.add(timeseries("Rejected and malformed input",
                     _stats_rate({"payload_rejected": "payloads rejected", "flow_records_malformed": "malformed flows",
                                  "engine_events_malformed": "malformed engine events",
                                  "endpoint_events_invalid": "invalid endpoint events",
                                  "flow_batch_gaps": "flow batch gaps",
                                  "flow_batches_duplicate": "duplicate batches",
                                  "service_series_capped": "service series capped"}, per_second=False),
                     bars=True, alias="$tag_manager $col"))
    b.row("MQTT and components")
    b.add(timeseries("MQTT connection",
                     _stats_rate({"mqtt_connects": "connects", "mqtt_disconnects": "disconnects",
                                  "mqtt_connect_refused": "refused", "mqtt_publish_errors": "publish errors",
                                  "mqtt_unmatched_messages": "unmatched messages"}, per_second=False),
                     bars=True, alias="$tag_manager $col"))
    b.add(timeseries("Component and handler errors",
                     f'SELECT non_negative_difference(max(/^(component_errors_|consumer_errors_|handler_errors)/)) '
                     f'FROM "manager_stats" WHERE {m} AND {TF} GROUP BY time($__interval), "manager"',
                     bars=True, alias="$tag_manager $col",
                     description="Exceptions caught in a component's tick, a consumer of engine data or an MQTT "
                                 "handler (the manager kept running; see its log)."))
    return b.json()


DASHBOARDS = {"vigil-fleet": fleet, "vigil-traffic": traffic, "vigil-security": security,
              "vigil-decisions": decisions, "vigil-endpoints": endpoints, "vigil-health": health}


def render(board: dict) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": render(fn()) for uid, fn in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vigil.dashboards", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, help="directory to write the dashboards into")
    g.add_argument("--check", type=Path, help="directory whose dashboards must equal the generated ones")
    args = p.parse_args(argv)
    files = generate()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (args.out / name).write_text(text, encoding="utf-8")
            print(f"wrote {args.out / name}")
        return 0
    stale = [n for n, t in files.items()
             if not (args.check / n).is_file() or (args.check / n).read_text(encoding="utf-8") != t]
    for n in stale:
        print(f"{args.check / n}: differs from the generator (run python -m vigil.dashboards --out {args.check})",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
