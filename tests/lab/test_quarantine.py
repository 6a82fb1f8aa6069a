"""Network and endpoint together: an endpoint denied a malicious file is quarantined on the engine.

A real vigil-endpoint (fanotify on a tmpfs mounted for this test only, mode block-malicious,
``address:`` = the lab client's 10.77.0.2) is denied a binary listed in the manager's hash list
(EPERM); the manager's verdict service proposes a quarantine, the policy makes it an ip drop plus
an allow entry for the management network (10.77.0.20, a second address on the server's eth0 that
stands in for the management host), and the real engine (enforcing) puts both in its kernel sets:
traffic from ``client`` to the server's 10.77.0.10 is dropped at the bridge while client <->
10.77.0.20 still works.  The decision's reason names the hash and the host, and vigilctl shows it.

Nothing is left behind: the agent is stopped, no fanotify mark survives it, the mount is removed.
Budget: about 30 s.
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.fanotify import fanotify_marks_on, mount_id, mount_tmpfs, remove_tmpfs
from tests.support.quarantine_lab import MGMT, http_ok, kernel_set, pings, start_quarantine_stack
from tests.support.waiting import wait_for
from vigil import control
from vigil.lab.services import ManagedProcess, vigil_command

pytestmark = pytest.mark.lab

TRUE = Path("/bin/true").read_bytes()


def execute(path: Path) -> int | str:
    try:
        return subprocess.run([str(path)], capture_output=True, timeout=10).returncode
    except PermissionError as exc:
        assert exc.errno == errno.EPERM
        return "EPERM"


def test_endpoint_denied_malware_quarantines_its_address_except_management(lab):
    client, server = lab.ip("client"), lab.ip("server")
    run, mnt = mount_tmpfs("q")
    agent: ManagedProcess | None = None
    mnt_id = None
    try:
        assert os.path.ismount(mnt)
        mnt_id = mount_id(mnt)
        # the malicious file: /bin/true with bytes of its own, listed in the manager's hash list
        data = TRUE + b"vigil-quarantine-" + uuid.uuid4().bytes
        evil = mnt / "evil"
        evil.write_bytes(data)
        evil.chmod(0o755)
        sha = hashlib.sha256(data).hexdigest()
        bad = run / "bad.txt"
        bad.write_text(f"{sha} lab-quarantine-test\n")

        # the management host stand-in (a second address on the server), the manager and the engine
        sock = start_quarantine_stack(lab, known_bad=[str(bad)])

        cfg = {"endpoint_id": "client-ep", "mqtt": lab.mosquitto.mqtt_config(), "mode": "block-malicious",
               "mounts": [str(mnt)], "address": client, "state_dir": str(run / "state-ep"),
               "control_socket": str(run / "ep.sock"), "batch_interval": 0.3, "decision_deadline": 3.0}
        path = run / "endpoint.yaml"
        path.write_text(yaml.safe_dump(cfg))
        agent = ManagedProcess("endpoint", [*vigil_command("vigil-endpoint"), "-c", str(path)], run).start()
        wait_for(lambda: "mqtt: connected" in agent.log_text() or not agent.alive(), 15, "the endpoint connected")
        assert agent.alive(), agent.log_text()

        # the execution is denied ...
        assert execute(evil) == "EPERM"
        t0 = time.monotonic()
        # ... and within seconds the client's address is quarantined on the engine
        ds = wait_for(lambda: [d for d in control.call(sock, "decisions.list")
                               if d["value"] == client and d["origin"].startswith("endpoint:")],
                      10, "a quarantine decision", lab=lab)
        d = ds[0]
        assert d["scope"] == "ip" and d["action"] == "drop" and d["would_block_on"] == []
        assert sha in d["reason"] and socket.gethostname() in d["reason"] and client in d["reason"]
        assert d["evidence"]["quarantine"] is True and d["evidence"]["allow_networks"] == [f"{MGMT}/32"]
        assert 100 <= d["remaining"] <= 120
        wait_for(lambda: client in kernel_set(lab, "block4"), 10, "the client in the kernel's block4 set", lab=lab)
        assert MGMT in kernel_set(lab, "allow4") | kernel_set(lab, "allownet4")
        elapsed = time.monotonic() - t0
        assert elapsed < 10, elapsed
        # real traffic: the client is cut off from the server, but not from the management host
        assert not http_ok(lab, server) and not pings(lab, server)
        assert http_ok(lab, MGMT) and pings(lab, MGMT)

        # the operator sees it with vigilctl
        out = subprocess.run([*vigil_command("vigilctl"), "--socket", str(sock), "decisions", "list"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        row = [ln for ln in out.stdout.splitlines() if client in ln]
        assert row and "endpoint:" in row[0] and sha in row[0] and "quarantine" in row[0], out.stdout

        # lifting it (operator unblock) frees the client and withdraws the temporary allow entry
        control.call(sock, "decisions.delete", key=client)
        wait_for(lambda: client not in kernel_set(lab, "block4"), 10, "the block gone from the kernel", lab=lab)
        wait_for(lambda: MGMT not in kernel_set(lab, "allow4") | kernel_set(lab, "allownet4"), 10,
                 "the quarantine's allow entry gone from the kernel", lab=lab)
        wait_for(lambda: http_ok(lab, server), 10, "client -> server again", lab=lab)
    finally:
        if agent is not None:
            agent.stop(timeout=5)
        leftover = fanotify_marks_on(mnt_id) if mnt_id is not None else []
        remove_tmpfs(run)
    assert not leftover, f"a fanotify mark outlived the agent: {leftover}"
    assert not os.path.ismount(mnt)
