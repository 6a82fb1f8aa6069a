"""Check Point Log Exporter: ``key:"value";`` bodies and RFC 5424 structured-data bodies.

Both arrive as an RFC 5424 message whose structured-data part holds the fields, either in Check
Point's own ``[key:"value"; key2:"value2"]`` form (keys may end in ``::``, e.g. ``ike::``) or as true
SD parameters ``[Fields@1.3.6.1.4.1.2620 key="value" ...]``.  Values escape ``"``, ``\\`` and ``]``
with a backslash.  A repeated key keeps its first value; the repeats are counted in
``extra["duplicate_keys"]``.  Truncated bodies (no closing quote or bracket) yield the fields that
are complete.
"""
from __future__ import annotations

import re

from ..event import Event, norm_action, proto_name, severity_from_word, to_port, unescape
from ..syslog import Header, iso_time

# A key starts after a character that cannot be in a key (the text is searched with a space in
# front): tried inside a long run of key characters with no ``:"`` after it, every start used to
# rescan the rest of the run (quadratic).  The separator is consumed, so two pairs need something
# between them (Check Point writes "; " or " ").
_KV_COLON = re.compile(r'[^A-Za-z0-9_.\-]([A-Za-z0-9_.\-]++)::?"((?:[^"\\]++|\\.)*+)"')
_KV_EQ = re.compile(r'[^A-Za-z0-9_.\-]([A-Za-z0-9_.\-]++)="((?:[^"\\]++|\\.)*+)"')
_KV_START = re.compile(r'\[?[a-z_]+:"')
_PACKET = re.compile(r"<([0-9a-fA-F.:]+),(\d+),([0-9a-fA-F.:]+),(\d+),(\d+)")
_SD_ID = re.compile(r"\[[^\s\]]+@\d")
_ESCAPES = (('\\"', '"'), ("\\]", "]"))
_NUM_SEV = {"0": 0, "1": 1, "2": 2, "3": 3, "4": 4}


def looks_like(header: Header | None, body: str) -> bool:
    if header is not None and header.app in ("CheckPoint", "CP-GW"):
        return True
    sd = header.sd if header is not None else None
    text = sd or body
    c = text[:1]
    if c != "[" and not ("a" <= c <= "z" or c == "_"):
        return False
    return text.startswith("[Fields@1.3.6.1.4.1.2620") or _KV_START.match(text) is not None


def fields(text: str) -> tuple[dict[str, str], int]:
    if text.startswith("[Fields@") or _SD_ID.match(text):
        matches = _KV_EQ.findall(" " + text)
    else:
        matches = _KV_COLON.findall(" " + text)
    out: dict[str, str] = {}
    dups = 0
    for k, v in matches:
        if "\\" in v:
            v = unescape(v, _ESCAPES)
        if k in out:
            dups += 1
            continue
        out[k] = v
    return out, dups


def parse(header: Header | None, body: str, raw: str) -> Event:
    text = (header.sd if header is not None and header.sd else "") or body
    kv, dups = fields(text)
    ev = Event("checkpoint", "checkpoint-sd" if text.startswith("[Fields@") else "checkpoint-kv", raw)
    if header is not None:
        ev.time = header.time
        ev.device = header.host
    if ev.time is None and kv.get("time"):
        t = kv["time"]
        if t.isdecimal():
            ev.time = float(t) / 1000.0 if len(t) >= 13 else float(t)    # seconds or milliseconds
        else:
            ev.time = iso_time(t)
    ev.device = kv.get("origin") or ev.device
    ev.src = kv.get("src") or kv.get("client_ip") or None
    ev.dst = kv.get("dst") or None
    ev.sport = to_port(kv.get("s_port"))
    ev.dport = to_port(kv.get("service")) if kv.get("service") else to_port(kv.get("d_port"))
    ev.proto = proto_name(kv.get("proto"))
    if ev.src is None and kv.get("packets"):
        # "packet drop" logs: " <src,sport,dst,dport,proto;iface> <...>": the first packet stands in
        m = _PACKET.search(kv["packets"])
        if m:
            ev.src, sport, ev.dst, dport, proto = m.groups()
            ev.sport, ev.dport, ev.proto = to_port(sport), to_port(dport), proto_name(proto)
    # Log Exporter records without "action" (Expert Shell logins, SmartEvent alerts) carry the
    # rule's alert type in "alert" (Check Point sk144192, "Log Exporter" field list: alert =
    # "Alert level of matched rule"); such a record is an alert, not a pass or a block
    ev.action = norm_action(kv.get("action")) or ("alert" if kv.get("alert") else None)
    sev = kv.get("severity")
    ev.severity = _NUM_SEV.get(sev) if sev in _NUM_SEV else severity_from_word(sev)
    ev.sig_id = kv.get("protection_id") or kv.get("rule_uid") or kv.get("rule") or None
    ev.sig_name = (kv.get("protection_name") or kv.get("attack") or kv.get("malware_rule_name")
                   or kv.get("rule_name") or kv.get("operation") or None)
    ev.category = kv.get("product") or None
    ev.extra = {"kv": kv}
    # the record's text: "subject"/"additional_info" (audit and alert records), "description",
    # "msg" -- Log Exporter field names, sk144192
    for k in ("subject", "additional_info", "description", "msg", "message_info"):
        v = kv.get(k)
        if v and not v.isspace():
            ev.extra["msg"] = v
            break
    if dups:
        ev.extra["duplicate_keys"] = dups
    return ev
