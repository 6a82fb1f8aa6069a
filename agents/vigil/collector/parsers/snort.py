"""Snort alerts: alert_fast, alert_full (multi-line), syslog, alert_csv and Snort 3 alert_json."""
from __future__ import annotations

import csv
import re
from time import time as _now

from ..event import Event, proto_name, severity_from_priority, to_port
from ..syslog import Header, bsd_time, iso_time

_TS = r"(\d\d)/(\d\d)(?:/(\d\d))?-(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
CSV_START = re.compile(_TS + r" ?,\d+,\d+,\d+,")
_FULL_HEAD = re.compile(r"\[\*\*\] \[(\d+):(\d+):(\d+)\] (.*?) \[\*\*\]")
_FULL_CLASS = re.compile(r"(?:\[Classification: ([^\]]*)\] ?)?\[Priority: (\d+)\]")
_FULL_ADDR = re.compile(_TS + r" ([0-9A-Fa-f.:]+?)(?::(\d+))? -> ([0-9A-Fa-f.:]+?)(?::(\d+))?\s*$")
_MON = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


_second_cache: dict[tuple, float | None] = {}


def _time(mo, dd, yy, h, mi, s, frac, ref):
    """The time of a Snort/Suricata date; each second's result is remembered (for the hour of the
    reference time), since a stream repeats it for every alert written in that second."""
    key = (mo, dd, yy, h, mi, s, int(ref if ref is not None else _now()) // 3600)
    ts = _second_cache.get(key, False)
    if ts is False:
        if not (mo.isdecimal() and 1 <= int(mo) <= 12):
            ts = None
        else:
            year = None if yy is None else yy if len(yy) == 4 else str(2000 + int(yy))
            ts = bsd_time(_MON[int(mo) - 1], dd, year, h, mi, s, None, ref)
        if len(_second_cache) > 4096:
            _second_cache.clear()
        _second_cache[key] = ts
    if ts is None or not frac:
        return ts
    return ts + int(frac) / 10 ** len(frac)


def rule_id(gid, sid) -> str | None:
    """One canonical rule id for Snort and Suricata: ``gid:sid``.  fast.log, alert_full, syslog
    and CSV write ``gid:sid:rev`` (Snort manual, "Output modules"); EVE writes ``signature_id``
    with ``gid`` beside it (Suricata docs, "Eve JSON format"; gid 1 when absent).  The revision
    is kept in ``extra["rev"]``: a rule is the same rule across revisions, so that
    ``1:2034125:4`` from fast.log and ``2034125`` from EVE join in correlation."""
    if sid is None or sid == "":
        return None
    if isinstance(sid, bool) or not isinstance(sid, (int, str)) or not str(sid).isdecimal():
        return None
    g = gid if isinstance(gid, (int, str)) and not isinstance(gid, bool) and str(gid).isdecimal() else 1
    return f"{int(g)}:{int(sid)}"


def _fill(ev: Event, gid, sid, rev, msg, cls, prio, proto, src, sport, dst, dport) -> Event:
    if msg == "(null)":                 # Suricata writes "(null)" for a rule without msg/classtype
        msg = ""
    if cls == "(null)":
        cls = None
    if sid.__class__ is str and gid.__class__ is str and sid[:1] != "0" and gid[:1] != "0" \
            and sid.isdecimal() and gid.isdecimal():
        ev.sig_id = gid + ":" + sid                 # digits from a text line (rule_id's common case)
    else:
        ev.sig_id = rule_id(gid, sid)
    if rev.__class__ is str:
        if rev.isdecimal():
            ev.extra["rev"] = int(rev)
    elif rev.__class__ is int:
        ev.extra["rev"] = rev
    ev.sig_name = msg.strip() or None
    ev.category = cls or None
    ev.severity = severity_from_priority(prio) if prio is not None else None
    ev.proto = proto_name(proto)
    ev.src, ev.sport, ev.dst, ev.dport = src, to_port(sport), dst, to_port(dport)
    ev.action = "alert"
    return ev


def _hostport(s: str) -> tuple[str | None, str | None]:
    s = s.strip()
    if not s:
        return None, None
    if s.startswith("["):                        # [v6]:port
        host, _, port = s[1:].partition("]")
        return host, port.lstrip(":") or None
    if s.count(":") == 1:
        host, _, port = s.partition(":")
        return host, port
    if s.count(":") == 8:
        # Suricata's fast.log writes IPv6 in full (eight groups) with the port after a ninth
        # colon: "0000:...:0001:3000" (suricata-verify http2-files expected fast.log)
        host, _, port = s.rpartition(":")
        if port.isdecimal():
            return host, port
    return s, None


def _alert(text: str):
    """``[gid:sid:rev] msg [**] [Classification: c] [Priority: p] {PROTO} a:p -> b:p`` (the
    ``[**]`` and every bracketed part optional) -> the fields of ``_fill``; None if not an alert."""
    if not text.startswith("["):
        return None
    j = text.find("] ")
    if j < 0:
        j = len(text) - 1 if text.endswith("]") else -1
        if j < 0:
            return None
    ids = text[1:j].split(":")
    if len(ids) != 3 or not (ids[0].isdecimal() and ids[1].isdecimal() and ids[2].isdecimal()):
        return None
    rest = text[j + 2:]
    k = rest.find(" [**]")
    if k < 0:
        cands = [x for x in (rest.find("[Classification: "), rest.find("[Priority: "), rest.find("{"))
                 if x >= 0]
        k = min(cands) if cands else len(rest)
        msg, tail = rest[:k], rest[k:]
    else:
        msg, tail = rest[:k], rest[k + 5:]
    cls = prio = proto = src = sport = dst = dport = None
    i = tail.find("[Classification: ")
    if i >= 0:
        e = tail.find("]", i)
        cls = tail[i + 17:e if e >= 0 else len(tail)]
    i = tail.find("[Priority: ")
    if i >= 0:
        e = tail.find("]", i)
        p = tail[i + 11:e if e >= 0 else len(tail)].strip()
        prio = p if p.isdecimal() else None
    i = tail.find("{")
    if i >= 0:
        e = tail.find("}", i)
        if e > i:
            proto = tail[i + 1:e]
            a, sep, b = tail[e + 1:].partition(" -> ")
            src, sport = _hostport(a)
            if sep:
                dst, dport = _hostport(b)
    return ids[0], ids[1], ids[2], msg.strip(), cls, prio, proto, src, sport, dst, dport


def _ts_prefix(line: str):
    """``MM/DD-HH:MM:SS.ffffff`` or ``MM/DD/YY-HH:MM:SS.ffffff`` at the start -> (parts, end)."""
    if line[2:3] == "/" and line[5:6] == "-":
        mo, dd, yy, rest, off = line[0:2], line[3:5], None, line[6:], 6
    elif line[2:3] == "/" and line[5:6] == "/" and line[8:9] == "-":
        mo, dd, yy, rest, off = line[0:2], line[3:5], line[6:8], line[9:], 9
    elif line[2:3] == "/" and line[5:6] == "/" and line[10:11] == "-":     # Suricata fast.log
        mo, dd, yy, rest, off = line[0:2], line[3:5], line[6:10], line[11:], 11
    else:
        return None
    if not (rest[2:3] == ":" and rest[5:6] == ":"):
        return None
    h, mi, sec = rest[0:2], rest[3:5], rest[6:8]
    frac = None
    end = off + 8
    if rest[8:9] == ".":
        k = 9
        while k < len(rest) and k < 15 and rest[k].isdecimal():
            k += 1
        frac = rest[9:k] or None
        end = off + k
    if not (mo + dd + h + mi + sec + (yy or "") + (frac or "")).isdecimal():
        return None
    return (mo, dd, yy, h, mi, sec, frac), end


def parse_fast(line: str, ref: float | None) -> Event | None:
    ts = _ts_prefix(line)
    if ts is None:
        return None
    parts, end = ts
    body = line[end:].lstrip()
    verdict = None
    if not body.startswith("[**] "):
        # inline mode writes the verdict first: "[Drop] [**] ...", "[wDrop]" (would drop: test
        # mode), "[Block]"; Snort 2 manual, alert_fast; Suricata writes "[Drop]" in IPS mode
        word, sep, rest = body[1:].partition("] ")
        if not (body[:1] == "[" and sep and word in _VERDICTS):
            return None
        verdict, body = _VERDICTS[word], rest.lstrip()
        if not body.startswith("[**] "):
            return None
    fields = _alert(body[5:])
    if fields is None:
        return None
    if parts[2] is not None and len(parts[2]) == 4:     # only Suricata writes a 4-digit year
        ev = Event("suricata", "suricata-fast", line, time=_time(*parts, ref))
    else:
        ev = Event("snort", "snort-fast", line, time=_time(*parts, ref))
    _fill(ev, *fields)
    if verdict:
        ev.action = verdict
    return ev


_VERDICTS = {"Drop": "block", "Block": "block", "Reject": "block", "sDrop": "block", "wDrop": "alert",
             "wBlock": "alert"}


def parse_syslog(header: Header, body: str, raw: str) -> Event | None:
    fields = _alert(body)
    if fields is None:
        return None
    ev = Event("snort", "snort-syslog", raw, time=header.time, device=header.host)
    return _fill(ev, *fields)


def parse_full(record: str, ref: float | None) -> Event | None:
    lines = record.split("\n")
    m = _FULL_HEAD.match(lines[0].strip())
    if not m:
        return None
    ev = Event("snort", "snort-full", record)
    gid, sid, rev, msg = m.groups()
    cls = prio = proto = src = sport = dst = dport = None
    for ln in lines[1:]:
        ln = ln.rstrip()
        if not ln:
            continue
        if proto is not None and prio is not None:
            break                       # everything alert_full says about the alert is read
        c = ln[0]
        mc = _FULL_CLASS.match(ln) if c == "[" else None
        if mc and prio is None:
            cls, prio = mc.groups()
            continue
        ma = _FULL_ADDR.match(ln) if "0" <= c <= "9" and src is None else None
        if ma:
            g = ma.groups()
            ev.time = _time(*g[:7], ref)
            src, sport, dst, dport = g[7:]
            continue
        if src is not None and proto is None and ln:
            proto = ln.split(" ", 1)[0]
    return _fill(ev, gid, sid, rev, msg, cls, prio, proto, src, sport, dst, dport)


def parse_csv(line: str, ref: float | None) -> Event | None:
    """Default alert_csv column order: timestamp, sig_generator, sig_id, sig_rev, msg, proto, src,
    srcport, dst, dstport, ethsrc, ethdst, ...."""
    m = CSV_START.match(line)
    if not m:
        return None
    try:
        row = next(csv.reader([line.replace("\r", " ")]), [])
    except csv.Error:
        return None
    if len(row) < 10:
        return None
    ev = Event("snort", "snort-csv", line, time=_time(*m.groups(), ref))
    cls = prio = None
    pfsense = len(row) == 15 and row[13] in ("alert", "drop", "pass", "reject", "sdrop")
    if pfsense:      # pfSense's layout: ..., dport, ip id, classification, priority, action, disposition
        cls, prio = row[11] or None, row[12] if row[12].isdecimal() else None
    _fill(ev, row[1], row[2], row[3], row[4], cls, prio, row[5] or None, row[6] or None,
          row[7] or None, row[8] or None, row[9] or None)
    if pfsense:
        ev.action = "block" if row[14].lower() in ("block", "blocked", "drop") or row[13] != "alert" else "alert"
    return ev


def _split_ap(ap):
    if not isinstance(ap, str) or not ap:
        return None, None
    host, _, port = ap.rpartition(":")
    if not host or not port.isdecimal():
        return ap, None
    return host, port


def parse_json(obj: dict, raw: str, ref: float | None) -> Event:
    """Snort 3 alert_json (default and extended field sets)."""
    ev = Event("snort", "snort-json", raw)
    ts = obj.get("timestamp")
    secs = obj.get("seconds")
    if isinstance(secs, (int, float)) and not isinstance(secs, bool) and 0 < secs < 2**32:
        ev.time = float(secs)           # Snort 3 adds the epoch; its timestamp has no year
        if isinstance(ts, str) and "." in ts:
            frac = ts.rsplit(".", 1)[1]
            if frac.isdecimal():
                ev.time += int(frac) / 10 ** len(frac)
    elif isinstance(ts, str):
        m = re.match(_TS, ts.strip())
        ev.time = _time(*m.groups(), ref) if m else iso_time(ts)
    src, sport = obj.get("src_addr"), obj.get("src_port")
    dst, dport = obj.get("dst_addr"), obj.get("dst_port")
    if src is None:
        src, sport = _split_ap(obj.get("src_ap"))
        dst, dport = _split_ap(obj.get("dst_ap"))
    gid, sid, rev = obj.get("gid"), obj.get("sid"), obj.get("rev")
    if sid is None and isinstance(obj.get("rule"), str):
        parts = obj["rule"].split(":")
        if len(parts) == 3:
            gid, sid, rev = parts
    cls = obj.get("class")
    _fill(ev, gid, sid, rev, str(obj.get("msg") or ""), None if cls == "none" else cls, obj.get("priority"),
          obj.get("proto"), src, sport, dst, dport)
    if obj.get("action") is not None:
        ev.action = {"allow": "alert", "would_block": "alert", "block": "block", "drop": "block",
                     "reject": "block"}.get(str(obj["action"]), str(obj["action"]))
    return ev
