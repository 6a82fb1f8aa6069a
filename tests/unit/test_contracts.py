"""Every payload kind round-trips through its contract; readers ignore unknown keys, reject an
unknown major version and fields of the wrong type with a reason to count."""
from __future__ import annotations

import dataclasses
import json

import pytest

from vigil.contracts import decider, endpoint as ep, engine as eng, envelope, vocab
from vigil.contracts.base import Contract
from vigil.contracts.envelope import PayloadError
from vigil.contracts.ids import check_id, valid_id

pytestmark = pytest.mark.unit

SHA = "ab" * 32
FLOW = {"id": 7, "family": 4, "proto": "tcp", "src": "10.0.0.1", "sport": 40000, "dst": "10.0.0.2",
        "dport": 22, "in_port": "eth0", "vlan": None, "start": 1, "end": None, "duration": 0.5, "new": True,
        "state": "ESTABLISHED", "conn_state": "S1", "replied": True, "assured": False, "orig_pkts": 3,
        "orig_bytes": 180, "resp_pkts": 2, "resp_bytes": 120, "orig_pkts_total": 3, "orig_bytes_total": 180,
        "resp_pkts_total": 2, "resp_bytes_total": 120}

# one filled-in example of every kind that travels in an envelope
ENVELOPED: list[Contract] = [
    eng.FlowBatch(engine="e1", seq=5, interval={"start": 1000, "end": 2000}, source="br_netfilter-conntrack",
                  mode="learning", flows_tracked=1, evicted_total=0, dropped_batches_total=0, poll_ms=1.5,
                  flows=[FLOW]),
    eng.EngineStatus(state="running", engine="e1", mode="enforcing",
                     learning={"progress": 0.5, "elapsed": 60.0, "period": 120.0}, ruleset_generation=3,
                     kernel={"conntrack": True}, flows_tracked=10, flow_interval=1.0, tags=["dmz"], version="0.1.0",
                     counters={"flow_polls": 4}, enforcement={"generation": 3}),
    eng.EngineStatus(state="offline"),
    eng.EventBatch(engine="e1", seq=9, events=[
        eng.EngineEvent(type="scan", severity="high", ts=5, src="10.0.0.9", detail="12 ports", action="block",
                        mode="enforcing", count=1, ttl=300.0, origin="engine-local", details={"probes": 40}),
        eng.EngineEvent(type="arp-rebind", severity="high", detail="reply rebinds a known IP to a new MAC",
                        details={"ip": "10.0.0.1", "known_mac": "02:00:00:00:00:01", "new_mac": "02:00:00:00:00:02"}),
    ]),
    eng.RulesetState(engine="e1", generation=4, applied_at=10, issued_at=9, counts={"block4": 1}, error=None,
                     rejected={"old-generation": 1}, key_id="00ff", backend="netlink"),
    ep.VerdictRequest(sha256=SHA, size=10, path="/usr/bin/x"),
    ep.VerdictResponse(status="ok", sha256=SHA, verdict="malicious", source="yara:X", ttl=60.0),
    ep.VerdictResponse(status="error", error="bad-sha256: 'x'"),
    ep.VerdictChanges(verdicts=[ep.VerdictChange(sha256=SHA, verdict="benign", source="operator", ttl=5.0)]),
    ep.EndpointStatus(state="online", mode="lockdown", version="0.1.0", host="h", address="10.0.0.5",
                      mounts=["/"], cache={"verdicts": 1}, decisions={"decisions_allowed": 2}, counters={"x": 1}),
    ep.EndpointEvents(host="h", address="10.0.0.5", mode="monitor", events=[
        ep.ExecEvent(action="would-block", sha256=SHA, verdict="malicious", source="list", path="/tmp/x", ts=1,
                     pid=10, size=3, via="exec", mode="monitor", latency_us=800, count=1, cached=False)]),
    ep.EndpointEvents(host="h", address="10.0.0.5", mode="block-malicious", events=[
        ep.ExecEvent(action="allowed", sha256=SHA, verdict="benign", path="/usr/bin/id", count=3, cached=True),
        ep.BehaviourEvent(rule="reverse-shell-exec", technique="T1059.004", action="killed", event="gate",
                          description="a shell whose stdio is a TCP socket", mode="block-malicious",
                          path="/usr/bin/bash", pid=7, service={"pid": 2, "exe": "/usr/sbin/apache2"}, closed=1, latency_us=900, ts=5,
                          sha256=SHA, parent="/usr/sbin/apache2",
                          tree=[{"pid": 7, "ppid": 1, "comm": "bash", "exe": "/usr/bin/bash", "cmdline": "bash -i",
                                 "user": "www-data", "sha256": SHA}],
                          writer={"pid": 9, "exe": "/usr/bin/curl"}, tracee={"pid": 8, "exe": "/usr/bin/sshd"})]),
    ep.SampleRequest(sha256=SHA, max_bytes=1 << 20),
    ep.BehaviourExceptions(exceptions=[
        ep.BehaviourException(id="jit", rule="memfd-exec", path="/memfd:jit*", endpoints=["web-*"], comment="JIT",
                              created=5),
        ep.BehaviourException(id="x1", unit="inetd-echo@*.service", user="nobody")]),
    ep.Sample(sha256=SHA, status="ok", size=3, path="/tmp/x", data="AAAA"),
    ep.Sample(sha256=SHA, status="error", error="too-large"),
]


