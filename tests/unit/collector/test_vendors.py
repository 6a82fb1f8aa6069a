"""Vendor normalisation, each expectation from the vendor's documentation named beside it.
Lines are written here after the documented forms (the shared samples stay outside the repo)."""
from __future__ import annotations

import calendar
import json

import pytest

from vigil.collector.parsers import parse

pytestmark = pytest.mark.unit
REF = calendar.timegm((2026, 12, 6, 12, 0, 0, 0, 0, 0))


def utc(*t) -> float:
    return float(calendar.timegm(t + (0,) * (6 - len(t)) + (0, 0, 0)))


# -- Check Point Log Exporter (sk144192: field list; "alert" is the matched rule's alert type) ----
def test_checkpoint_alert_record_without_action_is_an_alert_with_its_text():
    ev = parse('<134>1 2023-12-22T08:38:43Z CP-Manager CheckPoint 10547 - [alert:"Expert_Alert"; '
               'origin:"10.16.109.248"; time:"1703234323"; version:"5"; additional_info:"SSH connection by '
               'admin user to Expert Shell"; administrator:"admin"; client_ip:"10.16.109.244"; '
               'operation:"Log In"; product:"Expert Shell"; subject:"Administrator Expert Shell login"]')
    assert ev.source_type == "checkpoint" and ev.action == "alert"
    assert ev.extra["msg"] == "Administrator Expert Shell login"
    assert (ev.src, ev.device, ev.category) == ("10.16.109.244", "10.16.109.248", "Expert Shell")


def test_checkpoint_rfc5424_header_with_a_space_for_the_t():
    # syslog-ng's checkpoint parser test expects <CheckPoint><MDS-72><Mar 21 17:25:25> for this header
    ev = parse('<134>1 2018-03-21 17:25:25 MDS-72 CheckPoint 13752 - [action:"Update"; origin:"192.168.32.91"; '
               'src:"192.168.32.69"; product:"Identity Awareness";]')
    assert ev.time == utc(2018, 3, 21, 17, 25, 25) and ev.extra["kv"]["action"] == "Update"
    assert ev.src == "192.168.32.69"


# -- CEF (ArcSight "Implementing ArcSight CEF": act = deviceAction; time formats) -----------------
@pytest.mark.parametrize("act, want", [
    ("Refuse", "block"),          # Check Point CEF verb
    ("reset-both", "block"),      # PAN-OS CEF guide
    ("blocked", "block"), ("alerted", "alert"),        # F5 ASM CEF guide
    ("not blocked", "alert"),     # Trend Micro Deep Discovery
    ("accept", "allow"), ("deny", "block"),
])
def test_cef_act_vocabulary(act, want):
    assert parse(f"CEF:0|V|P|1|100|n|5|src=10.0.0.1 act={act} dst=10.0.0.2").action == want


@pytest.mark.parametrize("ext, want", [
    ("rt=Mar 09 2015 11:58:25 GMT+08:00", utc(2015, 3, 9, 3, 58, 25)),     # Trend Micro DDI
    ("rt=Apr 07 2017 00:10:10 GMT", utc(2017, 4, 7, 0, 10, 10)),           # PAN-OS CEF
    ("rt=Sep 02 2009 17:09:25.123", utc(2009, 9, 2, 17, 9, 25) + 0.123),   # F5 ASM guide form
    ("rt=31 March 2016 13:04:55", utc(2016, 3, 31, 13, 4, 55)),            # Imperva SecureSphere
    ("rt=1700000000123", 1700000000.123),                                    # ms since the epoch
    ("end=Jan 05 2026 10:00:00 UTC", utc(2026, 1, 5, 10)),
    ("start=Jan 05 2026 09:00:00 +0100", utc(2026, 1, 5, 8)),
])
def test_cef_standard_time_keys_and_zones(ext, want):
    assert parse(f"<134>Dec  1 00:00:00 h CEF:0|V|P|1|1|n|5|src=10.0.0.1 {ext}", ref=REF).time == \
        pytest.approx(want)


def test_cef_vendor_utc_key_wins_over_zone_less_header_and_rt():
    ev = parse("<134>Dec  1 00:00:00 h CEF:0|V|P|1|1|n|5|src=10.0.0.1 rt=Jan 05 2026 10:00:00 "
               "eventTimeUTC=Jan 05 2026 02:00:00", ref=REF)
    assert ev.time == utc(2026, 1, 5, 2)
    ev = parse("CEF:0|V|P|1|1|n|5|deviceCustomDate1=Jan 05 2026 03:00:00 deviceCustomDate1Label=UTC time "
               "rt=Jan 05 2026 10:00:00", ref=REF)
    assert ev.time == utc(2026, 1, 5, 3)


# -- ModSecurity (reference manual: rule matches log "Access denied ..."/"Warning." with [id]) ------
def test_modsecurity_engine_error_is_not_an_alert_from_the_client():
    ev = parse("[Mon Nov 23 10:00:01.123456 2026] [security2:error] [pid 1:tid 2] [client 10.9.9.9:5555] "
               "ModSecurity: Audit log: Failed writing (requested 2456 bytes, written -1) to audit log")
    assert ev.source_type == "modsecurity" and ev.src is None and ev.action is None
    assert ev.category == "modsecurity-engine" and ev.extra["client"] == "10.9.9.9"
    assert ev.sig_name.startswith("Audit log: Failed writing")


def test_modsecurity_rule_message_is_still_an_alert():
    ev = parse('[Mon Nov 23 10:00:01 2026] [error] [client 10.9.9.9] ModSecurity: Warning. Pattern match '
               '[id "942100"] [msg "SQLi"] [tag "attack-sqli"]')
    assert (ev.src, ev.action, ev.sig_id, ev.category) == ("10.9.9.9", "alert", "942100", "attack-sqli")


# -- one rule id for Snort and Suricata (Snort manual: gid:sid:rev; Suricata EVE: signature_id, gid) --
def test_fast_log_and_eve_give_the_same_rule_id():
    fast = parse("11/13/2026-09:59:58.123456  [**] [1:2034125:4] ET POLICY x [**] [Classification: c] "
                 "[Priority: 2] {TCP} 10.9.0.1:4444 -> 10.0.0.2:80", ref=REF)
    eve = parse(json.dumps({"timestamp": "2026-11-13T09:59:58.123456+0000", "event_type": "alert",
                            "src_ip": "10.9.0.1", "dest_ip": "10.0.0.2",
                            "alert": {"signature_id": 2034125, "rev": 4, "signature": "ET POLICY x"}}))
    snort3 = parse(json.dumps({"seconds": 1700000000, "gid": 1, "sid": 2034125, "rev": 5, "msg": "x",
                               "src_addr": "10.9.0.1"}))
    assert fast.sig_id == eve.sig_id == snort3.sig_id == "1:2034125"
    assert (fast.extra["rev"], eve.extra["rev"], snort3.extra["rev"]) == (4, 4, 5)
    assert parse(json.dumps({"event_type": "alert", "alert": {"signature_id": 9, "gid": 3}})).sig_id == "3:9"
