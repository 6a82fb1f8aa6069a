"""The binary rule-set encoding (vigil/rulewire.py): the same entries as JSON, 16 bytes per IPv4
entry, and every malformed message refused whole with its reason (signature over the exact bytes,
truncation anywhere, version, caps, duplicates, bad keys)."""
from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vigil import ruleset as rs
from vigil import rulewire as rw
from vigil.engine import enforce_packed as pk
from vigil.engine import nftables as nft
from vigil.engine.enforce_plan import Policy
from vigil.payload import PayloadError

pytestmark = pytest.mark.unit
ISSUED = 1_700_000_000_000


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


def _mixed():
    return [rs.entry("d-00000000000a", "drop", "ip", "10.0.0.1", 60, "flow-anomaly:scan", "17 hosts"),
            rs.entry("d-00000000000b", "drop", "ip", "10.0.0.2", None, "operator", ""),
            rs.entry("d-00000000000c", "allow", "ip", "2001:db8::1", 3600, "allowlist", "mgmt"),
            rs.entry("allow-0", "allow", "cidr", "192.0.2.0/24", None, "allowlist", "allowlisted"),
            rs.entry("weird id ✓", "drop", "cidr", "2001:db8:1::/48", 120, "", ""),
            rs.entry("f", "drop", "flow", "10.0.0.9|10.0.0.10|udp|53", 30, "o", "r"),
            rs.entry("f6", "drop", "flow", "2001:db8::9|2001:db8::a|sctp|1", 30, "o", "r")]


def test_snapshot_round_trip_equals_json(key):
    ents = _mixed()
    body = rs.snapshot_body("e1", 7, ents, mode="enforcing", issued_at=ISSUED)
    raw = rw.encode("ruleset", "m1", body, key, ts=5)
    p = rw.decode(raw, key.public_key(), "e1", kind="ruleset")
    j = rs.decode_snapshot(rs.encode_signed("ruleset", "m1", body, key), key.public_key(), "e1")
    assert (p.engine, p.generation, p.issued_at, p.mode, p.sender, p.ts) == ("e1", 7, ISSUED, "enforcing", "m1", 5)
    assert sorted(p.entries()) == sorted(j.entries)
    assert p.key_id == rs.key_id(key) == j.key_id
    # several keys by key_id (rotation): the one that signed is found
    other = Ed25519PrivateKey.generate()
    assert rw.decode(raw, [other.public_key(), key.public_key()], "e1").generation == 7


def test_sixteen_bytes_per_ipv4_entry(key):
    rnd = random.Random(1)
    ents = [rs.entry(f"d-{rnd.getrandbits(48):012x}", "drop", "ip", f"11.0.{i >> 8}.{i & 255}", 600,
                     "correlation", "feed") for i in range(5000)]
    raw = rw.encode("ruleset", "m", rs.snapshot_body("e1", 1, ents, issued_at=ISSUED), key)
    assert len(raw) / len(ents) < 16.1


def test_delta_round_trip(key):
    body = rs.delta_body("e1", 3, 4, _mixed()[:2], [rs.removal("drop", "ip", "10.9.9.9"),
                                                     rs.removal("allow", "cidr", "192.0.2.0/24")], issued_at=ISSUED)
    raw = rw.encode("ruleset-delta", "m", body, key)
    d = rs.decode_delta(raw, key.public_key(), "e1")          # the engine's one entry point for deltas
    j = rs.decode_delta(rs.encode_signed("ruleset-delta", "m", body, key), key.public_key(), "e1")
    assert (d.base_generation, d.generation) == (3, 4)
    assert sorted(d.add) == sorted(j.add) and sorted(d.remove) == sorted(j.remove)
    with pytest.raises(PayloadError) as exc:
        rw.decode(raw, key.public_key(), "e1", kind="ruleset")
    assert exc.value.reason == "bad-kind"


def _reason(raw, key, **kw):
    with pytest.raises(PayloadError) as exc:
        rw.decode(raw, key.public_key(), "e1", **kw)
    return exc.value.reason


