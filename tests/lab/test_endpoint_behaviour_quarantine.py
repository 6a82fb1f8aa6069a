"""A behaviour event quarantines the endpoint on the network: memfd payload -> real agent -> real
manager -> real engine's kernel sets -> real traffic cut off.

A real vigil-endpoint with the default behaviour rules (``address:`` = the lab client's address)
kills a payload executed from a memfd; the manager, configured with ``quarantine.on_behaviour:
[memfd-exec]``, proposes the client's quarantine; the policy makes it an ip drop plus an allow entry
for the management stand-in (a second address on the server), and the real engine (enforcing)
puts both in its kernel sets: the client no longer reaches the server's 10.77.0.10 but still
reaches 10.77.0.20.  The decision names the rule and its technique.  Budget: about 30 s.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess

import pytest

from tests.lab.test_quarantine import MGMT, http_ok, kernel_set, pings
from tests.support.endpoint_behaviour import memfd_payload_cmd
from tests.support.endpoint_stack import endpoint_agent
from tests.support.fanotify import mount_id, mount_tmpfs, remove_tmpfs
from tests.support.waiting import wait_for
from vigil import control
from vigil.engine.config import EngineConfig

pytestmark = pytest.mark.lab


def test_memfd_payload_on_an_endpoint_quarantines_its_address(lab):
    client, server = lab.ip("client"), lab.ip("server")
    run, mnt = mount_tmpfs("bq")
    try:
        lab.run("server", ["ip", "addr", "add", f"{MGMT}/24", "dev", "eth0"])
        lab.popen("server", ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory",
                             str(lab.run_dir)], name="http")
        lab.start_manager(
            policy={"detection": {"enabled": False}},   # only the quarantine may block in this test
            verdicts={"known_bad": [], "known_good": [], "clamd_socket": None,
                      "quarantine": {"enabled": True, "allow_networks": [f"{MGMT}/32"], "duration": 120,
                                     "on_behaviour": ["memfd-exec"]}})
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
        wait_for(lambda: http_ok(lab, server), 15, "client -> server http", lab=lab)
        assert pings(lab, server) and pings(lab, MGMT)

        with endpoint_agent(run, "client-bq", lab.mosquitto.mqtt_config(), [mnt], "block-malicious",
                            mark_ids=[mount_id(mnt)], address=client, decision_deadline=3.0) as agent:
            payload = subprocess.run(memfd_payload_cmd(shutil.which("sleep"), "5"), capture_output=True,
                                     timeout=30)
            assert payload.returncode == -signal.SIGKILL, "the memfd payload was not killed"
            ds = wait_for(lambda: [d for d in control.call(sock, "decisions.list")
                                   if d["value"] == client and d["origin"] == "endpoint:behaviour:memfd-exec"],
                          10, "a quarantine decision from the behaviour event", lab=lab)
            d = ds[0]
            assert d["scope"] == "ip" and d["action"] == "drop"
            assert "memfd-exec" in d["reason"] and "T1620" in d["reason"] and client in d["reason"]
            assert d["evidence"]["quarantine"] is True and d["evidence"]["outcome"] == "killed"
            wait_for(lambda: client in kernel_set(lab, "block4"), 10, "the client in the kernel's block4 set",
                     lab=lab)
            assert MGMT in kernel_set(lab, "allow4") | kernel_set(lab, "allownet4")
            assert not http_ok(lab, server) and not pings(lab, server)
            assert http_ok(lab, MGMT) and pings(lab, MGMT)
            assert agent.alive()
    finally:
        remove_tmpfs(run)
    assert not os.path.ismount(mnt)
