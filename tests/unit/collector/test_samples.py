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


def test_eve_samples_agree_with_their_own_records(samples_dir):
    """Checked from the EVE records themselves (Suricata docs, "Eve JSON format"), not from the
    expectation files: addresses, ports, event type, time, and gid:signature_id for alerts."""
    from vigil.collector.framing import records
    n = 0
    for path in sorted((samples_dir / "suricata").glob("*")):
        for _first, _count, rec in records(path.read_text(encoding="utf-8")):
            try:
                obj = json.loads(rec)
            except ValueError:
                continue
            obj = obj.get("_source", obj) if isinstance(obj.get("_source"), dict) else obj
            if not isinstance(obj.get("event_type"), str):
                continue
            ev = parse(rec, ref=REF)
            assert ev.format == f"suricata-{obj['event_type']}", path.name
            assert (ev.src, ev.dst, ev.sport, ev.dport) == \
                (obj.get("src_ip"), obj.get("dest_ip"), obj.get("src_port"), obj.get("dest_port")), path.name
            ts = obj.get("timestamp") or obj.get("@timestamp")
            want = datetime.fromisoformat(re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", ts.replace("Z", "+00:00")))
            assert ev.time == pytest.approx(want.timestamp()), path.name
            if obj["event_type"] == "alert":
                assert ev.sig_id == f"{obj['alert'].get('gid', 1)}:{obj['alert']['signature_id']}"
            n += 1
    assert n >= 10


def test_snort_fast_samples_agree_with_their_own_lines(samples_dir):
    """alert_fast (Snort manual, "Output modules"): "MM/DD-HH:MM:SS.us [**] [gid:sid:rev] msg [**]
    ... {PROTO} src:port -> dst:port", read here by a plain split, not by the parser."""
    n = 0
    for ln in (samples_dir / "snort" / "test-log-fast.log").read_text().split("\n"):
        if "[**]" not in ln:
            continue
        ev = parse(ln, ref=REF)
        gid, sid, _rev = ln.split("[**] [", 1)[1].split("]", 1)[0].split(":")
        assert ev.sig_id == f"{gid}:{sid}"
        proto, flow = ln.rsplit("{", 1)[1].split("} ")
        a, b = flow.split(" -> ")
        assert ev.proto == proto.lower()
        for (host, port), (got_h, got_p) in ((a.rsplit(":", 1) if a.count(":") == 1 else (a, None), (ev.src, ev.sport)),
                                             (b.rsplit(":", 1) if b.count(":") == 1 else (b, None), (ev.dst, ev.dport))):
            assert got_h == host and got_p == (int(port) if port else None), ln
        assert datetime.utcfromtimestamp(ev.time).strftime("%m/%d-%H:%M:%S.%f") == ln[:21]
        n += 1
    assert n >= 5


def test_checkpoint_samples_agree_with_their_own_fields(samples_dir):
    """Log Exporter (sk144192), read independently: every key:"value" pair of the record is in the
    event's fields with its value; "origin" is the device; src/dst/service as the record says."""
    n = 0
    for name in ("test-checkpoint.log", "test-r81x.log"):
        for ln in (samples_dir / "checkpoint" / name).read_text(encoding="utf-8").split("\n"):
            if "CheckPoint" not in ln:
                continue
            ev = parse(ln, ref=REF)
            pairs = re.findall(r'(?:\[|; )([a-z_0-9:]+?)::?"((?:[^"\\]|\\.)*)"', ln)
            kv = ev.extra["kv"]
            for k, v in pairs:
                if k in kv and "\\" not in v:
                    assert kv[k] == v or ev.extra.get("duplicate_keys"), (name, k)
            assert len(kv) + ev.extra.get("duplicate_keys", 0) == len(pairs), (name, ln[:100])
            if "origin" in kv:
                assert ev.device == kv["origin"]
            if kv.get("src"):
                assert ev.src == kv["src"]
            if kv.get("dst"):
                assert ev.dst == kv["dst"]
            if kv.get("service", "").isdecimal():
                assert ev.dport == int(kv["service"])
            n += 1
    assert n >= 20
