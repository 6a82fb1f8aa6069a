"""ArcSight Common Event Format: ``CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|ext``.

Header fields escape ``|`` and ``\\``; extension values escape ``=``, ``\\`` and newlines.  Real
senders vary: ``CEF: 0`` with a space, the ``CEF:`` prefix missing, an unescaped pipe inside an
extension value, word severities (``Low``, ``Very-High``), keys with dots, brackets or commas.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from ..event import (CRITICAL, HIGH, LOW, MEDIUM, Event, norm_action, proto_name, severity_from_word,
                     to_port, unescape)

START = re.compile(r"(?:CEF: ?)?\d{1,2}\|")
# A key starts right after a space and runs up to "=".  The lookbehind and the possessive run keep
# this linear: ``" +key="`` tried at every space of a long run of spaces was quadratic (a 64 KB
# extension of spaces took ~70 s).  Trailing spaces of a value are stripped below.
_KEY_SPLIT = re.compile(r"(?<= )([\w.,\[\]:-]++)=")
_ESCAPES = (("\\=", "="), ("\\|", "|"), ("\\n", "\n"), ("\\r", "\r"))
_ALIASES = {
    "sourceAddress": "src", "destinationAddress": "dst", "sourcePort": "spt", "destinationPort": "dpt",
    "transportProtocol": "proto", "deviceAction": "act", "deviceHostName": "dvchost",
    "deviceAddress": "dvc", "deviceEventCategory": "cat", "deviceReceiptTime": "rt",
}
_ALIAS_NAMES = frozenset(_ALIASES)


def looks_like(body: str) -> bool:
    if body.startswith("CEF:"):
        return True
    return bool(START.match(body)) and body.count("|") >= 7


def _unesc(s: str) -> str:
    return unescape(s, _ESCAPES)


def split_header(s: str) -> list[str]:
    """Seven header fields and the extension; pipes escaped with a backslash do not split."""
    fast = s.split("|", 7)
    if "\\" not in s or not any("\\" in p for p in fast[:7]):
        return fast
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


def _time(v: str | None) -> float | None:
    if not v:
        return None
    v = v.strip()
    if v.isdecimal():
        n = int(v)
        return n / 1000.0 if n > 10**11 else float(n)
    for fmt in ("%b %d %Y %H:%M:%S.%f", "%b %d %Y %H:%M:%S", "%b %d %H:%M:%S"):
        try:
            dt = datetime.strptime(v, fmt)
        except ValueError:
            continue
        if dt.year == 1900:
            return None
        return dt.replace(tzinfo=timezone.utc).timestamp()
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
    ev = Event("cef", "cef", raw, time=_time(kv.get("rt")) or header_time)
    ev.device = kv.get("dvchost") or kv.get("dvc") or header_host
    ev.src, ev.dst = kv.get("src") or None, kv.get("dst") or None
    ev.sport, ev.dport = to_port(kv.get("spt")), to_port(kv.get("dpt"))
    ev.proto = proto_name(kv.get("proto"))
    ev.action = norm_action(kv.get("act"))
    ev.severity = _severity(sev)
    ev.sig_id = sig_id or None
    ev.sig_name = name or None
    ev.category = kv.get("cat") or None
    ev.extra = {"vendor": vendor, "product": product, "version": dversion, "cef_version": version,
                "kv": kv}
    return ev