def test_refusals(key):
    body = rs.snapshot_body("e1", 2, _mixed(), issued_at=ISSUED)
    raw = rw.encode("ruleset", "m", body, key)
    for i in range(len(raw) - 72):                       # any byte changed: the signature fails
        bad = bytearray(raw)
        bad[i] ^= 0x40
        if i < 3:
            assert _reason(bytes(bad), key) == "bad-magic"
        elif i == 3:
            assert _reason(bytes(bad), key) == "bad-version"
        else:
            assert _reason(bytes(bad), key) == "bad-signature", i
    for n in range(0, len(raw)):                         # cut anywhere
        assert _reason(raw[:n], key) in ("bad-magic", "truncated", "unknown-key", "bad-signature"), n
    assert _reason(raw, Ed25519PrivateKey.generate()) == "unknown-key"
    assert _reason(raw, key, max_entries=6) == "over-cap"
    with pytest.raises(PayloadError) as exc:
        rw.decode(raw, key.public_key(), "e2")
    assert exc.value.reason == "wrong-engine"
    # well signed but malformed inside: decoded without a key check to reach the body checks
    dup = dict(body, entries=body["entries"] + body["entries"][:1])
    assert _reason(rw.encode("ruleset", "m", dup, key), key) == "duplicate-entry"
    ext = rw.encode("ruleset", "m", body, key)
    assert _reason(ext[:-72] + b"\0" + ext[-72:], key) == "bad-signature"


def _forge(key, mutate):
    """A message whose body ``mutate`` changed, then signed properly (an adversary with the key
    cannot make the decoder crash either)."""
    raw = bytearray(rw.encode("ruleset", "m", rs.snapshot_body("e1", 2, _mixed(), issued_at=ISSUED), key)[:-72])
    mutate(raw)
    return bytes(raw) + bytes.fromhex(rs.key_id(key)) + key.sign(bytes(raw))


def test_signed_garbage_is_refused_not_crashed(key):
    rnd = random.Random(5)
    reasons = set()
    for _ in range(400):
        def mutate(b):
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(4, len(b))] = rnd.randrange(256)
        raw = _forge(key, mutate)
        try:
            p = rw.decode(raw, key.public_key(), None)
            list(p.entries())
        except PayloadError as exc:
            reasons.add(exc.reason)
    assert reasons <= {"truncated", "bad-field", "bad-entry", "duplicate-entry", "bad-generation", "over-cap"}
    assert {"truncated", "bad-field"} <= reasons


def test_ids_that_are_not_hex_survive(key):
    ents = [rs.entry("d-0a", "drop", "ip", "10.0.0.1", 60), rs.entry("d-0B", "drop", "ip", "10.0.0.2", 60),
            rs.entry("d-0c0c", "drop", "ip", "10.0.0.3", 60)]
    p = rw.decode(rw.encode("ruleset", "m", rs.snapshot_body("e1", 1, ents, issued_at=ISSUED), key), None)
    assert sorted(e.id for e in p.entries()) == ["d-0B", "d-0a", "d-0c0c"]


def test_packed_plan_writes_what_json_writes(key):
    """The dry-run batch of a binary snapshot holds the same elements as the JSON plan's, guards and
    expired entries filtered alike."""
    ents = _mixed() + [rs.entry("g", "drop", "ip", "192.168.1.7", 60), rs.entry("x", "drop", "ip", "10.0.0.3", 1)]
    now = ISSUED / 1000 + 2
    body = rs.snapshot_body("e1", 1, ents, issued_at=ISSUED)
    pj, pb = Policy(["192.168.1.0/24"]), Policy(["192.168.1.0/24"])
    plan_j = pj.plan_snapshot(rs.decode_snapshot(rs.encode_signed("ruleset", "m", body, key), None).entries, ISSUED, now)
    plan_b = pb.plan_packed(rw.decode(rw.encode("ruleset", "m", body, key), None), now)
    assert plan_j.skipped == plan_b.skipped == {"guarded": 1, "expired": 1}
    cj, cb = pj.change(plan_j, now), pb.change(plan_b, now)
    assert cb.kind == "packed"
    want = {n: sorted(e) for n, e in cj.contents.items() if e}
    got = {n: sorted(e) for n, e in cb.contents.items() if e}
    for c in cb.packed:
        if c.count():
            got[c.set_name] = sorted(c.texts())
    assert got == want
    pb.commit(plan_b)
    pj.commit(plan_j)
    assert pb.entry_count() == pj.entry_count() == 8 and len(pb.entries) == 5     # 4 packed, rest general
    assert pb.counts(now)["block4"] == 2 and pb.counts(now)["allow6"] == 1
    # and the batch is what the kernel gets: one transaction with the sets flushed and refilled
    data = cb.batch().finish()
    assert data.count(b"block4\0") >= 2


