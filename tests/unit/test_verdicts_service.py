"""The verdict service with a fake MQTT peer: request/response, dedup, samples, pushes, overrides,
quarantine proposals, and bad input counted."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import socket
import threading
import time

import paho.mqtt.client as paho
import pytest

from tests.support.fake_mqtt import FakeMqtt
from vigil import payload, topics
from vigil.config import ConfigError, from_dict, loads
from vigil.control import ControlError, ControlServer
from vigil.counters import Counters
from vigil.manager.api import Context, DecisionRequest
from vigil.manager.config import ManagerConfig
from vigil.manager.verdicts.backends import Clamd, HashLists, Yara
from vigil.manager.verdicts.config import VerdictsConfig
from vigil.manager.verdicts.service import VerdictService
from vigil.manager.verdicts.store import VerdictStore
from vigil.mqtt import response_properties

pytestmark = pytest.mark.unit
MARKER = b"VIGIL-TEST-MALWARE-5f1c0b9e"


class FakeWriter:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, lines):
        self.lines += lines


class Sink:
    def __init__(self):
        self.requests: list[DecisionRequest] = []

    def propose(self, req):
        self.requests.append(req)


def msg(topic: str, body: bytes, props=None) -> paho.MQTTMessage:
    m = paho.MQTTMessage(topic=topic.encode())
    m.payload = body
    m.properties = props
    return m


@pytest.fixture
def svc(tmp_path, storage):
    """The verdict service on each storage backend (SQLite under tmp_path, PostgreSQL)."""
    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_text(f"{'b' * 64} evil-tool\n# comment\nnot-a-hash\n")
    good.write_text(f"{'a' * 64}\n{'b' * 64}\n")
    cfg = VerdictsConfig(known_bad=[bad], known_good=[good], clamd_socket=None, analyses_per_minute=6000,
                         sample_wait=2.0,
                         quarantine=from_dict({"enabled": True, "allow_networks": ["10.9.0.0/24"], "duration": 900},
                                              VerdictsConfig.__dataclass_fields__["quarantine"].default_factory().__class__))
    ctx = Context("m1", tmp_path, FakeMqtt(), FakeWriter(), Counters(), ControlServer(tmp_path / "c.sock"), Sink(),
                  threading.Event(), storage.config)
    s = VerdictService(cfg, ctx)
    yield s
    ctx.stop.set()
    s.close()


def request(s: VerdictService, sha: str, endpoint="ep1", corr=b"\x00\x01", path="/usr/bin/x", size=10):
    body = payload.encode("verdict-request", endpoint, {"sha256": sha, "size": size, "path": path})
    s.on_request(msg(topics.endpoint(endpoint, "verdict/request"), body,
                     response_properties(topics.endpoint(endpoint, "verdict/response"), corr)))
    sent = s.ctx.mqtt.sent[-1]
    assert sent.topic == topics.endpoint(endpoint, "verdict/response") and sent.properties.CorrelationData == corr
    return sent.json()


def test_listed_hashes_answered_at_once_bad_wins(svc):
    r = request(svc, "b" * 64)
    assert (r["status"], r["verdict"], r["source"]) == ("ok", "malicious", "list:bad.txt")
    assert request(svc, "a" * 64)["verdict"] == "benign"
    assert svc.lists.invalid_lines == 1
    assert svc.ctx.mqtt.on(topics.VERDICTS)   # a new verdict is pushed


def test_unknown_answered_unknown_and_queued_once(svc):
    sha = "c" * 64
    assert request(svc, sha)["verdict"] == "unknown"
    assert request(svc, sha, endpoint="ep2")["verdict"] == "unknown"
    assert svc.counters.get("analysis_queued") == 1
    assert svc.store.get(sha).seen_count == 2


def test_bad_requests_are_counted_and_answered_with_an_error(svc):
    props = response_properties("resp/x", b"1")
    svc.on_request(msg(topics.endpoint("ep1", "verdict/request"), b"{not json", props))
    svc.on_request(msg(topics.endpoint("ep1", "verdict/request"),
                       payload.encode("verdict-request", "ep1", {"sha256": "XYZ"}), props))
    assert svc.counters.get("verdict_requests_rejected_not-json") == 1
    assert svc.counters.get("verdict_requests_rejected_bad-field") == 1
    assert all(m["status"] == "error" for m in (s.json() for s in svc.ctx.mqtt.on("resp/x")))


def _serve_sample(svc, data: bytes, tamper: bool = False):
    """Answer the service's sample request like an endpoint would."""
    deadline = time.monotonic() + 3
    while not svc.ctx.mqtt.on(topics.endpoint("ep1", "sample/request")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    req = svc.ctx.mqtt.on(topics.endpoint("ep1", "sample/request"))[-1].json()
    sent = data + (b"x" if tamper else b"")
    svc.on_sample(msg(topics.endpoint("ep1", "sample"), payload.encode("sample", "ep1", {
        "sha256": req["sha256"], "size": len(sent), "data": base64.b64encode(sent).decode()})))


def _analyse_uploaded(svc, data: bytes, tamper: bool = False):
    """An endpoint asks about ``data``, then sends its sample (tampered if asked) when the analysis requests it."""
    sha = hashlib.sha256(data).hexdigest()
    request(svc, sha, size=len(data))
    t = threading.Thread(target=_serve_sample, args=(svc, data, tamper))
    t.start()
    rec = svc.analyse(sha)
    t.join()
    return sha, rec


def test_yara_analysis_through_sample_upload_pushes_verdict(svc):
    data = b"\x7fELF...." + MARKER
    sha, rec = _analyse_uploaded(svc, data)
    assert (rec.verdict, rec.source) == ("malicious", "yara:Vigil_Test_Marker")
    pushed = [s.json() for s in svc.ctx.mqtt.on(topics.VERDICTS)]
    assert pushed[-1]["verdicts"][0] == {"sha256": sha, "verdict": "malicious", "source": "yara:Vigil_Test_Marker",
                                         "ttl": svc.cfg.ttl_malicious}
    assert request(svc, sha)["verdict"] == "malicious"
    kinds = [h["kind"] for h in svc.store.history(sha)]
    assert kinds[0] == "seen" and "verdict" in kinds


def test_tampered_sample_rejected_and_analysis_fails(svc):
    data = b"some program"
    sha, rec = _analyse_uploaded(svc, data, tamper=True)
    assert rec.verdict == "unknown" and svc.counters.get("samples_rejected_hash-mismatch") == 1
    assert svc.store.get(sha).analysis == "failed"
    svc.on_sample(msg(topics.endpoint("ep1", "sample"), payload.encode("sample", "ep1", {"sha256": sha})))
    assert svc.counters.get("samples_unrequested") == 1


def _endpoint_status(svc, state: str, endpoint="ep1"):
    svc.on_status(msg(topics.endpoint(endpoint, "status"), payload.encode("endpoint-status", endpoint, {
        "state": state, "mode": "block-malicious", "address": "10.9.0.5", "host": "h"})))


def test_sample_of_an_offline_endpoint_does_not_hold_up_the_queue(svc):
    """A restarted manager replays sightings of endpoints that are gone: asking them would wait
    sample_wait per hash in front of every other analysis.  Deferred, then asked when it is back."""
    data = b"\x7fELF...." + MARKER
    sha = hashlib.sha256(data).hexdigest()
    request(svc, sha, size=len(data))
    _endpoint_status(svc, "offline")
    t = time.monotonic()
    rec = svc.analyse(sha)
    assert time.monotonic() - t < 0.5 and rec.verdict == "unknown"
    assert not svc.ctx.mqtt.on(topics.endpoint("ep1", "sample/request"))
    assert svc.store.get(sha).analysis == "waiting-sample" and svc.counters.get("samples_deferred_offline") == 1
    queued = svc._queue.qsize()
    _endpoint_status(svc, "online")
    assert svc._queue.qsize() == queued + 1                      # queued again once the endpoint is back
    _endpoint_status(svc, "online")
    assert svc._queue.qsize() == queued + 1                      # and only once
    svc._queue.get_nowait()
    t2 = threading.Thread(target=_serve_sample, args=(svc, data))
    t2.start()
    rec = svc.analyse(sha)
    t2.join()
    assert (rec.verdict, rec.source) == ("malicious", "yara:Vigil_Test_Marker")


def test_clean_sample_stays_unknown_and_oversize_is_not_requested(svc):
    data = b"harmless"
    sha, rec = _analyse_uploaded(svc, data)
    assert (rec.verdict, rec.source, svc.store.get(sha).analysis) == ("unknown", "analysis", "done")
    big = "d" * 64
    request(svc, big, size=svc.cfg.sample_max_bytes + 1)
    n = len(svc.ctx.mqtt.on(topics.endpoint("ep1", "sample/request")))
    svc.analyse(big)
    assert len(svc.ctx.mqtt.on(topics.endpoint("ep1", "sample/request"))) == n
    assert svc.store.get(big).analysis == "failed"


def test_operator_override_wins_and_clear_returns_to_lists(svc):
    sha = "b" * 64
    request(svc, sha)
    r = svc.ctl_set(sha256=sha, verdict="benign", reason="vendor tool, false positive")
    assert r["record"]["source"] == "operator"
    assert request(svc, sha)["verdict"] == "benign"        # the list no longer decides
    assert svc.ctx.mqtt.on(topics.VERDICTS)[-1].json()["verdicts"][0]["verdict"] == "benign"
    svc.ctl_clear(sha256=sha)
    assert request(svc, sha)["verdict"] == "malicious"
    hist = svc.ctl_get(sha256=sha)["history"]
    assert any(h["source"] == "operator" and "false positive" in h["detail"] for h in hist)
    with pytest.raises(ControlError):
        svc.ctl_set(sha256=sha, verdict="evil")
    with pytest.raises(ControlError):
        svc.ctl_get(sha256="e" * 64)
    assert [u["sha256"] for u in svc.ctl_unknowns()] == []


def events(s, endpoint, evs, address="10.9.0.20", host="pc-20"):
    s.on_events(msg(topics.endpoint(endpoint, "events"), payload.encode("endpoint-events", endpoint, {
        "host": host, "address": address, "events": evs})))


def test_malicious_execution_proposes_quarantine_once(svc):
    sha = "b" * 64
    request(svc, sha)
    ev = {"ts": 1, "action": "blocked", "verdict": "malicious", "sha256": sha, "path": "/tmp/evil"}
    events(svc, "ep1", [ev, ev, {"action": "allowed", "verdict": "benign", "sha256": "a" * 64}, {"junk": 1}])
    reqs = svc.ctx.decisions.requests
    assert len(reqs) == 1
    q = reqs[0]
    assert (q.scope, q.value, q.origin, q.duration) == ("ip", "10.9.0.20", "endpoint:list:bad.txt", 900)
    assert sha in q.reason and "pc-20" in q.reason and "evil-tool" in q.reason and "blocked" in q.reason
    assert q.evidence["quarantine"] is True and q.evidence["allow_networks"] == ["10.9.0.0/24"]
    assert q.evidence["sha256"] == sha and q.evidence["host"] == "pc-20"
    assert svc.counters.get("endpoint_events_invalid") == 1
    assert len(svc.ctx.writer.lines) == 3
    assert svc.ctx.writer.lines[0].startswith("endpoint_executions,action=blocked,endpoint=ep1,verdict=malicious")


def test_file_turning_malicious_later_quarantines_who_ran_it(svc):
    sha = "f" * 64
    request(svc, sha)
    events(svc, "ep7", [{"ts": 1, "action": "allowed", "verdict": "unknown", "sha256": sha, "path": "/home/u/x"}],
           address="10.9.0.77", host="pc-77")
    assert svc.ctx.decisions.requests == []
    svc.ctl_set(sha256=sha, verdict="malicious", reason="sandbox")
    (q,) = svc.ctx.decisions.requests
    assert q.value == "10.9.0.77" and q.evidence["outcome"] == "executed" and q.origin == "endpoint:operator"


def test_events_without_address_are_counted_not_proposed(svc):
    request(svc, "b" * 64)
    events(svc, "ep1", [{"action": "blocked", "verdict": "malicious", "sha256": "b" * 64}], address=None)
    assert svc.ctx.decisions.requests == [] and svc.counters.get("quarantine_without_address") == 1


def test_hash_lists_reload_on_change(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("")
    h = HashLists([f], [])
    assert h.lookup("1" * 64) is None
    time.sleep(0.01)
    f.write_text("1" * 64 + "\n")
    import os
    os.utime(f, (time.time() + 5, time.time() + 5))
    assert h.reload() and h.lookup("1" * 64).verdict == "malicious"
    missing = HashLists([tmp_path / "nope.txt"], [])
    assert missing.errors and len(missing) == 0


def test_yara_cli_backend(tmp_path):
    y = Yara(VerdictsConfig().rule_paths())
    assert y.available()
    hit, clean = tmp_path / "hit", tmp_path / "clean"
    hit.write_bytes(b"abc" + MARKER)
    clean.write_bytes(b"nothing here")
    assert y.scan(hit).source == "yara:Vigil_Test_Marker"
    assert y.scan(clean) is None
    miner = tmp_path / "miner"
    miner.write_bytes(b"XMRig 6.20 stratum+tcp://pool RandomX")
    assert y.scan(miner).verdict == "grayware"


def test_clamd_backend_speaks_instream(tmp_path):
    path = tmp_path / "clamd.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    got = []

    def serve():
        c, _ = srv.accept()
        buf = b""
        while not buf.endswith(b"\0\0\0\0"):
            buf += c.recv(65536)
        got.append(buf)
        c.sendall(b"stream: Eicar-Signature FOUND\0")
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    sample = tmp_path / "s"
    sample.write_bytes(b"X5O!P")
    f = Clamd(path, timeout=5).scan(sample)
    t.join()
    srv.close()
    assert got[0].startswith(b"zINSTREAM\0\0\0\0\x05X5O!P")
    assert (f.verdict, f.source) == ("malicious", "clamav:Eicar-Signature")
    assert not Clamd(tmp_path / "absent").available()


def test_store_survives_restart_and_requeues_pending(storage):
    s = VerdictStore(storage.db("verdicts"))
    s.seen("1" * 64, 5, "ep1", "/x", 300)
    s.set_analysis("1" * 64, "queued")
    s.close()
    s2 = VerdictStore(storage.db("verdicts"))
    assert s2.pending_analysis() == ["1" * 64] and s2.get("1" * 64).seen_count == 1
    # a second store on the same database (a second manager) sees one verdict database
    s3 = VerdictStore(storage.db("verdicts"))
    rec, changed = s3.set_verdict("1" * 64, "malicious", "operator", 3600, "by hand")
    assert changed and s2.get("1" * 64).verdict == "malicious" and s2.get("1" * 64).seen_count == 1
    assert [h["kind"] for h in s2.history("1" * 64)] == ["seen", "verdict"]
    assert s2.counts() == {"malicious": 1}
    s2.close()
    s3.close()



def test_config_section_validated():
    c = loads("verdicts:\n  ttl_unknown: 30\n  quarantine: {enabled: true, allow_networks: [10.0.0.0/8]}\n",
              ManagerConfig)
    assert c.verdicts.ttl("unknown") == 30
    with pytest.raises(ConfigError, match="not an address or CIDR"):
        loads("verdicts: {quarantine: {allow_networks: [nope]}}\n", ManagerConfig)
    with pytest.raises(ConfigError, match="1 KiB..256 MiB"):
        loads("verdicts: {sample_max_bytes: 1}\n", ManagerConfig)
    assert loads("{}", ManagerConfig).verdicts is None


def test_behaviour_events_are_stored_with_bounded_tags(svc):
    tree = [{"pid": 7, "ppid": 1, "exe": "/usr/bin/bash", "cmdline": "bash -i", "user": "www-data",
             "sha256": "c" * 64}]
    events(svc, "ep1", [
        {"kind": "behaviour", "rule": "reverse-shell", "technique": "T1059.004", "action": "killed",
         "path": "/usr/bin/bash", "pid": 7, "parent": "/usr/sbin/apache2", "sha256": "c" * 64, "tree": tree,
         "ts": 1700000000000},
        {"kind": "behaviour", "rule": "Bad Rule,x=1", "technique": "T1059", "action": "killed"},
        {"kind": "behaviour", "rule": "r", "technique": "not-a-technique", "action": "killed"},
        {"kind": "behaviour", "rule": "r", "technique": "T1620", "action": "exploded"}])
    (point,) = svc.ctx.writer.lines
    assert point.startswith("endpoint_behaviour,action=killed,endpoint=ep1,rule=reverse-shell,technique=T1059.004 ")
    assert 'parent="/usr/sbin/apache2"' in point and point.endswith(" 1700000000000000000")
    # the three bad ones are refused by the events contract (BehaviourEvent) and counted with the batch's
    # other invalid items; none of them reaches InfluxDB as a tag
    assert svc.counters.get("endpoint_behaviour_killed") == 1 and svc.counters.get("endpoint_events_invalid") == 3


def test_behaviour_event_quarantines_only_when_its_rule_is_listed(svc):
    ev = {"kind": "behaviour", "rule": "reverse-shell", "technique": "T1059.004", "action": "killed",
          "path": "/usr/bin/bash", "pid": 7}
    events(svc, "ep1", [ev])
    assert svc.ctx.decisions.requests == []                  # on_behaviour is empty by default
    svc.cfg = dataclasses.replace(svc.cfg, quarantine=dataclasses.replace(svc.cfg.quarantine,
                                                                          on_behaviour=["reverse-shell"]))
    events(svc, "ep1", [ev, {**ev, "rule": "ptrace-attach", "technique": "T1055.008"}])
    events(svc, "ep1", [ev])                                  # once per (endpoint, rule) per duration
    (q,) = svc.ctx.decisions.requests
    assert q.value == "10.9.0.20" and q.origin == "endpoint:behaviour:reverse-shell"
    assert q.evidence["technique"] == "T1059.004" and q.evidence["outcome"] == "killed"
