"""Per-message isolation: valid and crafted messages in one batch through the real component.

Every batch mixes valid messages of every format with crafted ones whose event cannot be stored
as parsed (a JSON field of the wrong type, a time beyond int64 milliseconds or not finite), with
parser failures (JSON nested past the recursion limit) and with
pathological 4 KB members of the families of ``vigil.collector.pathological``.  The component's
``handle()`` must not raise, must hand the writer one point per message, the valid ones parsed
(their own source type and format), the crafted ones as raw ``syslog`` events, and must count
every rejection under its reason.  Every point must be valid line protocol with int64 values.
"""
from __future__ import annotations

import json
import re
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vigil.collector.component import CollectorComponent
from vigil.collector.config import CollectorConfig
from vigil.collector.pathological import SEEDS, families, family
from vigil.control import ControlServer
from vigil.counters import Counters
from vigil.manager.api import Context, _NoPolicy

pytestmark = pytest.mark.unit

_ip = st.tuples(*[st.integers(1, 254)] * 4).map(lambda t: ".".join(map(str, t)))
_port = st.integers(0, 65535)

# valid messages: (message, expected source_type, expected format)
VALID = {
    "snort-syslog": (lambda a, p: f"<38>Nov 23 10:00:01 ids snort: [1:2012811:2] ET DNS Query [Classification: "
                                  f"Bad] [Priority: 2] {{UDP}} {a}:{p} -> 10.0.1.1:53", "snort", "snort-syslog"),
    "cef": (lambda a, p: f"<134>Nov 23 10:00:01 fw CEF:0|V|P|1.0|100|Threat|8|src={a} spt={p} dst=10.0.1.1 "
                         f"dpt=80 act=blocked", "cef", "cef"),
    "checkpoint": (lambda a, p: f'<134>1 2026-11-23T10:00:01Z gw CheckPoint 1 - [action:"Drop"; src:"{a}"; '
                                f's_port:"{p}"; dst:"10.0.1.1"; service:"22"; proto:"6"]', "checkpoint", "checkpoint-kv"),
    "eve": (lambda a, p: json.dumps({"timestamp": "2026-11-23T10:00:01.1+0000", "event_type": "alert",
                                     "src_ip": a, "src_port": p, "dest_ip": "10.0.1.1", "dest_port": 80,
                                     "alert": {"signature_id": 1, "signature": "x", "severity": 1}}),
            "suricata", "suricata-alert"),
    "snort3": (lambda a, p: json.dumps({"seconds": 1700000000, "src_addr": a, "src_port": p, "dst_addr": "10.0.1.1",
                                        "dst_port": 80, "gid": 1, "sid": 2, "rev": 3, "msg": "m", "class": "c",
                                        "proto": "TCP"}), "snort", "snort-json"),
    "modsec": (lambda a, p: f"[Mon Nov 23 10:00:01.123456 2026] [security2:error] [pid 1:tid 2] [client {a}:{p}] "
                            f'[client {a}] ModSecurity: Warning. [id "942100"] [tag "attack-sqli"]',
               "modsecurity", "modsecurity-apache"),
}

# crafted messages: (message, the reason it is rejected with)
CRAFTED = {
    "snort3-int-address": (lambda a, p: json.dumps({"seconds": 1700000000, "src_addr": int(p), "dst_addr": a,
                                                    "sid": 1, "gid": 1, "rev": 1, "msg": "m"}), "field_type"),
    "snort3-int-class": (lambda a, p: json.dumps({"seconds": 1700000000, "src_addr": a, "sid": 1, "gid": 1,
                                                  "rev": 1, "msg": "m", "class": p + 1}), "field_type"),
    "snort3-dict-address": (lambda a, p: json.dumps({"seconds": 1700000000, "src_addr": a, "sid": 1,
                                                     "dst_addr": {"a": p}, "msg": "x"}), "field_type"),
    "checkpoint-time-inf": (lambda a, p: f'time:"{"9" * 400}"; action:"Drop"; src:"{a}"', "value_range"),
    "checkpoint-time-int64": (lambda a, p: f'time:"{"9" * 22}"; action:"Drop"; src:"{a}"', "value_range"),
    "cef-rt-int64": (lambda a, p: f"CEF:0|V|P|1|1|n|5|src={a} rt={'9' * 20}", "value_range"),
    "json-too-deep": (lambda a, p: '{"event_type": "alert", "x": ' + "[" * 100000, "parser_error"),
}

PATHOLOGICAL = [(fmt, key) for fmt in SEEDS for i, key in enumerate(families(fmt)) if i % 37 == 0]

_TAG = r"(?:[^,= \\]|\\.)+"
_LINE = re.compile(rf"security_event(?:,[a-z_]+={_TAG})+ "
                   rf'[a-z_]+=(?:"(?:[^"\\]|\\.)*"|-?\d+i)(?:,[a-z_]+=(?:"(?:[^"\\]|\\.)*"|-?\d+i))* \d+')
