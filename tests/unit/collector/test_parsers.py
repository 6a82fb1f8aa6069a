"""Hand-written cases for the oddities the samples do not cover, and fuzzing of every parser."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vigil.collector.event import HIGH, Event
from vigil.collector.parsers import FORMATS, ParseStats, parse
from vigil.collector.parsers import cef, checkpoint
from vigil.collector.syslog import iso_time, parse_header

pytestmark = pytest.mark.unit
REF = 1700000000.0


def test_checkpoint_escapes_and_duplicate_keys():
    ev = parse('<134>1 2023-03-01T07:57:07Z gw CheckPoint 1 - [action:"Drop"; src:"10.0.0.9"; '
               'comment:"a \\"q\\" and \\] here"; src:"10.0.0.10"; service:"22"; proto:"6"]')
    assert ev.source_type == "checkpoint" and ev.action == "block"
    assert ev.src == "10.0.0.9" and ev.extra["duplicate_keys"] == 1
    assert ev.extra["kv"]["comment"] == 'a "q" and ] here'
    assert (ev.dport, ev.proto) == (22, "tcp")


def test_checkpoint_structured_data_form():
    ev = parse('<85>1 2023-01-13T10:10:16Z 10.0.0.1 CP-GW - Log [Fields@1.3.6.1.4.1.2620 '
               'action="Reject" src="10.1.1.1" dst="10.2.2.2" s_port="1234" service="443" proto="17"]')
    assert (ev.format, ev.action, ev.src, ev.sport, ev.dport, ev.proto) == \
        ("checkpoint-sd", "block", "10.1.1.1", 1234, 443, "udp")


def test_cef_escapes_pipes_and_equals():
    ev = parse(r"CEF:0|V\|endor|Prod|1|sig\\1|Name|8|src=10.0.0.1 msg=a\=b c\\d act=blocked dpt=80")
    assert ev.extra["vendor"] == "V|endor" and ev.sig_id == "sig\\1"
    assert ev.extra["kv"]["msg"] == "a=b c\\d"
    assert ev.severity == HIGH and ev.action == "block" and ev.dport == 80


def test_cef_header_splitting():
    assert cef.split_header(r"0|a|b|c|d|e|5|k=v|w") == ["0", "a", "b", "c", "d", "e", "5", "k=v|w"]


def test_snort_json_alert():
    line = json.dumps({"timestamp": "11/23-10:00:00.123456", "proto": "TCP", "src_addr": "10.0.0.66",
                       "src_port": 4444, "dst_addr": "10.0.0.10", "dst_port": 80, "gid": 1, "sid": 1000,
                       "rev": 2, "msg": "SCAN nmap", "class": "Detection of a Network Scan",
                       "priority": 2, "action": "allow"})
    ev = parse(line, ref=REF)
    assert (ev.source_type, ev.format, ev.sig_id, ev.src, ev.dport, ev.action) == \
        ("snort", "snort-json", "1:1000", "10.0.0.66", 80, "alert")


def test_snort3_default_json_fields():
    ev = parse(json.dumps({"pkt_num": 1, "proto": "UDP", "src_ap": "10.0.0.1:53", "dst_ap": "10.0.0.2:999",
                           "rule": "1:2:3", "msg": "x", "action": "block"}))
    assert (ev.src, ev.sport, ev.dst, ev.dport, ev.sig_id, ev.action) == \
        ("10.0.0.1", 53, "10.0.0.2", 999, "1:2", "block")


def test_modsecurity_native_audit_log():
    rec = "\n".join([
        "--a1b2c3d4-A--",
        "[23/Nov/2026:10:00:00 +0000] XyZ 10.77.0.66 41234 10.77.0.10 80",
        "--a1b2c3d4-B--", "GET /?id=1' HTTP/1.1",
        "--a1b2c3d4-H--",
        'Message: Warning. detected SQLi [file "/x/REQUEST-942-APPLICATION-ATTACK-SQLI.conf"] [id "942100"] '
        '[msg "SQL Injection Attack Detected via libinjection"] [severity "CRITICAL"] [tag "attack-sqli"]',
        "Action: Intercepted (phase 2)",
        "--a1b2c3d4-Z--"])
    ev = parse(rec)
    assert (ev.format, ev.src, ev.sport, ev.sig_id, ev.category, ev.action) == \
        ("modsecurity-native", "10.77.0.66", 41234, "942100", "attack-sqli", "block")


def test_modsecurity_v3_json():
    obj = {"transaction": {"client_ip": "10.0.0.5", "client_port": 5555, "host_ip": "10.0.0.10",
                           "host_port": 80, "time_stamp": "Mon Nov 23 10:00:00 2026",
                           "response": {"http_code": 403},
                           "messages": [{"message": "SQL Injection", "details": {
                               "ruleId": "942100", "severity": "2", "tags": ["attack-sqli"]}}]}}
    ev = parse(json.dumps(obj))
    assert (ev.format, ev.src, ev.sig_id, ev.category, ev.action) == \
        ("modsecurity-json3", "10.0.0.5", "942100", "attack-sqli", "block")


def test_rsyslog_forwarded_modsecurity_line():
    """What rsyslog's imfile sends for an Apache error-log line: a syslog header in front."""
    body = ('[Mon Nov 23 10:00:00.123456 2026] [security2:error] [pid 1:tid 2] [client 10.77.0.66:4321] '
            '[client 10.77.0.66] ModSecurity: Warning. detected SQLi [file "/usr/share/modsecurity-crs/'
            'rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf"] [id "942100"] [severity "CRITICAL"] '
            '[tag "attack-sqli"] [hostname "10.77.0.10"]')
    ev = parse("<131>Nov 23 10:00:01 server apache-error: " + body, ref=REF)
    assert (ev.source_type, ev.src, ev.sport, ev.category, ev.device) == \
        ("modsecurity", "10.77.0.66", 4321, "attack-sqli", "server")


