"""Syslog dialects, each expectation written from the specification or the writer's source named
beside it (not from this parser's output)."""
from __future__ import annotations

import calendar

import pytest

from vigil.collector.event import LOW
from vigil.collector.parsers import parse
from vigil.collector.syslog import bsd_time, parse_header

pytestmark = pytest.mark.unit

DEC_2026 = calendar.timegm((2026, 12, 6, 12, 0, 0, 0, 0, 0))


def utc(*t) -> float:
    return float(calendar.timegm(t + (0,) * (6 - len(t)) + (0, 0, 0)))


@pytest.mark.parametrize("line, pri", [
    # FreeBSD syslogd.c fprintlog(): -v writes "<%d.%d> " (LOG_FAC, LOG_PRI numbers) after the time
    ("Mar 19 23:48:18 <4.6> pancake sshd[55517]: Invalid user r00t", 4 * 8 + 6),
    # -vv writes the names from facilitynames/prioritynames ("auth", "info")
    ("Mar 19 23:48:18 <auth.info> pancake sshd[55517]: Invalid user r00t", 4 * 8 + 6),
    ("Mar 19 23:48:18 <security.warn> pancake sshd[55517]: Invalid user r00t", 4 * 8 + 4),
    ("Mar 19 23:48:18 <local7.err> pancake sshd[55517]: Invalid user r00t", 23 * 8 + 3),
])
def test_bsd_syslogd_v_and_vv_headers(line, pri):
    h, body = parse_header(line, DEC_2026)
    assert (h.pri, h.host, h.app, h.procid) == (pri, "pancake", "sshd", "55517")
    assert body == "Invalid user r00t"
    assert h.time == utc(2026, 3, 19, 23, 48, 18)


def test_year_first_and_year_last_bsd_times():
    # Wazuh's relayed Cisco line (samples-more cisco_ios.extracted.log) starts "2019 May 06 09:28:12"
    h, _ = parse_header("2015 Nov 13 10:00:01 fw01 sshd[7]: x", DEC_2026)
    assert (h.time, h.host, h.app) == (utc(2015, 11, 13, 10, 0, 1), "fw01", "sshd")
    # syslog-ng lib/tests/test_msgparse.c: "Apr 15 21:28:13 2007 linksys ..." (year after the time)
    h, _ = parse_header("<7>Apr 15 21:28:13 2007 linksys app: x", DEC_2026)
    assert (h.time, h.host) == (utc(2007, 4, 15, 21, 28, 13), "linksys")
    # ... and Cisco's "Apr 15 2007 21:28:13:" (year between day and time)
    h, _ = parse_header("<7>Apr 15 2007 21:28:13: %PIX-6-302014: x", DEC_2026)
    assert h.time == utc(2007, 4, 15, 21, 28, 13)
    # fail2ban zzz-generic-example: "2005-06-21 16:55:09 machine ..." (ISO date, space, no zone)
    h, _ = parse_header("2005-06-21 16:55:09 machine sshd[1]: x", DEC_2026)
    assert (h.time, h.host) == (utc(2005, 6, 21, 16, 55, 9), "machine")


def test_rfc3164_default_pri_is_user_notice():
    # RFC 3164 4.3.3: no PRI -> 13 (user.notice); rsyslog samples.parse-nodate expects 13,user,notice
    ev = parse("This is a message!")
    assert ev.extra["facility"] == "user" and ev.severity == LOW and ev.extra["pri_default"]
    ev = parse("Mar 19 23:48:18 pancake sshd[1]: x", ref=DEC_2026)
    assert ev.extra["facility"] == "user" and ev.severity == LOW
    ev = parse("<27>xapi: [error|xen3|15|Guest liveness monitor D:bca30ab3f1c1|master_connection] x")
    assert ev.extra["facility"] == "daemon" and "pri_default" not in ev.extra


@pytest.mark.parametrize("mon, day, now, year", [
    (2, 10, (2026, 12, 6), 2026),     # issue 14: a February line read in December was put in 2027
    (12, 10, (2027, 1, 2), 2026),     # December read in January: last year
    (1, 1, (2027, 1, 2), 2027),       # yesterday
    (1, 10, (2027, 1, 2), 2026),      # eight days ahead: not this year's, last year's
    (12, 31, (2026, 12, 6), 2025),
    (12, 7, (2026, 12, 6, 20), 2026),  # a few hours ahead (a sender's local time east of UTC)
])
def test_year_inference_never_lands_in_the_future(mon, day, now, year):
    ref = utc(*now)
    ts = bsd_time(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"][mon - 1],
                  str(day), None, "10", "00", "00", None, ref)
    assert ts == utc(year, mon, day, 10)
    assert ts <= ref + 86400


def test_feb_29_goes_back_to_the_last_leap_year():
    assert bsd_time("Feb", "29", None, "00", "00", "00", None, utc(2027, 3, 1)) == utc(2024, 2, 29)


def test_relayed_header_gives_the_original_time_host_and_tag():
    # Wazuh's relayed line (samples-more cisco_ios.extracted.log): the relay's year-first header,
    # then the original BSD header of the ASA
    ev = parse("2019 May 06 09:28:12 vm-ubuntu16->10.0.0.16 May 6 07:28:11 10.0.0.16 %ASA-3-710003: TCP "
               "access denied", ref=DEC_2026)
    assert ev.device == "10.0.0.16" and ev.extra["relay"] == "vm-ubuntu16->10.0.0.16"
    assert ev.time == utc(2019, 5, 6, 7, 28, 11) and ev.extra["app"] == "%ASA-3-710003"


@pytest.mark.parametrize("line", [
    # fast.log line (Snort manual, "alert_fast") behind a relay's header, without a tag ...
    "<13>Nov 13 10:00:01 relay 11/13-09:59:58.123456  [**] [1:2034125:4] ET SCAN x [**] "
    "[Classification: Attempted Information Leak] [Priority: 2] {TCP} 10.9.0.1:4444 -> 10.0.0.2:80",
    # ... and with one
    "<13>Nov 13 10:00:01 relay snort: 11/13-09:59:58.123456  [**] [1:2034125:4] ET SCAN x [**] "
    "[Classification: Attempted Information Leak] [Priority: 2] {TCP} 10.9.0.1:4444 -> 10.0.0.2:80",
    # alert_csv default columns (Snort manual: timestamp,sig_generator,sig_id,sig_rev,msg,proto,src,
    # srcport,dst,dstport,...) behind a header
    "<13>Nov 13 10:00:01 relay snort: 11/13-09:59:58.123456 ,1,2034125,4,ET SCAN x,TCP,10.9.0.1,4444,"
    "10.0.0.2,80,0:0:0:0:0:0,0:0:0:0:0:0",
])
def test_fast_and_csv_alerts_relayed_behind_a_syslog_header(line):
    ev = parse(line, ref=DEC_2026)
    assert ev.source_type == "snort" and ev.device == "relay" and ev.raw == line
    assert (ev.src, ev.sport, ev.dst, ev.dport) == ("10.9.0.1", 4444, "10.0.0.2", 80)
    assert ev.time == utc(2026, 11, 13, 9, 59, 58) + 0.123456
