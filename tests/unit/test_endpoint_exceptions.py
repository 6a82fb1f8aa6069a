"""Operator exceptions to the behaviour rules (issue 17): the contract, the manager's book (saved,
pushed retained, republished after a reconnect), the decider's evaluator applying a pushed set
without a restart, and vigilctl's refusal of an exception that would switch a rule off."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests.support.fake_mqtt import FakeMqtt
from tests.unit.test_endpoint_behaviour import fake_service, make_behaviour  # noqa: F401 - a fixture
from vigil import topics
from vigil.cli import vigilctl
from vigil.contracts import decider as proto
from vigil.contracts.endpoint import BehaviourException, BehaviourExceptions
from vigil.contracts.envelope import PayloadError
from vigil.control import ControlError, ControlServer
from vigil.counters import Counters
from vigil.manager.api import Context
from vigil.manager.verdicts.exceptions import ExceptionBook


def test_contract_checks_each_exception_and_counts_the_bad_ones():
    ok = BehaviourException.from_body({"id": "a", "rule": "memfd-exec", "path": "/memfd:jit*"})
    assert ok.rule == "memfd-exec" and ok.applies_to("any-endpoint")
    scoped = BehaviourException.from_body({"id": "b", "user": "www-data", "endpoints": ["web-*", "db1"]})
    assert scoped.rule == "*" and scoped.applies_to("web-3") and scoped.applies_to("db1")
    assert not scoped.applies_to("db2")
    for bad in ({"id": "c", "rule": "memfd-exec"},                   # no condition: the rule switched off
                {"id": "d", "rule": "Bad Rule", "path": "/x"},
                {"id": "has space", "path": "/x"},
                {"id": "e", "path": ""},
                {"id": "f", "path": "/x\0y"},
                {"id": "g", "unit": 5},
                {"id": "h", "path": "/x", "endpoints": "all"},
                {"rule": "*", "path": "/x"}):                        # no id
        with pytest.raises(PayloadError):
            BehaviourException.from_body(bad)
    raw = BehaviourExceptions(exceptions=[ok]).encode("m1")
    body = json.loads(raw)
    body["exceptions"].append({"id": "c", "rule": "memfd-exec"})
    got = BehaviourExceptions.decode(json.dumps(body).encode())
    assert [e.id for e in got.exceptions] == ["a"] and got.invalid == 1
    # the same items travel to the decider in one message
    msg = proto.from_wire(proto.Exceptions(exceptions=got.exceptions).wire())
    assert isinstance(msg, proto.Exceptions) and msg.exceptions == [ok]


@pytest.fixture
def book(tmp_path):
    mqtt = FakeMqtt()
    ctx = Context("m1", tmp_path, mqtt, None, Counters(), ControlServer(tmp_path / "c.sock"), None,
                  threading.Event())
    return ExceptionBook(tmp_path / "behaviour-exceptions.json", ctx), mqtt, ctx


def pushed(mqtt) -> list[dict]:
    sent = mqtt.on(topics.BEHAVIOUR_EXCEPTIONS)
    assert sent and all(s.retain and s.qos == 1 for s in sent)
    return BehaviourExceptions.decode(sent[-1].data).exceptions


def test_book_saves_pushes_retained_and_refuses_bad_input(book, tmp_path):
    b, mqtt, ctx = book
    b.tick()                                  # connected: the (empty) set is published once
    assert pushed(mqtt) == [] and len(mqtt.on(topics.BEHAVIOUR_EXCEPTIONS)) == 1
    b.tick()
    assert len(mqtt.on(topics.BEHAVIOUR_EXCEPTIONS)) == 1      # nothing new: no republish
    e = b.ctl_add({"rule": "reverse-shell", "unit": "inetd-echo@*.service", "comment": "socket-activated"})
    assert e["id"].startswith("x") and e["created"] > 0
    b.ctl_add({"rule": "*", "user": "build", "endpoints": ["ci-*"], "id": "ci"})
    assert [x.id for x in pushed(mqtt)] == [e["id"], "ci"]
    with pytest.raises(ControlError) as err:
        b.ctl_add({"rule": "memfd-exec"})
    assert err.value.code == "invalid" and "path, unit or user" in str(err.value)
    with pytest.raises(ControlError):
        b.ctl_add({"rule": "*", "user": "x", "id": "ci"})      # the id exists
    with pytest.raises(ControlError):
        b.ctl_add("not an object")
    assert ctx.counters.get("behaviour_exceptions_refused") == 1
    # saved: a new manager (restart) has the same set
    stored = json.loads((tmp_path / "behaviour-exceptions.json").read_text())
    assert [s["id"] for s in stored] == [e["id"], "ci"]
    assert oct(os.stat(tmp_path / "behaviour-exceptions.json").st_mode & 0o777) == "0o640"
    b2 = ExceptionBook(tmp_path / "behaviour-exceptions.json", ctx)
    assert [x["id"] for x in b2.ctl_list()] == [e["id"], "ci"]
    assert b.ctl_remove("ci")["id"] == "ci"
    assert [x.id for x in pushed(mqtt)] == [e["id"]]
    with pytest.raises(ControlError) as err:
        b.ctl_remove("ci")
    assert err.value.code == "not-found"


def test_book_drops_bad_stored_entries_and_republishes_after_a_reconnect(book, tmp_path):
    b, mqtt, ctx = book
    path = tmp_path / "behaviour-exceptions.json"
    path.write_text(json.dumps([{"id": "good", "path": "/opt/jit/*"}, {"id": "bad", "rule": "*"}, "junk"]))
    b2 = ExceptionBook(path, ctx)
    assert [x["id"] for x in b2.ctl_list()] == ["good"]
    assert ctx.counters.get("behaviour_exceptions_bad_stored") == 2
    path.write_text("{not json")
    assert ExceptionBook(path, ctx).ctl_list() == [] and ctx.counters.get("behaviour_exceptions_bad_stored") == 3
    b2.tick()
    n = len(mqtt.on(topics.BEHAVIOUR_EXCEPTIONS))
    ctx.counters.inc("mqtt_connects")         # the manager reconnected (the broker may have lost it)
    b2.tick()
    assert len(mqtt.on(topics.BEHAVIOUR_EXCEPTIONS)) == n + 1
    mqtt.connected.clear()
    ctx.counters.inc("mqtt_connects")
    b2.tick()                                 # not connected: waits for the connection
    assert len(mqtt.on(topics.BEHAVIOUR_EXCEPTIONS)) == n + 1


def test_pushed_exceptions_replace_the_last_set_and_keep_the_configured_ones(fake_service):  # noqa: F811
    me = fake_service.pid
    b, sent, c = make_behaviour(exceptions=[{"rule": "service-spawns-shell", "path": "/usr/bin/ba*"}])
    assert b.gate(me, "/usr/bin/dash", None, time.monotonic()) is False
    one = BehaviourException.from_body({"id": "d", "rule": "service-spawns-shell", "path": "/usr/bin/da*"})
    other = BehaviourException.from_body({"id": "u", "rule": "no-such-rule", "path": "/usr/bin/*"})
    assert b.set_exceptions([one, other]) == 1
    assert c["behaviour_exceptions_unknown_rule"] == 1 and c["behaviour_exceptions_pushed"] == 1
    assert b.gate(me, "/usr/bin/dash", None, time.monotonic()) is True      # the pushed one
    assert b.gate(me, "/usr/bin/bash", None, time.monotonic()) is True      # the configured one
    assert b.set_exceptions([]) == 0
    assert b.gate(me, "/usr/bin/dash", None, time.monotonic()) is False     # withdrawn
    assert b.gate(me, "/usr/bin/bash", None, time.monotonic()) is True
    assert c["behaviour_exceptions_updates"] == 2


def test_vigilctl_refuses_an_exception_without_a_condition(capsys, tmp_path):
    rc = vigilctl.main(["--socket", str(tmp_path / "none.sock"), "exceptions", "add", "--rule", "memfd-exec"])
    assert rc == 2 and "--path, --unit or --user" in capsys.readouterr().err
    rc = vigilctl.main(["--socket", str(tmp_path / "none.sock"), "exceptions", "list"])
    assert rc == 3                            # no manager there
