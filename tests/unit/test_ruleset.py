"""Rule-set format, canonical JSON and Ed25519 signing (agents/vigil/ruleset.py)."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vigil import ruleset as rs
from vigil.payload import PayloadError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def key():
    return Ed25519PrivateKey.generate()


def _snap(key, entries=None, engine="e1", generation=5, **kw):
    entries = entries if entries is not None else [
        rs.entry("d1", "drop", "ip", "10.77.0.66", 600, "operator", "scan"),
        rs.entry("d2", "drop", "cidr", "10.99.0.0/16", None, "operator", "net"),
        rs.entry("d3", "drop", "flow", "10.77.0.66|10.77.0.10|tcp|22", 60, "engine-local", "ssh"),
        rs.entry("a1", "allow", "ip", "2001:db8::1", None, "operator", "mgmt"),
    ]
    return rs.encode_signed("ruleset", "manager", rs.snapshot_body(engine, generation, entries, **kw), key)


def test_snapshot_round_trip(key):
    snap = rs.decode_snapshot(_snap(key, mode="enforcing", issued_at=123), key.public_key(), "e1")
    assert snap.generation == 5 and snap.mode == "enforcing" and snap.issued_at == 123
    assert [e.key for e in snap.entries] == [("drop", "ip", "10.77.0.66"), ("drop", "cidr", "10.99.0.0/16"),
                                             ("drop", "flow", "10.77.0.66|10.77.0.10|tcp|22"),
                                             ("allow", "ip", "2001:db8::1")]
    assert snap.entries[0].ttl == 600 and snap.entries[1].ttl is None
    assert snap.key_id == rs.key_id(key)
    assert [e.family for e in snap.entries] == [4, 4, 4, 6]


def test_canonical_is_sorted_compact_ascii_without_signature():
    obj = {"b": 1, "a": "é", "signature": {"x": 1}, "c": [1, {"z": 1, "y": 2}]}
    assert rs.canonical(obj) == b'{"a":"\\u00e9","b":1,"c":[1,{"y":2,"z":1}]}'


def test_signature_is_over_canonical_json_with_envelope(key):
    msg = json.loads(_snap(key))
    sig = msg["signature"]
    assert sig["alg"] == "ed25519" and sig["key_id"] == rs.key_id(key) and len(sig["key_id"]) == 16
    # An independent check with the documented recipe.
    body = {k: v for k, v in msg.items() if k != "signature"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    key.public_key().verify(base64.b64decode(sig["sig"]), data)
    assert {"schema", "ts", "sender"} <= set(body)


def test_key_id_is_sha256_of_raw_public_key(key):
    import hashlib
    from cryptography.hazmat.primitives import serialization
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert rs.key_id(key) == rs.key_id(key.public_key()) == hashlib.sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize("mutate,reason", [
    (lambda m: m.pop("signature"), "unsigned"),
    (lambda m: m.__setitem__("generation", 6), "bad-signature"),
    (lambda m: m.__setitem__("ts", m["ts"] + 1), "bad-signature"),
    (lambda m: m["entries"][0].__setitem__("ttl", 6000), "bad-signature"),
    (lambda m: m["signature"].__setitem__("sig", "!!notbase64"), "bad-signature"),
    (lambda m: m["signature"].__setitem__("alg", "rsa"), "bad-alg"),
    (lambda m: m["signature"].__setitem__("key_id", "0" * 16), "unknown-key"),
    (lambda m: m.__setitem__("signature", "x"), "bad-signature"),
])
def test_tampered_or_unsigned_is_rejected(key, mutate, reason):
    msg = json.loads(_snap(key))
    mutate(msg)
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(json.dumps(msg).encode(), key.public_key(), "e1")
    assert err.value.reason == reason


def test_other_key_is_rejected(key):
    other = Ed25519PrivateKey.generate()
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(_snap(other), key.public_key(), "e1")
    assert err.value.reason == "unknown-key"
    # Same key_id claimed but signed by another key: bad signature.
    msg = json.loads(_snap(other))
    msg["signature"]["key_id"] = rs.key_id(key)
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(json.dumps(msg).encode(), key.public_key(), "e1")
    assert err.value.reason == "bad-signature"


def test_wrong_engine(key):
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(_snap(key, engine="e2"), key.public_key(), "e1")
    assert err.value.reason == "wrong-engine"


def _signed_raw(key, kind, body):
    """Sign a hand-made (possibly malformed) body, bypassing the builders' checks."""
    msg = {"schema": f"vigil.{kind}/1", "ts": 1, "sender": "manager", **body}
    return json.dumps(rs.sign(msg, key)).encode()


