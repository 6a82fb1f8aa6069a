"""ArcSight Common Event Format: ``CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|ext``.

Header fields escape ``|`` and ``\\``; extension values escape ``=``, ``\\`` and newlines.  Real
senders vary: ``CEF: 0`` with a space, the ``CEF:`` prefix missing, an unescaped pipe inside an
extension value, word severities (``Low``, ``Very-High``), keys with dots, brackets or commas.
"""
from __future__ import annotations

import re

from ..event import (CRITICAL, HIGH, LOW, MEDIUM, Event, norm_action, proto_name, severity_from_word,
                     to_port, unescape)
from ..syslog import bsd_time

START = re.compile(r"(?:CEF: ?)?\d{1,2}\|")
# A key starts right after a space and runs up to "=".  One space, not " +", and a possessive run
# keep this linear: " +key=" tried at every space of a long run of spaces rescanned the run (a
# 64 KB extension of spaces took ~70 s).  Spaces before a key stay at the end of the previous
# value, which is stripped below.
_KEY_SPLIT = re.compile(r" ([\w.,\[\]:-]++)=")
_ESCAPES = (("\\=", "="), ("\\|", "|"), ("\\n", "\n"), ("\\r", "\r"))
_ALIASES = {
    "sourceAddress": "src", "destinationAddress": "dst", "sourcePort": "spt", "destinationPort": "dpt",
    "transportProtocol": "proto", "deviceAction": "act", "deviceHostName": "dvchost",
    "deviceAddress": "dvc", "deviceEventCategory": "cat", "deviceReceiptTime": "rt",
    "startTime": "start", "endTime": "end",
}
_ALIAS_NAMES = frozenset(_ALIASES)


def looks_like(body: str) -> bool:
    if body.startswith("CEF:"):
        return True
    return bool(START.match(body)) and body.count("|") >= 7


def find(body: str) -> int:
    """Where "CEF:" starts when it follows something the header parser left in the body: a tag
    glued to it ("ASM:CEF:0|", F5's ASM CEF guide) or the rest of an RFC 5424 header sent without
    its version ("8710 - - CEF:0|", Elastic's empty-fields test); -1 if none in the first 200."""
    i = body.find("CEF:", 0, 200)
    if i > 0 and body[i - 1] in " :" and body.count("|", i) >= 7:
        return i
    return -1


def _unesc(s: str) -> str:
    return unescape(s, _ESCAPES)


_MARK_BS, _MARK_PIPE = "\ue000", "\ue001"     # private-use characters standing in for escapes


def split_header(s: str) -> list[str]:
    """Seven header fields and the extension; pipes escaped with a backslash do not split."""
    fast = s.split("|", 7)
    if "\\" not in s or not any("\\" in p for p in fast[:7]):
        return fast
    if _MARK_BS not in s and _MARK_PIPE not in s:
        # escaped backslashes, then escaped pipes, set aside as marks: a plain split then cuts at
        # the unescaped pipes only (C speed; the character loop below took 11 ms on 64 KB)
        t = s.replace("\\\\", _MARK_BS).replace("\\|", _MARK_PIPE)
        ps = t.split("|", 7)
        out = [p.replace(_MARK_PIPE, "|").replace(_MARK_BS, "\\") for p in ps[:7]]
        if len(ps) == 8:
            out.append(s[len(s) - len(ps[7].replace(_MARK_PIPE, "\\|").replace(_MARK_BS, "\\\\")):])
        return out
    parts, cur, i, n = [], [], 0, len(s)
    while i < n and len(parts) < 7:
        c = s[i]
        if c == "\\" and i + 1 < n:
            cur.append(s[i + 1] if s[i + 1] in "|\\" else s[i:i + 2])
            i += 2
            continue
        if c == "|":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append(s[i:] if len(parts) == 7 else "".join(cur))
    return parts


def extension(s: str) -> dict[str, str]:
    """``key=value`` pairs; a key starts after whitespace, so an escaped ``\\=`` never starts one."""
    out: dict[str, str] = {}
    parts = _KEY_SPLIT.split(" " + s)
    # parts: [text before the first key, key1, value1, key2, value2, ...]
    for i in range(1, len(parts) - 1, 2):
        k = parts[i]
        if k not in out:
            v = parts[i + 1]
            out[k] = _unesc(v.rstrip()) if "\\" in v else v.rstrip()
    return out


def _severity(s: str) -> int | None:
    s = s.strip()
    if s.isdecimal():
        n = int(s)
        return LOW if n <= 3 else MEDIUM if n <= 6 else HIGH if n <= 8 else CRITICAL if n <= 10 else None
    return severity_from_word(s)


# CEF "act" (deviceAction) is free text per vendor; the verbs below are those the vendors' CEF
# guides document, mapped to the normalised verdict.  Sources: ArcSight CEF "Implementing ArcSight
# CEF" (act: "Action taken by the device"); Palo Alto PAN-OS CEF guide (deny, drop, reset-client,
# reset-server, reset-both, block-url, sinkhole); FortiGate CEF (deny, block, blocked, dropped,
# accept, pass, close/start/timeout are session ends); F5 ASM CEF guide (blocked, alerted, passed);
# Imperva SecureSphere (alert, block); Trend Micro DDI ("not blocked", "blocked"); Check Point CEF
# (Accept, Drop, Reject, Refuse, Prevent, Detect).
_CEF_ACTIONS = {
    "refuse": "block", "refused": "block", "reset": "block", "reset-client": "block", "reset-server": "block",
    "reset-both": "block", "drop-icmp": "block", "block-url": "block", "block-ip": "block", "sinkhole": "block",
    "quarantine": "block", "quarantined": "block", "terminate": "block", "terminated": "block",
    "alert": "alert", "alerted": "alert", "detect": "alert", "detected": "alert", "not blocked": "alert",
    "monitor": "alert", "monitored": "alert", "log": "alert", "logged": "alert",
    "passed": "allow", "accepted": "allow", "permitted": "allow", "close": "allow", "start": "allow",
    "timeout": "allow",
}


