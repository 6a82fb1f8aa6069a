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

import os
import shutil
import signal
import subprocess

import pytest

from tests.support.endpoint_behaviour import memfd_payload_cmd
from tests.support.endpoint_stack import endpoint_agent
from tests.support.fanotify import mount_id, mount_tmpfs, remove_tmpfs
from tests.support.quarantine_lab import MGMT, http_ok, kernel_set, pings, start_quarantine_stack
from tests.support.waiting import wait_for
from vigil import control

pytestmark = pytest.mark.lab


def test_memfd_payload_on_an_endpoint_quarantines_its_address(lab):
    client, server = lab.ip("client"), lab.ip("server")
    run, mnt = mount_tmpfs("bq")
    try:
        sock = start_quarantine_stack(lab, on_behaviour=["memfd-exec"])
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
