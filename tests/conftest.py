"""Shared fixtures and tier markers.

Tiers: unit (no root), integration (root, namespaces, real services), lab (full lab with attack
tools), roles (Molecule), image (live ISO).  A test file sets its tier with ``pytestmark``.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

# postgres_server (one throwaway PostgreSQL per run) and storage (sqlite / postgresql parameters)
pytest_plugins = ["tests.support.postgres"]

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"


def pytest_collection_modifyitems(config, items):
    for item in items:
        needs_root = any(item.get_closest_marker(m) for m in ("integration", "lab", "roles", "image"))
        if needs_root and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, nftables, fanotify)"))


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"third-party log samples not present at {SAMPLES} (they live in ../shared, "
                    "outside the repository; CI has them)")
    return SAMPLES


def lab_name() -> str:
    """A short unique prefix so parallel runs never share namespaces."""
    return "t" + uuid.uuid4().hex[:5]


@pytest.fixture
def lab():
    """A fresh lab (namespaces + Mosquitto + InfluxDB), torn down even when the test fails."""
    from vigil.lab.lab import Lab
    lb = Lab(lab_name())
    try:
        lb.up()
        yield lb
    finally:
        keep = os.environ.get("VIGIL_KEEP_LAB_LOGS")
        if keep:
            shutil.copytree(lb.run_dir / "logs", Path(keep) / lb.name, dirs_exist_ok=True)
        lb.down()


@pytest.fixture
def datapath(request, lab):
    """Parametrised indirectly with ``conntrack`` or ``flowset``: the engine's flow datapath for the
    test (engine flows.source; docs/DESIGN-NOTES.md "The flow-set datapath")."""
    source = getattr(request, "param", "conntrack")
    if source == "flowset":
        lab.engine_overrides = {"flows": {"source": "flowset"}}
    yield source
    lab.engine_overrides = {}


@pytest.fixture
def lab2():
    """A lab with two engines (two bridges) and one management stack."""
    from vigil.lab.lab import Lab
    lb = Lab(lab_name(), engines=2)
    try:
        lb.up()
        yield lb
    finally:
        lb.down()