_INTS = re.compile(r'[,\s][a-z_]+=(-?\d+)i(?=[, ])')


class _Writer:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, lines):
        self.lines.extend(lines)


_COMP: dict = {}


def _component(tmp: Path) -> CollectorComponent:
    if "c" not in _COMP:
        counters = Counters()
        ctx = Context("m", tmp, None, _Writer(), counters, ControlServer(tmp / "c.sock"), _NoPolicy(counters),
                      threading.Event())
        _COMP["c"] = CollectorComponent(CollectorConfig(tcp="127.0.0.1:0"), ctx)
    return _COMP["c"]


_msg = st.one_of(
    st.tuples(st.just("valid"), st.sampled_from(sorted(VALID)), _ip, _port),
    st.tuples(st.just("crafted"), st.sampled_from(sorted(CRAFTED)), _ip, _port),
    st.tuples(st.just("hostile"), st.sampled_from(range(len(PATHOLOGICAL))), _ip, _port),
)


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(_msg, min_size=1, max_size=25))
def test_one_bad_message_never_loses_its_neighbours(tmp_path_factory, batch):
    comp = _component(tmp_path_factory.getbasetemp())
    writer = comp.ctx.writer
    writer.lines.clear()
    before = Counter(comp.rejected)
    msgs, want = [], []
    want_reasons: Counter = Counter()
    for kind, name, addr, port in batch:
        if kind == "valid":
            make, stype, fmt = VALID[name]
            msgs.append(make(addr, port))
            want.append((stype, fmt, addr))
        elif kind == "crafted":
            make, reason = CRAFTED[name]
            msgs.append(make(addr, port))
            want.append(("syslog", None, None))
            want_reasons[reason] += 1
        else:
            fmt, key = PATHOLOGICAL[name]
            msgs.append(family(SEEDS[fmt], *key, 4096))
            want.append((None, None, None))
    comp.handle("192.0.2.7", [m.encode() for m in msgs])        # must not raise
    lines = writer.lines
    assert len(lines) == len(msgs)                                # one point per message, in order
    for ln, (stype, fmt, addr), m in zip(lines, want, msgs):
        assert _LINE.fullmatch(ln), ln[:300]
        for v in _INTS.findall(ln):
            assert -2**63 <= int(v) < 2**63
        if stype is not None:
            assert f"source_type={stype}" in ln.split(" ", 1)[0], (m[:200], ln[:200])
        if fmt is not None:
            assert f"format={fmt}" in ln.split(" ", 1)[0] and f'src="{addr}"' in ln
    got_reasons = Counter(comp.rejected)
    got_reasons.subtract(before)
    got_reasons = +got_reasons
    hostile_parser_errors = got_reasons["parser_error"] - want_reasons["parser_error"]
    assert hostile_parser_errors >= 0
    assert got_reasons - Counter(parser_error=got_reasons["parser_error"]) == \
        want_reasons - Counter(parser_error=want_reasons["parser_error"])
    assert comp.counters.get("collector_worker_errors") == 0


def test_rejections_are_counted_by_reason_and_stored_raw(tmp_path):
    counters = Counters()
    ctx = Context("m", tmp_path, None, _Writer(), counters, ControlServer(tmp_path / "c.sock"), _NoPolicy(counters),
                  threading.Event())
    comp = CollectorComponent(CollectorConfig(tcp="127.0.0.1:0"), ctx)
    msgs = [VALID["cef"][0]("10.0.0.1", 1), CRAFTED["snort3-int-address"][0]("10.0.0.2", 2),
            CRAFTED["checkpoint-time-inf"][0]("10.0.0.3", 3), VALID["eve"][0]("10.0.0.4", 4)]
    evs = comp.handle("192.0.2.7", [m.encode() for m in msgs], keep=True)
    assert [e.source_type for e in evs] == ["cef", "syslog", "syslog", "suricata"]
    assert evs[1].extra["parse_error"].startswith("field_type: src")
    assert evs[2].extra["parse_error"].startswith("value_range: time")
    assert counters.get("collector_rejected_field_type") == 1
    assert counters.get("collector_rejected_value_range") == 1
    assert comp.status()["rejected"] == {"field_type": 1, "value_range": 1}
    assert len(ctx.writer.lines) == 4 and counters.get("collector_events") == 4


@pytest.mark.parametrize("value", [2**63, -2**63 - 1, float("inf"), float("nan")])
def test_line_protocol_refuses_values_influxdb_would_refuse(value):
    from vigil.influx import line
    with pytest.raises(ValueError):
        line("m", {}, {"v": value})
    assert line("m", {}, {"v": 2**63 - 1}) == "m v=9223372036854775807i"