GOOD = {"id": "x", "action": "drop", "scope": "ip", "value": "10.0.0.1", "ttl": 5, "origin": "o", "reason": "r"}


@pytest.mark.parametrize("bad", [
    {**GOOD, "action": "reject"},
    {**GOOD, "scope": "mac"},
    {**GOOD, "value": "10.0.0.300"},
    {**GOOD, "value": ""},
    {**GOOD, "value": 5},
    {**GOOD, "scope": "cidr", "value": "10.0.0.1"},
    {**GOOD, "scope": "cidr", "value": "10.0.0.0/33"},
    {**GOOD, "scope": "flow", "value": "10.0.0.1|10.0.0.2|tcp"},
    {**GOOD, "scope": "flow", "value": "10.0.0.1|::1|tcp|22"},
    {**GOOD, "scope": "flow", "value": "10.0.0.1|10.0.0.2|icmp|22"},
    {**GOOD, "scope": "flow", "value": "10.0.0.1|10.0.0.2|tcp|70000"},
    {**GOOD, "action": "allow", "scope": "flow", "value": "10.0.0.1|10.0.0.2|tcp|22"},
    {**GOOD, "ttl": -1},
    {**GOOD, "ttl": 1.5},
    {**GOOD, "ttl": True},
    {**GOOD, "ttl": "60"},
    {**GOOD, "id": ""},
    {**GOOD, "reason": 7},
    "10.0.0.1",
])
def test_malformed_entry_rejected(key, bad):
    raw = _signed_raw(key, "ruleset", {"engine": "e1", "generation": 1, "issued_at": 1, "mode": None,
                                       "entries": [GOOD, bad] if bad != GOOD else [bad]})
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(raw, key.public_key(), "e1")
    assert err.value.reason == "bad-entry"
    assert "in " in str(err.value)  # the message quotes the offending entry


@pytest.mark.parametrize("body,reason", [
    ({"engine": "e1", "generation": -1, "issued_at": 1, "entries": []}, "bad-generation"),
    ({"engine": "e1", "generation": "3", "issued_at": 1, "entries": []}, "bad-generation"),
    ({"engine": "e1", "generation": 1, "issued_at": 1.5, "entries": []}, "bad-field"),
    ({"engine": "e1", "generation": 1, "issued_at": 1, "entries": {}}, "bad-field"),
    ({"engine": "e1", "generation": 1, "issued_at": 1, "entries": None}, "bad-field"),
    ({"engine": "e1", "generation": 1, "issued_at": 1, "mode": "audit", "entries": []}, "bad-field"),
    ({"generation": 1, "issued_at": 1, "entries": []}, "bad-field"),
    ({"engine": "e1", "generation": 1, "issued_at": 1, "entries": [GOOD, {**GOOD, "id": "y", "value": "10.0.0.01"}]},
     "bad-entry"),
    ({"engine": "e1", "generation": 1, "issued_at": 1, "entries": [GOOD, {**GOOD, "id": "y"}]}, "duplicate-entry"),
])
def test_malformed_snapshot_rejected(key, body, reason):
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(_signed_raw(key, "ruleset", body), key.public_key(), "e1")
    assert err.value.reason == reason


