"""Correlation rules: loading and validation, and each rule type's behaviour."""
from __future__ import annotations

from pathlib import Path

import pytest

from vigil.collector.correlation import DEFAULT_RULES, Correlator, RuleError, load_rules, parse_rules
from vigil.collector.event import Event
from vigil.collector.parsers import parse

pytestmark = pytest.mark.unit


def rules(yaml_text: str, tmp_path: Path, name: str = "r.yaml"):
    p = tmp_path / name
    p.write_text(yaml_text)
    return load_rules([p])


def waf(src: str, cat: str = "attack-sqli", sig: str = "942100") -> Event:
    return Event("modsecurity", "modsecurity-apache", "x", src=src, category=cat, sig_id=sig, action="alert")


def test_default_rules_load():
    names = [r.name for r in load_rules([DEFAULT_RULES])]
    assert {"waf-sqli-burst", "ids-many-signatures", "scan-then-sqli"} <= set(names)


def test_threshold_fires_once_per_window_per_group(tmp_path):
    rs = rules("""rules:
  - {name: sqli, type: threshold, match: {category: attack-sqli}, group_by: src, count: 3, window: 60}
""", tmp_path)
    fired = []
    c = Correlator(rs, fired.append)
    for t in (0, 10, 20):
        c.process(waf("10.0.0.1"), t)
        c.process(waf("10.0.0.2"), t * 10)      # 0, 100, 200: never 3 within 60 s
    assert [(f.rule.name, f.group, f.count) for f in fired] == [("sqli", "10.0.0.1", 3)]
    for t in (21, 22, 23):                        # cooldown (= window) suppresses refiring
        c.process(waf("10.0.0.1"), t)
    assert len(fired) == 1
    for t in (90, 91, 92):
        c.process(waf("10.0.0.1"), t)
    assert len(fired) == 2


def test_threshold_ignores_other_events_and_missing_group(tmp_path):
    rs = rules("""rules:
  - {name: t, type: threshold, match: {category: attack-sqli}, count: 2, window: 60}
""", tmp_path)
    fired = []
    c = Correlator(rs, fired.append)
    c.process(waf("10.0.0.1", cat="attack-xss"), 0)
    c.process(waf("10.0.0.1", cat="attack-xss"), 1)
    c.process(Event("modsecurity", "x", "x", category="attack-sqli"), 2)
    c.process(Event("modsecurity", "x", "x", category="attack-sqli"), 3)
    assert fired == []


def test_distinct_counts_different_values(tmp_path):
    rs = rules("""rules:
  - name: many
    type: distinct
    match: {severity: {min: medium}}
    distinct: sig_id
    count: 3
    window: 100
""", tmp_path)
    fired = []
    c = Correlator(rs, fired.append)
    for t, sig in ((0, "a"), (1, "a"), (2, "b"), (3, "b")):
        c.process(Event("snort", "f", "x", action="alert", src="10.0.0.9", sig_id=sig, severity=2), t)
    assert not fired
    c.process(Event("snort", "f", "x", action="alert", src="10.0.0.9", sig_id="c", severity=1), 4)   # below min
    assert not fired
    c.process(Event("snort", "f", "x", action="alert", src="10.0.0.9", sig_id="c", severity=3), 5)
    assert [f.count for f in fired] == [3]


def test_distinct_window_slides(tmp_path):
    rs = rules("""rules:
  - {name: d, type: distinct, match: {source_type: snort}, distinct: dst, count: 3, window: 10}
""", tmp_path)
    fired = []
    c = Correlator(rs, fired.append)
    for t, dst in ((0, "1"), (5, "2"), (11, "3")):   # "1" is out of the window when "3" comes
        c.process(Event("snort", "f", "x", action="alert", src="10.0.0.9", dst=dst), t)
    assert not fired
    c.process(Event("snort", "f", "x", action="alert", src="10.0.0.9", dst="4"), 12)
    assert fired


