"""The whole lab: topology + management services + Vigil daemons, with generated configs.

``Lab(name).up()`` builds namespaces, starts Mosquitto and InfluxDB on free loopback ports; then
``start_manager()`` and ``start_engine()`` run the real daemons with config files written under the
run directory.  ``down()`` stops everything and removes the namespaces; it also cleans up what a
killed earlier run with the same name left behind, so a second ``up`` always works.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from .services import InfluxDB, ManagedProcess, Mosquitto, kill_leftovers, remove_tree, vigil_command
from .topology import Topology

log = logging.getLogger(__name__)

DEFAULT_RUN_ROOT = Path(os.environ.get("VIGIL_LAB_ROOT", "/run/vigil-lab"))


class Lab:
    def __init__(self, name: str = "vl", engines: int = 1, run_root: Path = DEFAULT_RUN_ROOT):
        self.name = name
        self.topo = Topology(prefix=name, engines=engines)
        self.run_dir = run_root / name
        self.mosquitto: Mosquitto | None = None
        self.influx: InfluxDB | None = None
        self.procs: dict[str, ManagedProcess] = {}
        # merged into every engine's configuration before a call's own overrides (a test that
        # runs the same attack against both datapaths sets {"flows": {"source": "flowset"}})
        self.engine_overrides: dict = {}

    # -- lifecycle ------------------------------------------------------------------------
    def up(self, services: bool = True) -> "Lab":
        self.down()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "owner.pid").write_text(str(os.getpid()))
        self.topo.up()
        if services:
            self.mosquitto = Mosquitto(self.run_dir).start()
            self.influx = InfluxDB(self.run_dir).start()
        self._save_state()
        return self

    def down(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for svc in (self.mosquitto, self.influx):
            if svc is not None:
                svc.stop()
        kill_leftovers(self.run_dir)
        self.topo.down()
        remove_tree(self.run_dir)

    def owner_alive(self) -> bool:
        """Whether the process that built this lab still runs (a stale lab's owner is gone)."""
        try:
            pid = int((self.run_dir / "owner.pid").read_text())
        except (OSError, ValueError):
            return False
        return pid != os.getpid() and os.path.exists(f"/proc/{pid}")

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def _save_state(self) -> None:
        state = {"name": self.name, "engines": self.topo.engines,
                 "mqtt_port": self.mosquitto.port if self.mosquitto else None,
                 "mqtt_socket": str(self.mosquitto.socket_path) if self.mosquitto else None,
                 "influx_url": self.influx.url if self.influx else None,
                 "hosts": {h: vars(v) for h, v in self.topo.hosts.items()}}
        (self.run_dir / "lab.json").write_text(json.dumps(state, indent=2))

    # -- running things in hosts ----------------------------------------------------------
    def ns(self, node: str) -> str:
        return self.topo.ns(node)

    def ip(self, host: str, family: int = 4) -> str:
        h = self.topo.hosts[host]
        return h.ip4 if family == 4 else h.ip6

    def run(self, node: str, cmd: list[str] | str, timeout: float = 60, check: bool = True,
            **kw: Any) -> subprocess.CompletedProcess:
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        r = subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], capture_output=True, text=True,
                           timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, argv, r.stdout, r.stderr)
        return r

    def popen(self, node: str, cmd: list[str] | str, name: str | None = None) -> ManagedProcess:
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        name = name or f"{node}-{Path(argv[0]).name}-{len(self.procs)}"
        p = ManagedProcess(name, argv, self.run_dir, netns=self.ns(node)).start()
        self.procs[name] = p
        return p

    def stop(self, name: str, timeout: float = 10.0) -> int | None:
        p = self.procs.pop(name, None)
        return p.stop(timeout) if p else None

    # -- Vigil daemons --------------------------------------------------------------------
    def write_config(self, name: str, cfg: dict) -> Path:
        path = self.run_dir / "etc" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def manager_config(self, **overrides: Any) -> dict:
        cfg = {
            "manager_id": "lab",
            "mqtt": self.mosquitto.mqtt_config(),
            "influx": {"url": self.influx.url, "database": "vigil", "flush_interval": 0.2},
            "state_dir": str(self.run_dir / "state" / "manager"),
            "control_socket": str(self.run_dir / "manager.sock"),
            "log": {"level": "INFO"},
        }
        _merge(cfg, overrides)
        return cfg

    def engine_config(self, node: str = "engine", **overrides: Any) -> dict:
        engine_id = "e1" if node == "engine" else f"e{node.removeprefix('engine')}"
        cfg = {
            "engine_id": engine_id,
            "mqtt": self.mosquitto.mqtt_config(unix=True),
            "state_dir": str(self.run_dir / "state" / node),
            "bridge": {"name": "br0", "ports": ["eth0", "eth1"]},
            "flows": {"interval": 1.0},
            "status_interval": 5.0,
            "log": {"level": "INFO"},
        }
        _merge(cfg, copy.deepcopy(self.engine_overrides))
        _merge(cfg, overrides)
        return cfg

    def start_manager(self, name: str = "manager", **overrides: Any) -> ManagedProcess:
        path = self.write_config(name, self.manager_config(**overrides))
        p = ManagedProcess(name, [*vigil_command("vigil-manager"), "-c", str(path)], self.run_dir).start()
        self.procs[name] = p
        return p

    def start_engine(self, node: str = "engine", name: str | None = None, **overrides: Any) -> ManagedProcess:
        name = name or node
        path = self.write_config(name, self.engine_config(node, **overrides))
        p = ManagedProcess(name, [*vigil_command("vigil-engine"), "-c", str(path)], self.run_dir,
                           netns=self.ns(node)).start()
        self.procs[name] = p
        return p

    def wait_log(self, name: str, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        p = self.procs[name]
        while time.monotonic() < deadline:
            if text in p.log_text():
                return
            if not p.alive():
                raise RuntimeError(f"{name} exited ({p.proc.returncode}):\n{p.log_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{name} did not log {text!r} within {timeout}s:\n{p.log_text()[-3000:]}")


def _merge(base: dict, over: dict) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
