"""A manager signing key's rotation as an engine lives it: real vigil-engine in the lab, real
Mosquitto, real kernel nftables.  The engine trusts the old key; then old and new (the overlap,
``manager_public_keys``); then only the new one, and a rule set signed by the old key is refused
while the kernel keeps the rule set the new key signed.
"""
from __future__ import annotations

import pytest

from tests.support.rulesets import RulesetPublisher, drop, kernel_set
from vigil import ruleset

pytestmark = pytest.mark.integration

A, B, C = "10.77.0.66", "10.77.0.67", "10.77.0.68"


@pytest.fixture
def keys(lab):
    old = RulesetPublisher(lab.mosquitto.mqtt_config(), lab.run_dir / "key-old")
    new_dir = lab.run_dir / "key-new"
    new_key, _ = ruleset.generate_keypair(new_dir)
    try:
        yield old, new_key, new_dir / ruleset.PUBLIC_KEY_FILE
    finally:
        old.close()


def _engine(lab, pub, **enforcement):
    lab.stop("engine")
    pub.clear_states()
    lab.start_engine(enforcement=enforcement)
    lab.wait_log("engine", "mqtt: connected")
    pub.wait_state(lambda s: True)


def _applied(pub, gen):
    return pub.wait_state(lambda s: s["generation"] == gen and s["error"] is None)


def _block4(lab):
    return set(kernel_set(lambda argv: lab.run("engine", argv), "block4"))


def test_overlap_then_the_old_key_is_refused(lab, keys):
    pub, new_key, new_pub = keys
    old_id, new_id = ruleset.key_id(pub.key), ruleset.key_id(new_key)

    # before: one key, as every engine was configured so far
    _engine(lab, pub, manager_public_key=str(pub.public_key_path))
    g1 = pub.snapshot([drop(A)])
    assert _applied(pub, g1)["key_id"] == old_id
    refused = pub.snapshot([drop(B)], generation=g1 + 1, key=new_key, retain=False)
    st = pub.wait_state(lambda s: s["rejected"].get("unknown-key", 0) >= 1)
    assert st["generation"] == g1 and _block4(lab) == {A} and refused == g1 + 1

    # (a) the overlap: the engine trusts both; either key's rule set applies
    _engine(lab, pub, manager_public_key=str(pub.public_key_path), manager_public_keys=[str(new_pub)])
    lab.wait_log("engine", f"manager keys {old_id}, {new_id} trusted")
    g2 = pub.snapshot([drop(B)], generation=g1 + 2, key=new_key)
    assert _applied(pub, g2)["key_id"] == new_id and _block4(lab) == {B}
    g3 = pub.delta(add=[drop(C)], base=g2, generation=g2 + 1)            # the old key, still trusted
    assert _applied(pub, g3)["key_id"] == old_id and _block4(lab) == {B, C}
    # (b) the manager signs with the new key only from here
    g4 = pub.snapshot([drop(B)], generation=g3 + 1, key=new_key)
    assert _applied(pub, g4)["key_id"] == new_id and _block4(lab) == {B}

    # (c) the old key removed: its rule sets are refused, the new key's rule set stays in the kernel
    _engine(lab, pub, manager_public_key=str(new_pub))
    assert pub.wait_state(lambda s: s["generation"] == g4)["key_id"] == new_id
    pub.snapshot([drop(A)], generation=g4 + 1, retain=False)
    st = pub.wait_state(lambda s: s["rejected"].get("unknown-key", 0) >= 1)
    assert st["generation"] == g4 and old_id in st["error"] and _block4(lab) == {B}
    pub.delta(add=[drop(A)], base=g4, generation=g4 + 2)
    st = pub.wait_state(lambda s: s["rejected"].get("unknown-key", 0) >= 2)
    assert st["generation"] == g4 and _block4(lab) == {B}
    # and the new key goes on working
    g5 = pub.delta(add=[drop(C)], base=g4, generation=g4 + 3, key=new_key)
    assert _applied(pub, g5)["key_id"] == new_id and _block4(lab) == {B, C}


def test_an_unreadable_key_in_the_list_rejects_every_rule_set(lab, keys):
    pub, new_key, new_pub = keys
    missing = lab.run_dir / "nowhere.pub"
    _engine(lab, pub, manager_public_key=str(pub.public_key_path), manager_public_keys=[str(missing)])
    pub.snapshot([drop(A)])
    st = pub.wait_state(lambda s: s["rejected"].get("no-key", 0) >= 1)
    assert "nowhere.pub" in st["error"] and st["generation"] is None
