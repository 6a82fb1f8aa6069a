"""vigilctl decisions / allowlist / engines against a real control server in this process."""
from __future__ import annotations

import json
import threading

import pytest

from vigil.cli import vigilctl
from vigil.cli.decisions import duration, scoped_value
from vigil.control import ControlServer
from vigil.counters import Counters
from vigil.manager.api import Context
from vigil.manager.policy.component import PolicyComponent, PolicyConfig

pytestmark = pytest.mark.unit


@pytest.fixture
def manager(tmp_path):
    from tests.support.fake_mqtt import FakeMqtt
    from tests.unit.test_policy import FakeWriter, status
    ctl = ControlServer(tmp_path / "m.sock")
    ctx = Context("m", tmp_path / "state", FakeMqtt(), FakeWriter(), Counters(), ctl, None, threading.Event())
    (tmp_path / "state").mkdir()
    comp = PolicyComponent(PolicyConfig(allowlist=["10.77.0.1"]), ctx)
    comp.on_status("e1", status("e1", mode="enforcing"))
    comp.on_status("e2", status("e2", mode="learning", tags=["dmz"]))
    ctl.start()
    yield comp, str(tmp_path / "m.sock")
    ctl.stop()


def run(sock, capsys, *args):
    rc = vigilctl.main(["--socket", sock, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_durations_and_values():
    assert duration("90") == 90 and duration("10m") == 600 and duration("2h") == 7200 and duration("1w") == 604800
    for bad in ("", "soon", "-5m", "0", "5y"):
        with pytest.raises(vigilctl.UsageError):
            duration(bad)
    assert scoped_value("10.0.0.7/24", None) == ("cidr", "10.0.0.0/24")
    assert scoped_value("10.0.0.1|10.0.0.2|TCP|22", None) == ("flow", "10.0.0.1|10.0.0.2|tcp|22")
    with pytest.raises(vigilctl.UsageError):
        scoped_value("10.0.0.1", "cidr")


def test_decision_commands(manager, capsys):
    comp, sock = manager
    rc, out, err = run(sock, capsys, "decisions", "add", "10.77.0.66", "-d", "30m", "-r", "seen on the wire")
    assert rc == 0 and "10.77.0.66" in out and "operator" in out and "all" in out
    rc, out, _ = run(sock, capsys, "--json", "decisions", "list")
    rows = json.loads(out)
    assert [r["value"] for r in rows] == ["10.77.0.66"] and 1790 <= rows[0]["remaining"] <= 1800
    rc, out, _ = run(sock, capsys, "--json", "decisions", "extend", rows[0]["id"], "1h")
    assert json.loads(out)[0]["remaining"] > 5000
    rc, out, err = run(sock, capsys, "decisions", "add", "10.77.0.300")
    assert rc == 2 and "invalid ip value" in err
    rc, out, err = run(sock, capsys, "decisions", "add", "10.77.0.5", "-e", "e7")
    assert rc == 2 and "unknown engine 'e7'" in err
    rc, out, err = run(sock, capsys, "decisions", "add", "10.77.0.1")
    assert rc == 1 and "allowlisted" in err
    rc, out, err = run(sock, capsys, "decisions", "delete", "10.77.0.99")
    assert rc == 2 and "no active decision" in err
    rc, out, _ = run(sock, capsys, "decisions", "unblock", "10.77.0.66")
    assert rc == 0
    rc, out, _ = run(sock, capsys, "decisions", "list")
    assert "(none)" in out
    rc, out, _ = run(sock, capsys, "decisions", "list", "--state", "removed")
    assert "10.77.0.66" in out


def test_allowlist_and_engine_commands(manager, capsys):
    comp, sock = manager
    rc, out, _ = run(sock, capsys, "allowlist", "add", "192.0.2.0/24", "-n", "ops")
    assert rc == 0 and "192.0.2.0/24" in out
    rc, out, _ = run(sock, capsys, "allowlist")
    assert "10.77.0.1/32" in out and "config" in out and "192.0.2.0/24" in out
    rc, out, err = run(sock, capsys, "allowlist", "add", "192.0.2.x")
    assert rc == 2 and "invalid address" in err
    rc, out, _ = run(sock, capsys, "allowlist", "delete", "192.0.2.0/24")
    assert rc == 0
    rc, out, _ = run(sock, capsys, "engines")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ENGINE", "ONLINE", "STATE", "MODE"] and len(lines) == 4
    rc, out, _ = run(sock, capsys, "--json", "engines", "mode", "e2", "enforcing")
    assert json.loads(out)["mode"] == "enforcing"
    rc, out, err = run(sock, capsys, "engines", "mode", "e5", "enforcing")
    assert rc == 2 and "unknown engine" in err
    comp.fleet.set_mode("e2", None)
    from vigil.manager.api import DecisionRequest
    comp.propose(DecisionRequest("ip", "10.77.0.67", "flow-anomaly:vertical-scan", "scan", engines=["e2"]))
    rc, out, _ = run(sock, capsys, "engines", "report", "e2")
    assert "10.77.0.67" in out and "would-block: e2" in out
    rc, out, _ = run(sock, capsys, "--json", "engines", "report", "e1")
    assert json.loads(out) == []


def test_engines_learning_column_says_done_for_an_enforcing_engine(manager, capsys):
    """An engine switched to enforcing before its clock ran out reported LEARNING 99 %."""
    from tests.unit.test_policy import status
    comp, sock = manager
    enforcing = status("e3", mode="enforcing", learning={"progress": 0.994, "elapsed": 7.95, "period": 8})
    learning = status("e4", mode="learning", learning={"progress": 0.999, "elapsed": 7.99, "period": 8})
    comp.on_status("e3", enforcing)
    comp.on_status("e4", learning)
    rc, out, _ = run(sock, capsys, "engines")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rc == 0
    assert rows["e3"][4] == "done"
    assert rows["e4"][4] == "99%"          # floored: 99.9 % is not shown as 100 %
    assert rows["e1"][4] == "done" and rows["e2"][4] == "100%"
