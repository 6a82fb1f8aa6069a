"""The committed dashboards/*.json are exactly what vigil.dashboards generates, and every query names
only measurements, tags and fields the system writes (vigil.dashboards.MEASUREMENTS, which
tests/lab/test_dashboards.py checks against a real InfluxDB filled by the real pipeline)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vigil import dashboards
from vigil.dashboards import MEASUREMENTS

pytestmark = pytest.mark.unit

DIR = Path(__file__).resolve().parents[2] / "dashboards"
BOARDS = {name: json.loads(text) for name, text in dashboards.generate().items()}


def panels_of(board):
    for p in board["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def test_committed_json_equals_the_generator():
    committed = {p.name for p in DIR.glob("*.json")}
    assert committed == set(BOARDS), "dashboards/ holds JSON the generator does not make (or lacks some)"
    for name, text in dashboards.generate().items():
        assert (DIR / name).read_text(encoding="utf-8") == text, (
            f"dashboards/{name} drifted from vigil/dashboards.py; run: python -m vigil.dashboards --out dashboards/")


def test_check_mode_agrees(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "vigil.dashboards", "--check", str(DIR)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "vigil-fleet.json").write_text("{}")
    bad = subprocess.run([sys.executable, "-m", "vigil.dashboards", "--check", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "vigil-fleet.json" in bad.stderr


def test_dashboard_shape():
    uids = [b["uid"] for b in BOARDS.values()]
    assert len(set(uids)) == len(uids) == 6
    for name, b in BOARDS.items():
        assert name == f"{b['uid']}.json" and b["schemaVersion"] == dashboards.SCHEMA_VERSION and "vigil" in b["tags"]
        ds = b["templating"]["list"][0]
        assert ds["type"] == "datasource" and ds["query"] == "influxdb" and ds["name"] == "datasource"
        for v in b["templating"]["list"][1:]:
            assert v["type"] == "query" and v["query"].startswith("SHOW TAG VALUES FROM ")
            assert v["datasource"] == dashboards.DS
        ids = [p["id"] for p in b["panels"]]
        assert len(set(ids)) == len(ids)
        cells: set[tuple[int, int]] = set()
        for p in b["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, (name, p["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{name}: {p['title']} overlaps another panel"
            cells |= mine
        for p in panels_of(b):
            assert p["type"] in ("timeseries", "stat", "table") and p["targets"], (name, p["title"])
            assert p["datasource"] == dashboards.DS
            for t in p["targets"]:
                assert t["rawQuery"] is True and t["datasource"] == dashboards.DS
                assert "$timeFilter" in t["query"], (name, p["title"], t["query"])
                assert t["resultFormat"] == ("table" if p["type"] == "table" else "time_series")
                if "GROUP BY time(" in t["query"]:
                    assert "GROUP BY time($__interval)" in t["query"], t["query"]


def _identifiers(query: str) -> tuple[list[str], list[str], set[str]]:
    """(measurements after FROM, every other double-quoted identifier, aliases defined by AS)."""
    measurements = re.findall(r'FROM "(\w+)"', query)
    aliases = set(re.findall(r'AS "([^"]+)"', query))
    idents = [i for i in re.findall(r'"([^"]+)"', query) if i not in measurements and i not in aliases]
    return measurements, idents, aliases


def test_queries_use_only_what_the_system_writes():
    regex_fields = re.compile(r"max\(/(.+?)/\)")
    for name, b in BOARDS.items():
        for v in b["templating"]["list"][1:]:
            m, key = re.fullmatch(r'SHOW TAG VALUES FROM "(\w+)" WITH KEY = "(\w+)"', v["query"]).groups()
            assert key in MEASUREMENTS[m]["tags"], v["query"]
        for p in panels_of(b):
            for t in p["targets"]:
                q = t["query"]
                measurements, idents, _ = _identifiers(q)
                assert measurements, q
                known: set[str] = set()
                for m in measurements:
                    assert m in MEASUREMENTS, f"{name} / {p['title']}: no measurement {m!r} is written"
                    known |= set(MEASUREMENTS[m]["tags"]) | set(MEASUREMENTS[m]["fields"])
                if "*" in known:        # manager_stats: any counter name
                    continue
                unknown = [i for i in idents if i not in known]
                assert not unknown, f"{name} / {p['title']}: {unknown} are neither tags nor fields of {measurements}"
                for _rx in regex_fields.findall(q):
                    assert "manager_stats" in measurements, q


def test_template_variables_are_used_as_regex_matches():
    """Grafana formats a multi-value / All selection as (a|b): only a regex match takes it."""
    for name, b in BOARDS.items():
        names = [v["name"] for v in b["templating"]["list"][1:]]
        for p in panels_of(b):
            for t in p["targets"]:
                for var in re.findall(r"\$(\w+)", t["query"]):
                    if var in ("timeFilter", "__interval", "__interval_ms"):
                        continue
                    assert var in names, f"{name}: {p['title']} uses ${var}"
                    assert f"=~ /^${var}$/" in t["query"], t["query"]