def test_sequence_across_source_types_with_real_lines(tmp_path):
    """Snort scan alert then ModSecurity SQLi from the same source within the window."""
    rs = [r for r in load_rules([DEFAULT_RULES]) if r.name == "scan-then-sqli"]
    fired = []
    c = Correlator(rs, fired.append)
    scan = parse("11/23-10:00:00.000001  [**] [1:1917:6] SCAN UPnP service discover attempt [**] "
                 "[Classification: Detection of a Network Scan] [Priority: 3] {TCP} 10.77.0.66:1035 -> "
                 "10.77.0.10:80", ref=1700000000)
    sqli = parse('[Mon Nov 23 10:05:00.1 2026] [security2:error] [pid 1:tid 2] [client 10.77.0.66:4000] '
                 '[client 10.77.0.66] ModSecurity: Warning. [id "942100"] [tag "attack-sqli"]')
    other = parse('[Mon Nov 23 10:05:00.1 2026] [security2:error] [pid 1:tid 2] [client 10.77.0.99:4000] '
                  '[client 10.77.0.99] ModSecurity: Warning. [id "942100"] [tag "attack-sqli"]')
    c.process(sqli, 0)          # wrong order: nothing
    c.process(scan, 10)
    c.process(other, 20)        # another source: nothing
    assert not fired
    c.process(sqli, 10 + 599)
    assert [(f.rule.name, f.group, len(f.events)) for f in fired] == [("scan-then-sqli", "10.77.0.66", 2)]


def test_sequence_window_is_measured_from_the_first_step(tmp_path):
    rs = rules("""rules:
  - name: s
    type: sequence
    window: 100
    steps:
      - match: {source_type: snort}
      - match: {source_type: suricata}
      - match: {source_type: modsecurity}
""", tmp_path)
    fired = []
    c = Correlator(rs, fired.append)
    c.process(Event("snort", "f", "x", action="alert", src="1.1.1.1"), 0)
    c.process(Event("suricata", "f", "x", action="alert", src="1.1.1.1"), 90)
    c.process(Event("modsecurity", "f", "x", action="alert", src="1.1.1.1"), 150)   # 150 s after the first step
    assert not fired
    c.process(Event("snort", "f", "x", action="alert", src="1.1.1.1"), 160)
    c.process(Event("suricata", "f", "x", action="alert", src="1.1.1.1"), 170)
    c.process(Event("modsecurity", "f", "x", action="alert", src="1.1.1.1"), 180)
    assert len(fired) == 1


def test_state_is_bounded_and_expires(tmp_path):
    rs = rules("""rules:
  - {name: t, type: threshold, match: {source_type: modsecurity}, count: 100, window: 10}
  - {name: d, type: distinct, match: {source_type: modsecurity}, distinct: sig_id, count: 100, window: 10}
""", tmp_path)
    c = Correlator(rs, lambda f: None, max_groups=50)
    for i in range(200):
        c.process(waf(f"10.0.{i // 250}.{i % 250}"), 0)
    assert c.groups() == 100 and len(c.evidence["d"]) == 50
    c.expire(100)
    assert c.groups() == 0 and not c.evidence["d"]


@pytest.mark.parametrize("text,where", [
    ("rules: [{name: a, type: nope, window: 1}]", "rules[0] (a).type"),
    ("rules: [{name: a, type: threshold, window: 1, count: 2}]", "rules[0] (a).match: required"),
    ("rules: [{name: a, type: threshold, window: 0, count: 2, match: {src: x}}]", "rules[0] (a).window"),
    ("rules: [{name: a, type: threshold, window: 5, count: 2, match: {nosuch: x}}]", "rules[0] (a).match.nosuch"),
    ("rules: [{name: a, type: threshold, window: 5, count: 2, match: {src: {regex: '('}}}]", "match.src.regex"),
    ("rules: [{name: a, type: threshold, window: 5, count: 2.5, match: {src: x}}]", "(a).count"),
    ("rules: [{name: a, type: distinct, window: 5, count: 2, match: {src: x}}]", "(a).distinct"),
    ("rules: [{name: a, type: sequence, window: 5, steps: [{match: {src: x}}]}]", "(a).steps"),
    ("rules: [{name: a, type: threshold, window: 5, count: 2, match: {src: x}, colour: red}]", "rules[0].colour"),
    ("rules: [{name: A B, type: threshold}]", "rules[0].name"),
    ("rules: [{name: a, type: threshold, window: 5, count: 2, match: {src: x}}, "
     "{name: a, type: threshold, window: 5, count: 2, match: {src: x}}]", "rules[1] (a).name: duplicate"),
    ("rule: []", "(top level)"),
    ("rules: [", "not valid YAML"),
])
def test_validation_errors_name_file_and_key(tmp_path, text, where):
    with pytest.raises(RuleError) as e:
        rules(text, tmp_path, "bad-rules.yaml")
    assert "bad-rules.yaml" in str(e.value) and where in str(e.value), str(e.value)


