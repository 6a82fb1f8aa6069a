"""ruff (rule sets F and B, configured in pyproject.toml) over the code, the tests and the benchmarks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), f"{ruff} missing: ruff is in the test extra (pip install -e '.[test]')"
    r = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise",
                        "agents", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