def test_every_enveloped_kind_is_covered():
    kinds = {type(c).KIND for c in ENVELOPED}
    # ruleset / ruleset-delta: signed by vigil.ruleset around RulesetMeta (test_ruleset.py)
    assert kinds | {"ruleset", "ruleset-delta"} == set(envelope.MAJOR)


@pytest.mark.parametrize("obj", ENVELOPED, ids=lambda o: f"{type(o).__name__}")
def test_round_trip(obj):
    raw = obj.encode("sender-1", ts=1234)
    back = type(obj).decode(raw)
    assert back == obj and back.ts == 1234 and back.sender == "sender-1"
    assert json.loads(raw)["schema"] == f"vigil.{obj.KIND}/1"


@pytest.mark.parametrize("obj", ENVELOPED, ids=lambda o: f"{type(o).__name__}")
def test_readers_ignore_unknown_keys_and_reject_unknown_majors(obj):
    msg = json.loads(obj.encode("s"))
    msg["from_a_newer_minor"] = {"anything": [1, 2]}
    expected = obj
    for f in dataclasses.fields(obj):
        if f.metadata.get("extra"):     # a catch-all (engine status: further parts) keeps it as it came
            expected = dataclasses.replace(obj, **{f.name: {**getattr(obj, f.name), "from_a_newer_minor":
                                                            {"anything": [1, 2]}}})
    assert type(obj).decode(json.dumps(msg).encode()) == expected
    msg["schema"] = f"vigil.{obj.KIND}/2"
    with pytest.raises(PayloadError) as exc:
        type(obj).decode(json.dumps(msg).encode())
    assert exc.value.reason == "unknown-major"


def test_wrong_types_are_rejected_with_a_reason():
    for kind, body in ((eng.FlowBatch, {"engine": "e1", "seq": "5"}),
                       (eng.EngineStatus, {"state": "sleeping"}),
                       (ep.VerdictRequest, {"sha256": "XYZ"}),
                       (ep.VerdictResponse, {"status": "ok", "verdict": "evil"})):
        with pytest.raises(PayloadError) as exc:
            kind.decode(envelope.encode(kind.KIND, "s", body))
        assert exc.value.reason == "bad-field", kind


def test_a_bad_item_is_dropped_and_counted_the_rest_kept():
    raw = envelope.encode("events", "e1", {"engine": "e1", "seq": 1, "events": [
        {"type": "scan", "src": "10.0.0.9", "severity": "high"},
        {"type": "arp-rebind", "src": "02:00:00:00:00:02", "severity": "high"},   # a MAC is not an address
        "not an object",
        {"type": "tcp-flags", "severity": "loud"}]})
    batch = eng.EventBatch.decode(raw)
    assert [e.type for e in batch.events] == ["scan"] and batch.invalid == 3


def test_the_arp_rebind_event_names_no_mac_as_its_source():
    """An engine's ARP rebind event carried the new MAC in ``src``; the policy made it a block of
    an 'ip' that is no address (an invalid proposal and a warning every time)."""
    import struct
    from vigil.engine.checks import ProtocolChecks
    from vigil.engine.nflog import Sample

    def reply(mac: bytes) -> Sample:
        arp = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 2) + mac + bytes([10, 0, 0, 1]) + b"\x00" * 6 + bytes(4)
        return Sample(prefix="arp-reply", family=7, ethertype=0x0806, payload=arp, mark=1, hwaddr=mac)
    checks = ProtocolChecks(port_names={1: "eth0"}, mode=lambda: "enforcing")
    assert checks.check(reply(b"\x02\x00\x00\x00\x00\x01")) == []
    evs = checks.check(reply(b"\x02\x00\x00\x00\x00\x02"))
    assert [e["type"] for e in evs] == ["arp-rebind"]
    ev = eng.EngineEvent.from_body(evs[0])          # checks out: no MAC where an address belongs
    assert ev.src is None and ev.details["new_mac"] == "02:00:00:00:00:02" and ev.details["ip"] == "10.0.0.1"