def test_envelope_errors_surface(key):
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(b"\xff", key.public_key(), "e1")
    assert err.value.reason == "not-utf8"
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(rs.encode_signed("ruleset-delta", "m", rs.delta_body("e1", 1, 2), key),
                           key.public_key(), "e1")
    assert err.value.reason == "wrong-kind"


def test_values_are_normalised(key):
    e = rs.entry("c", "drop", "cidr", "10.1.2.3/16", 10)
    assert e["value"] == "10.1.0.0/16"
    assert rs.entry("v6", "drop", "ip", "2001:DB8:0::1", 10)["value"] == "2001:db8::1"
    assert rs.entry("f", "drop", "flow", "10.0.0.1|10.0.0.2|TCP|0022", 10)["value"] == "10.0.0.1|10.0.0.2|tcp|22"
    assert rs.removal("drop", "cidr", "2001:db8:1::5/48") == {"action": "drop", "scope": "cidr",
                                                             "value": "2001:db8:1::/48"}


def test_delta_round_trip_and_checks(key):
    body = rs.delta_body("e1", 5, 6, add=[rs.entry("d9", "drop", "ip", "10.0.0.9", 30)],
                         remove=[rs.removal("drop", "ip", "10.77.0.66")], mode="learning")
    d = rs.decode_delta(rs.encode_signed("ruleset-delta", "manager", body, key), key.public_key(), "e1")
    assert (d.base_generation, d.generation, d.mode) == (5, 6, "learning")
    assert [e.key for e in d.add] == [("drop", "ip", "10.0.0.9")]
    assert d.remove == (("drop", "ip", "10.77.0.66"),)
    for base, gen in ((6, 6), (7, 6), (-1, 6)):
        raw = _signed_raw(key, "ruleset-delta", {"engine": "e1", "base_generation": base, "generation": gen,
                                                 "issued_at": 1, "add": [], "remove": []})
        with pytest.raises(PayloadError) as err:
            rs.decode_delta(raw, key.public_key(), "e1")
        assert err.value.reason == "bad-generation"
    raw = _signed_raw(key, "ruleset-delta", {"engine": "e1", "base_generation": 1, "generation": 2,
                                             "issued_at": 1, "add": [], "remove": [{"action": "drop"}]})
    with pytest.raises(PayloadError) as err:
        rs.decode_delta(raw, key.public_key(), "e1")
    assert err.value.reason == "bad-entry"


def test_builders_refuse_bad_input():
    with pytest.raises(PayloadError):
        rs.entry("x", "drop", "ip", "not-an-ip", 5)
    with pytest.raises(PayloadError):
        rs.snapshot_body("e1", 1, [GOOD, GOOD])
    with pytest.raises(PayloadError):
        rs.delta_body("e1", 3, 3)


def test_remaining_ttl():
    e = rs.parse_entry(GOOD | {"ttl": 100})
    assert rs.remaining_ttl(e, issued_at_ms=1_000_000, now_ms=1_030_000) == 70
    # A manager clock ahead of ours never lengthens an entry.
    assert rs.remaining_ttl(e, issued_at_ms=2_000_000, now_ms=1_000_000) == 100
    assert rs.remaining_ttl(rs.parse_entry(GOOD | {"ttl": None}), 0) is None


def test_generate_keypair_is_idempotent_and_private(tmp_path):
    priv, pub = rs.generate_keypair(tmp_path / "state")
    priv2, pub2 = rs.generate_keypair(tmp_path / "state")
    assert rs.key_id(priv) == rs.key_id(priv2) == rs.key_id(pub2)
    key_file = tmp_path / "state" / rs.PRIVATE_KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    loaded = rs.load_public_key(tmp_path / "state" / rs.PUBLIC_KEY_FILE)
    assert rs.key_id(loaded) == rs.key_id(priv)
    # An engine configured with the manager's public file verifies what the manager signs.
    raw = rs.encode_signed("ruleset", "manager", rs.snapshot_body("e1", 1, []), rs.load_private_key(key_file))
    assert rs.decode_snapshot(raw, loaded, "e1").generation == 1


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.pub"
    bad.write_text("garbage")
    with pytest.raises(ValueError, match="x.pub"):
        rs.load_public_key(bad)
    with pytest.raises(ValueError, match="missing.key"):
        rs.load_private_key(tmp_path / "missing.key")


