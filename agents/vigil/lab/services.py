"""Real services for the lab: Mosquitto, InfluxDB and Vigil's own daemons as child processes.

Each process writes its pid to ``<run_dir>/pids/<name>.pid`` so that a later run can kill what a
crashed run left behind (the pid is only trusted when its command line still mentions the run
directory, so a recycled pid is never killed).
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # the service is not up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s" + (f" ({last_exc})" if last_exc else ""))


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], run_dir: Path, netns: str | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.run_dir = run_dir
        self.netns = netns
        self.argv = list(argv)
        if netns:
            self.argv = ["ip", "netns", "exec", netns, *self.argv]
        self.env = env
        self.log_path = run_dir / "logs" / f"{name}.log"
        self.pid_path = run_dir / "pids" / f"{name}.pid"
        self.proc: subprocess.Popen | None = None
        self.log_start = 0

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")
        self.log_start = logf.tell()    # the log is appended across restarts; log_text() is this run's
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        self.pid_path.write_text(str(self.proc.pid))
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("lab: %s ignored SIGTERM for %.0fs; killing", self.name, timeout)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.pid_path.unlink(missing_ok=True)
        return self.proc.returncode

    def log_text(self) -> str:
        """What this run of the process logged (earlier runs' lines stay in the file above it):
        waiting for a line after a restart must not find the previous run's."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


def kill_leftovers(run_dir: Path) -> None:
    """Kill processes that a crashed run recorded under ``run_dir/pids``."""
    piddir = run_dir / "pids"
    if not piddir.is_dir():
        return
    for pidfile in piddir.glob("*.pid"):
        try:
            pid = int(pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (ValueError, FileNotFoundError, ProcessLookupError):
            pidfile.unlink(missing_ok=True)
            continue
        if str(run_dir) in cmdline:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    break
                for _ in range(40):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.05)
        pidfile.unlink(missing_ok=True)


class Mosquitto:
    """A broker with a TCP listener on a free loopback port and a unix-socket listener.

    Agents inside the lab's namespaces reach it through the socket (the filesystem is shared,
    the network stack is not); host-side tools use TCP.
    """

    def __init__(self, run_dir: Path, port: int | None = None, max_queued_messages: int = 200_000,
                 autosave_interval: int = 10):
        self.dir = run_dir / "mosquitto"
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        self.port = port or free_port()
        self.socket_path = self.dir / "mqtt.sock"
        self.conf = self.dir / "mosquitto.conf"
        self.proc = ManagedProcess("mosquitto", ["mosquitto", "-c", str(self.conf)], run_dir)

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
# Vigil lab broker (generated)
per_listener_settings false
allow_anonymous true
# Durable sessions (docs/DESIGN-NOTES.md, "Durable ingest"): the manager's persistent session keeps
# its subscriptions and a queue of QoS 1 messages while it is down; the store is saved every
# autosave_interval seconds and at a clean stop, so a restarted broker still has it.
persistence true
persistence_location {self.dir}/
autosave_interval {self.autosave_interval}
# A bounded queue per client (the default of 1000 silently drops QoS 1 messages for a subscriber
# that falls behind).  What overflows is dropped by the broker, logged and counted in
# $SYS/broker/publish/messages/dropped.  Sizing: docs/DESIGN-NOTES.md, "Durable ingest".
max_queued_messages {self.max_queued_messages}
max_inflight_messages 1000
sys_interval 2
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
listener {self.port} 127.0.0.1
listener 0 {self.socket_path}
""")
        try:
            uid = pwd.getpwnam("mosquitto").pw_uid
            os.chown(self.dir, uid, -1)
            os.chmod(self.dir, 0o755)
            os.chmod(self.conf, 0o644)
        except KeyError:
            pass

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        self.write_config()
        self.socket_path.unlink(missing_ok=True)
        self.proc.start()
        wait_for(lambda: _tcp_open(self.port) and self.socket_path.exists(), timeout, "mosquitto")
        os.chmod(self.socket_path, 0o666)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def mqtt_config(self, unix: bool = False) -> dict:
        if unix:
            return {"transport": "unix", "path": str(self.socket_path)}
        return {"host": "127.0.0.1", "port": self.port}


class InfluxDB:
    def __init__(self, run_dir: Path, port: int | None = None):
        self.dir = run_dir / "influxdb"
        self.port = port or free_port()
        self.rpc_port = free_port()
        self.conf = self.dir / "influxdb.conf"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = ManagedProcess("influxdb", ["influxd", "-config", str(self.conf)], run_dir)

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""\
# Vigil lab InfluxDB (generated)
reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.dir}/meta"
[data]
  dir = "{self.dir}/data"
  wal-dir = "{self.dir}/wal"
  query-log-enabled = false
  index-version = "tsi1"
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  flux-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = true
  log-enabled = false
[logging]
  level = "warn"
""")

    def start(self, timeout: float = 30.0) -> "InfluxDB":
        self.write_config()
        self.proc.start()
        wait_for(lambda: urllib.request.urlopen(f"{self.url}/ping", timeout=1).status == 204, timeout,
                 "influxdb")
        return self

    def stop(self) -> None:
        self.proc.stop()

    def query(self, q: str, db: str = "vigil") -> list[dict]:
        from ..influx import InfluxHTTP, rows
        from ..common import InfluxConfig
        return rows(InfluxHTTP(InfluxConfig(url=self.url, database=db)).query(q))


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def vigil_command(name: str) -> list[str]:
    """How to run one of our console scripts from the venv this code runs in."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", f"import sys; from vigil.{name.split('-')[1]}.main import main; sys.exit(main())"]


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def dump_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
