"""bench/flowset_dump.py's flow set (per-element counters) read by the engine's netlink reader
(engine/flowset.py) against the real kernel in a private network namespace: every element's key
and counters come back exactly as loaded (counters past 32 bits, ports 0 and 65535, both
protocols), several dump messages long; an empty set reads empty; a set that does not exist reads
empty and is counted."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.netns import run_probe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent('''
    import subprocess
    import flowset_dump as fd
    from vigil.counters import Counters
    from vigil.engine.flowset import FlowSetReader, flow_key

    elems = fd.elements(3000)
    elems[0] = ("0.0.0.0", "255.255.255.255", 6, 0, 65535, 2**40 + 7, 2**50 + 3)
    elems[1] = ("10.0.0.1", "10.0.0.2", 17, 65535, 0, 1, 1)
    subprocess.run(["nft", "-f", "-"], input=fd.load_script(elems), text=True, check=True)
    counters = Counters()
    reader = FlowSetReader("vigil", counters, sets=(("flows4", 4),))
    got = reader.dump()
    want = {flow_key(4, s, d, p, sp, dp): (pk, b) for s, d, p, sp, dp, pk, b in elems}
    assert len(got) == len(want) == 3000, len(got)
    assert {k: (p, b) for _f, k, p, b, _e in got} == want
    assert all(0 < e <= 3600 * 1000 for *_x, e in got)        # expiry in ms, within the set timeout
    subprocess.run(["nft", "flush set bridge vigil flows4"], check=True)
    assert reader.dump() == []
    assert FlowSetReader("vigil", counters, sets=(("nosuchset", 4),)).dump() == []
    assert counters.snapshot() == {"flowset_missing": 1}, counters.snapshot()
    print("ok", len(got))
''')


def test_dump_reads_every_element_and_counter_as_loaded():
    out = run_probe("fsd", PROBE, [str(ROOT / "agents"), str(ROOT / "bench"), str(ROOT)])
    assert out.split() == ["ok", "3000"]
