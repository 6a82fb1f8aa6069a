"""Every file of ../shared/samples-more (30 real files from other vendors, versions and dialects),
each checked against what its format's specification says and, where the upstream project ships
its own expected output (Metron, Graylog, syslog-ng, rsyslog, fail2ban, OSSEC/Wazuh decoders,
suricata-verify), against that output.  The source of each expectation is named beside it; no
expectation here was taken from this parser's output.  The files stay outside the repository.
"""
from __future__ import annotations

import ast
import calendar
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from vigil.collector.event import severity_from_syslog
from vigil.collector.framing import records
from vigil.collector.parsers import parse
from vigil.collector.parsers.cef import _time as cef_time
from vigil.collector.syslog import FACILITIES, parse_header

pytestmark = pytest.mark.unit
REF = 1700000000.0     # 2023-11-14: year-less times take the latest year not after it


def lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]


def utc(*t) -> float:
    return float(calendar.timegm(t + (0,) * (6 - len(t)) + (0, 0, 0)))


def mdhms(ts: float) -> str:
    """Month, day and time without the year (for sources that assume a year of their own)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%m-%d %H:%M:%S")


# Which test covers which file: a new file in samples-more fails here until it is covered.
COVERED = {
    "cef/arcsight-f5-asm-certified-cef-onfiguration-guide_page7_example1.json": "test_graylog_cef_fixtures",
    "cef/issue_7_comment_245885985.json": "test_graylog_cef_fixtures",
    "cef/issue_7_comment_331396550.json": "test_graylog_cef_fixtures",
    "cef/cyberark.cef": "test_metron_cyberark_cef", "cef/cyberark.json": "test_metron_cyberark_cef",
    "cef/empty-fields.log": "test_cef_empty_fields_behind_three_headers",
    "cef/palo.cef": "test_metron_palo_and_imperva_cef", "cef/waf.cef": "test_metron_palo_and_imperva_cef",
    "checkpoint/R80.X.log": "test_checkpoint_log_exporter_files",
    "checkpoint/test-checkpoint-audit.log": "test_checkpoint_log_exporter_files",
    "checkpoint/test-checkpoint-authentication.log": "test_checkpoint_log_exporter_files",
    "checkpoint/test_checkpoint.py": "test_syslog_ng_checkpoint_program_host_date",
    "modsecurity/read_test.go": "test_go_ftw_modsecurity_lines",
    "snort/SnortOutput": "test_metron_snort_csv", "snort/SnortParsed": "test_metron_snort_csv",
    "snort/http2-files-fast.log": "test_suricata_verify_fast_log_ipv6",
    "snort/snort.ini": "test_ossec_snort_lines", "snort/snort.extracted.log": "test_ossec_snort_lines",
    "suricata/output-eve-fileinfo-eve.json": "test_eve_files",
    "suricata/test-eve-dns-4-1-4.log": "test_eve_files", "suricata/test-eve-small.log": "test_eve_files",
    "syslog/Syslog3164Output": "test_metron_syslog3164", "syslog/Syslog3164Parsed": "test_metron_syslog3164",
    "syslog/cisco_ios.ini": "test_wazuh_cisco_ios_lines", "syslog/cisco_ios.extracted.log": "test_wazuh_cisco_ios_lines",
    "syslog/mikrotik-logs.log": "test_mikrotik_rfc3339_without_pri",
    "syslog/unifi-logs.log": "test_unifi_lines_without_pri",
    "syslog/samples.parse-nodate": "test_rsyslog_parse_nodate",
    "syslog/test_msgparse.c": "test_syslog_ng_msgparse_cases",
    "syslog/zzz-generic-example": "test_fail2ban_generic_example_times",
}


def test_every_file_is_covered_and_parses_without_error(more_dir):
    files = sorted(str(p.relative_to(more_dir)) for p in more_dir.glob("*/*") if p.is_file())
    assert files == sorted(COVERED), "files in samples-more without a test (or tests without a file)"
    assert set(COVERED.values()) <= set(globals()), "COVERED names a test that does not exist"
    for rel in files:
        text = (more_dir / rel).read_bytes().decode("utf-8", "replace")
        for _first, _n, rec in records(text):
            ev = parse(rec, ref=REF)
            assert ev is None or "parse_error" not in ev.extra, (rel, rec[:200], ev.extra.get("parse_error"))


# -- CEF ---------------------------------------------------------------------------------------
def _graylog(path: Path) -> dict:
    """Graylog's fixtures: JSON with // comment lines (not strict JSON)."""
    return json.loads("\n".join(ln for ln in path.read_text().split("\n") if not ln.strip().startswith("//")))


