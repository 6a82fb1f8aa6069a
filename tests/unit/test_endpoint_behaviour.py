"""Behaviour rules: loading and validation, matching and enforcement on real child processes, and
the decider's guard (a failing behaviour part leaves the exec gate answering, counted).

No root needed: the subjects are this test's own children (same user: /proc, pidfd_getfd and
signals are allowed), the connector is not opened (``connector: false``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.unit.test_endpoint_decider import FakeGroup
from vigil.config import ConfigError, loads
from vigil.endpoint import fanotify as fan
from vigil.endpoint.behaviour import procfs
from vigil.endpoint.behaviour.engine import Behaviour
from vigil.endpoint.behaviour.rules import Names, load_rules, loads_rules
from vigil.endpoint.config import EndpointConfig
from vigil.endpoint.decider import Decider

SLEEP = shutil.which("sleep")

RULE = """
version: 1
lists: {shells: [sh, bash]}
rules:
  - id: r1
    technique: T1059.004
    event: gate
    when: {target: ["@shells"]}
    action: deny
"""


def test_default_rules_load_and_each_names_a_technique():
    rules = load_rules()
    ids = {r.id for r in rules}
    assert {"service-spawns-shell", "memfd-exec", "deleted-exec", "reverse-shell", "ptrace-attach"} <= ids
    for r in rules:
        assert r.technique.startswith("T") and r.description
    gate = next(r for r in rules if r.id == "service-spawns-shell")
    assert gate.target("bash") and gate.target("python3.11") and not gate.target("ls")
    assert gate.service_exe("apache2") and not gate.service_exe("sshd")   # sshd runs shells by design


@pytest.mark.parametrize("text, key", [
    (RULE.replace("T1059.004", "TA0002"), "rules[0].technique: 'TA0002' is not a MITRE ATT&CK technique"),
    (RULE.replace("event: gate", "event: exec"), "rules[0].action: deny is only possible"),
    (RULE.replace("action: deny", "action: explode"), "rules[0].action"),
    (RULE.replace("@shells", "@nope"), "rules[0].when.target[0]: no list named 'nope'"),
    (RULE.replace("{target:", "{targte:"), "rules[0].when.targte: unknown key"),
    (RULE.replace("event: gate", "on: gate"), "rules[0]"),     # YAML 1.1 reads `on` as true
    (RULE.replace("{target: [\"@shells\"]}", "{tracer_not: [gdb]}"), "when.tracer_not: not available"),
    (RULE.replace("{target: [\"@shells\"]}", "{}"), "at least one condition"),
    (RULE.replace("id: r1", "id: R 1"), "lower-case slug"),
    (RULE + RULE.split("rules:")[1], "rules[1].id: duplicate"),
    (RULE.replace("version: 1", "version: 2"), "version"),
    (RULE.replace("{target: [\"@shells\"]}", "{from_network_within: 0}"), "rules[0].when.from_network_within: must be 1..3600"),
    (RULE.replace("event: gate", "event: exec").replace("action: deny", "action: kill")
     .replace("{target: [\"@shells\"]}", "{from_network_within: 5}"), "when.from_network_within: not available"),
])
def test_validation_names_the_key(text, key):
    with pytest.raises(ConfigError) as exc:
        loads_rules(text, "r.yaml")
    assert key in str(exc.value) and "r.yaml" in str(exc.value)


def test_config_section_validates_rules_and_exceptions(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULE.replace("T1059.004", "X"))
    with pytest.raises(ConfigError, match=r"behaviour.rules_file: .*bad.yaml: rules\[0\]\.technique"):
        loads(f"behaviour: {{rules_file: {bad}}}", EndpointConfig)
    with pytest.raises(ConfigError, match=r"exceptions\[0\]\.rule: no enabled rule 'nope'"):
        loads("behaviour: {exceptions: [{rule: nope, user: root}]}", EndpointConfig)
    with pytest.raises(ConfigError, match="give path, unit or user"):
        loads("behaviour: {exceptions: [{rule: memfd-exec}]}", EndpointConfig)
    cfg = loads("behaviour: {mode: monitor, exceptions: [{rule: reverse-shell, unit: 'x*.service'}]}", EndpointConfig)
    assert cfg.behaviour.mode == "monitor" and cfg.behaviour.exceptions[0].unit == "x*.service"


def test_names_literal_and_glob():
    n = Names(["sh", "python3*", "php[0-9]*"])
    assert n("sh") and n("python3.11") and n("php8") and not n("shx") and not n("php")


def test_procfs_reads_only_the_named_process():
    p = subprocess.Popen([SLEEP, "5"])
    try:
        time.sleep(0.05)
        assert procfs.exe(p.pid) == os.path.realpath(SLEEP)
        assert procfs.ppid(p.pid) == os.getpid()
        assert procfs.cmdline(p.pid) == f"{SLEEP} 5"
        assert procfs.uid(p.pid) == os.getuid()
    finally:
        p.kill()
        p.wait()
    assert procfs.exe(p.pid) is None and procfs.ppid(p.pid) is None and procfs.cmdline(p.pid) == ""
    assert procfs.is_memfd("/memfd:x (deleted)") and not procfs.is_deleted("/memfd:x (deleted)")
    assert procfs.is_deleted("/tmp/a (deleted)") and procfs.base("/tmp/a b (deleted)") == "a b"


# -- the evaluator on real processes ------------------------------------------------------------
def make_behaviour(endpoint_mode="block-malicious", **cfg) -> tuple[Behaviour, list[dict], dict]:
    sent: list[dict] = []
    counters: dict = defaultdict(int)
    # the decider's send gets typed messages (proto.Behaviour); the tests read their bodies
    b = Behaviour({"connector": False, **cfg}, lambda m: sent.append(m.body()), counters, {os.getpid()},
                  endpoint_mode)
    return b, sent, counters


@pytest.fixture
def fake_service(tmp_path):
    """A process whose executable is called apache2 (a copy of sleep)."""
    exe = tmp_path / "apache2"
    shutil.copy(SLEEP, exe)
    p = subprocess.Popen([str(exe), "30"])
    time.sleep(0.05)
    yield p
    p.kill()
    p.wait()


def test_gate_denies_a_service_running_a_shell_and_reports_the_tree(fake_service, tmp_path):
    b, sent, c = make_behaviour()
    assert b.is_target("/usr/bin/dash") and not b.is_target("/usr/bin/ls")
    assert b.gate(fake_service.pid, "/usr/bin/dash", None, time.monotonic()) is False
    b.drain()
    ev = sent[0]
    assert ev["rule"] == "service-spawns-shell" and ev["action"] == "blocked" and ev["technique"] == "T1190"
    assert ev["service"]["pid"] == fake_service.pid and ev["service"]["exe"].endswith("/apache2")
    assert ev["parent"].endswith("/apache2")        # the process that asked to run the shell
    tree = ev["tree"]
    assert tree[0]["pid"] == fake_service.pid and tree[1]["pid"] == os.getpid()
    assert tree[0]["sha256"] == hashlib.sha256(Path(SLEEP).read_bytes()).hexdigest()
    assert tree[0]["user"] and "30" in tree[0]["cmdline"]
    # a process with no service among its ancestors (this test) is not
    assert b.gate(os.getpid(), "/usr/bin/dash", None, time.monotonic()) is True


def test_gate_allows_the_interpreter_of_a_script_the_service_runs(fake_service, tmp_path):
    b, sent, c = make_behaviour()
    cgi = tmp_path / "ok.cgi"
    cgi.write_text("#!/bin/sh\necho ok\n")
    elf = tmp_path / "prog"
    shutil.copy(SLEEP, elf)
    pid = fake_service.pid
    assert b.gate(pid, "/usr/bin/dash", (pid, str(cgi)), time.monotonic()) is True
    assert c["behaviour_scripts_allowed"] == 1 and not b.todo
    # the previous exec was an ELF (not a script), or another process's: a direct exec, denied
    assert b.gate(pid, "/usr/bin/dash", (pid, str(elf)), time.monotonic()) is False
    assert b.gate(pid, "/usr/bin/dash", (pid + 1, str(cgi)), time.monotonic()) is False


def test_monitor_reports_would_block_and_exceptions_allow(fake_service):
    b, sent, c = make_behaviour("monitor")
    assert b.gate(fake_service.pid, "/usr/bin/bash", None, time.monotonic()) is True
    b.drain()
    assert sent[0]["action"] == "would-block" and sent[0]["mode"] == "monitor"
    b, sent, c = make_behaviour(exceptions=[{"rule": "service-spawns-shell", "path": "/usr/bin/ba*"}])
    assert b.gate(fake_service.pid, "/usr/bin/bash", None, time.monotonic()) is True
    assert b.gate(fake_service.pid, "/usr/bin/dash", None, time.monotonic()) is False
    assert c["behaviour_excepted_service-spawns-shell"] == 1
    me = procfs.user(os.getuid())
    b, sent, c = make_behaviour(exceptions=[{"rule": "*", "user": me}])
    assert b.gate(fake_service.pid, "/usr/bin/dash", None, time.monotonic()) is True
    b, sent, c = make_behaviour("block-malicious", mode="monitor")   # behaviour.mode overrides
    assert b.gate(fake_service.pid, "/usr/bin/dash", None, time.monotonic()) is True


def test_reverse_shell_is_killed_and_its_connection_shut_down():
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    # a shell whose stdin and stdout are the TCP connection (it stays a shell: two commands)
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 30; :"], stdin=cli, stdout=cli)
    cli.close()                            # the shell alone holds this end now ...
    try:
        time.sleep(0.1)
        b, sent, c = make_behaviour()
        b._on_exec(p.pid)
        assert p.wait(5) == -signal.SIGKILL
        peer.settimeout(5)
        assert peer.recv(10) == b""        # the listener's side sees the connection end
        b.drain()
        ev = sent[0]
        assert ev["rule"] == "reverse-shell" and ev["action"] == "killed" and ev["closed"] == 2
    finally:
        if p.poll() is None:
            p.kill()
        peer.close()
        srv.close()


def test_shell_on_unix_socket_or_pipe_is_left_alone():
    a, b_ = socket.socketpair()
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 30; :"], stdin=b_, stdout=subprocess.PIPE)
    try:
        time.sleep(0.1)
        b, sent, c = make_behaviour()
        b._on_exec(p.pid)
        assert p.poll() is None and not b.todo
    finally:
        p.kill()
        p.wait()
        a.close()
        b_.close()


def test_memfd_exec_is_killed_and_the_payload_hashed():
    from tests.support.endpoint_behaviour import memfd_payload_cmd
    p = subprocess.Popen(memfd_payload_cmd(SLEEP, "30"), stdout=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()
        deadline = time.monotonic() + 5
        while not (procfs.exe(p.pid) or "").startswith("/memfd:"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        b, sent, c = make_behaviour()
        b._on_exec(p.pid)
        assert p.wait(5) == -signal.SIGKILL
        b.drain()
        assert sent[0]["rule"] == "memfd-exec"
        assert sent[0]["sha256"] == hashlib.sha256(Path(SLEEP).read_bytes()).hexdigest()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_an_ordinary_exec_matches_nothing():
    p = subprocess.Popen([SLEEP, "30"])
    try:
        time.sleep(0.05)
        b, sent, c = make_behaviour()
        b._on_exec(p.pid)
        assert p.poll() is None and not b.todo
    finally:
        p.kill()
        p.wait()


# -- the decider's hooks ----------------------------------------------------------------------
@pytest.fixture
def rig(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    ours.setblocking(False)
    cfg = {"mode": "block-malicious", "decision_deadline": 0.2, "max_hash_bytes": 1 << 20, "cache_entries": 64,
           "excluded": [], "behaviour": {"connector": False}}
    group = FakeGroup()
    d = Decider(cfg, theirs, group)
    d.own_pids = {-5}
    yield d, group, ours, tmp_path
    ours.close()
    theirs.close()


def _msgs(sock) -> list[dict]:
    out = []
    while True:
        try:
            out.append(json.loads(sock.recv(65536)))
        except BlockingIOError:
            return out


def test_decider_denies_through_the_behaviour_gate(rig, fake_service):
    d, group, agent, tmp = rig
    assert d.bh is not None
    sh = tmp / "sh"
    shutil.copy("/bin/true", sh)
    fd = os.open(sh, os.O_RDONLY)
    d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, fake_service.pid))
    assert group.answers == [(fd, False)]
    msgs = _msgs(agent)
    bev = [m for m in msgs if m["t"] == "bev"]
    assert bev and bev[0]["rule"] == "service-spawns-shell" and bev[0]["parent"].endswith("apache2")
    assert d.c["decisions_blocked_behaviour"] == 1
    assert str(sh) in d.bh_paths


def test_a_failing_behaviour_part_leaves_the_gate_answering(rig, fake_service):
    d, group, agent, tmp = rig

    def boom(*a, **k):
        raise RuntimeError("behaviour bug")
    d.bh.gate = boom
    d.bh.on_connector = boom
    sh = tmp / "sh"
    shutil.copy("/bin/true", sh)
    sha = hashlib.sha256(sh.read_bytes()).hexdigest()
    d.verdicts.put(sha, "benign", "test", 60)
    for _ in range(3):
        fd = os.open(sh, os.O_RDONLY)
        d.on_event(fan.Event(fan.FAN_OPEN_EXEC_PERM, fd, fake_service.pid))
        assert group.answers[-1] == (fd, True)           # answered by its verdict, as without rules
    d._behaviour_events()
    assert d.c["behaviour_errors"] == 4
    # and a rules file that cannot be loaded at start: no behaviour, counted, the gate works
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    d2 = Decider({"mode": "monitor", "decision_deadline": 0.2, "max_hash_bytes": 1 << 20, "cache_entries": 64,
                  "excluded": [], "behaviour": {"connector": False, "rules_file": str(tmp / "missing.yaml")}},
                 theirs, FakeGroup())
    assert d2.bh is None and d2.c["behaviour_start_errors"] == 1
    ours.close()
    theirs.close()


def test_connector_overruns_are_counted_and_events_around_them_kept(fake_service):
    class Connector:
        fd = -1

        def read(self):
            return [("exec", fake_service.pid, 0), ("overrun", 0, 0), ("exec", os.getpid(), 0)]

    counters: dict = defaultdict(int)
    b = Behaviour({"connector": False}, lambda m: None, counters, {os.getpid()}, "block-malicious",
                  connector=Connector())
    b.on_connector()
    assert counters["behaviour_exec_events"] == 2 and counters["behaviour_connector_overruns"] == 1


def test_reverse_shell_at_the_gate_is_denied_killed_and_shut_down():
    srv = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    # the process asking to exec a shell already has the connection as stdin and stdout
    p = subprocess.Popen([SLEEP, "30"], stdin=cli, stdout=cli)
    cli.close()
    try:
        time.sleep(0.05)
        b, sent, c = make_behaviour()
        assert b.gate(p.pid, "/usr/bin/bash", None, time.monotonic()) is False
        assert p.wait(5) == -signal.SIGKILL
        peer.settimeout(5)
        assert peer.recv(10) == b""
        b.drain()
        assert sent[0]["rule"] == "reverse-shell-exec" and sent[0]["action"] == "killed" and sent[0]["event"] == "gate"
        # in monitor mode: reported, the exec allowed, nothing killed
        p2 = subprocess.Popen([SLEEP, "30"], stdin=peer)
        time.sleep(0.05)
        b, sent, c = make_behaviour("monitor")
        assert b.gate(p2.pid, "/usr/bin/bash", None, time.monotonic()) is True
        assert p2.poll() is None and c["behaviour_would_block"] == 1
        p2.kill()
        p2.wait()
    finally:
        if p.poll() is None:
            p.kill()
        peer.close()
        srv.close()


def test_without_the_process_connector_the_gate_rules_still_work(monkeypatch, fake_service):
    from vigil.endpoint.behaviour import connector

    def unavailable():
        raise OSError(93, "Protocol not supported")     # e.g. an agent in a container's network namespace
    monkeypatch.setattr(connector, "Connector", unavailable)
    counters: dict = defaultdict(int)
    b = Behaviour({"connector": True}, lambda m: None, counters, set(), "block-malicious")
    assert b.connector is None and b.fd == -1 and counters["behaviour_connector_errors"] == 1
    assert b.gate(fake_service.pid, "/usr/bin/dash", None, time.monotonic()) is False
