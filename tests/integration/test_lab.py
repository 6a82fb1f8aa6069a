"""The lab itself: topology as DESIGN.md draws it, and teardown after a killed run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import lab_name
from vigil.lab.lab import Lab

pytestmark = pytest.mark.integration


def _netns() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_topology_matches_design(lab):
    # br0 bridges the two ports, has no address, IPv6 is off on it, STP is off
    links = json.loads(lab.run("engine", ["ip", "-j", "-d", "link", "show", "br0"]).stdout)[0]
    assert links["linkinfo"]["info_kind"] == "bridge"
    assert links["linkinfo"]["info_data"]["stp_state"] == 0
    addrs = json.loads(lab.run("engine", ["ip", "-j", "addr", "show", "br0"]).stdout)[0]
    assert addrs["addr_info"] == []
    assert lab.run("engine", ["sysctl", "-n", "net.ipv6.conf.br0.disable_ipv6"]).stdout.strip() == "1"
    ports = json.loads(lab.run("engine", ["ip", "-j", "link", "show", "master", "br0"]).stdout)
    assert sorted(p["ifname"] for p in ports) == ["eth0", "eth1"]
    # hosts on one /24 reach each other through the bridge, v4 and v6
    lab.run("client", ["ping", "-c1", "-W2", lab.ip("server")])
    lab.run("attacker", ["ping", "-c1", "-W2", lab.ip("server", 6)])
    # and the management services answer on loopback
    # (the lab's InfluxDB keeps no _internal database: a database made here must be listed)
    lab.influx.query('CREATE DATABASE "lab_probe"')
    names = {row["name"] for row in lab.influx.query("SHOW DATABASES")}
    assert "lab_probe" in names, names


def test_second_up_after_killed_run(tmp_path):
    name = lab_name()
    script = textwrap.dedent(f"""
        import time
        from vigil.lab.lab import Lab
        lab = Lab({name!r}).up()
        lab.start_manager()
        lab.start_engine()
        lab.wait_log("engine", "mqtt: connected")
        lab.popen("server", ["iperf3", "-s"], name="iperf3")
        print("READY", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    run_dir = Lab(name).run_dir
    try:
        assert proc.stdout.readline().strip() == "READY"
        pids = {p.stem: int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")}
        assert {"mosquitto", "influxdb", "manager", "engine", "iperf3"} <= set(pids)
        proc.send_signal(signal.SIGKILL)  # the lab's owner dies without any cleanup
        proc.wait(10)
        assert all(Path(f"/proc/{p}").exists() for p in pids.values())  # orphans left behind
        lab = Lab(name)
        lab.up()  # must clean the leftovers first, then build anew
        try:
            for pid in pids.values():
                assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} survived"
            lab.run("client", ["ping", "-c1", "-W2", lab.ip("server")])
        finally:
            lab.down()
        assert not any(n.startswith(name + "-") for n in _netns())
        assert not run_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        Lab(name).down()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
