"""The datapath variants written out in bench/bridge_throughput.py load into the kernel as written
(one nft transaction each, 1000 block entries, in a private network namespace), and the properties
the measurements rest on hold in what the kernel holds: no ``inet`` table and no ``ct`` expression
(no conntrack), the flow sets carry counters, and in V2-V5 the first rule of the chain a frame
meets is the fast path (a ``seen`` lookup that updates ``flows`` and accepts)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.netns import run_probe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent('''
    import json, subprocess
    import bridge_throughput as bt

    def nft(*args, script=None):
        return subprocess.run(["nft", *args], input=script, text=True, capture_output=True, check=True).stdout

    for name in ("T", "V1", "V2", "V3", "V4", "V5"):
        nft("flush", "ruleset")
        nft("-f", "-", script=bt.variant_scripts(name, 1000))
        doc = json.loads(nft("-j", "list", "ruleset"))["nftables"]
        tables = {(x["table"]["family"], x["table"]["name"]) for x in doc if "table" in x}
        assert all(fam == "bridge" for fam, _ in tables), (name, tables)
        assert '"ct"' not in json.dumps(doc), name
        sets = {x["set"]["name"]: x["set"] for x in doc if "set" in x}
        assert {"counter": None} in sets["flows4"]["stmt"] and {"counter": None} in sets["flows6"]["stmt"], name
        rules = [x["rule"] for x in doc if "rule" in x]
        if name != "T":
            block4 = json.loads(nft("-j", "list", "set", "bridge", "vigil", "block4"))["nftables"][1]["set"]
            assert len(block4["elem"]) == 1000, name
        if name in ("V2", "V3", "V5"):
            chain = "forward" if name == "V2" else "pre"
            first = [r for r in rules if r["table"] == "vigil" and r["chain"] == chain][0]["expr"]
            text = json.dumps(first)
            assert '"@seen4"' in text and '"set": "@flows4"' in text and {"accept": None} in first, (name, first)
        if name == "V4":
            first = [r for r in rules if r["table"] == "vigil" and r["chain"] == "pre"][0]["expr"]
            assert '"@flows4"' in json.dumps(first) and {"accept": None} in first, first
        print(name, len(rules))
''')


def test_every_variant_loads_as_written_and_keeps_its_fast_path_first():
    out = run_probe("bdv", PROBE, [str(ROOT / "agents"), str(ROOT / "bench"), str(ROOT)])
    assert [ln.split()[0] for ln in out.splitlines()] == ["T", "V1", "V2", "V3", "V4", "V5"]