def test_graylog_cef_fixtures(more_dir):
    """Graylog's CEF codec fixtures: the header fields and extensions it expects for testString."""
    checked = 0
    for name in ("issue_7_comment_245885985.json", "issue_7_comment_331396550.json",
                 "arcsight-f5-asm-certified-cef-onfiguration-guide_page7_example1.json"):
        fx = _graylog(more_dir / "cef" / name)
        ev = parse(fx["testString"], ref=REF)
        assert ev.source_type == "cef", name
        x = ev.extra
        assert (x["vendor"], x["product"], x["version"]) == \
            (fx["deviceVendor"], fx["deviceProduct"], fx["deviceVersion"]), name
        assert ev.sig_id == fx["deviceEventClassId"] and ev.sig_name == fx["name"], name
        assert int(x["cef_version"]) == fx["cefVersion"]
        kv = x["kv"]
        for k, v in fx["extensions"].items():
            # Graylog names custom fields by their labels (cs3Label=HostName_Ext -> HostName_Ext);
            # the collector keeps csN/csNLabel as sent, so those are compared through the label
            if isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", v):
                # Graylog turns date-typed fields into ISO UTC; compare the instant
                label = k if k in kv else next(n[:-5] for n, lv in kv.items() if n.endswith("Label") and lv == k)
                assert cef_time(kv[label]) == datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
                checked += 1
            elif k in kv:
                assert kv[k] == str(v), (name, k)
                checked += 1
            else:
                label = next(n[:-5] for n, lv in kv.items() if n.endswith("Label") and lv == k)
                assert kv[label] == str(v), (name, k)
                checked += 1
        if "src" in fx["extensions"]:
            assert ev.src == fx["extensions"]["src"]
    assert checked >= 60


def test_metron_cyberark_cef(more_dir):
    """Metron's expected parse of cyberark.cef (full CEF key names)."""
    ev = parse((more_dir / "cef" / "cyberark.cef").read_text(), ref=REF)
    want = json.loads((more_dir / "cef" / "cyberark.json").read_text())
    assert (ev.extra["vendor"], ev.extra["product"], ev.extra["version"]) == \
        (want["device_vendor"], want["device_product"], want["device_version"])
    assert (ev.sig_id, ev.sig_name) == (want["event_class_id"], want["event_name"])
    kv = ev.extra["kv"]
    assert kv["act"] == want["deviceAction"] and kv["dvc"] == want["deviceAddress"] == ev.device
    assert kv["fname"] == want["fileName"]
    # Metron reads the BSD header "Mar 21 14:05:02" in its own year; month, day and time agree
    assert mdhms(ev.time) == "03-21 14:05:02"


def test_cef_empty_fields_behind_three_headers(more_dir):
    """Elastic's empty-fields test: one event behind RFC 3164 with and without PRI and RFC 5424
    without PRI; CEF allows empty extension values (ArcSight CEF: "key=" with nothing after)."""
    evs = [parse(ln, ref=REF) for ln in lines(more_dir / "cef" / "empty-fields.log")]
    assert [e.source_type for e in evs] == ["cef"] * 3
    assert [e.extra["kv"] for e in evs] == [
        {"cs1": "", "msg": "rfc3164"}, {"msg": "rfc3164", "cs2": ""},
        {"cs4": "", "msg": "rfc5424", "cs3": "", "cs1": "", "cs2": "", "eventId": "22"}]
    assert {e.sig_id for e in evs} == {"18"} and {e.device for e in evs} == {"192.0.2.1"}
    assert {e.severity for e in evs} == {1}                       # "low"
    assert evs[2].time == utc(2021, 4, 1, 5, 14, 15) + 0.000003          # RFC 3339 time of line 3


def test_metron_palo_and_imperva_cef(more_dir):
    """PAN-OS CEF (rt with GMT, spt/dpt) and Imperva SecureSphere (severity High, empty Name,
    rt "31 March 2016 13:04:55", act=alert)."""
    palo = parse((more_dir / "cef" / "palo.cef").read_text(), ref=REF)
    assert palo.time == utc(2017, 4, 7, 0, 10, 10)
    assert (palo.src, palo.dst, palo.sport, palo.dport) == ("10.10.10.10", "20.20.20.20", 18371, 443)
    assert palo.extra["product"] == "PAN-OS" and palo.device == "hostname"
    waf = parse((more_dir / "cef" / "waf.cef").read_text(), ref=REF)
    assert waf.time == utc(2016, 3, 31, 13, 4, 55) and waf.severity == 3 and waf.action == "alert"
    assert waf.sig_name is None and waf.extra["vendor"] == "Imperva Inc."


