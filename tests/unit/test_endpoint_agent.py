"""The agent process's MQTT side without a broker: verdict answers matched by correlation data,
pushes filtered, sample uploads checked; bad input counted. Plus vigilctl hashes and the console."""
from __future__ import annotations

import base64
import hashlib
import json

import paho.mqtt.client as paho
import pytest

from vigil import payload, topics
from vigil.cli import vigilctl
from vigil.config import from_dict
from vigil.endpoint import console
from vigil.endpoint.config import EndpointConfig
from vigil.endpoint.main import EndpointService
from vigil.contracts import decider as proto
from vigil.contracts.endpoint import ExecEvent, VerdictChange
from vigil.mqtt import response_properties

pytestmark = pytest.mark.unit


@pytest.fixture
def agent(tmp_path):
    cfg = from_dict({"endpoint_id": "ep1", "mounts": [str(tmp_path)], "state_dir": str(tmp_path / "s"),
                     "control_socket": str(tmp_path / "c.sock"), "sample_max_bytes": 4096}, EndpointConfig)
    a = EndpointService(cfg)
    a.sent = []
    a.to_decider = a.sent.append
    a.published = []
    a.mqtt.publish = lambda topic, data, qos=1, retain=False, properties=None: a.published.append(
        (topic, json.loads(data), properties))
    a.mqtt.connected.set()
    yield a


def msg(topic, body, props=None):
    m = paho.MQTTMessage(topic=topic.encode())
    m.payload = body
    m.properties = props
    return m


def test_ask_and_answer_by_correlation(agent):
    agent._ask("a" * 64, 10, "/bin/x")
    topic, req, props = agent.published[-1]
    assert topic == topics.endpoint("ep1", "verdict/request") and req["sha256"] == "a" * 64
    assert props.ResponseTopic == topics.endpoint("ep1", "verdict/response")
    body = payload.encode("verdict-response", "m", {"status": "ok", "sha256": "a" * 64, "verdict": "malicious",
                                                    "source": "yara:X", "ttl": 30})
    agent._on_response(msg(agent.response_topic, body, response_properties("x", props.CorrelationData)))
    assert agent.sent[-1] == proto.Verdict(sha256="a" * 64, verdict="malicious", source="yara:X", ttl=30.0)
    # the same answer again (late duplicate): not ours any more
    agent._on_response(msg(agent.response_topic, body, response_properties("x", props.CorrelationData)))
    assert agent.counters.get("verdict_responses_unmatched") == 1


def test_bad_answer_falls_back_at_once(agent):
    agent._ask("b" * 64, 10, "/bin/y")
    corr = agent.published[-1][2].CorrelationData
    agent._on_response(msg(agent.response_topic, b"garbage", response_properties("x", corr)))
    assert agent.sent[-1].error.startswith("manager:") and agent.sent[-1].verdict is None
    assert agent.counters.get("verdict_responses_rejected_not-json") == 1


def test_offline_answers_at_once(agent):
    agent.mqtt.connected.clear()
    agent._ask("c" * 64, 1, "/x")
    assert agent.sent[-1] == proto.Verdict(sha256="c" * 64, error="offline")
    assert agent.published == []


def test_push_filters_invalid_entries(agent):
    body = payload.encode("verdicts", "m", {"verdicts": [{"sha256": "d" * 64, "verdict": "benign", "ttl": 5},
                                                         {"sha256": "e" * 64, "verdict": "evil"}, "junk"]})
    agent._on_push(msg(topics.VERDICTS, body))
    assert agent.sent[-1] == proto.Push(verdicts=[VerdictChange(sha256="d" * 64, verdict="benign", ttl=5.0)])
    assert agent.counters.get("verdict_pushes_rejected_bad-field") == 2
    agent._on_push(msg(topics.VERDICTS, b"{}"))
    assert agent.counters.get("verdict_pushes_rejected_no-schema") == 1


def test_sample_upload_checked(agent, tmp_path):
    prog = tmp_path / "prog"
    prog.write_bytes(b"program bytes")
    sha = hashlib.sha256(b"program bytes").hexdigest()
    agent._on_decision(proto.Exec(action="allowed", sha256=sha, path=str(prog), count=1))
    req = payload.encode("sample-request", "m", {"sha256": sha, "max_bytes": 1 << 20})
    agent._send_sample(req)
    topic, s, _ = agent.published[-1]
    assert topic == topics.endpoint("ep1", "sample") and base64.b64decode(s["data"]) == b"program bytes"
    prog.write_bytes(b"changed since")
    agent._send_sample(req)
    assert agent.published[-1][1]["error"] == "changed"
    prog.write_bytes(b"x" * 5000)                     # over the agent's own 4096-byte cap
    agent._send_sample(req)
    assert agent.published[-1][1]["error"] == "too-large"
    agent._send_sample(payload.encode("sample-request", "m", {"sha256": "f" * 64}))
    assert agent.published[-1][1]["error"] == "unknown-hash"
    agent._send_sample(b"not json")
    assert agent.counters.get("sample_requests_rejected") == 1