def test_behaviour_events_share_the_endpoint_events_batch():
    """A behaviour rule's match travels in the endpoint events batch as ``kind: behaviour``; a bad
    one (a rule id that would make a new InfluxDB tag, no ATT&CK technique, an unknown action or
    kind) is dropped and counted like a bad execution, the rest kept."""
    raw = envelope.encode("endpoint-events", "ep1", {"events": [
        {"action": "blocked", "sha256": SHA, "verdict": "malicious"},
        {"kind": "behaviour", "rule": "ptrace-attach", "technique": "T1055.008", "action": "killed", "pid": 3},
        {"kind": "behaviour", "rule": "Bad Rule,x=1", "technique": "T1059", "action": "killed"},
        {"kind": "behaviour", "rule": "r", "technique": "not-a-technique", "action": "killed"},
        {"kind": "behaviour", "rule": "r", "technique": "T1620", "action": "exploded"},
        {"kind": "telemetry", "action": "allowed"},
        {"action": "killed", "rule": "r", "technique": "T1620"}]})     # no kind: an execution, and not one
    batch = ep.EndpointEvents.decode(raw)
    assert [type(e) for e in batch.events] == [ep.ExecEvent, ep.BehaviourEvent] and batch.invalid == 5
    assert batch.events[1].rule == "ptrace-attach" and batch.events[1].body()["kind"] == "behaviour"
    # the decider's report becomes the batch's item with the same fields (no "t")
    m = decider.Behaviour(rule="memfd-exec", technique="T1620", action="killed", pid=4)
    assert ep.BehaviourEvent.body(m) == {"kind": "behaviour", "rule": "memfd-exec", "technique": "T1620",
                                         "action": "killed", "event": "", "description": "", "path": "",
                                         "pid": 4, "closed": 0, "tree": []}


def test_ids_and_vocabularies():
    assert valid_id("e1") and not valid_id("e/1") and not valid_id("") and not valid_id(None)
    with pytest.raises(ValueError, match="engine_id: must be"):
        check_id("bad id", "engine_id")
    assert vocab.SEVERITY_RANK["high"] > vocab.SEVERITY_RANK["warning"] > vocab.SEVERITY_RANK["info"]
    from vigil import ruleset
    assert ruleset.MODES is vocab.MODES and ruleset.ACTIONS is vocab.ACTIONS
    import typing
    from vigil.endpoint.config import EndpointConfig
    assert typing.get_args(typing.get_type_hints(EndpointConfig)["mode"]) == vocab.ENDPOINT_MODES


DECIDER: list[decider.Message] = [
    decider.Verdict(sha256=SHA, verdict="benign", source="list", ttl=5.0),
    decider.Verdict(sha256=SHA, error="offline"),
    decider.Push(verdicts=[ep.VerdictChange(sha256=SHA, verdict="malicious", source="operator", ttl=60.0)]),
    decider.SetMode(mode="lockdown"),
    decider.Exceptions(exceptions=[ep.BehaviourException(id="a", rule="*", user="build")]),
    decider.Flush(),
    decider.StatsQuery(),
    decider.Ready(pid=10, mounts=["/"]),
    decider.Fatal(error="EPERM"),
    decider.Ask(sha256=SHA, size=3, path="/x"),
    decider.Exec(action="blocked", sha256=SHA, verdict="malicious", path="/x", count=1),
    decider.ExecBatch(events=[ep.ExecEvent(action="allowed", sha256=SHA, verdict="benign", count=40, cached=True)]),
    decider.Ready(pid=10, mounts=["/"], behaviour=True),
    decider.Behaviour(rule="memfd-exec", technique="T1620", action="would-block", event="exec", mode="monitor",
                      path="/memfd:x (deleted)", pid=12, ts=6, parent="/usr/bin/python3",
                      tree=[{"pid": 12, "ppid": 11, "comm": "x", "exe": None, "cmdline": None, "user": "root"}]),
    decider.Stats(mode="monitor", behaviour=True, counters={"behaviour_killed": 1}),
    decider.Stats(mode="monitor", counters={"hashed": 1}, identity_cache=1, verdict_cache=2, cache_hits=3),
]


def test_every_decider_message_is_covered_and_round_trips():
    assert {type(m).T for m in DECIDER} == set(decider.MESSAGES)
    for m in DECIDER:
        assert decider.from_wire(m.wire()) == m, m


def test_decider_rejects_what_is_not_a_message():
    for raw, reason in ((b"{", "not-json"), (b"[1]", "not-object"), (b'{"t":"reboot"}', "unknown-message"),
                        (b'{"t":"mode","mode":"yolo"}', "bad-field")):
        with pytest.raises(PayloadError) as exc:
            decider.from_wire(raw)
        assert exc.value.reason == reason
