"""The README's first command, as a user runs it (after setup): `vigil-lab demo`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import lab_name
from vigil.lab.lab import Lab

pytestmark = pytest.mark.lab


def test_lab_demo_runs_the_whole_system():
    name = lab_name()
    exe = Path(sys.executable).parent / "vigil-lab"
    try:
        r = subprocess.run([str(exe), "demo", "--name", name, "--seconds", "2"], capture_output=True,
                           text=True, timeout=240)
        out = r.stdout
        assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
        assert "result: OK" in out
        # the manager's decision on the attacker was listed: from the engine's own report of the scan
        # or from the manager's flow detection, whichever came first
        table = out.split("vigilctl decisions list", 1)[1].split("== attacker reaches", 1)[0]
        assert "10.77.0.66" in table and ("engine-local:scan" in table or "flow-anomaly:" in table), table
        assert "attacker reaches the server: False; client reaches the server: True" in out
    finally:
        Lab(name).down()
    assert not any(n.startswith(name + "-") for n in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