def test_packed_deltas_and_expiry(key):
    pol = Policy()
    now = ISSUED / 1000
    ents = [rs.entry(f"d-{i:012x}", "drop", "ip", f"10.1.0.{i}", 100 + i) for i in range(1, 50)]
    pol.commit(pol.plan_packed(rw.decode(rw.encode("ruleset", "m", rs.snapshot_body("e1", 1, ents, issued_at=ISSUED), key), None), now))
    assert pol.counts(now)["block4"] == 49 and not pol.entries
    add = [rs.parse_entry(rs.entry("n", "drop", "ip", "10.2.0.1", 10)), rs.parse_entry(rs.entry("d-000000000001", "drop", "ip", "10.1.0.1", 5000))]
    plan = pol.plan_delta(add, [("drop", "ip", "10.1.0.2"), ("drop", "ip", "10.9.9.9")], ISSUED, now)
    assert plan.skipped == {"remove-unknown": 1}
    ch = pol.change(plan, now)
    assert sorted(ch.remove["block4"]) == ["10.1.0.2"] and sorted(k for k, _ in ch.put["block4"]) == ["10.1.0.1", "10.2.0.1"]
    pol.commit(plan)
    assert pol.counts(now)["block4"] == 49 and pol.cols["block4"].index[pk.ip_key(4, "10.1.0.1")] == ISSUED // 1000 + 5000
    assert pol.purge(now + 60) == 1                       # 10.2.0.1 (10 s) gone; the rest lasts 100+ s
    assert pol.counts(now + 60)["block4"] == 48
    assert pol.purge(now + 200) == 47
    rows = list(pol.cols["block4"].rows_meta())
    assert [(pk.key_text(4, k), eid) for k, _, eid, _, _ in rows] == [("10.1.0.1", "d-000000000001")]
    with pytest.raises(nft.NftError):                     # the packed kernel work names only managed sets
        nft.packed_batch(nft.nfnetlink.Batch("vigil"), [pk.ColChange("local4", 4, True)])


