"""Every record of every shared sample file parses to the expected normalised fields.

Expectations live beside this test (``expectations/<format>/<file>.yaml``), one entry per record
keyed by line number, in the fail2ban / CrowdSec hub / Wazuh manner.  The samples themselves stay
outside the repository (``samples_dir`` fixture).  Where a sample carries its upstream project's
own expectations (fail2ban ``failJSON`` comments, rsyslog ``.parse1`` result lines, Elastic's
expected JSON), the parse is also checked against those.
"""
from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
import yaml

from vigil.collector.parsers import parse

from .samples import REF, expectation_path, observed, sample_files, sample_records

pytestmark = pytest.mark.unit


def test_every_sample_file_has_an_expectation_file(samples_dir):
    missing = [str(p) for p in sample_files(samples_dir)
               if p.name != "README.md" and not expectation_path(samples_dir, p).is_file()]
    assert not missing


def _cases(samples_dir):
    return [p for p in sample_files(samples_dir) if p.name != "README.md"]


def test_every_record_matches_its_expectation(samples_dir):
    checked = 0
    failures = []
    for sample in _cases(samples_dir):
        exp_path = expectation_path(samples_dir, sample)
        expected = yaml.safe_load(exp_path.read_text()) or {}
        total_lines = len(sample.read_bytes().decode("utf-8", "replace").split("\n"))
        if sample.read_bytes().endswith(b"\n"):
            total_lines -= 1
        covered = 0
        seen = set()
        for first, count, _rec, ev in sample_records(sample):
            seen.add(first)
            covered += count
            want = expected.get(first, "missing")
            got = observed(ev)
            if got is not None and count > 1:
                got = {"lines": count, **got}
            if want != got:
                failures.append(f"{sample.name}:{first}: expected {want!r}\n   got {got!r}")
            checked += 1
        assert covered == total_lines, f"{sample.name}: records cover {covered} of {total_lines} lines"
        extra = set(expected) - seen
        assert not extra, f"{exp_path.name}: expectations for lines that start no record: {sorted(extra)}"
    assert not failures, "\n".join(failures[:20])
    assert checked > 300


def test_no_security_sample_falls_back_to_raw(samples_dir):
    """Lines of the security formats must be recognised, not stored raw (comments/blank aside)."""
    raw = []
    for sample in _cases(samples_dir):
        fmt = sample.parent.name
        if fmt == "syslog" or sample.suffix in (".ini",) or sample.name.endswith("-expected.json"):
            continue
        for first, _n, rec, ev in sample_records(sample):
            if ev is not None and ev.source_type != fmt and not rec.startswith("#"):
                raw.append(f"{sample.name}:{first} -> {ev.source_type}")
    assert not raw


def test_fail2ban_failjson_time_and_host(samples_dir):
    """fail2ban's own annotation precedes each ModSecurity line: check time and client host."""
    lines = (samples_dir / "modsecurity" / "apache-modsecurity").read_text().split("\n")
    checked = 0
    for i, ln in enumerate(lines):
        if not ln.startswith("# failJSON:"):
            continue
        want = json.loads(ln.split(":", 1)[1])
        ev = parse(lines[i + 1], ref=REF)
        assert ev.src == want["host"]
        naive = datetime.utcfromtimestamp(ev.time).replace(microsecond=0).isoformat()
        assert naive == want["time"]
        checked += 1
    assert checked == 4


def test_rsyslog_parse1_pri_host_and_tag(samples_dir):
    """rsyslog's .parse1 files pair a message with its expected pri,facility,severity,date,host,tag."""
    checked = 0
    for path in sorted((samples_dir / "syslog").glob("*.parse1")):
        lines = [ln for ln in path.read_text(encoding="utf-8").split("\n") if ln and not ln.startswith("#")]
        for msg, result in zip(lines[0::2], lines[1::2]):
            pri, fac, _sev, _date, host, tag = result.split(",")[:6]
            ev = parse(msg, ref=REF)
            assert int(pri) == int(re.match(r"<(\d+)>", msg).group(1))
            assert ev.extra.get("facility") == fac, (path.name, msg)
            if host != "~H":       # rsyslog's placeholder for the local host name
                assert ev.device == host, (path.name, msg)
            else:
                assert ev.device is None
            if tag and "rfc5424" not in path.name:
                assert ev.extra.get("app") == tag, (path.name, msg)
            checked += 1
    assert checked >= 15


def test_elastic_expected_snort_syslog(samples_dir):
    """Elastic's pipeline output for the Snort syslog sample: addresses, ports, rule ids, message."""
    exp = json.loads((samples_dir / "snort" / "test-log-syslog.log-expected.json").read_text())
    docs = exp["expected"]
    for doc in docs:
        ev = parse(doc["event"]["original"], ref=REF)
        assert ev.src == doc["source"]["address"]
        assert ev.dst == doc["destination"]["address"]
        assert ev.sport == doc["source"].get("port")
        assert ev.dport == doc["destination"].get("port")
        rule = doc["rule"]
        assert ev.sig_id == f"1:{rule['id']}" and ev.extra["rev"] == int(rule["version"])
        assert ev.sig_name == rule["description"]
    assert len(docs) == 3