def test_iso_offsets():
    assert iso_time("2023-01-13T10:10:16--5:00") == iso_time("2023-01-13T15:10:16Z")
    assert iso_time("2022-07-10T23:50:05.5+0200") == iso_time("2022-07-10T21:50:05.5Z")
    assert iso_time("2022-13-10T23:50:05Z") is None


def test_unknown_format_is_kept_raw_with_header():
    ev = parse("<13>Nov 23 10:00:00 host app[7]: something else")
    assert (ev.source_type, ev.device, ev.extra["app"], ev.extra["procid"]) == ("syslog", "host", "app", "7")


def test_parser_failure_is_counted_and_kept(monkeypatch):
    stats = ParseStats()

    def boom(*a, **k):
        raise RuntimeError("bug")
    monkeypatch.setattr(checkpoint, "parse", boom)
    ev = parse('<134>1 2023-03-01T07:57:07Z gw CheckPoint 1 - [action:"Drop"]', stats=stats)
    assert ev.source_type == "syslog" and "RuntimeError" in ev.extra["parse_error"]
    assert stats.errors["auto"] == 1


# -- fuzzing -------------------------------------------------------------------------------
PREFIXES = ["", "<134>1 2023-03-01T07:57:07Z gw CheckPoint 1 - [", "CEF:0|", "CEF: 0|a|b|c|d|e|",
            "05/30-19:09:10.917356  [**] [1:2:3] ", "[**] [1:2:3] x [**]\n", "Sep  5 16:05:26 dev snort: [1:2:3] ",
            "09/04-21:45:37.536335 ,1,2,3,", "[Thu Sep 30 13:27:06.009964 2021] [:error] [client ",
            "2021/11/18 08:34:27 [info] 1#1: *1 ModSecurity: ", '{"event_type":"alert","alert":',
            '{"transaction":', "--abcdef12-A--\n", "<13>", "<999>", "1 ", "<34>1 - - - - - [x@1 a=\""]
ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PREFIXES), st.text(ALPHABET, max_size=300), st.sampled_from(FORMATS))
def test_no_exception_escapes_any_parser(prefix, tail, hint):
    stats = ParseStats()
    ev = parse(prefix + tail, ref=REF, hint=hint, stats=stats)
    assert ev is None or isinstance(ev, Event)
    assert not stats.errors, (prefix + tail, ev and ev.extra.get("parse_error"))