def _ref_ip(v):
    import ipaddress
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return "invalid"


def test_ip_fast_path_agrees_with_ipaddress():
    import random
    rnd = random.Random(7)
    pieces = ["0", "00", "1", "9", "010", "99", "199", "255", "256", "300", "", "+1", " 1", "-1", "\u0663", "1 "]
    cands = ["1.2.3.4", "01.2.3.4", "1.2.3.04", "1.2.3.256", "1.2.3", "1.2.3.4.5", "::1", "::ffff:1.2.3.4",
             "fe80::1%eth0", "1.2.3.4/32", "0.0.0.0", "255.255.255.255"]
    cands += [".".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 5))) for _ in range(20000)]
    for v in cands:
        try:
            got = rs.normalise_value("ip", v)
        except ValueError:
            got = "invalid"
        assert got == _ref_ip(v), v


def test_guards_by_integer_ranges_agree_with_ipaddress():
    import ipaddress
    import random
    from vigil.engine.enforce_plan import Policy
    guards = ["10.0.0.0/8", "192.168.1.5/32", "2001:db8::/32", "fe80::/64", "::ffff:0:0/96"]
    pol, nets = Policy(guards), [ipaddress.ip_network(g) for g in guards]

    def ref(e):
        if e.action != "drop":
            return False
        if e.scope == "flow":
            return any(ipaddress.ip_address(a) in g for a in e.value.split("|")[:2] for g in nets)
        n = ipaddress.ip_network(e.value, strict=False)
        return any(n.version == g.version and n.subnet_of(g) for g in nets)

    rnd = random.Random(3)

    def addr():
        return rnd.choice([f"10.{rnd.randint(0, 255)}.0.{rnd.randint(0, 255)}", f"192.168.1.{rnd.randint(4, 6)}",
                           f"11.0.0.{rnd.randint(0, 255)}", f"2001:db{rnd.randint(7, 9)}::{rnd.randint(0, 99)}",
                           f"fe80::{rnd.randint(0, 2)}:0:0:{rnd.randint(0, 9)}", f"fe80::{rnd.randint(0, 9)}%eth0",
                           f"::ffff:10.0.0.{rnd.randint(0, 255)}", f"2a00::{rnd.randint(0, 9)}"])
    checked = 0
    for _ in range(5000):
        scope, a, b = rnd.choice(("ip", "cidr", "flow")), addr(), addr()   # mac: no address to guard
        raw = {"ip": a, "cidr": f"{a}/{rnd.randint(0, 128 if ':' in a else 32)}", "flow": f"{a}|{b}|udp|53"}[scope]
        try:
            value = rs.normalise_value(scope, raw)
        except ValueError:
            continue
        e = rs.Entry("x", "allow" if scope != "flow" and rnd.random() < 0.2 else "drop", scope, value, 60)
        assert pol.guarded(e) == ref(e), e
        checked += 1
    assert checked > 3000


