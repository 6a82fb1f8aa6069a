"""Tier ``roles``: roles/vigil_grafana's provisioning, rendered by Ansible for real (connection
local, into a temporary directory; Grafana's apt repository is unreachable here, so the install
part is not run and no Grafana starts), and every generated dashboard validated against Grafana's
dashboard schema (grafana-foundation-sdk's models, tests/roles/dashboard_schema.py).
"""
from __future__ import annotations

import copy
import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from . import dashboard_schema

pytestmark = pytest.mark.roles

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DASHBOARDS = sorted((REPO / "dashboards").glob("vigil-*.json"))


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    if not (VENV_BIN / "ansible-playbook").exists():
        pytest.skip("ansible is not installed in the venv (scripts/setup roles)")
    root = tmp_path_factory.mktemp("grafana")
    playbook = root / "play.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Grafana provisioning", "hosts": "localhost", "gather_facts": False,
        "roles": [{"role": "vigil_grafana"}],
    }]))
    extra = {
        "vigil_grafana_install": False, "vigil_grafana_manage_service": False,
        "vigil_grafana_provisioning_dir": str(root / "provisioning"),
        "vigil_grafana_dashboards_dir": str(root / "dashboards"),
        "vigil_grafana_owner": pwd.getpwuid(os.getuid()).pw_name,
        "vigil_grafana_group": grp.getgrgid(os.getgid()).gr_name,
        "vigil_influxdb_bind": "127.0.0.1:8086", "vigil_influxdb_database": "vigil",
        "ansible_python_interpreter": sys.executable,
    }
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    runs = []
    for _ in range(2):                 # the second run must change nothing
        runs.append(subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
             "-e", json.dumps(extra)], env=env, capture_output=True, text=True, timeout=300))
        assert runs[-1].returncode == 0, runs[-1].stdout[-5000:] + runs[-1].stderr[-3000:]
    return root, runs


def test_datasource_has_a_fixed_uid(provisioned):
    root, _ = provisioned
    doc = yaml.safe_load((root / "provisioning/datasources/vigil.yaml").read_text())
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert ds["uid"] == "vigil-influxdb" and ds["type"] == "influxdb" and ds["isDefault"] is True
    assert ds["url"] == "http://127.0.0.1:8086"
    assert ds["jsonData"]["dbName"] == "vigil" and ds["jsonData"]["version"] == "InfluxQL"
    assert ds["editable"] is False


def test_dashboards_by_a_file_provider_without_ui_edits(provisioned):
    root, _ = provisioned
    doc = yaml.safe_load((root / "provisioning/dashboards/vigil.yaml").read_text())
    [provider] = doc["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    assert provider["disableDeletion"] is True
    assert provider["options"]["path"] == str(root / "dashboards")
    copied = sorted(p.name for p in (root / "dashboards").glob("*.json"))
    assert copied == [p.name for p in DASHBOARDS] and len(copied) >= 6
    for p in DASHBOARDS:
        assert (root / "dashboards" / p.name).read_bytes() == p.read_bytes()


def test_provisioning_is_idempotent(provisioned):
    _, runs = provisioned
    recap = [line for line in runs[1].stdout.splitlines() if line.startswith("localhost")]
    assert recap and "changed=0" in recap[-1], runs[1].stdout[-3000:]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_conforms_to_grafanas_schema(path):
    assert dashboard_schema.validate(json.loads(path.read_text())) == []


def test_the_schema_check_finds_errors():
    """The validator is not vacuous: broken copies of a real dashboard fail, each for its reason."""
    good = json.loads(DASHBOARDS[0].read_text())
    cases = {
        "graph_tooltip": lambda d: d.__setitem__("graphTooltip", "shared"),
        "grid_pos.h": lambda d: next(p for p in d["panels"] if "gridPos" in p)["gridPos"].__setitem__("h", "tall"),
        "not in Grafana's dashboard schema": lambda d: d.__setitem__("colour", "red"),
        "type_val": lambda d: d["templating"]["list"][0].__setitem__("type", "bogus"),
    }
    for expect, breaks in cases.items():
        bad = copy.deepcopy(good)
        breaks(bad)
        errs = dashboard_schema.validate(bad)
        assert any(expect in e for e in errs), (expect, errs)
