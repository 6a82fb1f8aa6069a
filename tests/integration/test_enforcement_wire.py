"""Binary rule sets (rulewire.py) through the engine's enforcement part into the real kernel, in a
private network namespace: a binary snapshot lists exactly as the JSON snapshot of the same entries;
a second snapshot writes only what changed; binary deltas on packed sets; refused messages (bad
signature, truncated, wrong version, over the cap, a duplicate address) are rejected whole with
their reason and the kernel keeps the last good set; the saved state restores."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.netns import run_probe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent('''
    import json, re, subprocess, tempfile, threading, time
    from pathlib import Path
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from tests.support.fake_mqtt import FakeMqtt
    from vigil import rulewire as rw, ruleset as rs
    from vigil.counters import Counters
    from vigil.engine.api import EngineContext
    from vigil.engine.config import EngineConfig, EnforcementConfig
    from vigil.engine.enforce import Enforcement

    SETS = ["block4", "block6", "allow4", "blocknet4", "flow4"]
    key = Ed25519PrivateKey.generate()
    tmp = Path(tempfile.mkdtemp())
    rs.save_public_key(key.public_key(), tmp / "signing.pub")

    def part(state, **cfg):
        state.mkdir(exist_ok=True)
        ctx = EngineContext(EngineConfig(engine_id="e1", state_dir=state), FakeMqtt(), Counters(), state,
                            threading.Event(), mode=lambda: "enforcing")
        p = Enforcement(EnforcementConfig(manager_public_key=tmp / "signing.pub", **cfg), ctx)
        p.start()
        return p

    def listing():
        out = {}
        for name in SETS:
            doc = json.loads(subprocess.run(["nft", "-j", "list", "set", "bridge", "vigil", name],
                                            capture_output=True, text=True, check=True).stdout)
            elems = [i["set"].get("elem", []) for i in doc["nftables"] if "set" in i][0]
            got = {}
            for el in elems:
                el = el.get("elem", el) if isinstance(el, dict) else el
                v = el["val"] if isinstance(el, dict) and "val" in el else el
                if isinstance(v, dict) and "prefix" in v:
                    v = f"{v['prefix']['addr']}/{v['prefix']['len']}"
                elif isinstance(v, dict) and "concat" in v:
                    v = " . ".join(str(x) for x in v["concat"])
                got[str(v)] = el.get("timeout") if isinstance(el, dict) else None
            out[name] = got
        return out

    def names(l):
        return {k: set(v) for k, v in l.items()}

    issued = (int(time.time()) - 5) * 1000
    ents = [rs.entry("d-0000000000a1", "drop", "ip", "10.66.0.1", 600, "o", "r"),
            rs.entry("d-0000000000a2", "drop", "ip", "10.66.0.2", None, "o", "r"),
            rs.entry("d-0000000000a3", "drop", "ip", "2001:db8::3", 900, "o", "r"),
            rs.entry("d-0000000000a4", "allow", "ip", "10.66.0.4", 1200, "", ""),
            rs.entry("d-0000000000a5", "drop", "ip", "10.66.0.5", 3, "o", "expired at arrival"),
            rs.entry("n1", "drop", "cidr", "10.67.0.0/16", 700, "o", "r"),
            rs.entry("f1", "drop", "flow", "10.66.0.9|10.66.0.10|tcp|22", 800, "o", "r")]

    def snap(gen, entries, k=key, issued_at=issued):
        return rw.encode("ruleset", "m", rs.snapshot_body("e1", gen, entries, issued_at=issued_at), k)

    # 1. JSON and binary snapshots of the same entries list alike
    a = part(tmp / "a")
    assert a.handle("ruleset", rs.encode_signed("ruleset", "m", rs.snapshot_body("e1", 1, ents, issued_at=issued), key))
    by_json = listing()
    assert a.handle("ruleset", snap(2, ents))
    by_bin = listing()
    assert names(by_bin) == names(by_json), (by_bin, by_json)
    assert set(by_bin["block4"]) == {"10.66.0.1", "10.66.0.2"} and by_bin["flow4"] and by_bin["blocknet4"]
    for name in SETS:          # the same lifetimes, within the time between the two loads
        for k, t in by_json[name].items():
            assert (t is None) == (by_bin[name][k] is None) and (t is None or abs(t - by_bin[name][k]) <= 3), (k, t)
    assert a.policy.cols and a.state_body()["counts"]["block4"] == 2 and a.state_body()["counts"]["block6"] == 1
    print("json == binary")

    # 2. a second snapshot writes only what changed (one gone, one new, one longer)
    before = listing()
    ents2 = [e for e in ents if e["value"] != "10.66.0.2"] + [rs.entry("d-0000000000b1", "drop", "ip", "10.66.1.1", 300)]
    ents2 = [dict(e, ttl=5000) if e["value"] == "2001:db8::3" else e for e in ents2]
    plans = []
    plan_packed = a.policy.plan_packed
    a.policy.plan_packed = lambda s, n: plans.append(plan_packed(s, n)) or plans[-1]
    assert a.handle("ruleset", snap(3, ents2))
    now = listing()
    assert set(now["block4"]) == {"10.66.0.1", "10.66.1.1"}, now
    assert now["block4"]["10.66.0.1"] is not None and now["block6"]["2001:db8::3"] > 4000, now
    work = {c.set_name: (c.refill, c.count(), len(c.delete) // c.width) for c in plans[0].col_changes}
    assert work["block4"] == (False, 1, 1) and work["block6"] == (False, 1, 1), work
    assert work["allow4"] == (False, 0, 0), work
    print("diff ok", work)

    # 3. binary deltas on the packed sets
    d = rw.encode("ruleset-delta", "m", rs.delta_body("e1", 3, 4, [rs.entry("d-0000000000c1", "drop", "ip", "10.66.2.2", 60)],
                                                      [rs.removal("drop", "ip", "10.66.0.1")], issued_at=issued + 5000), key)
    assert a.handle("ruleset-delta", d)
    now = listing()
    assert set(now["block4"]) == {"10.66.1.1", "10.66.2.2"}, now
    assert a.state_body()["counts"]["block4"] == 2
    good = listing()

    # 4. refused whole, the last good set stays in the kernel
    raw = snap(5, ents2 + [rs.entry("x9", "drop", "ip", "10.66.9.9", 60)])
    flipped = bytearray(raw); flipped[60] ^= 1
    wrongver = bytearray(raw); wrongver[3] = 2
    other = Ed25519PrivateKey.generate()
    dup = bytearray(snap(5, ents2 + [rs.entry("d-0000000000c9", "drop", "ip", "10.66.9.8", 60)]))
    small = part(tmp / "small", max_elements=3)
    cases = [(a, "bad-signature", bytes(flipped)), (a, "truncated", raw[:50]), (a, "bad-version", bytes(wrongver)),
             (a, "unknown-key", snap(5, ents2, k=other)), (small, "over-cap", snap(5, ents2)),
             # cut anywhere after the head: the trailer read is no trusted key's signature
             (a, "unknown-key", raw[:-1]), (a, "unknown-key", raw[:len(raw) // 2])]
    for p, reason, data in cases:
        before = p.rejected.get(reason, 0)
        assert not p.handle("ruleset", data), reason
        assert p.rejected.get(reason, 0) == before + 1, (reason, p.rejected, p.error)
        if p is a:
            assert listing() == good or names(listing()) == names(good), reason
            assert a.generation == 4
    print("refused:", sorted(a.rejected), sorted(small.rejected))

    # a duplicate address in a binary snapshot: refused by the kernel batch (first load) or the
    # diff's index (later), nothing applied either way
    dup_ents = [rs.entry("d-0000000000d1", "drop", "ip", "10.66.3.3", 60)]
    body = rs.snapshot_body("e1", 6, dup_ents, issued_at=issued)
    body["entries"] = body["entries"] * 2
    dupraw = rw.encode("ruleset", "m", body, key)
    try:
        rw.decode(dupraw, key.public_key(), "e1")
    except rs.PayloadError as exc:
        assert exc.reason == "duplicate-entry"
    else:
        raise AssertionError("decoder accepted a duplicate")
    assert not a.handle("ruleset", dupraw) and a.rejected.get("duplicate-entry") == 1, a.rejected
    assert names(listing()) == names(good) and a.generation == 4
    fresh = part(tmp / "fresh")
    fresh.writer.delete_table(); fresh.writer.ensure_table()
    assert not fresh.handle("ruleset", dupraw) and fresh.rejected.get("kernel") == 1, fresh.rejected
    assert listing()["block4"] == {} and fresh.generation is None
    # and the good set again, fresh: a first load
    assert fresh.handle("ruleset", snap(7, ents2))
    assert set(listing()["block4"]) == {"10.66.0.1", "10.66.1.1"}

    # 5. saved and restored (the kernel table deleted: the restore refills it)
    fresh.close()
    fresh.writer.delete_table()
    back = part(tmp / "fresh")
    assert back.generation == 7 and set(listing()["block4"]) == {"10.66.0.1", "10.66.1.1"}, listing()
    assert listing()["block6"]["2001:db8::3"] > 4000
    back.writer.delete_table()
    print("ok")
''')


def test_binary_rule_sets_in_the_kernel():
    out = run_probe("vwire", PROBE, [str(ROOT / "agents"), str(ROOT)])
    assert out.strip().endswith("ok"), out
