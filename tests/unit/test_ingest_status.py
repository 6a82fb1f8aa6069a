"""Engine statuses -> InfluxDB points: status, the engine's counters and the kernel's rule set."""
from __future__ import annotations

import pytest

from vigil import payload
from vigil.contracts.engine import EngineStatus
from vigil.manager.ingest.component import status_points

pytestmark = pytest.mark.unit


def _parse(point: str) -> tuple[str, dict[str, str]]:
    head, fields, _ts = point.rsplit(" ", 2)
    return head, dict(kv.split("=", 1) for kv in fields.split(","))


def test_status_counters_and_enforcement_become_points():
    msg = {"engine": "e1", "state": "running", "mode": "enforcing",
           "learning": {"progress": 1.0}, "flows_tracked": 12, "ruleset_generation": 7,
           "counters": {"samples": 40, "events_dropped": 0, "flow_batches_dropped": 2, "weird": "x", "flag": True},
           "enforcement": {"generation": 7, "counts": {"block4": 3, "blocknet4": 1, "local4": 2},
                           "drops": {"block4": 120, "local4": 5}, "rejected": {"bad-signature": 2},
                           "table_ready": True, "last_apply_ms": 1.5, "error": None}}
    st = EngineStatus.decode(payload.encode("status", "e1", msg, ts=1_800_000_000_000))
    points = dict(_parse(p) for p in status_points("e1", st))
    assert points["engine_status,engine=e1"]["ruleset_generation"] == "7i"
    c = points["engine_counters,engine=e1"]
    assert c == {"samples": "40i", "events_dropped": "0i", "flow_batches_dropped": "2i"}
    e = points["engine_enforcement,engine=e1"]
    assert e["generation"] == "7i" and e["elements"] == "6i" and e["elements_block4"] == "3i"
    assert e["drops"] == "125i" and e["drops_local4"] == "5i" and e["rejected"] == "2i"
    assert e["table_ready"] == "true"


def test_status_without_enforcement_or_counters_is_one_point():
    points = status_points("e2", EngineStatus.decode(payload.encode("status", "e2", {"state": "offline"}, ts=1)))
    assert [p.split(" ")[0] for p in points] == ["engine_status,engine=e2"]
    with pytest.raises(payload.PayloadError):      # a status whose enforcement is no object: rejected whole
        EngineStatus.decode(payload.encode("status", "e2", {"state": "offline", "enforcement": "garbage"}))
