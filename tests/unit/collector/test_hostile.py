"""Hostile input: parser cost stays linear in the message on every pathological family.

``vigil.collector.pathological`` builds, for each parser, families of messages with one token the
parsers look for repeated at a point they reach.  Before issue 14 three of them took seconds to
minutes at 64 KB (CEF extension of spaces ~70 s, Check Point key runs and ModSecurity's repeated
``[client `` 3-6 s).  The bound here is far from both ends: 0.25 s at 64 KB, against a goal of
20 ms (bench/collector_hostile.py prints the figures) and seconds for a quadratic parser.
"""
from __future__ import annotations

import time

import pytest

from vigil.collector.parsers import parse
from vigil.collector.pathological import SEEDS, families, family

pytestmark = pytest.mark.unit


def _time(msg: str) -> float:
    t0 = time.perf_counter()
    parse(msg, ref=1700000000.0)
    return time.perf_counter() - t0


def test_slowest_pathological_families_stay_linear_at_64k():
    small = []
    for fmt, seed in SEEDS.items():
        for key in families(fmt):
            small.append((_time(family(seed, *key, 8192)), fmt, key))
    small.sort(key=lambda r: -r[0])
    slow = []
    for _t, fmt, key in small[:12]:
        msg = family(SEEDS[fmt], *key, 65536)
        t = min(_time(msg) for _ in range(2))
        if t > 0.25:
            slow.append(f"{fmt} {key!r}: {t:.2f} s")
    assert len(small) > 10000
    assert not slow, slow


@pytest.mark.parametrize("msg", [
    "CEF:0|a|b|c|d|e|5|k=" + " " * 65000 + "x",                       # issue 14: ~70 s before
    '<134>1 2026-11-23T10:00:01Z gw CheckPoint 1 - [' + "a" * 65000,   # key run without :"
    "[Mon Nov 23 10:00:01 2026] [error] " + "[client " * 8000 + " ModSecurity: x",
])
def test_issue_examples_parse_quickly(msg):
    assert _time(msg) < 0.25
