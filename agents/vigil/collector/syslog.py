"""Syslog headers: RFC 5424, RFC 3164 (BSD) and the real-world variants in between.

``parse_header(line)`` returns ``(Header, body)`` or ``(None, line)`` when the line carries no
recognisable header.  It never raises.  Times without a zone are read as UTC; a BSD time without a
year takes the year that puts it closest to the reference time (``ref``, default now).
"""
from __future__ import annotations

import calendar
import functools
import re
import time
from dataclasses import dataclass

FACILITIES = ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
              "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2",
              "local3", "local4", "local5", "local6", "local7")
MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep",
                                      "oct", "nov", "dec"), 1)}


@dataclass(slots=True)
class Header:
    kind: str                     # rfc5424 | rfc3164
    pri: int | None = None
    time: float | None = None
    host: str | None = None
    app: str | None = None
    procid: str | None = None
    msgid: str | None = None
    sd: str | None = None         # raw structured-data text (RFC 5424), None for NIL

    @property
    def facility(self) -> str | None:
        return None if self.pri is None else FACILITIES[self.pri >> 3] if (self.pri >> 3) < 24 else str(self.pri >> 3)

    @property
    def severity(self) -> int | None:
        return None if self.pri is None else self.pri & 7


_PRI = re.compile(r"<(\d{1,3})>")
_5424 = re.compile(r"1 (\S+) (\S+) (\S+) (\S+) (\S+) ?")
_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
                  r"(Z|z|[+-]{1,2}\d{1,2}:?\d\d)?$")
_BSD_TIME = re.compile(r"([A-Za-z]{3}) {1,2}(\d{1,2})(?: (\d{4}))? (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?:? ?")
_ISO_PREFIX = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) ?")
_VV = re.compile(r"<[a-z0-9]+\.[a-z]+> ")
_TAG = re.compile(r"([^\s:\[]{1,64})(?:\[([^\]\s]*)\])?:? ?")


@functools.lru_cache(maxsize=4096)
def iso_time(s: str) -> float | None:
    """An ISO 8601 / RFC 3339 time as epoch seconds (None when it is not one).  Results are
    remembered: a stream repeats each second's timestamp for every message in it."""
    m = _ISO.match(s)
    if not m:
        return None
    y, mo, d, h, mi, se, frac, tz = m.groups()
    try:
        ts = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(se), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if not (1 <= int(mo) <= 12 and 1 <= int(d) <= 31 and int(h) < 24 and int(mi) < 60 and int(se) < 61):
        return None
    if frac:
        ts += int(frac) / 10 ** len(frac)
    if tz and tz not in "Zz":
        # "+02:00", "-0700", and Check Point's "--5:00" (doubled sign, one-digit hour)
        sign = -1 if "-" in tz else 1
        digits = tz.lstrip("+-").replace(":", "")
        hours, minutes = int(digits[:-2] or 0), int(digits[-2:])
        ts -= sign * (hours * 3600 + minutes * 60)
    return float(ts)


