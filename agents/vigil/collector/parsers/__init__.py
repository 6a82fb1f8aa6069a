"""Format detection and dispatch: one message (or multi-line record) in, one ``Event`` out.

``parse(message)`` never raises: a parser that fails on odd input is counted in ``ParseStats`` and
the message is kept as a raw ``syslog`` event with its header fields, so nothing is lost.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter

from ..event import Event, severity_from_syslog
from ..syslog import Header, parse_header
from . import cef, checkpoint, modsecurity, snort, suricata

log = logging.getLogger(__name__)

FORMATS = ("auto", "checkpoint", "snort", "modsecurity", "suricata", "cef", "syslog")

_SNORT_FULL = re.compile(r"\s*\[\*\*\] \[\d+:\d+:\d+\]")
_SNORT_BODY = re.compile(r"\[\d+:\d+:\d+\] ")


class ParseStats:
    """Counts per source type, failures per parser (a failure still yields a raw event)."""

    def __init__(self):
        self.parsed: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.empty = 0


# RFC 3164 4.3.3: a message without a (valid) PRI is given 13, user.notice
_DEFAULT_PRI = Header("rfc3164", 13)


def _raw(header: Header | None, body: str, raw: str) -> Event:
    if header is None:
        ev = Event("syslog", "raw", raw, severity=severity_from_syslog(_DEFAULT_PRI.severity))
        ev.extra = {"facility": _DEFAULT_PRI.facility, "pri_default": True}
        return ev
    ev = Event("syslog", f"syslog-{header.kind}", raw, time=header.time, device=header.host)
    pri = header if header.pri is not None else _DEFAULT_PRI
    ev.severity = severity_from_syslog(pri.severity)
    ev.extra = {"app": header.app, "procid": header.procid, "msgid": header.msgid,
                "facility": pri.facility, "msg": body}
    if header.pri is None:
        ev.extra["pri_default"] = True
    if header.sd:
        ev.extra["sd"] = header.sd
    if header.relay:
        ev.extra["relay"] = header.relay
    return ev


def _json(obj, header: Header | None, raw: str, ref: float | None) -> Event | None:
    if not isinstance(obj, dict):
        return None
    inner = suricata.unwrap(obj)
    if suricata.looks_like(inner):
        ev = suricata.parse(inner, raw)
    elif "transaction" in obj and isinstance(obj["transaction"], dict):
        ev = modsecurity.parse_json(obj, raw)
    elif any(k in obj for k in ("sid", "rule", "src_ap", "pkt_num")) and ("msg" in obj or "rule" in obj):
        ev = snort.parse_json(obj, raw, ref)
    else:
        return None
    if header is not None:
        ev.device = ev.device or header.host
        ev.time = ev.time if ev.time is not None else header.time
    return ev


def _detect(header: Header | None, body: str, raw: str, ref: float | None, hint: str) -> Event | None:
    if not body and header is not None and header.sd is None:
        return None
    if body.startswith("{") and hint in ("auto", "suricata", "modsecurity", "snort"):
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        ev = _json(obj, header, raw, ref)
        if ev is not None:
            return ev
    if hint in ("auto", "checkpoint") and checkpoint.looks_like(header, body):
        return checkpoint.parse(header, body, raw)
    if hint in ("auto", "cef"):
        if cef.looks_like(body):
            return cef.parse(body, raw, header.time if header else None, header.host if header else None)
        if header is not None and "CEF:" in body:
            i = cef.find(body)
            if i < 0 and header.after_host:
                j = cef.find(header.after_host)
                if j >= 0:
                    body, i = header.after_host, j
            if i >= 0:
                ev = cef.parse(body[i:], raw, header.time, header.host)
                ev.extra["prefix"] = body[:i].rstrip(" :")
                return ev
    if hint in ("auto", "modsecurity"):
        if modsecurity.looks_like_errorlog(body):
            return modsecurity.parse_errorlog(header, body, raw, ref)
        if body.startswith("--") and modsecurity.AUDIT_BOUNDARY.match(body.split("\n", 1)[0].strip()):
            return modsecurity.parse_native(body)
    if hint in ("auto", "snort"):
        if header is None or header.time is None and header.host is None and header.kind == "rfc3164":
            # no header, or only a PRI ("<13>" + a Snort fast/CSV line, as a relay adds it)
            if body[:1].isdecimal():
                ev = snort.parse_fast(body, ref) or snort.parse_csv(body, ref)
                if ev:
                    return ev
            elif _SNORT_FULL.match(body):
                return snort.parse_full(body.strip("\n"), ref)
        elif _SNORT_BODY.match(body):
            return snort.parse_syslog(header, body, raw)
        else:
            # a fast.log or CSV line relayed behind a syslog header, with or without a tag
            # ("<13>Nov 13 10:00:01 relay 11/13-10:00:01.1 [**] ..." puts "11/13-10" in the tag)
            for text in (body, header.after_host):
                if text and text[:1].isdecimal():
                    ev = snort.parse_fast(text, header.time or ref) or snort.parse_csv(text, header.time or ref)
                    if ev:
                        ev.raw = raw
                        ev.device = header.host
                        return ev
    return None


def raw_event(message: str, reason: str, ref: float | None = None) -> Event:
    """The message as a raw ``syslog`` event with its header fields, marked with why its parse was
    not kept (a message whose parsed event could not be stored is stored this way)."""
    raw = message.rstrip("\r\n")
    try:
        header, body = parse_header(raw, ref)
    except Exception:                  # parse_header does not raise; nothing here may
        header, body = None, raw
    ev = _raw(header, body, raw)
    ev.extra["parse_error"] = reason
    return ev


def parse(message: str, ref: float | None = None, hint: str = "auto",
          stats: ParseStats | None = None) -> Event | None:
    """Parse one syslog message or one multi-line record.  None only for a blank message."""
    raw = message.rstrip("\r\n")
    if not raw or raw.isspace():
        if stats:
            stats.empty += 1
        return None
    header, body = parse_header(raw, ref)
    if header is None and raw.startswith(" "):
        body = raw.strip()
    try:
        ev = _detect(header, body, raw, ref, hint)
    except Exception as exc:  # a parser bug must not lose the message or stop the collector
        kind = hint if hint != "auto" else "auto"
        if stats:
            stats.errors[kind] += 1
        log.debug("parser failed (%s) on %.200r: %s", kind, raw, exc)
        ev = _raw(header, body, raw)
        ev.extra["parse_error"] = f"{type(exc).__name__}: {exc}"[:200]
    if ev is None:
        ev = _raw(header, body, raw)
    if stats:
        stats.parsed[ev.source_type] += 1
    return ev
