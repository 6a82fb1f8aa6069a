"""The manager's components on one bus: each subscribes for itself, ingest only writes, the policy
gets every batch of its engines; what they write matches the InfluxDB schema in vigil.contracts."""
from __future__ import annotations

import fnmatch
import re
import threading

import pytest

from tests.support.fake_mqtt import FakeMqtt
from tests.unit.test_policy import FakeWriter as _PolicyWriter
from vigil import topics
from vigil.contracts.engine import EngineStatus, EventBatch, FlowBatch
from vigil.contracts.influx import MEASUREMENTS
from vigil.control import ControlServer
from vigil.counters import Counters
from vigil.manager.api import Context
from vigil.manager.config import IngestConfig
from vigil.manager.ingest.component import IngestComponent
from vigil.manager.policy.component import PolicyComponent
from vigil.manager.policy.config import PolicyConfig

pytestmark = pytest.mark.unit


class FakeWriter(_PolicyWriter):
    """Writes at once, so a write's callback (the MQTT acknowledgement) runs at once."""

    def write(self, lines, on_done=None):
        super().write(lines)
        if on_done is not None:
            on_done()


_POINT = re.compile(r"^([^, ]+)((?:,[^ ]+)?) (.+?)(?: (\d+))?$")


def check_point(point: str) -> None:
    """One line of line protocol against contracts.influx.MEASUREMENTS."""
    m = _POINT.match(point)
    assert m, point
    name, tags, fields = m.group(1), m.group(2), m.group(3)
    assert name in MEASUREMENTS, f"{name} is written but not in the schema"
    spec = MEASUREMENTS[name]
    for kv in filter(None, tags.split(",")):
        assert kv.split("=", 1)[0] in spec["tags"], f"{name}: tag {kv} not in the schema"
    for kv in re.findall(r'(?:^|,)([A-Za-z0-9_]+)=', re.sub(r'"(?:[^"\\]|\\.)*"', '""', fields)):
        ok = kv in spec["fields"] or "*" in spec["fields"] or \
            any(fnmatch.fnmatch(kv, pat) for pat in spec.get("patterns", {}))
        assert ok, f"{name}: field {kv} not in the schema"


@pytest.fixture
def manager(tmp_path):
    mqtt, writer = FakeMqtt(), FakeWriter()
    (tmp_path / "state").mkdir()
    ctx = Context("m1", tmp_path / "state", mqtt, writer, Counters(), ControlServer(tmp_path / "c.sock"), None,
                  threading.Event())
    ingest = IngestComponent(IngestConfig(shared_subscription=True), ctx)
    policy = PolicyComponent(PolicyConfig(partition_count=1), ctx)
    return mqtt, writer, ctx, ingest, policy


def batch(engine: str, seq: int, flows: list[dict]) -> bytes:
    return FlowBatch(engine=engine, seq=seq, interval={"start": 1_000 * seq, "end": 1_000 * (seq + 1)},
                     mode="enforcing", flows=flows).encode(engine)


FLOW = {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 40000, "dport": 22, "proto": "tcp", "orig_bytes": 100,
        "resp_bytes": 50, "orig_pkts": 2, "resp_pkts": 1, "new": True, "conn_state": "SF", "start": 1000}


def test_each_component_subscribes_for_itself(manager):
    mqtt, writer, ctx, ingest, policy = manager
    filters = mqtt.filters
    # ingest: a shared subscription for flows (its share of the writing); the policy its own, unshared
    assert topics.shared(topics.engine("+", "flows")) in filters and topics.engine("+", "flows") in filters
    assert filters.count(topics.engine("+", "status")) == 2 and filters.count(topics.engine("+", "events")) == 2
    n = mqtt.deliver(topics.engine("e1", "flows"), batch("e1", 1, [FLOW]))
    assert n == 2                                    # both subscribers got it
    assert ctx.counters.get("flow_batches_ingested") == 1 and ctx.counters.get("policy_batches") == 1
    # a redelivery (QoS 1) counts once for each
    mqtt.deliver(topics.engine("e1", "flows"), batch("e1", 1, [FLOW]))
    assert ctx.counters.get("flow_batches_ingested") == 1 and ctx.counters.get("policy_batches") == 1
    assert ctx.counters.get("flow_batches_duplicate") == 1 and ctx.counters.get("policy_batches_duplicate") == 1
    # a batch claiming another engine than its topic: refused by both, counted
    mqtt.deliver(topics.engine("e2", "flows"), batch("e1", 2, [FLOW]))
    assert ctx.counters.get("payload_rejected_wrong_sender") == 2
    # not a batch at all: counted by the bus, handed to nobody
    mqtt.deliver(topics.engine("e1", "flows"), b'{"schema":"vigil.flows/9","ts":1}')
    assert mqtt.counters.get("payload_rejected_unknown-major") == 2


def test_what_ingest_and_policy_write_is_in_the_schema(manager):
    mqtt, writer, ctx, ingest, policy = manager
    mqtt.deliver(topics.engine("e1", "status"), EngineStatus(
        state="running", engine="e1", mode="enforcing", learning={"progress": 1.0}, ruleset_generation=2,
        counters={"flow_polls": 3}, enforcement={"generation": 2, "counts": {"block4": 1}, "drops": {"block4": 5},
                                                 "table_ready": True}).encode("e1"))
    mqtt.deliver(topics.engine("e1", "flows"), batch("e1", 1, [FLOW, {**FLOW, "dport": 80}]))
    mqtt.deliver(topics.engine("e1", "events"), EventBatch.from_body({"engine": "e1", "seq": 1, "events": [
        {"type": "scan", "src": "10.0.0.9", "severity": "high", "action": "block", "detail": "40 ports",
         "distinct_ports": 40},
        {"type": "arp-rebind", "severity": "high", "ip": "10.0.0.1", "new_mac": "02:00:00:00:00:02"}]}).encode("e1"))
    written = {p.split(",", 1)[0].split(" ", 1)[0] for p in writer.lines}
    assert {"engine_status", "engine_counters", "engine_enforcement", "engine_traffic", "service_traffic",
            "top_talkers", "flow_batches", "engine_events", "decisions"} <= written, written
    for p in writer.lines:
        check_point(p)


def test_the_schema_check_catches_what_is_not_in_it():
    with pytest.raises(AssertionError, match="not in the schema"):
        check_point("engine_traffic,engine=e1 bogus=1i 1")
    with pytest.raises(AssertionError, match="not in the schema"):
        check_point("no_such_measurement,engine=e1 x=1i 1")


def test_ingest_defers_each_ack_until_its_points_are_written(manager):
    mqtt, writer, ctx, ingest, policy = manager
    mqtt.deliver(topics.engine("e1", "flows"), batch("e1", 1, [FLOW]))
    mqtt.deliver(topics.engine("e1", "flows"), batch("e1", 1, [FLOW]))     # redelivery: a barrier
    # the flow batch and its redelivery each held their ack until the writer was done with them
    assert mqtt.acks_deferred == 2 and mqtt.acks_released == 2


def test_broker_drops_are_counted_from_the_brokers_own_count(manager):
    mqtt, writer, ctx, ingest, policy = manager
    from vigil.manager.ingest.component import BROKER_DROPPED
    for raw in (b"5", b"5", b"12", b"3", b"not a number"):    # 3: the broker restarted
        mqtt.deliver(BROKER_DROPPED, raw)
    assert ctx.counters.get("broker_messages_dropped") == 5 + 7 + 3
    assert ctx.counters.get("broker_stats_malformed") == 1
    assert ingest.status()["broker_messages_dropped"] == 3
