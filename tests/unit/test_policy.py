"""Decision store, ladder, allowlist, suppression, learning mode and signed rule-set publication."""
from __future__ import annotations

import threading
from pathlib import Path
import time

import pytest

from tests.support.fake_mqtt import FakeMqtt
from tests.support.postgres import Backend
from vigil import payload, ruleset, topics
from vigil.contracts.engine import EngineStatus, EventBatch, RulesetState
from vigil.control import ControlError, ControlServer
from vigil.counters import Counters
from vigil.manager.api import Context, DecisionRequest
from vigil.manager.policy.decisions import DecisionStore, Rejected
from vigil.manager.policy.component import PolicyComponent, PolicyConfig

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeWriter:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, lines):
        self.lines.extend(lines)


def store(storage: Backend, clock=None, **kw) -> DecisionStore:
    args = dict(ladder=[600, 3600, 86400], offence_memory=86400 * 30, unblock_suppress=3600,
                static_allow=["10.77.0.1/32"])
    args.update(kw)
    return DecisionStore(storage.db("decisions"), Counters(), clock=clock or Clock(), **args)


def test_ladder_climbs_for_repeat_offenders(storage):
    clk = Clock()
    s = store(storage, clk)
    d1 = s.propose("ip", "10.77.0.66", "flow-anomaly:vertical-scan", "scan")
    assert d1.offences == 1 and d1.expires - d1.created == 600
    # the same scan reported again while blocked merges: no new offence
    again = s.propose("ip", "10.77.0.66", "flow-anomaly:vertical-scan", "scan")
    assert again.id == d1.id and s.counters.get("decisions_merged") == 1
    clk.t += 601
    assert s.expire() == 1
    d2 = s.propose("ip", "10.77.0.66", "flow-anomaly:flood", "flood")
    assert d2.offences == 2 and d2.expires - d2.created == 3600
    clk.t += 3601
    s.expire()
    d3 = s.propose("ip", "10.77.0.66", "flow-anomaly:flood", "flood")
    clk.t += 86401
    s.expire()
    d4 = s.propose("ip", "10.77.0.66", "flow-anomaly:flood", "flood")
    assert (d3.expires - d3.created, d4.expires - d4.created) == (86400, 86400)  # top of the ladder


def test_offences_are_forgotten_after_the_memory(storage):
    clk = Clock()
    s = store(storage, clk, offence_memory=1000)
    s.propose("ip", "10.0.0.5", "x", "r")
    clk.t += 2000
    s.expire()
    assert s.propose("ip", "10.0.0.5", "x", "r").offences == 1


def test_allowlist_overrides_every_origin(storage):
    s = store(storage)
    for origin in ("operator", "flow-anomaly:flood", "parser:snort"):
        with pytest.raises(Rejected) as exc:
            s.propose("ip", "10.77.0.1", origin, "r")
        assert exc.value.reason == "allowlisted"
    with pytest.raises(Rejected):  # a CIDR that would cover the gateway
        s.propose("cidr", "10.77.0.0/24", "operator", "r")
    d = s.propose("ip", "10.77.0.9", "operator", "r")
    s.allow_add("10.77.0.8/30", "printer")   # covers .9: the running decision ends at once
    assert d.id not in s.active
    with pytest.raises(Rejected):
        s.propose("ip", "10.77.0.9", "flow-anomaly:flood", "r")
    s.allow_delete("10.77.0.8/30")
    assert s.propose("ip", "10.77.0.9", "flow-anomaly:flood", "r").state == "active"


def test_unblock_suppresses_reblocking_but_not_the_operator(storage):
    clk = Clock()
    s = store(storage, clk)
    d = s.propose("ip", "10.77.0.66", "flow-anomaly:flood", "r")
    assert [x.id for x in s.unblock("10.77.0.66")] == [d.id]
    with pytest.raises(Rejected) as exc:
        s.propose("ip", "10.77.0.66", "flow-anomaly:flood", "r")
    assert exc.value.reason == "suppressed"
    assert s.propose("ip", "10.77.0.66", "operator", "r", duration=60).state == "active"
    s.unblock("10.77.0.66")
    clk.t += 3601
    s.expire()
    assert s.propose("ip", "10.77.0.66", "flow-anomaly:flood", "r").state == "active"
    with pytest.raises(KeyError):
        s.unblock("10.9.9.9")