def _action(v: str | None) -> str | None:
    a = norm_action(v)
    return _CEF_ACTIONS.get(a, a) if a else None


_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                        "nov", "dec"), 1)}


def _zone(z: str) -> int | None:
    """Seconds east of UTC for "GMT", "UTC", "Z", "GMT+08:00", "+0800", "-05:00"; None if unknown."""
    z = z.strip()
    u = z.upper()
    if u in ("", "GMT", "UTC", "Z"):
        return 0
    if u.startswith(("GMT", "UTC")):
        z = z[3:]
    if z[:1] in "+-" and len(z) > 1:
        d = z[1:].replace(":", "")
        if d.isdecimal() and len(d) in (1, 2, 3, 4):
            h, m = (int(d), 0) if len(d) <= 2 else (int(d[:-2]), int(d[-2:]))
            if h <= 14 and m < 60:
                return (1 if z[0] == "+" else -1) * (h * 3600 + m * 60)
    return None


def _time(v: str | None, ref: float | None = None) -> float | None:
    """A CEF time value: milliseconds (or seconds) since the epoch, or one of the spec's formats
    ("MMM dd yyyy HH:mm:ss[.SSS] [zzz]", "MMM dd HH:mm:ss[.SSS] [zzz]") and the "dd MMMM yyyy
    HH:mm:ss" some vendors write (Imperva); a zone (GMT, UTC, GMT+08:00, +0800) is applied,
    none means UTC."""
    if not v:
        return None
    v = v.strip()
    if v.isdecimal():
        if len(v) > 20:
            return None
        n = int(v)
        return n / 1000.0 if n > 10**11 else float(n)
    p = v.split()
    if not 3 <= len(p) <= 5:
        return None
    if p[0][:3].lower() in _MONTHS and p[0].isalpha():        # MMM dd [yyyy] HH:mm:ss...
        mon, day, rest = p[0], p[1], p[2:]
    elif p[1][:3].lower() in _MONTHS and p[1].isalpha():      # dd MMMM yyyy HH:mm:ss
        mon, day, rest = p[1], p[0], p[2:]
    else:
        return None
    year = rest.pop(0) if rest and rest[0].isdecimal() and len(rest[0]) == 4 else None
    if not rest or rest[0].count(":") != 2:
        return None
    hms, _, frac = rest[0].partition(".")
    h, mi, sec = hms.split(":")
    off = _zone(" ".join(rest[1:])) if len(rest) > 1 else 0
    if off is None or not (day.isdecimal() and frac.isdecimal() or day.isdecimal() and not frac):
        return None
    ts = bsd_time(mon[:3], day, year, h, mi, sec, frac[:6] or None, ref)
    return None if ts is None else ts - off


# Keys a time is taken from, in order: a vendor's field that says it is UTC (any key whose name
# holds "utc"; custom dates labelled UTC), then the standard keys: rt (receipt time), end, start.
_TIME_KEYS = ("rt", "end", "start")


def _utc_key(k: str) -> bool:
    """A key that names UTC as a word: eventTimeUTC, startUtc, utc_time, event_utc (not
    categoryOutcome)."""
    if k.endswith("Label"):
        return False
    i = k.find("Utc")
    return "UTC" in k or (i >= 0 and not k[i + 3:i + 4].islower()) or k.startswith("utc_") or "_utc" in k


def _event_time(kv: dict[str, str], ext: str, ref: float | None) -> float | None:
    if "UTC" in ext or "Utc" in ext or "utc_" in ext or "_utc" in ext:   # C-speed looks first
        for k, v in kv.items():
            if _utc_key(k):
                t = _time(v, ref)
                if t is not None:
                    return t
        for n in ("1", "2"):
            if "utc" in kv.get(f"deviceCustomDate{n}Label", "").lower():
                t = _time(kv.get(f"deviceCustomDate{n}"), ref)
                if t is not None:
                    return t
    for k in _TIME_KEYS:
        v = kv.get(k)
        if v:
            t = _time(v, ref)
            if t is not None:
                return t
    return None


def parse(body: str, raw: str, header_time: float | None = None, header_host: str | None = None) -> Event:
    text = body
    if body.startswith("CEF:"):
        text = body[4:].lstrip(" ")
    h = split_header(text)
    while len(h) < 8:
        h.append("")
    version, vendor, product, dversion, sig_id, name, sev, ext = h
    kv = extension(ext) if ext else {}
    if not _ALIAS_NAMES.isdisjoint(kv):
        for long_name, short in _ALIASES.items():     # full key names as the short ones
            if long_name in kv:
                kv.setdefault(short, kv.pop(long_name))
    t = _event_time(kv, ext, header_time) if kv else None
    ev = Event("cef", "cef", raw, time=header_time if t is None else t)
    ev.device = kv.get("dvchost") or kv.get("dvc") or header_host
    ev.src, ev.dst = kv.get("src") or None, kv.get("dst") or None
    ev.sport, ev.dport = to_port(kv.get("spt")), to_port(kv.get("dpt"))
    ev.proto = proto_name(kv.get("proto"))
    ev.action = _action(kv.get("act"))
    ev.severity = _severity(sev)
    ev.sig_id = sig_id or None
    ev.sig_name = name or None
    ev.category = kv.get("cat") or None
    ev.extra = {"vendor": vendor, "product": product, "version": dversion, "cef_version": version,
                "kv": kv}
    return ev
