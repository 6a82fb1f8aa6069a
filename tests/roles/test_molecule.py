"""Tier ``roles``: the Ansible roles converge real Debian 12 containers (systemd as PID 1) under
Molecule's podman driver, stay idempotent, and the verify playbook checks the running fleet.

Scenario ``fleet`` (roles/molecule/fleet): a manager, an engine and an endpoint; verify proves the
services run from valid configs with hardened units (``systemd-analyze security``), the broker speaks
only TLS (the fleet CA verifies its certificate from every host), refuses anonymous clients and a
device publishing under another device's topic, the bridge is as DESIGN.md says, and the engine
is registered at the manager (``vigilctl engines``). Molecule's ``check`` step (``--check --diff`` on
the converged fleet) must report no change and no failure: :func:`check_step_recap` reads its
PLAY RECAP lines from the output.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from . import base_image

pytestmark = pytest.mark.roles

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
VENV_BIN = Path(sys.executable).parent
PREFIX = "vigil-mol-"          # every container of these scenarios; swept before and after
NETWORK = "vigil-mol"
SCENARIOS = sorted(p.parent.name for p in (ROLES / "molecule").glob("*/molecule.yml"))


STEP = re.compile(r"^\S+\s+\[(?P<scenario>[^ >\]]+) > (?P<step>[a-z_]+)\] (?P<what>Executing|Executed)")
RECAP = re.compile(r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
                   r"\s+failed=(?P<failed>\d+)")


def check_step_recap(output: str) -> list[dict]:
    """The PLAY RECAP lines of Molecule's check step (``[<scenario> > check] Executing`` up to the
    next step), one dict per host and play run."""
    rows, inside = [], False
    for line in output.splitlines():
        m = STEP.match(line)
        if m:
            inside = m["step"] == "check" and m["what"] == "Executing"
            continue
        r = RECAP.match(line)
        if inside and r:
            rows.append({k: (v if k == "host" else int(v)) for k, v in r.groupdict().items()})
    return rows


def _podman(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=base_image.podman_env(), check=check,
                          capture_output=True, text=True)


def sweep() -> None:
    """Remove containers and the network an earlier, killed run left behind (by name)."""
    names = _podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    stale = [n for n in names if n.startswith(PREFIX)]
    if stale:
        _podman("rm", "-f", "-t", "0", *stale)
    if _podman("network", "exists", NETWORK).returncode == 0:
        _podman("network", "rm", "-f", NETWORK)


@pytest.fixture(scope="module")
def molecule_env(tmp_path_factory):
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (sudo scripts/setup roles)")
    if not (VENV_BIN / "molecule").exists():
        pytest.skip(f"molecule is not installed in {VENV_BIN} (sudo scripts/setup roles)")
    if os.geteuid() != 0:
        pytest.skip("rootful podman: run as root")
    sweep()
    # The roles build the wheel from a snapshot: others editing agents/ during the run must not
    # turn molecule's idempotence step into a failure.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "agents", source / "agents",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {
        **base_image.podman_env(),
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "VIGIL_MOLECULE_IMAGE": base_image.ensure_base_image(),
        "VIGIL_SOURCE_DIR": str(source),
        "VIGIL_WHEELHOUSE": str(tmp_path_factory.mktemp("wheelhouse")),
        "ANSIBLE_FORCE_COLOR": "0",
        "PY_COLORS": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    yield env
    sweep()


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule(scenario, molecule_env, tmp_path):
    molecule = [str(VENV_BIN / "molecule")]
    # the whole log (profile_tasks: every task's time), written as it comes, so a slow or killed
    # run still shows where it was: in VIGIL_MOLECULE_LOG_DIR if set, else pytest's tmp_path
    log_dir = Path(os.environ.get("VIGIL_MOLECULE_LOG_DIR") or tmp_path)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"molecule-{scenario}.log"
    try:
        # its own process group: on a timeout the nested ansible-playbook runs die with molecule
        with log.open("w") as out:
            proc = subprocess.Popen([*molecule, "test", "-s", scenario], cwd=ROLES, env=molecule_env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                returncode = proc.wait(timeout=3500)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
    finally:
        subprocess.run([*molecule, "destroy", "-s", scenario], cwd=ROLES, env=molecule_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        sweep()
    output = log.read_text()
    assert returncode == 0, f"molecule test -s {scenario} failed (log: {log}):\n{output[-20000:]}"
    recap = check_step_recap(output)
    assert recap, f"no PLAY RECAP from the check step of {scenario}:\n{output[-5000:]}"
    drift = [r for r in recap if r["changed"] or r["failed"] or r["unreachable"]]
    assert not drift, f"--check on the converged fleet of {scenario} reports changes or failures: {drift}"
