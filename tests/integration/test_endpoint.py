"""The endpoint agent against the real kernel, a real broker and a real manager.

Real fanotify on a tmpfs mounted for this module only (nothing else is ever marked), real Mosquitto
and InfluxDB from the lab's services, a real vigil-manager running the verdict service with the
shipped YARA rules and a hash list.  Every agent is stopped in ``finally``; the module checks after
each test that no fanotify mark on the test mount survives.  Budget: about 40 s.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.clamd import clamd_installed, start_clamd
from tests.support.endpoint_stack import endpoint_agent
from tests.support.fanotify import fanotify_marks_on, mount_id, mount_tmpfs, remove_tmpfs
from tests.support.waiting import wait_for
from vigil.control import call
from vigil.lab.services import InfluxDB, ManagedProcess, Mosquitto, vigil_command

pytestmark = pytest.mark.integration

TRUE = Path("/bin/true").read_bytes()
MARKER = b"VIGIL-TEST-MALWARE-5f1c0b9e"
CLAM_MARKER = b"VIGIL-CLAMAV-ONLY-2b9d47"     # in clamd's test database only: no YARA rule, no list
LOADER = "/lib64/ld-linux-x86-64.so.2"


class Stack:
    def __init__(self, run: Path):
        self.run = run
        self.mnt = run / "mnt"
        self.bad_list = run / "bad.txt"
        self.good_list = run / "good.txt"
        self.procs: list[ManagedProcess] = []
        self.manager: ManagedProcess | None = None
        self.clamd_socket: Path | None = None

    def binary(self, name: str, extra: bytes) -> tuple[Path, str]:
        """/bin/true with trailing bytes: it runs, and its hash is ours alone."""
        p = self.mnt / name
        data = TRUE + extra
        p.write_bytes(data)
        p.chmod(0o755)
        return p, hashlib.sha256(data).hexdigest()

    def start_manager(self) -> None:
        cfg = {"manager_id": "m", "mqtt": self.mosquitto.mqtt_config(),
               "influx": {"url": self.influx.url, "flush_interval": 0.5},
               "state_dir": str(self.run / "state"), "control_socket": str(self.run / "manager.sock"),
               "verdicts": {"known_bad": [str(self.bad_list)], "known_good": [str(self.good_list)],
                            "sample_wait": 10, "analyses_per_minute": 600,
                            "clamd_socket": str(self.clamd_socket) if self.clamd_socket else None,
                            "quarantine": {"enabled": True, "allow_networks": ["127.0.0.0/8"], "duration": 600}}}
        path = self.run / "manager.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.manager = ManagedProcess("manager", [*vigil_command("vigil-manager"), "-c", str(path)], self.run).start()
        deadline = time.monotonic() + 15
        while "mqtt: connected" not in self.manager.log_text():
            assert self.manager.alive(), self.manager.log_text()
            assert time.monotonic() < deadline, self.manager.log_text()
            time.sleep(0.05)

    def ctl(self, method: str, **params):
        return call(self.run / "manager.sock", method, timeout=10, **params)

    def vigilctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*vigil_command("vigilctl"), "--socket", str(self.run / "manager.sock"), *args],
                              capture_output=True, text=True, timeout=30)

    def agent(self, mode: str, name: str, **over):
        over.setdefault("decision_deadline", 0.5)
        return endpoint_agent(self.run, name, self.mosquitto.mqtt_config(), [self.mnt], mode,
                              mark_ids=[self.mnt_id], **over)


def execute(path: Path, via_loader: bool = False) -> int | str:
    argv = [LOADER, str(path)] if via_loader else [str(path)]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=10)
    except PermissionError as exc:
        assert exc.errno == errno.EPERM
        return "EPERM"
    if via_loader and b"Operation not permitted" in r.stderr:
        return "EPERM"
    return r.returncode


@pytest.fixture(scope="module")
def stack():
    run, _ = mount_tmpfs("ep", size="64m")
    s = Stack(run)
    try:
        assert os.path.ismount(s.mnt)
        s.mnt_id = mount_id(s.mnt)
        s.mosquitto = Mosquitto(run).start()
        s.influx = InfluxDB(run).start()
        s.procs += [s.mosquitto.proc, s.influx.proc]
        if clamd_installed():
            clamd, s.clamd_socket = start_clamd(run, {"Marker": CLAM_MARKER})
            s.procs.append(clamd)
        s.benign, s.benign_sha = s.binary("benign", b"benign")
        s.listed, s.listed_sha = s.binary("listed-bad", b"listed-bad")
        s.good_list.write_text(f"{s.benign_sha} test-benign\n")
        s.bad_list.write_text(f"# intelligence feed\n{s.listed_sha} test-listed\nnot-a-hash\n")
        s.start_manager()
        yield s
    finally:
        if s.manager is not None:
            s.manager.stop()
        for p in reversed(s.procs):
            p.stop()
        remove_tmpfs(run)


def test_block_malicious_denies_listed_and_yara_allows_unknown(stack):
    yara_bin, yara_sha = stack.binary("yara-hit", MARKER + b"-1")
    unknown, _ = stack.binary("unknown-1", uuid.uuid4().bytes)
    with stack.agent("block-malicious", "bm", cover_loader=True) as agent:
        assert execute(stack.benign) == 0
        assert execute(stack.listed) == "EPERM"
        assert execute(stack.listed, via_loader=True) == "EPERM"   # ld.so ./file is covered too
        assert execute(stack.benign, via_loader=True) == 0
        assert execute(unknown) == 0
        # unknown at first: runs, the manager asks for the sample, YARA matches, the verdict is pushed
        assert execute(yara_bin) == 0
        wait_for(lambda: stack.ctl("verdicts.get", sha256=yara_sha)["record"]["verdict"] == "malicious", 15,
                 "YARA verdict")
        wait_for(lambda: execute(yara_bin) == "EPERM", 5, "pushed verdict reaching the endpoint")
        rec = stack.ctl("verdicts.get", sha256=yara_sha)["record"]
        assert rec["source"] == "yara:Vigil_Test_Marker"
        # execution reports reach the manager; malicious ones become quarantine proposals
        wait_for(lambda: stack.ctl("manager.status")["counters"].get("quarantine_proposed", 0) >= 2, 5,
                 "quarantine proposals")
        hist = stack.ctl("verdicts.get", sha256=stack.listed_sha)["history"]
        assert any(h["kind"] == "blocked" and h["source"] == "bm" for h in hist)
        out = subprocess.run([*vigil_command("vigil-endpoint-console"), "--socket", str(agent.sock)],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        assert "mode: block-malicious" in out.stdout and "connected" in out.stdout
        assert "yara:Vigil_Test_Marker" in out.stdout and "list:bad.txt" in out.stdout


def test_lockdown_denies_unknown_and_malicious(stack):
    unknown, unknown_sha = stack.binary("unknown-2", uuid.uuid4().bytes)
    yara_bin, yara_sha = stack.binary("yara-hit-2", MARKER + b"-2")
    with stack.agent("lockdown", "ld"):
        assert execute(stack.benign) == 0
        assert execute(stack.listed) == "EPERM"
        assert execute(unknown) == "EPERM"
        assert execute(yara_bin) == "EPERM"
        # the denied file's sample still reaches the analysis
        wait_for(lambda: stack.ctl("verdicts.get", sha256=yara_sha)["record"]["verdict"] == "malicious", 15,
                 "YARA verdict for a blocked file")
        unknowns = json.loads(stack.vigilctl("--json", "hashes", "unknowns").stdout)
        assert unknown_sha in {u["sha256"] for u in unknowns}


def test_monitor_only_reports(stack):
    yara_bin, yara_sha = stack.binary("yara-hit-3", MARKER + b"-3")
    with stack.agent("monitor", "mon") as agent:
        assert execute(stack.listed) == 0
        assert execute(stack.benign) == 0
        recent = call(agent.sock, "endpoint.recent", limit=5)
        assert [e["action"] for e in recent if e["sha256"] == stack.listed_sha] == ["would-block"]
        assert execute(yara_bin) == 0
        wait_for(lambda: stack.ctl("verdicts.get", sha256=yara_sha)["record"]["verdict"] == "malicious", 15,
                 "YARA verdict")
        wait_for(lambda: call(agent.sock, "endpoint.status")["decider"]["verdict_cache_by_verdict"]
                 .get("malicious", 0) >= 2, 5, "pushed verdict")
        assert execute(yara_bin) == 0
        recent = call(agent.sock, "endpoint.recent", limit=10)
        assert [(e["action"], e["source"]) for e in recent if e["sha256"] == yara_sha][-1] == \
            ("would-block", "yara:Vigil_Test_Marker")
        wait_for(lambda: any(h["kind"] == "would-block" and h["source"] == "mon"
                             for h in stack.ctl("verdicts.get", sha256=stack.listed_sha)["history"]),
                 5, "would-block report at the manager")


def test_operator_override_reaches_endpoint(stack):
    target, sha = stack.binary("override", uuid.uuid4().bytes)
    with stack.agent("block-malicious", "ov"):
        assert execute(target) == 0
        r = stack.vigilctl("hashes", "block", sha, "--reason", "seen in incident 42")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: execute(target) == "EPERM", 5, "operator block reaching the endpoint")
        show = stack.vigilctl("hashes", "show", sha)
        assert "MALICIOUS" in show.stdout and "seen in incident 42" in show.stdout
        assert stack.vigilctl("hashes", "allow", sha).returncode == 0
        wait_for(lambda: execute(target) == 0, 5, "operator allow reaching the endpoint")
        assert stack.vigilctl("hashes", "block", "not-a-hash").returncode == 2


def test_kernel_cache_skips_benign_until_the_verdict_changes(stack):
    target, sha = stack.binary("kcache", uuid.uuid4().bytes)
    with stack.agent("block-malicious", "kc", kernel_cache=True) as agent:
        def events():
            return call(agent.sock, "endpoint.status")["decider"]["counters"].get("events", 0)
        assert execute(target) == 0                     # unknown: allowed, no ignore mark
        assert stack.vigilctl("hashes", "allow", sha).returncode == 0
        wait_for(lambda: call(agent.sock, "endpoint.status")["decider"]["verdict_cache_by_verdict"].get("benign"),
                 5, "benign verdict pushed")
        assert execute(target) == 0                     # benign from the cache: ignore mark set
        n = events()
        for _ in range(5):
            assert execute(target) == 0
        assert events() == n                            # the kernel no longer asks
        # a write drops the kernel's mark: the file is asked about (and, new ctime, hashed) again
        hashed = call(agent.sock, "endpoint.status")["decider"]["counters"]["hashed"]
        data = target.read_bytes()
        with open(target, "r+b") as f:
            f.seek(len(data) - 1)
            f.write(data[-1:])                          # the same byte: the hash stays benign
        assert execute(target) == 0 and events() == n + 1
        assert call(agent.sock, "endpoint.status")["decider"]["counters"]["hashed"] == hashed + 1
        assert execute(target) == 0 and events() == n + 1   # marked again (still benign)
        assert stack.vigilctl("hashes", "block", sha).returncode == 0
        wait_for(lambda: execute(target) == "EPERM", 5, "block after the ignore marks were flushed")
        assert call(agent.sock, "endpoint.status")["decider"]["counters"].get("ignore_flushes_verdict") == 1


def test_manager_down_falls_back_within_deadline(stack):
    deadline = 0.3
    a, _ = stack.binary("fallback-a", uuid.uuid4().bytes)
    b, _ = stack.binary("fallback-b", uuid.uuid4().bytes)
    try:
        stack.manager.signal(signal.SIGKILL)
        stack.manager.proc.wait(5)
        with stack.agent("lockdown", "fl", decision_deadline=deadline) as agent:
            t = time.monotonic()
            assert execute(a) == "EPERM"
            lockdown_took = time.monotonic() - t
            st = call(agent.sock, "endpoint.status")
            assert st["decider"]["counters"]["timeouts"] == 1
        with stack.agent("block-malicious", "fb", decision_deadline=deadline):
            t = time.monotonic()
            assert execute(b) == 0
            allowed_took = time.monotonic() - t
            assert execute(stack.listed) == 0   # nothing cached, nobody to ask: unknown, allowed
        assert deadline <= lockdown_took < deadline + 0.4
        assert deadline <= allowed_took < deadline + 0.4
    finally:
        stack.start_manager()


def test_agent_killed_leaves_no_fanotify_group(stack):
    with stack.agent("lockdown", "kl") as agent:
        st = call(agent.sock, "endpoint.status")
        decider = st["decider_pid"]
        assert fanotify_marks_on(stack.mnt_id)
        wait_for(lambda: (stack.ctl("verdicts.stats")["endpoints"].get("kl") or {}).get("state") == "online", 5,
                 "retained online status at the manager")
        agent.signal(signal.SIGKILL)
        wait_for(lambda: stack.ctl("verdicts.stats")["endpoints"]["kl"]["state"] == "offline", 5,
                 "last-will offline status")
        wait_for(lambda: not Path(f"/proc/{decider}").exists() or
                 "zombie" in Path(f"/proc/{decider}/status").read_text(), 5, "decider exit")
        wait_for(lambda: not fanotify_marks_on(stack.mnt_id), 5, "marks released")
        assert execute(stack.benign) == 0


def test_killed_decider_is_restarted_and_events_still_reported(stack):
    """The decider-reader thread notices the decider's end at once and starts a new one; allowed
    execs are reported in the batch without the agent running a batch timer of its own."""
    target, sha = stack.binary("restart", uuid.uuid4().bytes)
    with stack.agent("block-malicious", "rs") as agent:
        old = call(agent.sock, "endpoint.status")["decider_pid"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: call(agent.sock, "endpoint.status")["decider_pid"] not in (None, old), 5,
                 "a new decider")
        st = call(agent.sock, "endpoint.status")
        assert st["counters"]["decider_restarts"] == 1 and fanotify_marks_on(stack.mnt_id)
        assert execute(stack.listed) == "EPERM"       # decided by the new decider
        for _ in range(3):
            assert execute(target) == 0
        wait_for(lambda: sum(h["kind"] == "executed" for h in stack.ctl("verdicts.get", sha256=sha)["history"])
                 or None, 5, "executions reported to the manager")


def test_clamav_verdict_reaches_the_endpoint(stack):
    """Unknown to the lists and YARA: the sample goes to a real clamd, whose finding is pushed."""
    if stack.clamd_socket is None:
        pytest.skip("clamd is not installed (scripts/setup installs clamav-daemon)")
    clam_bin, clam_sha = stack.binary("clam-hit", CLAM_MARKER)
    with stack.agent("block-malicious", "clam"):
        assert execute(clam_bin) == 0                   # unknown: runs, and its sample is asked for
        wait_for(lambda: stack.ctl("verdicts.get", sha256=clam_sha)["record"]["verdict"] == "malicious", 20,
                 "ClamAV verdict")
        assert stack.ctl("verdicts.get", sha256=clam_sha)["record"]["source"] == "clamav:Vigil.Test.Marker.UNOFFICIAL"
        wait_for(lambda: execute(clam_bin) == "EPERM", 5, "the ClamAV verdict reaching the endpoint")
