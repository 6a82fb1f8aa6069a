"""Payload envelope, line protocol, topics, flow deltas, control socket."""
from __future__ import annotations

import json

import pytest

from vigil import payload, topics
from vigil.control import ControlError, ControlServer, call
from vigil.engine.conntrack import CtEntry
from vigil.engine.flows import FlowTable
from vigil.influx import line

pytestmark = pytest.mark.unit


def test_payload_roundtrip_and_unknown_keys_ignored():
    raw = payload.encode("flows", "e1", {"seq": 3, "flows": []})
    msg = payload.decode(raw, "flows")
    assert msg["schema"] == "vigil.flows/1" and msg["seq"] == 3 and msg["sender"] == "e1"
    extra = json.loads(raw)
    extra["future_field"] = {"x": 1}
    assert payload.decode(json.dumps(extra).encode(), "flows")["seq"] == 3


@pytest.mark.parametrize("raw, reason", [
    (b"\xff\xfe", "not-utf8"),
    (b"{not json", "not-json"),
    (b"[1, 2]", "not-object"),
    (b'{"ts": 1}', "no-schema"),
    (b'{"schema": "vigil.status/1", "ts": 1}', "wrong-kind"),
    (b'{"schema": "vigil.flows/2", "ts": 1}', "unknown-major"),
    (b'{"schema": "vigil.flows/1", "ts": "soon"}', "no-ts"),
])
def test_payload_rejections_have_stable_reasons(raw, reason):
    with pytest.raises(payload.PayloadError) as ei:
        payload.decode(raw, "flows")
    assert ei.value.reason == reason


def test_line_protocol_escaping():
    ln = line("m x", {"engine": "e 1,a=b", "empty": ""}, {"s": 'say "hi"\n', "i": 3, "f": 1.5, "b": True}, 7)
    assert ln == r'm\ x,engine=e\ 1\,a\=b s="say \"hi\"\n",i=3i,f=1.5,b=true 7'
    with pytest.raises(ValueError):
        line("m", {}, {"only_none": None})


def test_topics():
    assert topics.engine("e1", "ruleset/delta") == "vigil/v1/engine/e1/ruleset/delta"
    assert topics.shared("vigil/v1/engine/+/flows") == "$share/vigil/vigil/v1/engine/+/flows"
    assert topics.device_of("vigil/v1/endpoint/h7/verdict/request") == ("endpoint", "h7", "verdict/request")
    assert topics.device_of("other/v1/engine/e1/flows") is None


def _ct(ct_id, ob, rb, op=1, rp=1, state=3):
    return CtEntry(ct_id, 4, 6, "10.0.0.1", "10.0.0.2", 1000 + ct_id, 80, 1, 0b110, state, op, ob, rp, rb)


def test_flow_table_reports_deltas_and_ends():
    t = FlowTable({1: "eth0", 2: "eth1"}, max_flows=100)
    r1 = t.update([_ct(1, 100, 50)], now_ms=1000)
    assert len(r1) == 1 and r1[0]["orig_bytes"] == 100 and r1[0]["new"] and r1[0]["in_port"] == "eth0"
    r2 = t.update([_ct(1, 250, 50, op=3)], now_ms=2000)
    assert r2[0]["orig_bytes"] == 150 and r2[0]["resp_bytes"] == 0 and r2[0]["orig_bytes_total"] == 250
    assert not r2[0]["new"]
    assert t.update([_ct(1, 250, 50, op=3)], now_ms=3000) == []  # nothing moved
    # absent from one dump: maybe its DESTROY event is still on the way; absent twice: ended
    assert t.update([], now_ms=4000) == []
    r4 = t.update([], now_ms=5000)
    assert r4[0]["end"] == 5000 and r4[0]["orig_bytes"] == 0
    assert t.flows == {}


def test_flow_table_cap_counts_evictions():
    t = FlowTable({}, max_flows=2)
    recs = t.update([_ct(i, 10, 10) for i in range(5)], now_ms=1)
    assert len(recs) == 2 and t.evicted == 3


def test_control_socket_roundtrip_and_errors(tmp_path):
    srv = ControlServer(tmp_path / "c.sock")
    srv.register("add", lambda a, b: a + b)

    def boom():
        raise ControlError("not-found", "no such engine 'e9'")
    srv.register("boom", boom)
    srv.start()
    try:
        assert call(srv.path, "add", a=2, b=3) == 5
        with pytest.raises(ControlError) as ei:
            call(srv.path, "boom")
        assert ei.value.code == "not-found" and "e9" in str(ei.value)
        with pytest.raises(ControlError) as ei:
            call(srv.path, "nope")
        assert ei.value.code == "unknown-method"
        with pytest.raises(ControlError) as ei:
            call(srv.path, "add", a=1)
        assert ei.value.code == "bad-request"
        assert "add" in call(srv.path, "help")
    finally:
        srv.stop()
    with pytest.raises(ControlError) as ei:
        call(srv.path, "add", a=1, b=2)
    assert ei.value.code == "unreachable"
