"""Quarantine proposals (endpoint ran or was denied a malicious file): an ip drop plus allow entries
for the management network, tied to the decision's lifetime, would-block while an engine learns."""
from __future__ import annotations

import pytest

from vigil import ruleset, topics
from vigil.manager.api import DecisionRequest

from .test_policy import component, status

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def quarantine(value="10.77.0.2", nets=("10.77.0.20/32",), duration=300.0, engines=()):
    reason = f"endpoint client ({value}) blocked malicious file sha256:{SHA} [hashlist] at /t/evil"
    return DecisionRequest(scope="ip", value=value, origin="endpoint:hashlist", reason=reason,
                           duration=duration, engines=list(engines),
                           evidence={"quarantine": True, "allow_networks": list(nets), "sha256": SHA,
                                     "host": "client"})


def entries(comp, mqtt, engine):
    pub = ruleset.load_public_key(comp.cfg.public_key_file or comp.ctx.state_dir / "signing.pub")
    snap = ruleset.decode_snapshot(mqtt.last(topics.engine(engine, "ruleset")), pub, engine)
    return {(e.action, e.value): e for e in snap.entries}


def test_quarantine_is_a_drop_with_allow_entries_for_its_lifetime(storage):
    comp, ctx, mqtt = component(storage, allowlist=["10.77.0.1/32"])
    comp.on_status("e1", status("e1"))
    r = ctx.decisions.propose(quarantine())
    assert r["status"] == "created"
    d = r["decision"]
    assert d["scope"] == "ip" and d["value"] == "10.77.0.2" and d["action"] == "drop"
    assert d["origin"] == "endpoint:hashlist"
    assert SHA in d["reason"] and "client" in d["reason"] and d["reason"].startswith("quarantine")
    assert "10.77.0.20/32" in d["reason"]
    comp.tick()
    got = entries(comp, mqtt, "e1")
    assert set(got) == {("allow", "10.77.0.1/32"), ("allow", "10.77.0.20/32"), ("drop", "10.77.0.2")}
    allow = got[("allow", "10.77.0.20/32")]
    assert 290 <= allow.ttl <= 300 and allow.origin == "endpoint:hashlist"  # lasts as long as the drop
    assert got[("allow", "10.77.0.1/32")].ttl is None
    # the operator lifts the quarantine: the drop and its allow entry go, the allowlist stays
    comp.delete_decision("10.77.0.2")
    pub = ruleset.load_public_key(storage.tmp_path / "state" / "signing.pub")
    delta = ruleset.decode_delta(mqtt.last(topics.engine("e1", "ruleset/delta")), pub, "e1")
    assert set(delta.remove) == {("drop", "ip", "10.77.0.2"), ("allow", "cidr", "10.77.0.20/32")}
    assert set(entries(comp, mqtt, "e1")) == {("allow", "10.77.0.1/32")}
    # visible to the operator after the fact
    listed = comp.list_decisions(state="all", origin="endpoint")
    assert [x["state"] for x in listed] == ["removed"] and SHA in listed[0]["reason"]


def test_quarantine_allow_entry_expires_with_the_decision_and_allowlist_wins(storage):
    comp, ctx, mqtt = component(storage, allowlist=["10.77.0.20/32"])
    comp.on_status("e1", status("e1"))
    ctx.decisions.propose(quarantine(nets=("10.77.0.20/32", "10.88.0.0/24"), duration=60))
    comp.tick()
    got = entries(comp, mqtt, "e1")
    assert got[("allow", "10.77.0.20/32")].ttl is None           # the operator allowlist holds it anyway
    assert 50 <= got[("allow", "10.88.0.0/24")].ttl <= 60
    later = comp.store.clock() + 61
    comp.store.clock = lambda: later                              # time passes
    assert comp.store.expire() == 1
    comp.publisher.sync_all()
    assert set(entries(comp, mqtt, "e1")) == {("allow", "10.77.0.20/32")}


def test_quarantine_is_would_block_on_a_learning_engine(storage):
    comp, ctx, mqtt = component(storage)
    comp.on_status("e1", status("e1", mode="learning"))
    comp.on_status("e2", status("e2"))
    r = ctx.decisions.propose(quarantine())
    assert r["decision"]["would_block_on"] == ["e1"]
    comp.tick()
    assert entries(comp, mqtt, "e1") == {}                        # neither the drop nor its allow entry
    assert set(entries(comp, mqtt, "e2")) == {("allow", "10.77.0.20/32"), ("drop", "10.77.0.2")}
    assert [d["id"] for d in comp.learning_report("e1")] == [r["decision"]["id"]]


def test_quarantine_joins_an_existing_block_and_bad_networks_are_counted(storage):
    comp, ctx, mqtt = component(storage)
    comp.on_status("e1", status("e1"))
    first = ctx.decisions.propose(DecisionRequest("ip", "10.77.0.2", "flow-anomaly:vertical-scan", "scan"))
    comp.tick()
    r = ctx.decisions.propose(quarantine(nets=("10.77.0.20/32", "not-a-net"), duration=7200))
    assert r["status"] == "merged" and r["decision"]["id"] == first["decision"]["id"]
    assert r["decision"]["origin"] == "endpoint:hashlist" and SHA in r["decision"]["reason"]
    assert r["decision"]["evidence"]["allow_networks"] == ["10.77.0.20/32"]
    assert r["decision"]["remaining"] > 7000                      # at least as long as the quarantine
    assert ctx.counters.get("quarantine_allow_networks_invalid") == 1
    comp.tick()
    got = entries(comp, mqtt, "e1")
    assert set(got) == {("allow", "10.77.0.20/32"), ("drop", "10.77.0.2")}
    # a quarantine must name one address
    bad = quarantine()
    bad.scope, bad.value = "cidr", "10.77.0.0/24"
    assert ctx.decisions.propose(bad)["status"] == "rejected"
