"""Several trusted manager keys (a signing key's rotation): ruleset.verify / open_signed with a
key_id -> key mapping, the engine's configuration of the list, and ``vigilctl keys new``."""
from __future__ import annotations

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vigil import ruleset as rs
from vigil.cli import vigilctl
from vigil.config import ConfigError, from_dict
from vigil.engine.config import EnforcementConfig
from vigil.payload import PayloadError

pytestmark = pytest.mark.unit

OLD, NEW, STRANGER = (Ed25519PrivateKey.generate() for _ in range(3))


def _snap(key, generation=3):
    body = rs.snapshot_body("e1", generation, [rs.entry("d1", "drop", "ip", "10.77.0.66", 60, "op", "scan")])
    return rs.encode_signed("ruleset", "manager", body, key)


def test_either_key_of_the_overlap_is_accepted_and_named():
    both = rs.trusted_keys([OLD.public_key(), NEW.public_key()])
    assert set(both) == {rs.key_id(OLD), rs.key_id(NEW)}
    for key in (OLD, NEW):
        snap = rs.decode_snapshot(_snap(key), both, "e1")
        assert snap.key_id == rs.key_id(key) and snap.generation == 3
        delta = rs.decode_delta(rs.encode_signed("ruleset-delta", "manager", rs.delta_body("e1", 3, 4, [], []), key),
                                both, "e1")
        assert delta.key_id == rs.key_id(key)


def test_a_key_left_out_of_the_list_is_refused_by_name():
    only_new = rs.trusted_keys([NEW.public_key()])
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(_snap(OLD), only_new, "e1")
    assert err.value.reason == "unknown-key"
    assert rs.key_id(OLD) in str(err.value) and rs.key_id(NEW) in str(err.value)
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(_snap(STRANGER), rs.trusted_keys([OLD.public_key(), NEW.public_key()]), "e1")
    assert err.value.reason == "unknown-key"
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(_snap(OLD), {}, "e1")
    assert err.value.reason == "unknown-key"


def test_a_signature_claiming_a_trusted_key_id_is_still_checked():
    # signed by a stranger but labelled with the trusted key's id: the lookup finds NEW, whose
    # signature check fails -> bad-signature, on the fast path and on the full path alike
    raw = _snap(STRANGER)
    forged = raw.replace(rs.key_id(STRANGER).encode(), rs.key_id(NEW).encode())
    assert forged != raw
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(forged, rs.trusted_keys([NEW.public_key()]), "e1")
    assert err.value.reason == "bad-signature"
    msg = json.loads(forged)
    spaced = json.dumps(msg, indent=1).encode()        # not the fast path's layout
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(spaced, rs.trusted_keys([NEW.public_key()]), "e1")
    assert err.value.reason == "bad-signature"


@pytest.mark.parametrize("claimed", [None, 7, ["x"], {"a": 1}, ""])
def test_odd_key_ids_are_unknown_not_a_crash(claimed):
    msg = json.loads(_snap(NEW))
    msg["signature"]["key_id"] = claimed
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(json.dumps(msg).encode(), rs.trusted_keys([NEW.public_key()]), "e1")
    assert err.value.reason == "unknown-key"


def test_single_key_still_works_everywhere():
    snap = rs.decode_snapshot(_snap(NEW), NEW.public_key(), "e1")
    assert snap.key_id == rs.key_id(NEW)
    with pytest.raises(PayloadError) as err:
        rs.decode_snapshot(_snap(OLD), NEW.public_key(), "e1")
    assert err.value.reason == "unknown-key"


def test_engine_config_takes_a_list_of_keys_beside_the_single_one():
    cfg = from_dict({"manager_public_key": "/etc/vigil/manager-signing.pub",
                     "manager_public_keys": ["/etc/vigil/manager-signing.next.pub"]}, EnforcementConfig)
    assert [str(p) for p in cfg.manager_public_keys] == ["/etc/vigil/manager-signing.next.pub"]
    assert from_dict({"manager_public_key": "/k.pub"}, EnforcementConfig).manager_public_keys == []
    with pytest.raises(ConfigError, match="manager_public_keys"):
        from_dict({"manager_public_keys": "/k.pub"}, EnforcementConfig)
    with pytest.raises(ConfigError, match=r"manager_public_keys\.0|manager_public_keys\[0\]"):
        from_dict({"manager_public_keys": [""]}, EnforcementConfig)


def test_vigilctl_keys_new_makes_a_private_key_and_its_public_half(tmp_path, capsys):
    path = tmp_path / "signing-next.key"
    assert vigilctl.main(["keys", "new", str(path)]) == 0
    priv = rs.load_private_key(path)
    pub = rs.load_public_key(tmp_path / "signing-next.pub")
    assert rs.key_id(pub) == rs.key_id(priv)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert capsys.readouterr().out.strip() == rs.key_id(priv)
    # never overwrites: a second call fails and the key stays
    assert vigilctl.main(["keys", "new", str(path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert rs.key_id(rs.load_private_key(path)) == rs.key_id(priv)
    # the id of a key file (private or public), as an operator checks it
    assert vigilctl.main(["keys", "id", str(tmp_path / "signing-next.pub")]) == 0
    assert capsys.readouterr().out.strip() == rs.key_id(priv)
    assert vigilctl.main(["keys", "id", str(tmp_path / "nothing.pub")]) == 2
    assert "nothing.pub" in capsys.readouterr().err


def test_a_manager_key_swapped_in_rewrites_the_public_half(tmp_path):
    # the rotation playbook puts the new key in place of signing.key while the manager is stopped
    old, _ = rs.generate_keypair(tmp_path)
    rs.save_private_key(NEW, tmp_path / rs.PRIVATE_KEY_FILE)
    priv, pub = rs.generate_keypair(tmp_path)
    assert rs.key_id(priv) == rs.key_id(NEW) != rs.key_id(old)
    assert rs.key_id(rs.load_public_key(tmp_path / rs.PUBLIC_KEY_FILE)) == rs.key_id(NEW)


def test_a_manager_restarted_on_a_new_key_signs_the_next_generation_with_it(tmp_path):
    from tests.unit.test_policy import component, status
    from vigil import topics
    from vigil.contracts.engine import RulesetState
    comp, _, mqtt = component(tmp_path)
    old_id = rs.key_id(comp.key)
    comp.on_status("e1", status("e1"))
    comp.tick()
    g1 = rs.decode_snapshot(mqtt.last(topics.engine("e1", "ruleset")), comp.key.public_key(), "e1").generation
    comp.fleet.on_ruleset_state("e1", RulesetState(engine="e1", generation=g1, key_id=old_id))
    assert comp.list_engines()[0]["ruleset_key_id"] == old_id
    comp.close()
    # what the rotation playbook's switch does while the manager is stopped
    rs.save_private_key(NEW, tmp_path / "state" / rs.PRIVATE_KEY_FILE)
    comp2, _, mqtt2 = component(tmp_path)
    assert rs.key_id(comp2.key) == rs.key_id(NEW) and comp2.status()["key_id"] == rs.key_id(NEW)
    comp2.on_status("e1", status("e1"))
    comp2.tick()
    raw = mqtt2.last(topics.engine("e1", "ruleset"))
    snap = rs.decode_snapshot(raw, rs.trusted_keys([OLD.public_key(), NEW.public_key()]), "e1")
    assert snap.key_id == rs.key_id(NEW) and snap.generation > g1     # engines in the overlap apply it
    with pytest.raises(PayloadError, match="unknown-key"):
        rs.decode_snapshot(raw, comp.key.public_key(), "e1")          # engines not yet told refuse it