def test_bad_values_are_refused(storage):
    s = store(storage)
    for scope, value in (("ip", "10.0.0.300"), ("cidr", "10.0.0.1"), ("flow", "a|b|tcp|22"),
                         ("flow", "10.0.0.1|10.0.0.2|icmp|0"), ("host", "10.0.0.1")):
        with pytest.raises(ValueError):
            s.propose(scope, value, "x", "r")
    with pytest.raises(ValueError):
        s.propose("ip", "10.0.0.1", "x", "r", engines=["bad id!"])
    with pytest.raises(ValueError):
        s.propose("ip", "10.0.0.1", "x", "r", duration=-5)


def test_targets_and_would_block(storage):
    s = store(storage)
    g = s.propose("ip", "10.0.0.1", "flow-anomaly:flood", "r")                      # global
    e1 = s.propose("ip", "10.0.0.2", "flow-anomaly:flood", "r", engines=["e1"])
    tag = s.propose("ip", "10.0.0.3", "flow-anomaly:flood", "r", engines=["tag:dmz"])
    wb = s.propose("ip", "10.0.0.4", "flow-anomaly:flood", "r", engines=["e2"], learning=["e2"])
    ids = lambda eng, tags=(): {d.id for d in s.enforced_for(eng, tags)}
    assert ids("e1") == {g.id, e1.id}
    assert ids("e2", ["dmz"]) == {g.id, tag.id}          # wb is would-block on e2
    assert [d.id for d in s.list(would_block=True)] == [wb.id]


def test_store_persists_across_restart(storage):
    clk = Clock()
    s = store(storage, clk)
    d = s.propose("ip", "10.0.0.7", "operator", "keep me", duration=500, engines=["e1"])
    s.allow_add("192.0.2.0/24", "ops")
    s.unblock(s.propose("ip", "10.0.0.8", "x", "r").id)
    s.close()
    s2 = store(storage, clk)
    assert s2.active[d.id].reason == "keep me" and s2.active[d.id].engines == ["e1"]
    assert any(r["value"] == "192.0.2.0/24" for r in s2.allow_list())
    with pytest.raises(Rejected):
        s2.propose("ip", "10.0.0.8", "x", "r")
    assert s2.propose("ip", "10.0.0.7", "x", "r", engines=["e1"]).offences == 1  # merged


# -- the component: rule sets ---------------------------------------------------------------
def component(storage: Backend | Path, **cfg):
    """A policy component on the test's storage backend (SQLite under tmp_path, or PostgreSQL); a
    bare directory means SQLite there."""
    if isinstance(storage, Path):
        storage = Backend("sqlite", storage, None)
    tmp_path = storage.tmp_path
    mqtt = FakeMqtt()
    ctx = Context("m1", tmp_path / "state", mqtt, FakeWriter(), Counters(),
                  ControlServer(tmp_path / "ctl.sock"), None, threading.Event(), storage.config)
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)
    comp = PolicyComponent(PolicyConfig(**cfg), ctx)
    return comp, ctx, mqtt


def status(engine, mode="enforcing", tags=(), gen=None, learning=None):
    """An engine's status as the policy receives it: decoded through its contract."""
    return EngineStatus.decode(payload.encode("status", engine, {
        "state": "running", "engine": engine, "mode": mode, "tags": list(tags),
        "learning": learning or {"progress": 1.0}, "ruleset_generation": gen}))


def events(engine, *evs):
    return EventBatch.decode(payload.encode("events", engine, {"engine": engine, "seq": 1, "events": list(evs)}))