def test_bulk_entry_check_agrees_with_parse_entry():
    """The inline path of _entries_checked gives parse_entry's verdict (entry or reason) on
    fuzzed entries: wrong types, bools as ttl, missing and extra keys, odd dotted quads."""
    import random
    rnd = random.Random(11)
    values = ["10.0.0.1", "255.255.255.255", "0.0.0.0", "010.0.0.1", "10.0.0.256", "10.0.0", "1.2.3.4.5",
              " 1.2.3.4", "1.2.3.4 ", "+1.2.3.4", "1.2.3.-4", "fd00::1", "10.0.0.0/8", "", "1..2.3", None, 7,
              "१.2.3.4", "1.2.3.04", "a.b.c.d"]
    pools = {
        "id": ["d1", "", None, 5, "x" * 1024, "x" * 1025, True],
        "action": ["drop", "allow", "block", None, 1],
        "scope": ["ip", "ip", "cidr", "flow", "IP", None],
        "value": values,
        "ttl": [None, 0, 60, rs.MAX_TTL, rs.MAX_TTL + 1, -1, True, False, 1.5, "60"],
        "origin": ["", "op", None, 3, "o" * 1025],
        "reason": ["", "r", None, [], "r" * 1025],
    }

    def verdict(fn, item):
        try:
            return fn(item)
        except PayloadError as exc:
            return exc.reason

    for _ in range(30000):
        if rnd.random() < 0.5:          # a valid entry with one field drawn from the pool
            item = {"id": "d1", "action": "drop", "scope": "ip", "value": "10.0.0.1", "ttl": 60,
                    "origin": "", "reason": ""}
            k = rnd.choice(list(pools))
            item[k] = rnd.choice(pools[k])
        else:
            item = {k: rnd.choice(v) for k, v in pools.items()}
        if rnd.random() < 0.1:
            del item[rnd.choice(list(item))]
        if rnd.random() < 0.05:
            item["extra"] = 1
        if rnd.random() < 0.02:
            item = rnd.choice([[item], "x", None])
        one = verdict(lambda i: rs.parse_entry(i), item)
        bulk = verdict(lambda i: rs._entries_checked([i], "entries")[0], item)
        assert one == bulk and type(one) is type(bulk), (item, one, bulk)
    with pytest.raises(PayloadError) as exc:
        rs._entries_checked([{"id": "a", "action": "drop", "scope": "ip", "value": "1.2.3.4", "ttl": 1,
                              "origin": "", "reason": ""}] * 2, "entries")
    assert exc.value.reason == "duplicate-entry"


def test_signed_bytes_are_verified_as_they_came(key, monkeypatch):
    """encode_signed writes the canonical bytes with the signature last; open_signed verifies
    those bytes without re-encoding; tampering with the bytes, or another layout, is decided by
    the full path with its reasons."""
    raw = _snap(key)
    body = json.loads(raw)
    assert raw.endswith(b"}") and raw[:raw.rfind(b',"signature":')] + b"}" == rs.canonical(body)
    calls = []
    monkeypatch.setattr(rs, "canonical", lambda m, _c=rs.canonical: calls.append(1) or _c(m))
    snap = rs.decode_snapshot(raw, key.public_key(), "e1")
    assert calls == [] and snap.generation == 5 and len(snap.entries) == 4
    # another member order and spacing (e.g. another manager's encoder): the full path accepts it
    assert rs.decode_snapshot(json.dumps(body, indent=1).encode(), key.public_key(), "e1") == snap
    assert calls
    for tampered, reason in [
        (raw.replace(b'"generation":5', b'"generation":6'), "bad-signature"),
        (raw.replace(b'"ttl":600', b'"ttl":6000'), "bad-signature"),
        (raw[:-1] + b',"generation":6}', "bad-signature"),            # a member after the signature
        (raw.replace(b',"signature":', b',"signature":{"x":1},"signature":', 1)[:-1] + b',"ts":1}',
         "bad-signature"),
        (raw[:raw.rfind(b',"signature":')] + b"}", "unsigned"),
    ]:
        with pytest.raises(PayloadError) as err:
            rs.decode_snapshot(tampered, key.public_key(), "e1")
        assert err.value.reason == reason, tampered[-200:]
    # duplicate members: the last one counts, as for json.loads; the signed content is unchanged
    dup = raw.replace(b',"signature":', b',"signature":{"x":1},"signature":', 1)
    assert rs.decode_snapshot(dup, key.public_key(), "e1") == snap