def test_manager_config_rejects_a_bad_rule_file(tmp_path):
    from vigil.config import ConfigError, loads
    from vigil.manager.config import ManagerConfig
    (tmp_path / "x.yaml").write_text("rules: [{name: a, type: threshold, window: -1}]")
    with pytest.raises(ConfigError) as e:
        loads(f"collector: {{tcp: '127.0.0.1:0', rule_files: ['{tmp_path}/x.yaml']}}", ManagerConfig, "m.yaml")
    assert "m.yaml: collector" in str(e.value) and "x.yaml: rules[0] (a).window" in str(e.value)


def test_parse_rules_rejects_non_mapping():
    with pytest.raises(RuleError):
        parse_rules([1, 2], "f")


def test_match_conditions_give_the_same_answer_on_repeated_long_and_non_string_values():
    """Regex results are remembered per value; the answers must not depend on that."""
    from vigil.collector import correlation as corr
    from vigil.collector.event import Event
    m = corr.Matcher({"source_type": ["snort", "cef"], "category": {"regex": "(?i)scan$"},
                      "dport": {"regex": "^8"}}, "t")
    long_scan = "x" * (corr._REGEX_CACHE_LEN + 10) + "SCAN"
    for _ in range(3):                     # first call fills the cache, later ones read it
        assert m(Event("snort", "snort-fast", "r", category="port scan", dport=80))
        assert not m(Event("snort", "snort-fast", "r", category="port scan", dport=443))
        assert not m(Event("snort", "snort-fast", "r", category="scanner", dport=80))
        assert not m(Event("suricata", "suricata-alert", "r", category="port scan", dport=80))
        assert m(Event("cef", "cef", "r", category=long_scan, dport=8080))
        assert not m(Event("cef", "cef", "r", category=None, dport=80))
    assert m.test_rest(Event("suricata", "suricata-alert", "r", category="port scan", dport=80))


def test_state_holds_no_events_and_is_untracked_by_the_gc():
    """State keeps plain tuples of the evidence fields, not Events: the cyclic GC must not walk
    every retained event (it cost a quarter to a half of the worker's time)."""
    import gc
    c = Correlator(load_rules([DEFAULT_RULES]), lambda f: None)
    for i in range(300):
        c.process(waf(f"10.0.{i // 250}.{i % 250}", sig=str(i % 7)), float(i))
        c.process(Event("snort", "snort-fast", "x", action="alert", src=f"10.1.0.{i % 250}", dst=f"10.2.0.{i % 13}",
                        sig_id=f"1:{i % 9}:1", severity=3, category="attempted-recon"), float(i))
    for _ in range(3):      # a collection untracks a tuple once what it holds is untracked: inside out
        gc.collect()
    for st in c.state.values():
        for s in st.values():
            assert not gc.is_tracked(s), s
            items = list(s.values()) if isinstance(s, dict) else list(s)
            assert not any(isinstance(x, Event) for x in items)
    for name, evidence in c.evidence.items():
        assert evidence.keys() == c.state[name].keys()
        assert not any(gc.is_tracked(x) for x in evidence.values())
    c.expire(1000)
    assert c.groups() == 0 and not any(c.evidence.values())