def test_events_bounded_and_blocks_flushed_at_once(agent):
    for i in range(agent.cfg.max_pending_events + 3):
        agent._on_decision(ExecEvent(action="allowed", sha256=f"{i:064x}", path="/p", count=2))
    assert agent.counters.get("events_dropped") == 3
    assert agent.counters.get("executions_allowed") == 2 * (agent.cfg.max_pending_events + 3)
    agent._on_decision(ExecEvent(action="blocked", sha256="1" * 64, path="/evil"))
    batches = [m for t, m, _ in agent.published if t == topics.endpoint("ep1", "events")]
    assert batches and batches[-1]["events"][-1]["action"] == "blocked"
    # the queue was full: the block pushed out one more of the oldest, and every kept one was sent
    assert sum(len(b["events"]) for b in batches) == agent.cfg.max_pending_events
    assert agent.counters.get("events_dropped") == 4 and not agent._events


class FakeClient:
    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, method, **params):
        self.calls.append((method, params))
        return self.answers[method]


def test_vigilctl_hashes(capsys, monkeypatch):
    rec = {"sha256": "a" * 64, "verdict": "malicious", "source": "operator", "ttl": 60.0, "seen_count": 2,
           "last_endpoint": "ep1", "last_path": "/x", "size": 3, "analysis": "done", "detail": "incident 42",
           "last_seen": 1.7e9}
    fake = FakeClient({"verdicts.set": {"record": rec, "changed": True},
                       "verdicts.get": {"record": rec, "history": [{"ts": 1.7e9, "kind": "verdict",
                                                                    "verdict": "malicious", "source": "operator",
                                                                    "detail": "incident 42"}]},
                       "verdicts.unknowns": [dict(rec, verdict="unknown")]})
    monkeypatch.setattr(vigilctl, "Client", lambda path: fake)
    assert vigilctl.main(["hashes", "block", "SHA256:" + "A" * 64, "--reason", "incident 42"]) == 0
    assert fake.calls[-1] == ("verdicts.set", {"sha256": "a" * 64, "verdict": "malicious",
                                               "reason": "incident 42", "ttl": None})
    assert vigilctl.main(["hashes", "show", "a" * 64]) == 0
    out = capsys.readouterr().out
    assert "MALICIOUS" in out and "incident 42" in out
    assert vigilctl.main(["hashes", "unknowns"]) == 0
    assert "ep1" in capsys.readouterr().out
    assert vigilctl.main(["hashes", "allow", "xyz"]) == 2


def test_console_unreachable(tmp_path, capsys):
    assert console.main(["--socket", str(tmp_path / "none.sock")]) == 3
    assert "is the daemon running" in capsys.readouterr().err


def _runs(thread) -> int:
    """How often the scheduler has run ``thread`` so far (field 3 of its schedstat)."""
    return int(open(f"/proc/self/task/{thread.native_id}/schedstat").read().split()[2])


def test_control_socket_blocks_without_polling_and_stops_promptly(tmp_path):
    """The console socket serves without a poll timeout (no idle wake-ups) and still stops at once."""
    import time

    from vigil.control import ControlServer, call

    srv = ControlServer(tmp_path / "q.sock")
    srv.register("ping", lambda: "pong")
    srv.start()
    try:
        assert call(tmp_path / "q.sock", "ping", timeout=5) == "pong"
        assert call(tmp_path / "q.sock", "ping", timeout=5) == "pong"
        time.sleep(0.1)
        runs = _runs(srv._thread)
        time.sleep(1.2)                      # socketserver's serve_forever would have woken twice
        assert _runs(srv._thread) == runs
        assert call(tmp_path / "q.sock", "ping", timeout=5) == "pong"
    finally:
        t = time.monotonic()
        srv.stop()
    assert time.monotonic() - t < 2
    assert not srv._thread.is_alive() and not (tmp_path / "q.sock").exists()


def test_network_loop_wakes_every_quarter_keepalive(agent):
    """The agent's MQTT network thread is its own, running paho's loop(keepalive/4) instead of paho's
    1 s; a failed connect backs off and retries; stop() ends the thread at once."""
    import threading
    import time

    c = agent.mqtt.paho
    assert agent.mqtt.loop_timeout == agent.cfg.mqtt.keepalive / 4 < agent.cfg.mqtt.keepalive * 0.5
    calls, connected = [], threading.Event()
    attempts = []

    def reconnect():
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise ConnectionRefusedError("broker not up yet")
        connected.set()

    def loop(timeout=1.0):
        calls.append(timeout)
        agent.mqtt._stopping.wait(0.05)
        return paho.MQTT_ERR_SUCCESS

    c.reconnect, c.loop, c.want_write = reconnect, loop, lambda: False
    agent.mqtt.start()
    assert connected.wait(5)
    assert attempts[1] - attempts[0] >= 0.9                  # reconnect_min backoff (paho's: at least 1 s)
    assert agent.mqtt._thread.name.startswith("mqtt-") and agent.mqtt._thread is not c._thread
    time.sleep(0.1)
    t = time.monotonic()
    thread = agent.mqtt._thread
    agent.mqtt.stop()
    assert time.monotonic() - t < 1 and not thread.is_alive()
    assert calls and set(calls) == {agent.cfg.mqtt.keepalive / 4}