def test_manager_sends_binary_only_to_engines_that_read_it(tmp_path):
    from tests.unit.test_policy import component, status
    from vigil import payload, topics
    from vigil.contracts.engine import EngineStatus
    comp, ctx, mqtt = component(tmp_path)
    pub = rs.load_public_key(tmp_path / "state" / "signing.pub")
    new = EngineStatus.decode(payload.encode("status", "e2", {
        "state": "running", "engine": "e2", "mode": "enforcing", "learning": {"progress": 1.0},
        "enforcement": {"formats": ["json", rw.FORMAT]}}))
    comp.on_status("e1", status("e1"))                     # an older engine: advertises nothing
    comp.on_status("e2", new)
    comp.add_decision("ip", "10.77.0.66", duration=600, reason="manual")
    old_raw, new_raw = mqtt.last(topics.engine("e1", "ruleset")), mqtt.last(topics.engine("e2", "ruleset"))
    assert old_raw.startswith(b"{") and rw.is_binary(new_raw)
    a = rs.decode_snapshot(old_raw, pub, "e1")
    b = rw.decode(new_raw, pub, "e2")
    assert [(e.action, e.value) for e in a.entries] == [(e.action, e.value) for e in b.entries()]
    assert b.issued_at % 1000 == 0 and 599 <= next(b.entries()).ttl <= 601
    # a later snapshot packs the unchanged decision to the same expiry (the engine diffs by it)
    comp.add_decision("ip", "10.77.0.67", duration=600, reason="manual")
    b2 = rw.decode(mqtt.last(topics.engine("e2", "ruleset")), pub, "e2")
    assert rw.is_binary(mqtt.last(topics.engine("e2", "ruleset/delta")))
    e1 = {pk.key_text(4, k): b.blocks[0].expires[i] for i, k in enumerate(pk._iter_keys(4, b.blocks[0].keys))}
    e2 = {pk.key_text(4, k): b2.blocks[0].expires[i] for i, k in enumerate(pk._iter_keys(4, b2.blocks[0].keys))}
    assert e1["10.77.0.66"] == e2["10.77.0.66"]
    # the switch forces one encoding for all
    comp2, _ctx, mqtt2 = component(tmp_path / "two", ruleset_format="json")
    comp2.on_status("e2", new)
    comp2.add_decision("ip", "10.77.0.66", duration=600, reason="manual")
    assert mqtt2.last(topics.engine("e2", "ruleset")).startswith(b"{")
    # a retained binary snapshot found at start: generations continue above it
    from vigil.manager.policy.fleet import snapshot_generation
    assert snapshot_generation(new_raw) == b.generation and snapshot_generation(b"VRS") is None


def test_same_snapshot_again_writes_nothing_and_a_change_only_itself(key):
    pol = Policy()
    now = ISSUED / 1000
    ents = [rs.entry(f"d-{i:012x}", "drop", "ip", f"10.3.0.{i}", 1000 + i) for i in range(1, 100)]

    def plan(gen, entries):
        raw = rw.encode("ruleset", "m", rs.snapshot_body("e1", gen, entries, issued_at=ISSUED), key)
        return pol.plan_packed(rw.decode(raw, None), now)

    p1 = plan(1, ents)
    assert [c.refill for c in p1.col_changes] == [True] * 4          # nothing held: refill
    pol.commit(p1)
    p2 = plan(2, ents)
    assert all(not c.refill and not c.count() and not c.delete for c in p2.col_changes)
    pol.commit(p2)
    pol.warm()
    changed = ents[1:] + [rs.entry("d-0000000000ff", "drop", "ip", "10.3.1.1", 50)]
    changed[0] = dict(changed[0], ttl=9999)
    p3 = plan(3, changed)
    (c,) = [c for c in p3.col_changes if c.set_name == "block4"]
    assert not c.refill and sorted(k for k, _ in c.texts()) == ["10.3.0.2", "10.3.1.1"]
    assert sorted(c.deleted_texts()) == ["10.3.0.1", "10.3.0.2"]
    pol.commit(p3)
    assert pol.counts(now)["block4"] == 99


def test_values_come_back_as_normalise_value_writes_them(key):
    vals = [("ip", "::ffff:1.2.3.4"), ("cidr", "::ffff:0:0/96"), ("flow", "::ffff:1.2.3.4|2001:db8::1|tcp|80"),
            ("ip", "2001:db8::"), ("cidr", "0.0.0.0/0"), ("ip", "255.255.255.255")]
    ents = [rs.entry(f"i{i}", "drop", sc, v, 60) for i, (sc, v) in enumerate(vals)]
    p = rw.decode(rw.encode("ruleset", "m", rs.snapshot_body("e1", 1, ents, issued_at=ISSUED), key), None)
    assert sorted(e.value for e in p.entries()) == sorted(rs.normalise_value(sc, v) for sc, v in vals)


def test_saving_a_large_set_takes_at_most_a_twentieth_of_a_core():
    from vigil.engine.enforce import SAVE_EVERY, save_gap
    assert save_gap(0.01) == SAVE_EVERY
    assert save_gap(3.0) == pytest.approx(60.0)          # a 1M-row save: one a minute at most