# -- Check Point -------------------------------------------------------------------------------
def test_checkpoint_log_exporter_files(more_dir):
    """Log Exporter (sk144192): every record's key:"value" pairs; "time" is the epoch of the log,
    which the RFC 5424 header repeats; "origin" is the gateway that logged it."""
    n = 0
    for name in ("R80.X.log", "test-checkpoint-audit.log", "test-checkpoint-authentication.log"):
        for ln in lines(more_dir / "checkpoint" / name):
            ev = parse(ln, ref=REF)
            assert ev.source_type == "checkpoint", (name, ln[:120])
            kv = ev.extra["kv"]
            assert ev.time == float(kv["time"]) and ev.device == kv["origin"]
            if "action" in kv:
                assert ev.extra["kv"]["action"] and ev.action
            else:
                assert kv["alert"] and ev.action == "alert"
            pairs = re.findall(r'(?:^|[\[; ])([a-z_:]+):"', ln.split(" - [", 1)[1])
            assert len(kv) + ev.extra.get("duplicate_keys", 0) >= len(pairs) - 1
            n += 1
    assert n == 26


def test_syslog_ng_checkpoint_program_host_date(more_dir):
    """syslog-ng's test: each raw message with the expected <PROGRAM><HOST><S_DATE>."""
    tree = ast.parse((more_dir / "checkpoint" / "test_checkpoint.py").read_text())
    cases = next(ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and node.targets[0].id == "test_parameters_raw")
    assert len(cases) == 4
    for msg, want in cases:
        ev = parse(msg, ref=REF)
        program, host, date = re.fullmatch(r"<(.*)><(.*)><(.*)>", want).groups()
        assert ev.source_type == "checkpoint" and ev.device == ev.extra["kv"]["origin"]
        # the header's host and program (the event's device is the logging gateway, "origin")
        h, _ = parse_header(msg, REF)
        assert (h.app, h.host) == (program, host)
        assert datetime.fromtimestamp(h.time, timezone.utc).strftime("%b %e %H:%M:%S") == date


# -- ModSecurity -------------------------------------------------------------------------------
_LINE_START = re.compile(r"\[(?:[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d|\d{4}-\d\d-\d\d) |\d{4}/\d\d/\d\d ")
_GO_STRING = re.compile(r'`([^`]*)`|"((?:[^"\\]|\\.)*)"')


def _go_log_lines(text: str) -> list[str]:
    """The ModSecurity lines of go-ftw's test: inside raw strings, or (one nginx line holding
    backquotes) spread over a fmt.Sprint of raw and quoted pieces, joined here as Go joins them."""
    src = text.split("\n")
    out = []
    for i, raw in enumerate(src):
        if "ModSecurity:" not in raw:
            continue
        spread = raw.rstrip().endswith("`,")
        if spread:
            joined = ""
            for piece in src[i:i + 3]:
                for m in _GO_STRING.finditer(piece):
                    joined += m.group(1) if m.group(1) is not None else ast.literal_eval('"' + m.group(2) + '"')
            raw = joined
        m = _LINE_START.search(raw)
        assert m, raw[:120]
        out.append(raw[m.start():] if spread else raw[m.start():].split("`", 1)[0])
    return out


