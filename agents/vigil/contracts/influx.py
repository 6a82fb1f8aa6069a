"""The InfluxDB measurements Vigil writes: measurement -> its tags and its fields with their
line-protocol types (``"*"``: any field name of that type, e.g. counters; ``patterns``: field names
matching a glob, beside the named ones).

One definition for the writers (manager ingest, policy, collector, verdict service), the dashboard
generator and the tests: tests/unit/test_influx_schema.py checks the points the writers produce
against it, tests/unit/test_dashboards.py every dashboard query.
"""
from __future__ import annotations

from typing import Any

MEASUREMENTS: dict[str, dict[str, Any]] = {
    "engine_traffic": {  # manager/ingest.py, one point per engine flow batch (interval deltas)
        "tags": ["engine"],
        "fields": {"orig_bytes": "int", "resp_bytes": "int", "orig_pkts": "int", "resp_pkts": "int",
                   "flows": "int", "new_flows": "int", "ended_flows": "int", "tracked": "int",
                   "evicted_total": "int"}},
    "service_traffic": {  # per destination service of a batch; port 'other' beyond the series cap
        "tags": ["engine", "proto", "port"],
        "fields": {"orig_bytes": "int", "resp_bytes": "int", "orig_pkts": "int", "resp_pkts": "int",
                   "flows": "int", "clients": "int"}},
    "top_talkers": {  # the N busiest sources of a batch
        "tags": ["engine", "rank"], "fields": {"src": "string", "bytes": "int"}},
    "flow_batches": {
        "tags": ["engine"], "fields": {"seq": "int", "records": "int", "poll_ms": "float"}},
    "engine_status": {  # every engine status message (retained, every status_interval)
        "tags": ["engine"],
        "fields": {"state": "string", "mode": "string", "learning_progress": "float",
                   "flows_tracked": "int", "ruleset_generation": "int"}},
    "engine_counters": {  # every engine status: the engine's own counters, cumulative since it started
        "tags": ["engine"], "fields": {"*": "int"}},
    "engine_enforcement": {  # every engine status: the kernel's rule set (elements_<set>, drops_<rule> too)
        "tags": ["engine"],
        "fields": {"generation": "int", "elements": "int", "drops": "int", "rejected": "int",
                   "table_ready": "bool", "last_apply_ms": "float"},
        "patterns": {"elements_*": "int", "drops_*": "int"}},
    "engine_events": {  # engine-local detections; fields are the event's own keys
        "tags": ["engine", "type"],
        "fields": {"detail": "string", "src": "string", "severity": "string", "mode": "string",
                   "action": "string", "ts": "int", "count": "int"},
        # the check's own evidence (EngineEvent.details: dst, ports, ip, MACs...), as it came
        "patterns": {"*": "any"}},
    "security_event": {  # collector: one point per syslog event
        "tags": ["source_type", "format", "severity", "action", "source"],
        "fields": {"peer": "string", "device": "string", "src": "string", "dst": "string",
                   "proto": "string", "action_raw": "string", "sig_id": "string", "sig_name": "string",
                   "category": "string", "sport": "int", "dport": "int", "event_time": "int",
                   "raw": "string"}},
    "correlation": {  # a correlation rule that fired and proposed a decision
        "tags": ["rule"], "fields": {"value": "string", "count": "int", "reason": "string"}},
    "decisions": {  # policy: a decision created or removed
        "tags": ["origin", "event"],
        "fields": {"id": "string", "scope": "string", "value": "string", "reason": "string",
                   "origin_detail": "string", "offences": "int", "duration": "float",
                   "engines": "string", "would_block": "string"}},
    "endpoint_executions": {  # verdict service: endpoint execution reports
        "tags": ["endpoint", "action", "verdict", "via"],
        "fields": {"count": "int", "sha256": "string", "path": "string", "source": "string"}},
    "endpoint_behaviour": {  # verdict service: endpoint behaviour rule matches (issue 17)
        "tags": ["endpoint", "rule", "technique", "action"],
        "fields": {"count": "int", "path": "string", "parent": "string", "pid": "int", "sha256": "string",
                   "tree": "string"}},
    "manager_stats": {  # every manager counter, cumulative, every 10 s (fields appear once counted)
        "tags": ["manager"], "fields": {"*": "int"}},
}