def test_component_is_the_decision_sink_and_signs_rule_sets(storage):
    comp, ctx, mqtt = component(storage, allowlist=["10.77.0.1/32"])
    assert ctx.decisions is comp
    pub = ruleset.load_public_key(storage.tmp_path / "state" / "signing.pub")
    comp.on_status("e1", status("e1"))
    comp.on_status("e2", status("e2", mode="learning"))
    r = ctx.decisions.propose(DecisionRequest("ip", "10.77.0.66", "correlation:ssh", "many failures"))
    assert r["status"] == "created" and r["decision"]["would_block_on"] == ["e2"]
    comp.tick()
    s1 = ruleset.decode_snapshot(mqtt.last(topics.engine("e1", "ruleset")), pub, "e1")
    s2 = ruleset.decode_snapshot(mqtt.last(topics.engine("e2", "ruleset")), pub, "e2")
    assert {(e.action, e.value) for e in s1.entries} == {("allow", "10.77.0.1/32"), ("drop", "10.77.0.66")}
    assert {(e.action, e.value) for e in s2.entries} == {("allow", "10.77.0.1/32")}  # learning: not sent
    drop = [e for e in s1.entries if e.action == "drop"][0]
    assert 590 <= drop.ttl <= 600 and drop.origin == "correlation:ssh"
    # operator decisions apply in learning mode too, and go out as a signed delta at once
    comp.add_decision("ip", "10.77.0.99", duration=120, reason="manual", engines=["e2"])
    d = ruleset.decode_delta(mqtt.last(topics.engine("e2", "ruleset/delta")), pub, "e2")
    assert d.base_generation == s2.generation and d.generation == s2.generation + 1
    assert [e.value for e in d.add] == ["10.77.0.99"] and d.remove == ()
    # unblock: a delta removing it
    comp.delete_decision("10.77.0.99")
    d2 = ruleset.decode_delta(mqtt.last(topics.engine("e2", "ruleset/delta")), pub, "e2")
    assert d2.remove == (("drop", "ip", "10.77.0.99"),) and d2.base_generation == d.generation
    # extend re-asserts the entry with a longer ttl
    comp.extend_decision("10.77.0.66", 3600)
    d3 = ruleset.decode_delta(mqtt.last(topics.engine("e1", "ruleset/delta")), pub, "e1")
    assert d3.add[0].value == "10.77.0.66" and d3.add[0].ttl > 4000
    # nothing changed: nothing published
    n = len(mqtt.sent)
    comp.tick()
    assert len(mqtt.sent) == n


def test_control_errors_are_clear(storage):
    comp, ctx, mqtt = component(storage)
    comp.on_status("e1", status("e1"))
    with pytest.raises(ControlError) as exc:
        comp.add_decision("ip", "10.0.0.256")
    assert exc.value.code == "invalid" and "10.0.0.256" in str(exc.value)
    with pytest.raises(ControlError) as exc:
        comp.add_decision("ip", "10.0.0.5", engines=["nope"])
    assert exc.value.code == "not-found" and "nope" in str(exc.value)
    with pytest.raises(ControlError) as exc:
        comp.delete_decision("10.0.0.5")
    assert exc.value.code == "not-found"
    with pytest.raises(ControlError) as exc:
        comp.set_mode("e1", "sleeping")
    assert exc.value.code == "invalid"
    with pytest.raises(ControlError):
        comp.set_mode("e9", "enforcing")
    # a proposal with garbage never raises into the proposer
    assert comp.propose(DecisionRequest("ip", "garbage", "parser:x", "r"))["status"] == "rejected"
    assert ctx.counters.get("decisions_rejected_invalid") == 1


def test_mode_switch_is_published_and_generations_survive_restart(storage):
    comp, ctx, mqtt = component(storage)
    pub = ruleset.load_public_key(storage.tmp_path / "state" / "signing.pub")
    comp.on_status("e1", status("e1", mode="learning"))
    comp.tick()
    g1 = ruleset.decode_snapshot(mqtt.last(topics.engine("e1", "ruleset")), pub).generation
    comp.set_mode("e1", "enforcing")
    comp.tick()
    snap = ruleset.decode_snapshot(mqtt.last(topics.engine("e1", "ruleset")), pub)
    assert snap.mode == "enforcing" and snap.generation > g1
    comp.close()
    comp2, ctx2, mqtt2 = component(storage)
    comp2.on_status("e1", status("e1", mode="learning"))
    comp2.tick()
    snap2 = ruleset.decode_snapshot(mqtt2.last(topics.engine("e1", "ruleset")), pub)
    assert snap2.generation > snap.generation and snap2.mode == "enforcing"  # override persisted
    assert ruleset.key_id(comp2.key) == ruleset.key_id(comp.key)                # same key