@functools.lru_cache(maxsize=1024)
def _days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def bsd_time(mon: str, day: str, year: str | None, hh: str, mm: str, ss: str, frac: str | None,
             ref: float | None) -> float | None:
    month = MONTHS.get(mon.lower())
    if month is None:
        return None
    try:
        d, h, mi, s = int(day), int(hh), int(mm), int(ss)
        if not (1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
            return None
        if year:
            y = int(year)
            if d > _days_in_month(y, month):
                return None
            ts = calendar.timegm((y, month, d, h, mi, s, 0, 0, 0))
        else:
            now = ref if ref is not None else time.time()
            y = _year_of(now)
            best = None
            for cand_y in (y, y - 1, y + 1):    # the year that puts the time nearest to now
                if d > _days_in_month(cand_y, month):
                    continue
                cand = calendar.timegm((cand_y, month, d, h, mi, s, 0, 0, 0))
                if best is None or abs(cand - now) < abs(best - now):
                    best = cand
                if abs(cand - now) <= 183 * 86400:
                    break
            if best is None:
                return None
            ts = best
    except (ValueError, OverflowError):
        return None
    return ts + (int(frac) / 10 ** len(frac) if frac else 0.0)


_year_cache: dict[int, int] = {}
_bsd_cache: dict[tuple, float | None] = {}


def _year_of(ts: float) -> int:
    key = int(ts) // 3600
    y = _year_cache.get(key)
    if y is None:
        if len(_year_cache) > 1000:
            _year_cache.clear()
        y = _year_cache[key] = time.gmtime(ts).tm_year
    return y


# One or more SD elements; quoted values may hold "]" and escapes.  Possessive quantifiers keep a
# malformed (unterminated) element from backtracking.
_SD = re.compile(r'(?:\[(?:[^\]"\\]++|\\.|"(?:[^"\\]++|\\.)*+")*+\])++')


def _sd_end(s: str, i: int) -> int:
    """Index just past the structured data starting at s[i] == '['; -1 when it does not close."""
    m = _SD.match(s, i)
    return m.end() if m else -1


def parse_header(line: str, ref: float | None = None) -> tuple[Header | None, str]:
    pri = None
    rest = line
    m = _PRI.match(line)
    if m:
        p = int(m.group(1))
        if p <= 191:
            pri = p
            rest = line[m.end():]
            if rest.startswith(" ") and not rest.startswith(" 1 "):
                rest = rest.lstrip(" ")  # "<38> Mar  7 ..." (space after PRI)
    # RFC 5424 (with or without PRI: Wazuh's Check Point lines have none)
    if rest.startswith("1 "):
        m5 = _5424.match(rest)
        if m5:
            ts_s, host, app, procid, msgid = m5.groups()
            ts = None if ts_s == "-" else iso_time(ts_s)
            if ts is not None or ts_s == "-":
                h = Header("rfc5424", pri, ts, _nil(host), _nil(app), _nil(procid), _nil(msgid))
                body = rest[m5.end():]
                if body.startswith("-"):
                    body = body[2:] if body.startswith("- ") else body[1:]
                elif body.startswith("["):
                    end = _sd_end(body, 0)
                    if end < 0:     # unterminated SD: keep everything as SD, no MSG
                        h.sd, body = body, ""
                    else:
                        h.sd, body = body[:end], body[end:].lstrip(" ")
                if body.startswith("\ufeff"):
                    body = body[1:]
                return h, body
    # RFC 3164 / BSD
    mb = _BSD_TIME.match(rest) if rest[:1].isalpha() else None
    ts = None
    if mb:
        key = (mb.group(0), int(ref if ref is not None else time.time()) // 3600)
        ts = _bsd_cache.get(key, False)
        if ts is False:
            ts = bsd_time(*mb.groups(), ref=ref)
            if len(_bsd_cache) > 4096:
                _bsd_cache.clear()
            _bsd_cache[key] = ts
        if ts is None:
            mb = None
    if mb:
        after = rest[mb.end():]
    else:
        mi = _ISO_PREFIX.match(rest) if rest[4:5] == "-" else None
        if mi and (ts := iso_time(mi.group(1))) is not None:
            after = rest[mi.end():]
        elif pri is not None:
            return Header("rfc3164", pri), rest
        else:
            return None, line
    mv = _VV.match(after)            # FreeBSD syslogd -vv: "<auth.info> "
    vv = None
    if mv:
        vv = after[1:mv.end() - 2]
        after = after[mv.end():]
    h = Header("rfc3164", pri, ts)
    if vv and pri is None:
        fac, _, lvl = vv.partition(".")
        if fac in FACILITIES:
            sev = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
            if lvl in sev:
                h.pri = FACILITIES.index(fac) * 8 + sev.index(lvl)
    host, sp, after2 = after.partition(" ")
    if not host:
        return h, after2 if sp else ""
    h.host = host
    if not sp:
        return h, ""
    mt = _TAG.match(after2)
    if mt and (mt.end() == len(after2) or after2[mt.end() - 1] in ": " or after2[mt.end() - 2:mt.end()] == ": "):
        h.app, h.procid = mt.group(1), mt.group(2)
        return h, after2[mt.end():]
    return h, after2


def _nil(s: str) -> str | None:
    return None if s == "-" else s