def test_sequence_keeps_no_state_for_events_that_start_no_chain(tmp_path):
    rs = rules("""rules:
  - {name: s, type: sequence, window: 60, steps: [{match: {source_type: snort}}, {match: {source_type: modsecurity}}]}
""", tmp_path)
    c = Correlator(rs, lambda f: None, max_groups=2)
    c.process(Event("snort", "f", "x", action="alert", src="1.1.1.1"), 0)
    for i in range(10):        # later steps alone: no group made, nothing evicted
        c.process(waf(f"10.0.0.{i}"), 1)
    assert c.groups() == 1
    assert c.process(waf("1.1.1.1"), 2)[0].group == "1.1.1.1"


def test_distinct_evidence_is_the_last_values_still_in_the_window(tmp_path):
    rs = rules("""rules:
  - {name: d, type: distinct, match: {source_type: snort}, distinct: dport, count: 2, window: 10}
""", tmp_path)
    c = Correlator(rs, lambda f: None)
    ev = lambda port: Event("snort", "f", "x", action="alert", src="1.1.1.1", dport=port)   # noqa: E731
    c.process(ev(1), 0)
    c.process(ev(2), 20)                # port 1 fell out of the window
    c.process(ev(2), 21)
    f = c.process(ev(3), 22)[0]
    assert [e["dport"] for e in f.events] == [2, 3] and f.count == 2


def test_telemetry_from_one_host_to_many_fires_no_default_rule():
    """Issue 14: 25 EVE dns/flow/smb records from one host to 25 hosts fired ids-host-sweep.  They
    are telemetry (no alert, no verdict); sweep and flood rules count alert-class events only."""
    import json
    fired = []
    c = Correlator(load_rules([DEFAULT_RULES]), fired.append)
    kinds = [("dns", {"dns": {"type": "query", "rrname": "example.org"}}),
             ("flow", {"flow": {"pkts_toserver": 3, "state": "closed"}}),
             ("smb", {"smb": {"command": "SMB2_COMMAND_NEGOTIATE"}})]
    for i in range(25):
        et, extra = kinds[i % 3]
        rec = {"timestamp": "2026-11-23T10:00:01.1+0000", "event_type": et, "src_ip": "10.5.0.7",
               "src_port": 40000 + i, "dest_ip": f"10.6.0.{i + 1}", "dest_port": 445, "proto": "TCP", **extra}
        ev = parse(json.dumps(rec))
        assert ev.source_type == "suricata" and ev.format == f"suricata-{et}"
        c.process(ev, float(i))
    assert fired == []
    # the same sweep as alerts does fire
    for i in range(25):
        rec = {"timestamp": "2026-11-23T10:00:01.1+0000", "event_type": "alert", "src_ip": "10.5.0.7",
               "dest_ip": f"10.6.0.{i + 1}", "alert": {"signature_id": 2001219, "signature": "ET SCAN x",
                                                       "severity": 3}}
        c.process(parse(json.dumps(rec)), 30.0 + i)
    assert [f.rule.name for f in fired] == ["ids-host-sweep"]


def test_a_rule_may_count_telemetry_with_events_all(tmp_path):
    rs = rules("""rules:
  - {name: talk, type: distinct, events: all, match: {source_type: suricata}, distinct: dst, count: 3, window: 60}
  - {name: alerts-only, type: distinct, match: {source_type: suricata}, distinct: dst, count: 3, window: 60}
""", tmp_path)
    fired = []
    c = Correlator(rs, fired.append)
    for i in range(3):
        c.process(Event("suricata", "suricata-flow", "x", src="10.0.0.1", dst=f"10.0.1.{i}"), float(i))
    assert [f.rule.name for f in fired] == ["talk"]
    with pytest.raises(RuleError, match=r"events: must be one of alerts, all"):
        parse_rules({"rules": [{"name": "x", "type": "threshold", "events": "some", "match": {}, "count": 1,
                                "window": 1}]}, "f.yaml")