def test_go_ftw_modsecurity_lines(more_dir):
    """CRS go-ftw's WAF-log reader tests: Apache and nginx error-log lines of ModSecurity + CRS, in
    Go strings.  Per ModSecurity's error-log format: the rule id is the first [id "..."], the
    client the [client ...] ModSecurity adds (nginx: ", client: ..."), the message the rule's
    [msg "..."], the time the Apache "[Www Mmm dd hh:mm:ss.us yyyy]" or nginx "yyyy/mm/dd hh:mm:ss"."""
    found = 0
    for ln in _go_log_lines((more_dir / "modsecurity" / "read_test.go").read_text()):
        ev = parse(ln, ref=REF)
        assert ev.source_type == "modsecurity", ln[:160]
        ids = re.findall(r'\[id "(\d+)"\]', ln)
        assert ev.sig_id == (ids[0] if ids else None)          # one test line spells it [id="..."]
        clients = re.findall(r"\[client ([0-9.]+)\]", ln) or re.findall(r", client: ([0-9.]+)", ln)
        if clients:
            assert ev.src == clients[-1]
        msg = re.search(r'\[msg "((?:[^"\\]|\\.)*)"\]', ln)
        if msg:
            assert ev.sig_name == msg.group(1).replace('\\"', '"')
        t = re.match(r"\[[A-Z][a-z]{2} ([A-Z][a-z]{2}) (\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) (\d{4})\]", ln)
        if t:
            mon, d, hh, mi, ss, frac, y = t.groups()
            want = utc(int(y), datetime.strptime(mon, "%b").month, int(d), int(hh), int(mi), int(ss))
            assert ev.time == pytest.approx(want + int(frac) / 10 ** len(frac))
        t = re.match(r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) ", ln)
        if t:
            assert ev.time == utc(*map(int, t.groups()))
        found += 1
    assert found == 33


# -- Snort / Suricata fast and CSV ---------------------------------------------------------------
def test_metron_snort_csv(more_dir):
    """Metron's expected parse of Snort alert_csv: a field per column.  Metron's epoch "timestamp"
    is not compared: it reads the microseconds as milliseconds in its local zone (16:01:04.877970
    becomes 22:15:41.970), which the CSV's own time contradicts."""
    inp = lines(more_dir / "snort" / "SnortOutput")
    exp = [json.loads(ln) for ln in lines(more_dir / "snort" / "SnortParsed")]
    assert [e["original_string"] for e in exp] == inp
    for ln, want in zip(inp, exp):
        ev = parse(ln, ref=REF)
        assert ev.format == "snort-csv"
        assert ev.sig_id == f"{want['sig_generator']}:{want['sig_id']}" and ev.extra["rev"] == int(want["sig_rev"])
        assert (ev.src, ev.sport, ev.dst, ev.dport) == \
            (want["ip_src_addr"], int(want["ip_src_port"]), want["ip_dst_addr"], int(want["ip_dst_port"]))
        assert ev.sig_name == want["msg"] and ev.proto == want["protocol"].lower()
        mm, dd, yy = ln[:8].split("/")
        assert datetime.fromtimestamp(ev.time, timezone.utc).strftime("%m/%d/%y-%H:%M:%S.%f") == ln[:24]


def test_suricata_verify_fast_log_ipv6(more_dir):
    """suricata-verify's expected fast.log: IPv6 written in full with the port after the last
    colon; "(null)" where the rule has no msg or classtype; MM/DD/YYYY dates."""
    for ln in lines(more_dir / "snort" / "http2-files-fast.log"):
        ev = parse(ln, ref=REF)
        assert ev.format == "suricata-fast"
        a, b = ln.split("} ", 1)[1].split(" -> ")
        assert (ev.src, str(ev.sport)) == tuple(a.rsplit(":", 1)) and (ev.dst, str(ev.dport)) == tuple(b.rsplit(":", 1))
        assert ev.sig_name is None and ev.category is None
        assert ev.sig_id == "1:" + re.search(r"\[1:(\d+):\d+\]", ln).group(1)
        assert ev.time - utc(2014, 8, 2, 10, 50, 25) < 1


def test_ossec_snort_lines(more_dir):
    """OSSEC's snort.ini: both lines decode as Snort alerts (decoder snort, rule 20101); the
    second is from inline mode, "[Drop]" before the first [**] (Snort manual), so a block."""
    ini = (more_dir / "snort" / "snort.ini").read_text()
    assert "decoder = snort" in ini
    evs = [parse(ln, ref=REF) for ln in lines(more_dir / "snort" / "snort.extracted.log")]
    assert [e.format for e in evs] == ["snort-fast", "snort-fast"]
    assert [e.action for e in evs] == ["alert", "block"]
    assert [e.sig_id for e in evs] == ["1:10000001", "1:10000002"]
    assert (evs[1].src, evs[1].sport, evs[1].dst, evs[1].dport) == ("10.1.4.2", 59244, "10.1.7.2", 80)
    for rec in records(ini):
        parse(rec[2], ref=REF)


