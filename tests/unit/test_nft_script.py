"""nft scripts, rule-set planning and the enforcement part against the dry-run writer (no kernel)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.fake_mqtt import FakeMqtt
from vigil import ruleset as rs
from vigil.contracts.engine import RulesetState
from vigil.counters import Counters
from vigil.engine import nftables as nft
from vigil.engine.api import EngineContext
from vigil.engine.config import EngineConfig, EnforcementConfig
from vigil.engine.enforce import Enforcement
from vigil.engine.enforce_plan import Held, PlanError, Policy

pytestmark = pytest.mark.unit


def E(value, ttl=None, action="drop", scope=None, id=None):
    scope = scope or ("flow" if "|" in value else "cidr" if "/" in value else "ip")
    return rs.parse_entry({"id": id or value, "action": action, "scope": scope, "value": value, "ttl": ttl})


# -- scripts ---------------------------------------------------------------------------------

def test_table_script_declares_every_set_flushes_chains_and_fills_guards():
    s = nft.table_script([rs_net("10.0.0.0/24"), rs_net("10.0.0.5/32"), rs_net("fd00::/64")])
    assert s.startswith("table bridge vigil {")
    for name, _spec in nft.SETS.items():
        assert f"set {name} {{" in s
    assert "policy accept" in s and "hook forward" in s
    assert s.count("flush chain bridge vigil") == 3
    assert "add element bridge vigil guard4 { 10.0.0.0/24 }" in s      # collapsed
    assert "add element bridge vigil guard6 { fd00::/64 }" in s
    # accept rules come before every drop rule, and every drop rule counts
    v4 = nft.chain_rules(4)
    # first, the common case: no drop set and no flow holds the packet's addresses -> return
    miss = v4.pop(0)
    assert miss.endswith("!= @flow4 return") and "accept" not in miss and "drop" not in miss
    assert all(f"saddr != @{x} ip daddr != @{x}" in miss for x in ("block4", "blocknet4", "blocknet4_1", "local4"))
    first_drop = next(i for i, r in enumerate(v4) if r.endswith(("drop", '"')) and "drop" in r)
    assert all("accept" in r for r in v4[:first_drop]) and all("drop" in r for r in v4[first_drop:])
    assert all("counter drop" in r for r in v4 if "drop" in r)
    assert "vigil_flow" not in s   # never touches a foreign table


def rs_net(t):
    import ipaddress
    return ipaddress.ip_network(t)


def test_replace_script_flushes_and_refills_in_one_script():
    s = nft.replace_script({"block4": [("10.0.0.1", 5000), ("10.0.0.2", None)], "flow4": []})
    lines = s.splitlines()
    assert lines[0] == "flush set bridge vigil block4"
    assert lines[1] == "add element bridge vigil block4 { 10.0.0.1 timeout 5000ms, 10.0.0.2 }"
    assert lines[2] == "flush set bridge vigil flow4" and len(lines) == 3


def test_update_script_reasserts_timeouts_and_cannot_fail_on_missing():
    s = nft.update_script({"block4": [("10.0.0.1", 60000)]}, {"block6": ["fd00::1"]},
                          {"blocknet4": [("10.1.0.0/16", 1000)]})
    assert s.splitlines() == [
        "add element bridge vigil block6 { fd00::1 }",
        "delete element bridge vigil block6 { fd00::1 }",
        "add element bridge vigil block4 { 10.0.0.1 }",
        "delete element bridge vigil block4 { 10.0.0.1 }",
        "add element bridge vigil block4 { 10.0.0.1 timeout 60000ms }",
        "flush set bridge vigil blocknet4",
        "add element bridge vigil blocknet4 { 10.1.0.0/16 timeout 1000ms }",
    ]


def test_guard_sets_are_not_writable():
    with pytest.raises(nft.NftError):
        nft.replace_script({"guard4": []})
    with pytest.raises(nft.NftError):
        nft.update_script({"nosuchset": [("x", None)]}, {})


def test_large_sets_are_chunked():
    elems = [(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1000) for i in range(45000)]
    s = nft.replace_script({"block4": elems})
    assert s.count("add element bridge vigil block4") == 3 and s.count("flush set") == 1


# -- planning --------------------------------------------------------------------------------

NOW = 1_800_000_000.0
ISSUED = int(NOW * 1000)


def test_snapshot_plan_places_entries_and_drops_guarded_and_expired():
    p = Policy(guards=["192.168.1.0/24", "10.0.0.1"])
    plan = p.plan_snapshot([E("10.0.0.9", 60), E("10.0.0.1"), E("192.168.1.0/25"), E("192.168.0.0/16"),
                            E("10.0.0.7|192.168.1.5|tcp|22"), E("fd00::5", 0), E("2001:db8::/32", 100),
                            E("10.9.9.9", action="allow")], ISSUED, NOW)
    assert plan.skipped == {"guarded": 3, "expired": 1}
    w = nft.NftWriter(nft.DryRunBackend())
    p.apply(w, plan, NOW)
    p.commit(plan)
    script = w.backend.scripts[-1]
    assert "add element bridge vigil block4 { 10.0.0.9 timeout 60000ms }" in script
    assert "add element bridge vigil blocknet4 { 192.168.0.0/16 }" in script  # contains a guard: kept
    assert "add element bridge vigil blocknet6 { 2001:db8::/32 timeout 100000ms }" in script
    assert "add element bridge vigil allow4 { 10.9.9.9 }" in script
    for name in nft.MANAGED:
        assert f"flush set bridge vigil {name}\n" in script
    assert "local4" not in script and "guard4" not in script
    c = p.counts(NOW)
    assert c["block4"] == 1 and c["blocknet4"] == 1 and c["blocknet6"] == 1 and c["allow4"] == 1


def test_remaining_lifetime_counts_from_issue_time():
    p = Policy()
    plan = p.plan_snapshot([E("10.0.0.9", 60)], ISSUED - 20_000, NOW)
    assert plan.entries_set[("drop", "ip", "10.0.0.9")].expires == pytest.approx(NOW + 40)


def test_nested_networks_go_to_layers_or_are_covered():
    p = Policy()
    items = [("10.0.0.0/8", NOW + 100), ("10.1.0.0/16", NOW + 50), ("10.2.0.0/16", NOW + 500),
             ("10.2.3.0/24", NOW + 1000), ("10.2.3.4/32", NOW + 2000), ("11.0.0.0/8", None)]
    skipped = {}
    out = p.layers("blocknet4", items, NOW, skipped)
    assert sorted(n for n, _ in out["blocknet4"]) == ["10.0.0.0/8", "11.0.0.0/8"]
    assert [n for n, _ in out["blocknet4_1"]] == ["10.2.0.0/16"]
    # 10.1/16 is covered (dies before 10/8); 10.2.3/24 outlives both but no third layer exists
    assert skipped == {"covered": 1, "overlap": 2}
    assert dict(out["blocknet4"])["11.0.0.0/8"] is None


def test_cap_rejects_the_whole_rule_set():
    p = Policy(max_elements=2)
    with pytest.raises(PlanError) as err:
        p.plan_snapshot([E("10.0.0.1"), E("10.0.0.2"), E("10.0.0.3")], ISSUED, NOW)
    assert err.value.reason == "over-cap"


def test_delta_plan_puts_removes_and_refills_groups():
    p = Policy()
    w = nft.NftWriter(nft.DryRunBackend())
    plan = p.plan_snapshot([E("10.0.0.1", 60), E("10.0.0.2"), E("10.5.0.0/16")], ISSUED, NOW)
    p.apply(w, plan, NOW)
    p.commit(plan)
    d = p.plan_delta([E("10.0.0.1", 600), E("10.6.0.0/16", 30)], [("drop", "ip", "10.0.0.2"),
                                                                   ("drop", "ip", "10.0.0.77")], ISSUED, NOW)
    assert d.skipped == {"remove-unknown": 1}
    p.apply(w, d, NOW)
    p.commit(d)
    s = w.backend.scripts[-1]
    assert "delete element bridge vigil block4 { 10.0.0.2 }" in s
    assert "add element bridge vigil block4 { 10.0.0.1 timeout 600000ms }" in s
    assert "flush set bridge vigil blocknet4\n" in s
    assert "add element bridge vigil blocknet4 { 10.5.0.0/16, 10.6.0.0/16 timeout 30000ms }" in s
    assert "flush set bridge vigil block4" not in s       # hash sets are never flushed by a delta
    assert set(p.entries) == {("drop", "ip", "10.0.0.1"), ("drop", "cidr", "10.5.0.0/16"),
                              ("drop", "cidr", "10.6.0.0/16")}


def test_failed_apply_leaves_the_policy_unchanged():
    class Failing(nft.DryRunBackend):
        def run(self, script, timeout=0):
            raise nft.NftError("boom")
    p = Policy()
    ok = nft.NftWriter(nft.DryRunBackend())
    plan = p.plan_snapshot([E("10.0.0.1")], ISSUED, NOW)
    p.apply(ok, plan, NOW)
    p.commit(plan)
    d = p.plan_delta([E("10.0.0.2")], [("drop", "ip", "10.0.0.1")], ISSUED, NOW)
    with pytest.raises(nft.NftError):
        p.apply(nft.NftWriter(Failing()), d, NOW)
    assert set(p.entries) == {("drop", "ip", "10.0.0.1")}


def test_restore_drops_expired_and_purge_forgets_them():
    p = Policy()
    plan = p.plan_restore([Held(E("10.0.0.1", 10), NOW - 1), Held(E("10.0.0.2", 10), NOW + 5),
                           Held(E("10.0.0.3"), None)], NOW)
    assert plan.skipped == {"expired": 1}
    p.commit(plan)
    assert p.purge(NOW + 6) == 1 and set(p.entries) == {("drop", "ip", "10.0.0.3")}


# -- the part, with a fake MQTT client and the dry-run writer --------------------------------

@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def _part(tmp_path: Path, key, **cfg):
    (tmp_path / "pub").mkdir(exist_ok=True)
    rs.save_public_key(key.public_key(), tmp_path / "pub" / "signing.pub")
    ecfg = EnforcementConfig(manager_public_key=tmp_path / "pub" / "signing.pub", backend="dry-run", **cfg)
    modes = {"mode": "learning"}
    ctx = EngineContext(EngineConfig(engine_id="e1", state_dir=tmp_path), FakeMqtt(), Counters(), tmp_path,
                        threading.Event(), mode=lambda: modes["mode"],
                        set_mode=lambda m: modes.__setitem__("mode", m))
    part = Enforcement(ecfg, ctx)
    part.start()
    return part, ctx, modes


def _snap(key, gen, entries, **kw):
    return rs.encode_signed("ruleset", "m", rs.snapshot_body("e1", gen, entries, **kw), key)


def test_part_applies_rejects_and_reports(tmp_path, key):
    part, ctx, modes = _part(tmp_path, key)
    scripts = part.writer.backend.scripts
    assert any(s.startswith("table bridge vigil") for s in scripts)
    assert part.handle("ruleset", _snap(key, 3, [rs.entry("a", "drop", "ip", "10.0.0.1", 60)], mode="enforcing"))
    assert modes["mode"] == "enforcing" and ctx.counters.get("mode_overrides") == 1
    n = len(scripts)
    assert not part.handle("ruleset", _snap(key, 2, []))                       # older
    assert not part.handle("ruleset", _snap(Ed25519PrivateKey.generate(), 4, [])) # other key
    assert not part.handle("ruleset", b"garbage")
    assert not part.handle("ruleset-delta", rs.encode_signed("ruleset-delta", "m", rs.delta_body("e1", 2, 4), key))
    assert not part.handle("ruleset", _snap(key, 3, []))                       # same: ignored, not an error
    assert len(scripts) == n                                                   # kernel untouched
    assert part.rejected == {"old-generation": 1, "unknown-key": 1, "not-json": 1, "base-mismatch": 1}
    assert ctx.counters.get("ruleset_rejected_old_generation") == 1
    assert ctx.counters.get("ruleset_same_generation") == 1
    assert part.handle("ruleset-delta", rs.encode_signed("ruleset-delta", "m", rs.delta_body(
        "e1", 3, 4, add=[rs.entry("b", "drop", "cidr", "10.9.0.0/16", None)]), key))
    sent = ctx.mqtt.sent[-1]
    state = RulesetState.decode(sent.data)
    assert sent.topic == "vigil/v1/engine/e1/ruleset/state" and sent.retain
    assert state.generation == 4 and state.counts["block4"] == 1 and state.counts["blocknet4"] == 1
    assert state.error is None and state.rejected["unknown-key"] == 1
    saved = json.loads((tmp_path / "ruleset.json").read_text())
    assert saved["generation"] == 4 and len(saved["entries"]) == 2


def test_part_restores_saved_state_in_one_transaction(tmp_path, key):
    part, _, _ = _part(tmp_path, key)
    part.handle("ruleset", _snap(key, 7, [rs.entry("a", "drop", "ip", "10.0.0.1", 60),
                                         rs.entry("b", "drop", "ip", "10.0.0.2", None)]))
    assert part.block_local("10.0.0.50", 30, "scan")
    state = json.loads((tmp_path / "ruleset.json").read_text())
    assert state["fields"][-1] == "expires"
    state["entries"][0][-1] = time.time() - 1              # expired while we were down
    (tmp_path / "ruleset.json").write_text(json.dumps(state))
    again, _, _ = _part(tmp_path, key)
    assert again.generation == 7
    restore = again.writer.backend.scripts[-1]
    assert "flush set bridge vigil block4" in restore and "10.0.0.2" in restore and "10.0.0.1 " not in restore
    assert "flush set bridge vigil local4" in restore and "10.0.0.50 timeout" in restore
    assert again.state_body()["counts"]["block4"] == 1 and again.state_body()["counts"]["local4"] == 1


def test_retained_snapshot_after_restart_is_recognised_without_decoding(tmp_path, key, monkeypatch):
    raw = _snap(key, 7, [rs.entry("a", "drop", "ip", "10.0.0.1", 60)])
    part, _, _ = _part(tmp_path, key)
    assert part.handle("ruleset", raw)
    part.close()
    again, ctx, _ = _part(tmp_path, key)
    assert again.generation == 7 and again.snapshot_digest is not None

    def no_decode(*a, **kw):
        raise AssertionError("the held snapshot was decoded again")
    monkeypatch.setattr(rs, "open_snapshot", no_decode)
    n = len(again.writer.backend.scripts)
    assert not again.handle("ruleset", raw)
    assert ctx.counters.get("ruleset_same_generation") == 1 and again.error is None
    monkeypatch.undo()
    # after a delta the same bytes are an older snapshot: rejected as before, kernel untouched
    assert again.handle("ruleset-delta", rs.encode_signed("ruleset-delta", "m", rs.delta_body("e1", 7, 8), key))
    n = len(again.writer.backend.scripts)
    assert not again.handle("ruleset", raw)
    assert again.rejected == {"old-generation": 1} and len(again.writer.backend.scripts) == n
    # other bytes of the held generation still go through the full check
    assert not again.handle("ruleset", _snap(Ed25519PrivateKey.generate(), 8, []))
    assert again.rejected["unknown-key"] == 1


def test_corrupt_state_file_is_ignored_and_counted(tmp_path, key):
    (tmp_path / "ruleset.json").write_text('{"engine": "e1", "entries": [{"bogus": 1}]}')
    part, ctx, _ = _part(tmp_path, key)
    assert part.generation is None and ctx.counters.get("ruleset_restore_errors") == 1


def test_block_local_guards_cap_and_reasserts(tmp_path, key):
    part, ctx, _ = _part(tmp_path, key, management_networks=["10.0.0.0/29"], max_local=2)
    assert not part.block_local("10.0.0.3", 60, "scan")
    assert not part.block_local("not-an-ip", 60, "scan")
    assert part.block_local("10.0.0.66", 60, "scan") and part.block_local("fd00::66", 5, "scan")
    assert not part.block_local("10.0.0.67", 60, "scan")                      # full
    assert part.block_local("10.0.0.66", 120, "scan")                         # refresh is allowed
    s = part.writer.backend.scripts[-1]
    assert "delete element bridge vigil local4 { 10.0.0.66 }" in s and "10.0.0.66 timeout 120000ms" in s
    assert ctx.counters.get("local_block_guarded") == 1 and ctx.counters.get("local_block_full") == 1
    assert part.state_body()["counts"]["local6"] == 1


def test_no_key_rejects_everything(tmp_path, key):
    ctx = EngineContext(EngineConfig(engine_id="e1", state_dir=tmp_path), FakeMqtt(), Counters(), tmp_path,
                        threading.Event(), mode=lambda: "learning")
    part = Enforcement(EnforcementConfig(backend="dry-run"), ctx)
    part.start()
    assert not part.handle("ruleset", _snap(key, 1, []))
    assert part.rejected == {"no-key": 1}


def test_config_rejects_bad_networks():
    with pytest.raises(ValueError, match="management_networks"):
        EnforcementConfig(management_networks=["10.0.0.300/24"])
    with pytest.raises(ValueError, match="max_elements"):
        EnforcementConfig(max_elements=0)


def test_one_nft_error_for_the_whole_engine():
    from vigil.engine import datapath
    assert datapath.NftError is nft.NftError
    with pytest.raises(nft.NftError, match="syntax error|Error"):
        nft.nft_cli("this is not nft\n", check_only=True)


def test_the_planner_returns_a_change_and_applies_nothing():
    p = Policy()
    plan = p.plan_snapshot([E("10.0.0.1", 60), E("10.5.0.0/16")], ISSUED, NOW)
    change = p.change(plan, NOW)
    assert change.kind == "replace" and change.contents["block4"] == [("10.0.0.1", 60000)]
    assert change.contents["blocknet4"] == [("10.5.0.0/16", None)]
    assert p.entries == {} and p.counts(NOW)["block4"] == 0        # nothing held until commit()
    d = p.plan_delta([E("10.0.0.2")], [], ISSUED, NOW)
    assert p.change(d, NOW).kind == "update" and p.entries == {}


def test_the_dry_run_records_the_batch_production_sends():
    contents = {"block4": [("10.0.0.1", 60000), ("10.0.0.2", None)], "blocknet4": [("10.5.0.0/16", None)]}
    w = nft.NftWriter(nft.DryRunBackend())
    w.replace(contents)
    # the very bytes the netlink path sends, and the same change as a script for people
    assert w.backend.batches == [nft.replace_batch(contents).finish()]
    assert "add element bridge vigil block4 { 10.0.0.1 timeout 60000ms, 10.0.0.2 }" in w.backend.scripts[-1]
    w.bulk = False                                      # the script path, as the nft CLI would run it
    w.replace(contents)
    assert len(w.backend.batches) == 1 and w.backend.scripts[-1] == nft.replace_script(contents)
    w.update({"block4": [("10.0.0.3", 1000)]}, {})
    assert "10.0.0.3 timeout 1000ms" in w.backend.scripts[-1] and w.transactions == 3
    with pytest.raises(nft.NftError, match="not an IPv4 address"):   # the encoder checks, dry run or not
        nft.NftWriter(nft.DryRunBackend()).replace({"block4": [("10.0.0.300", None)]})
