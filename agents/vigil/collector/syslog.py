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
FUTURE_GRACE = 86400       # a year-less time may be this far ahead of the reference time
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
    after_host: str | None = None  # BSD: the text after the host (tag and message)
    relay: str | None = None      # BSD: the host of a relay's header in front of this one

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
_ISO_PREFIX = re.compile(r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) ?")
# FreeBSD/NetBSD syslogd -v / -vv write "<fac.level> " after the time in files: numbers with -v
# ("<4.6>"), names with -vv ("<auth.info>", a number where there is no name); syslogd.c, fprintlog
_VV = re.compile(r"<([a-z0-9]{1,10})\.([a-z0-9]{1,10})> ")
_YEAR_FIRST = re.compile(r"(\d{4}) ([A-Za-z]{3}) {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?:? ?")
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
            # the latest year that does not put the time in the future (a day's grace for senders
            # whose local time is ahead of UTC): a February line read in December is this
            # February, never next year's; Feb 29 goes back to the last leap year
            now = ref if ref is not None else time.time()
            y = _year_of(now + FUTURE_GRACE)
            ts = None
            for cand_y in range(y, y - 8, -1):
                if d > _days_in_month(cand_y, month):
                    continue
                cand = calendar.timegm((cand_y, month, d, h, mi, s, 0, 0, 0))
                if cand <= now + FUTURE_GRACE:
                    ts = cand
                    break
            if ts is None:
                return None
    except (ValueError, OverflowError):
        return None
    return ts + (int(frac) / 10 ** len(frac) if frac else 0.0)


_FAC_NAMES = {**{f: i for i, f in enumerate(FACILITIES)}, "security": 4, "console": 14, "mark": 24}
_LEVEL_NAMES = {"emerg": 0, "panic": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4,
                "warn": 4, "notice": 5, "info": 6, "debug": 7}


def _vv_pri(fac: str, lvl: str) -> int | None:
    f = int(fac) if fac.isdecimal() else _FAC_NAMES.get(fac)
    v = int(lvl) if lvl.isdecimal() else _LEVEL_NAMES.get(lvl)
    if f is None or v is None or f > 23 or v > 7:
        return None
    return f * 8 + v


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


def parse_header(line: str, ref: float | None = None, _depth: int = 0) -> tuple[Header | None, str]:
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
        if rest[12:13] == " " and rest[6:7] == "-" and rest[15:16] == ":":
            # "1 2018-03-21 17:25:25 host ...": a space for the T (Check Point exporters; syslog-ng's
            # checkpoint parser test reads it as the time): joined so the fields line up
            rest = rest[:12] + "T" + rest[13:]
        m5 = _5424.match(rest)
        if m5:
            ts_s, host, app, procid, msgid = m5.groups()
            ts = None if ts_s == "-" else iso_time(ts_s)
            if ts is not None or ts_s == "-":
                if len(host) > 255 or len(app) > 48 or len(procid) > 128 or len(msgid) > 32:
                    # RFC 5424 6.2: HOSTNAME 1*255, APP-NAME 1*48, PROCID 1*128, MSGID 1*32
                    host, app, procid, msgid = host[:255], app[:48], procid[:128], msgid[:32]
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
    if mb is not None and mb.group(3) is None and rest[mb.end() - 1:mb.end()] == " " \
            and rest[mb.end():mb.end() + 2] in ("19", "20"):
        mb = None                   # perhaps a year after the time: the general path below
    if mb is not None:              # the common case, inline: "Mmm dd hh:mm:ss "
        key = (mb.group(0), int(ref if ref is not None else time.time()) // 3600)
        ts = _bsd_cache.get(key, False)
        if ts is False:
            ts = bsd_time(*mb.groups(), ref=ref)
            if len(_bsd_cache) > 4096:
                _bsd_cache.clear()
            _bsd_cache[key] = ts
        after = rest[mb.end():] if ts is not None else None
    else:
        ts, after = _time_prefix(rest, ref)
    if after is None:
        if pri is not None:
            return Header("rfc3164", pri), rest
        return None, line
    h = Header("rfc3164", pri, ts)
    mv = _VV.match(after) if after[:1] == "<" else None
    if mv:
        after = after[mv.end():]
        if pri is None:
            h.pri = _vv_pri(mv.group(1), mv.group(2))
    host, sp, after2 = after.partition(" ")
    if not host:
        return h, after2 if sp else ""
    h.host = host
    if not sp:
        return h, ""
    h.after_host = after2
    c = after2[:1]
    if _depth == 0 and ("A" <= c <= "Z" and after2[3:4] == " " or "0" <= c <= "9" and after2[4:5] in (" ", "-")):
        # relayed: the relay's header, then the original one ("2019 May 06 09:28:12 relay May 6
        # 07:28:11 10.0.0.16 %ASA-..."); the original gives time, host and tag, its year taken
        # from the relay's time, and the relay is kept
        its, iafter = _time_prefix(after2, ts)
        if iafter is not None:
            inner, body = parse_header(after2, ts, _depth=1)
            if inner is not None and inner.host is not None:
                if inner.pri is None:
                    inner.pri = h.pri
                inner.relay = host
                return inner, body
    mt = _TAG.match(after2)
    if mt and (mt.end() == len(after2) or after2[mt.end() - 1] in ": " or after2[mt.end() - 2:mt.end()] == ": "):
        h.app, h.procid = mt.group(1), mt.group(2)
        return h, after2[mt.end():]
    return h, after2


def _time_prefix(rest: str, ref: float | None) -> tuple[float | None, str | None]:
    """A BSD or ISO time at the start: ``Mmm dd hh:mm:ss``, with the year between the day and the
    time (Cisco), after the time (``Apr 15 21:28:13 2007 host``) or before the month (``2015 Nov 13
    10:00:01``, as Wazuh and some relays write), or ``YYYY-MM-DD[T ]hh:mm:ss`` -> (epoch, the text
    after it); (None, None) when there is none."""
    c = rest[:1]
    if "A" <= c <= "z" and c.isalpha():
        mb = _BSD_TIME.match(rest)
        if not mb:
            return None, None
        end = mb.end()
        fields = mb.groups()
        if fields[2] is None and rest[end + 4:end + 5] == " " and rest[end:end + 2] in ("19", "20") \
                and rest[end - 1:end] == " " and rest[end + 2:end + 4].isdigit():
            fields = fields[:2] + (rest[end:end + 4],) + fields[3:]     # year after the time
            end += 5
        key = (rest[:end], int(ref if ref is not None else time.time()) // 3600)
        ts = _bsd_cache.get(key, False)
        if ts is False:
            ts = bsd_time(*fields, ref=ref)
            if len(_bsd_cache) > 4096:
                _bsd_cache.clear()
            _bsd_cache[key] = ts
        return (ts, rest[end:]) if ts is not None else (None, None)
    if c.isdigit():
        if rest[4:5] == "-":
            mi = _ISO_PREFIX.match(rest)
            if mi and (ts := iso_time(mi.group(1))) is not None:
                return ts, rest[mi.end():]
        elif rest[4:5] == " ":
            my = _YEAR_FIRST.match(rest)
            if my:
                y, mon, d, hh, mm, ss, frac = my.groups()
                ts = bsd_time(mon, d, y, hh, mm, ss, frac, ref)
                if ts is not None:
                    return ts, rest[my.end():]
    return None, None


def _nil(s: str) -> str | None:
    return None if s == "-" else s
