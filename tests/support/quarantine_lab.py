"""A lab ready for quarantine tests: the management stand-in, a manager whose only blocks are
quarantines, and the real engine enforcing.

``MGMT`` (10.77.0.20) is a second address on the server's eth0, behind the bridge, standing in for
the management host that a quarantined endpoint must still reach.  ``start_quarantine_stack(lab,
known_bad=..., **quarantine)`` adds it, serves HTTP on the server, starts the manager (detection
off, ``verdicts.quarantine`` enabled with MGMT allowed, plus ``quarantine``) and the engine, waits
until the policy sees the engine enforcing and the client reaches the server; returns the
manager's control socket.  ``kernel_set``, ``http_ok`` and ``pings`` look from outside.
"""
from __future__ import annotations

import dataclasses

from tests.support.rulesets import kernel_elements
from tests.support.waiting import wait_for
from vigil import control
from vigil.engine.config import EngineConfig

MGMT = "10.77.0.20"


def kernel_set(lab, name: str) -> set[str]:
    return kernel_elements(lambda argv: lab.run("engine", argv, check=False), name, missing_ok=True) or set()


def http_ok(lab, ip: str, max_time: float = 2) -> bool:
    r = lab.run("client", ["curl", "-s", "-o", "/dev/null", "-m", str(max_time), "-w", "%{http_code}",
                           f"http://{ip}:8080/"], check=False, timeout=max_time + 10)
    return r.stdout.strip() == "200"


def pings(lab, ip: str) -> bool:
    return lab.run("client", ["ping", "-n", "-q", "-c", "1", "-W", "1", ip], check=False, timeout=10).returncode == 0


def start_quarantine_stack(lab, known_bad: list[str] | None = None, **quarantine):
    lab.run("server", ["ip", "addr", "add", f"{MGMT}/24", "dev", "eth0"])
    lab.popen("server", ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", str(lab.run_dir)],
              name="http")
    lab.start_manager(
        policy={"detection": {"enabled": False}},   # only the quarantine may block in these tests
        verdicts={"known_bad": known_bad or [], "known_good": [], "clamd_socket": None,
                  "quarantine": {"enabled": True, "allow_networks": [f"{MGMT}/32"], "duration": 120, **quarantine}})
    lab.wait_log("manager", "mqtt: connected", timeout=20)
    sock = lab.run_dir / "manager.sock"
    extra = {}
    if "detect" in {f.name for f in dataclasses.fields(EngineConfig)}:
        extra["detect"] = {"enabled": False}
    lab.start_engine(learning={"start_mode": "enforcing"}, enforcement={
        "manager_public_key": str(lab.run_dir / "state" / "manager" / "signing.pub")}, **extra)
    lab.wait_log("engine", "mqtt: connected", timeout=30)
    wait_for(lambda: [e for e in control.call(sock, "engines.list")
                      if e.get("engine") == "e1" and e.get("mode") == "enforcing"], 20,
             "the policy to see e1 enforcing", lab=lab)
    wait_for(lambda: http_ok(lab, lab.ip("server")), 15, "client -> server http", lab=lab)
    assert http_ok(lab, MGMT) and pings(lab, lab.ip("server")) and pings(lab, MGMT)
    return sock
