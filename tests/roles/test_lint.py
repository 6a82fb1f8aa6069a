"""Tier ``roles``: the Ansible tree passes ansible-lint's production profile and yamllint, with the
configuration files at the top of the repository (.ansible-lint, .yamllint; every skipped rule has
its reason written next to it there). Quick: no containers.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.roles

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    exe = VENV_BIN / tool
    if not exe.exists():
        pytest.skip(f"{tool} is not installed in {VENV_BIN} (scripts/setup roles)")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "NO_COLOR": "1", "ANSIBLE_NOCOLOR": "1", "PY_COLORS": "0"}
    return subprocess.run([str(exe), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_yamllint():
    run = _run("yamllint", "--strict", "-f", "parsable", ".")
    assert run.returncode == 0, f"yamllint:\n{run.stdout}{run.stderr}"


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile():
    run = _run("ansible-lint", "--profile", "production", "-f", "pep8", "--nocolor")
    assert run.returncode == 0, f"ansible-lint:\n{run.stdout}{run.stderr[-5000:]}"
    # it really looked at the roles (a wrong exclude list would pass on nothing)
    assert "Profile 'production' was required, and it passed" in run.stderr, run.stderr[-2000:]


def test_every_skip_has_a_reason():
    """Every rule .ansible-lint skips has a comment above it saying why."""
    lines = (REPO / ".ansible-lint").read_text().splitlines()
    start = lines.index("skip_list:")
    for i, line in enumerate(lines[start + 1:], start + 1):
        if line.startswith("  - "):
            assert lines[i - 1].lstrip().startswith("#"), f".ansible-lint: no reason above {line.strip()}"
        elif line and not line.startswith(" "):
            break