def test_engine_behind_gets_the_snapshot_again(storage):
    comp, ctx, mqtt = component(storage, resync_after=0.0)
    comp.on_status("e1", status("e1"))
    comp.tick()
    comp.fleet.on_ruleset_state("e1", RulesetState(generation=0))
    comp.publisher.sync_all()       # first time behind: start the clock
    n = len(mqtt.sent)
    comp.publisher.sync_all()
    assert len(mqtt.sent) == n + 1 and ctx.counters.get("ruleset_resyncs") == 1


def test_engine_events_become_decisions(storage):
    comp, ctx, mqtt = component(storage)
    comp.on_status("e1", status("e1"))
    comp.on_events("e1", events(
        "e1",
        {"type": "dns-tunnel", "src": "10.77.0.66", "severity": "high", "detail": "long TXT queries"},
        {"type": "odd-ttl", "src": "10.77.0.67", "severity": "low"},
        "garbage",
        # an address-less finding (ARP rebind names MACs): counted, never a proposal of a MAC as an ip
        {"type": "arp-rebind", "severity": "high", "ip": "10.77.0.10", "new_mac": "02:77:00:00:00:66"}))
    active = comp.store.list()
    assert [(d.value, d.origin) for d in active] == [("10.77.0.66", "engine-local:dns-tunnel")]
    assert active[0].engines == ["e1"] and ctx.counters.get("engine_events_malformed") == 1
    # a decision the engine held (its evidence may be incomplete) is never taken by the manager
    comp.on_events("e1", events("e1", {"type": "scan", "src": "10.77.0.2", "severity": "high", "action": "held"}))
    assert [d.value for d in comp.store.list()] == ["10.77.0.66"]
    assert "long TXT queries" in active[0].reason
    assert ctx.counters.get("engine_events_without_address") == 1
    assert ctx.counters.get("decisions_rejected_invalid") == 0


def test_partitioning_by_engine_id(storage):
    a, _, _ = component(storage.under("a"), partition_count=2, partition_index=0)
    b, _, _ = component(storage.under("b"), partition_count=2, partition_index=1)
    engines = [f"e{i}" for i in range(20)]
    owners = [(a.mine(e), b.mine(e)) for e in engines]
    assert all(x != y for x, y in owners) and any(x for x, _ in owners) and any(y for _, y in owners)


def test_would_block_from_learning_does_not_swallow_an_enforced_offence(storage):
    s = store(storage)
    wb = s.propose("ip", "10.77.0.66", "flow-anomaly:vertical-scan", "r", engines=["e1"], learning=["e1"])
    again = s.propose("ip", "10.77.0.66", "flow-anomaly:vertical-scan", "r", engines=["e1"], learning=["e1"])
    assert again.id == wb.id                                   # still learning: merged
    now = s.propose("ip", "10.77.0.66", "flow-anomaly:vertical-scan", "r", engines=["e1"], learning=[])
    assert now.id != wb.id and now.would_block_on == [] and now.offences == 2
    assert [d.id for d in s.enforced_for("e1")] == [now.id]
    assert [d.state for d in s.list(state="superseded")] == ["superseded"]


def test_events_replayed_after_an_outage_are_not_acted_on(storage):
    comp, ctx, mqtt = component(storage)
    comp.on_status("e1", status("e1"))
    now = int(time.time() * 1000)
    comp.on_events("e1", events(
        "e1",
        {"type": "tcp-flags", "src": "10.77.0.66", "severity": "high", "ts": now - 3_600_000},  # an hour old
        {"type": "tcp-flags", "src": "10.77.0.67", "severity": "high", "ts": now - 2_000}))
    assert [d.value for d in comp.store.list()] == ["10.77.0.67"]
    assert ctx.counters.get("engine_events_stale") == 1