# -- Suricata EVE --------------------------------------------------------------------------------
def test_eve_files(more_dir):
    """EVE JSON (Suricata docs, "Eve JSON format"): addresses, ports, event type and time as the
    record states them; alerts carry gid:signature_id."""
    n = 0
    for name in ("test-eve-small.log", "test-eve-dns-4-1-4.log", "output-eve-fileinfo-eve.json"):
        for ln in lines(more_dir / "suricata" / name):
            rec = json.loads(ln)
            ev = parse(ln, ref=REF)
            assert ev.source_type == "suricata" and ev.format == f"suricata-{rec['event_type']}"
            assert (ev.src, ev.dst) == (rec.get("src_ip"), rec.get("dest_ip"))
            assert (ev.sport, ev.dport) == (rec.get("src_port"), rec.get("dest_port"))
            ts = datetime.strptime(rec["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            assert ev.time == pytest.approx(ts)
            if rec["event_type"] == "alert":
                assert ev.sig_id == f"{rec['alert'].get('gid', 1)}:{rec['alert']['signature_id']}"
            n += 1
    assert n == 37


# -- syslog ----------------------------------------------------------------------------------------
def test_metron_syslog3164(more_dir):
    """Metron's expected parse of 100 Cisco ASA messages: pri, facility, severity, host, message.
    Metron assumes 2018 for the year-less time; month, day and time are compared."""
    inp = (more_dir / "syslog" / "Syslog3164Output").read_text().split("\n")
    exp = [json.loads(ln) for ln in (more_dir / "syslog" / "Syslog3164Parsed").read_text().split("\n") if ln]
    assert len(inp) == len(exp) == 100
    for ln, want in zip(inp, exp):
        assert want["original_string"] == ln
        ev = parse(ln, ref=REF)
        pri = int(want["syslog.header.pri"])
        assert ev.extra["facility"] == FACILITIES[int(want["syslog.header.facility"])]
        assert pri >> 3 == int(want["syslog.header.facility"]) and pri & 7 == int(want["syslog.header.severity"])
        assert ev.severity == severity_from_syslog(int(want["syslog.header.severity"]))
        assert ev.device == want["syslog.header.hostName"]
        assert f"{ev.extra['app']}: {ev.extra['msg']}" == want["syslog.message"]
        assert mdhms(ev.time) == datetime.fromtimestamp(want["timestamp"] / 1000, timezone.utc).strftime("%m-%d %H:%M:%S")


def test_wazuh_cisco_ios_lines(more_dir):
    """Wazuh's cisco-ios decoder tests: the IP host before "%FAC-SEV-MNEMONIC:" and the relayed
    line with a year-first second header (the relay keeps the original host and time)."""
    got = [parse(ln, ref=REF) for ln in lines(more_dir / "syslog" / "cisco_ios.extracted.log")]
    assert len(got) == 17
    for ev, ln in zip(got, lines(more_dir / "syslog" / "cisco_ios.extracted.log")):
        if re.match(r"[A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d \d+\.\d+\.\d+\.\d+ %", ln):
            assert ev.device == ln.split()[3] and ev.extra["app"].startswith("%")
    relayed = next(e for e in got if e.raw.startswith("2019 May 06"))
    assert relayed.extra["relay"] == "vm-ubuntu16->10.0.0.16" and relayed.device == "vm-ubuntu16"
    assert relayed.time == utc(2019, 5, 6, 7, 28, 11) and relayed.extra["app"] == "fortinet"
    assert "decoder = cisco-ios" in (more_dir / "syslog" / "cisco_ios.ini").read_text()


def test_mikrotik_rfc3339_without_pri(more_dir):
    """RouterOS lines as a receiving server writes them: RFC 3339 time with offset, then host."""
    for ln in lines(more_dir / "syslog" / "mikrotik-logs.log"):
        ev = parse(ln, ref=REF)
        ts, host = ln.split(" ")[:2]
        assert ev.time == pytest.approx(datetime.fromisoformat(ts).timestamp()) and ev.device == host
        assert ev.extra["facility"] == "user"          # no PRI: RFC 3164 4.3.3 default 13


def test_unifi_lines_without_pri(more_dir):
    """UniFi lines: BSD time and host; the repeated host (a relay adding its own header) is kept
    as the tag, the host stays the first."""
    evs = [parse(ln, ref=REF) for ln in lines(more_dir / "syslog" / "unifi-logs.log")]
    assert [e.device for e in evs] == ["UDMP-DTC"] * 3 + ["Dream-Machine-Pro"]
    assert [mdhms(e.time) for e in evs] == ["06-13 23:29:15"] * 3 + ["06-27 09:02:22"]


def test_rsyslog_parse_nodate(more_dir):
    """rsyslog's expected pri,facility,severity,...,tag for messages without a date (~H: local host)."""
    ls = [ln for ln in (more_dir / "syslog" / "samples.parse-nodate").read_text().split("\n")
          if ln and not ln.startswith("#")]
    pairs = list(zip(ls[0::2], ls[1::2]))
    assert len(pairs) == 2
    for msg, result in pairs:
        pri, fac, sev, _h = result.split(",")[:4]
        ev = parse(msg, ref=REF)
        assert ev.extra["facility"] == fac and ev.severity == severity_from_syslog(int(pri) & 7)
        assert int(pri) == (FACILITIES.index(fac) << 3 | ["emerg", "alert", "crit", "err", "warning", "notice",
                                                         "info", "debug"].index(sev))
        assert ev.device is None


def test_syslog_ng_msgparse_cases(more_dir):
    """syslog-ng's message-parser cases: the expected PRI of every case (13 when the message has
    none, syslog-ng's default), and the host and program of the RFC 5424 cases."""
    src = (more_dir / "syslog" / "test_msgparse.c").read_text()
    case = re.compile(r'\{\s*"((?:[^"\\]|\\.)*)",\s*([A-Z_| ]+|0),\s*(?:NULL|"(?:[^"\\]|\\.)*"),\s*'
                      r'(-?\d+|[A-Z_|() ]+?),\s*[^\n]*\n\s*(-?\d+), (\d+), (-?\d+),[^\n]*\n\s*'
                      r'(NULL|"(?:[^"\\]|\\.)*"),[^\n]*\n\s*(NULL|"(?:[^"\\]|\\.)*"),')
    checked = pri_checked = 0
    for m in case.finditer(src):
        msg = ast.literal_eval('"' + m.group(1) + '"')
        flags, pri_s = m.group(2), m.group(3)
        if not pri_s.lstrip("-").isdecimal() or "\\x" in m.group(1) or "\\3" in m.group(1):
            continue
        if m.group(8) == '"syslog-ng"':
            continue              # syslog-ng rejects the message (its own error message is expected)
        ev = parse(msg, ref=REF)
        if ev is None:
            continue
        pri = int(pri_s)
        if "LP_SYSLOG_PROTOCOL" in flags and msg.startswith("<") and ev.format != "raw":
            h, _ = parse_header(msg, REF)
            if h is not None and h.kind == "rfc5424" and h.pri is not None:
                assert h.pri == pri, msg
                host = None if m.group(7) == "NULL" else ast.literal_eval(m.group(7))
                prog = None if m.group(8) == "NULL" else ast.literal_eval(m.group(8))
                if host:
                    assert h.host == host, msg
                if prog:
                    assert h.app == prog, msg
                checked += 1
        elif re.match(r"<(\d{1,3})>", msg) and 0 <= pri <= 191 and int(msg[1:msg.index(">")]) == pri:
            h, _ = parse_header(msg, REF)
            assert h is not None and h.pri == pri, msg
            pri_checked += 1
    print(f"syslog-ng cases checked: {checked} RFC 5424 (pri, host, program), {pri_checked} PRI")
    assert checked >= 10 and pri_checked >= 10, (checked, pri_checked)


def test_fail2ban_generic_example_times(more_dir):
    """fail2ban's failJSON annotations: the time of each following line (fail2ban's tests assume
    the year 2005 for year-less lines; month, day and time are compared) for the header forms the
    collector reads: BSD with and without host, -vv <auth.info>, ISO dates."""
    ls = (more_dir / "syslog" / "zzz-generic-example").read_text().split("\n")
    checked = 0
    for i, ln in enumerate(ls):
        if not ln.startswith("# failJSON:"):
            continue
        want = json.loads(ln.split(":", 1)[1])
        if not want.get("match") or "time" not in want or i + 1 >= len(ls):
            continue
        line = ls[i + 1]
        if not re.match(r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [a-z])", line):
            continue            # bracketed dates, zone words, multi-line plist: not syslog headers
        if want["time"] is None:
            # "0000-12-30": no year 0 in ISO 8601 / the proleptic calendar; fail2ban has no time either
            assert parse(line, ref=REF).time is None
            continue
        ev = parse(line, ref=REF)
        assert ev.time is not None, line
        assert mdhms(ev.time) == want["time"][5:].replace("T", " "), line
        checked += 1
    assert checked >= 8, checked