@settings(max_examples=500, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["event_type", "alert", "transaction", "audit_data", "messages",
                                         "src_ip", "timestamp", "sid", "msg", "rule", "anomaly", "flow",
                                         "_source", "severity", "src_ap", "time_stamp", "details"]),
                        c, max_size=6), max_leaves=20))
def test_json_parsers_take_any_shape(obj):
    stats = ParseStats()
    parse(json.dumps(obj), stats=stats)
    assert not stats.errors


@settings(max_examples=500, deadline=None)
@given(st.text(ALPHABET, max_size=200))
def test_syslog_header_never_raises(s):
    parse_header(s)
    parse_header("<13>" + s)
    parse_header("<13>1 " + s)


def test_pfsense_snort_csv_layout():
    ev = parse('11/23/26-10:00:00.250000 ,1,2000001,3,"ET SCAN something",TCP,10.9.8.7,5555,10.0.0.10,22,'
               '1234,Attempted Information Leak,2,alert,Block', ref=REF)
    assert (ev.format, ev.category, ev.severity, ev.action, ev.dport) == \
        ("snort-csv", "Attempted Information Leak", 2, "block", 22)
    assert ev.time == iso_time("2026-11-23T10:00:00.25Z")


def test_snort3_json_uses_epoch_seconds():
    ev = parse(json.dumps({"seconds": 1763892000, "timestamp": "11/23-10:00:00.500000", "pkt_num": 3,
                           "proto": "ICMP", "src_addr": "10.0.0.1", "dst_addr": "10.0.0.2", "gid": 1,
                           "sid": 9, "rev": 1, "msg": "ping", "class": "none", "priority": 3}))
    assert ev.time == 1763892000.5 and ev.category is None and ev.severity == 1


def test_checkpoint_packet_drop_and_body_time_forms():
    ev = parse('[action:"Drop"; time:"1737452170000"; packets:" <192.0.2.7,45000,198.51.100.2,443,6;eth0> '
               '<192.0.2.7,45001,198.51.100.3,80,17>"]')
    assert (ev.src, ev.sport, ev.dst, ev.dport, ev.proto) == ("192.0.2.7", 45000, "198.51.100.2", 443, "tcp")
    assert ev.time == 1737452170.0
    ev = parse('[action:"Accept"; time:"2021-05-05T12:27:09Z"; src:"192.0.2.1"]')
    assert ev.time == iso_time("2021-05-05T12:27:09Z")


def test_suricata_fast_log():
    ev = parse("11/23/2026-10:00:00.000100  [**] [1:2010935:3] ET SCAN Suspicious inbound to MSSQL port 1433 [**] "
               "[Classification: Potentially Bad Traffic] [Priority: 2] {TCP} 10.77.0.66:51000 -> 10.77.0.10:1433")
    assert (ev.source_type, ev.format, ev.sig_id, ev.dport, ev.severity) == \
        ("suricata", "suricata-fast", "1:2010935", 1433, 2)
    assert ev.time == iso_time("2026-11-23T10:00:00.0001Z")


def test_modsecurity_client_address_check_agrees_with_ipaddress():
    """The dotted-quad fast path of ``_is_ip`` gives ipaddress's verdict on tricky strings."""
    import ipaddress
    import itertools

    from vigil.collector.parsers.modsecurity import _is_ip

    def ref(s):
        try:
            ipaddress.ip_address(s)
            return True
        except ValueError:
            return False
    octets = ["0", "00", "01", "1", "255", "256", "999", "", " 1", "\u0661", "+1", "1a"]
    cases = [".".join(p) for n in (3, 4, 5) for p in itertools.islice(itertools.product(octets, repeat=n), 3000)]
    cases += ["10.4.0.1", "::1", "fe80::1", "::ffff:1.2.3.4", "1.2.3.4 ", "a.b.c.d", "0.0.0.0", "255.255.255.255"]
    for s in cases:
        assert _is_ip(s) == ref(s), s
