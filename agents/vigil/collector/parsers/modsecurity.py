"""ModSecurity: Apache/nginx error-log lines, the JSON audit log (v2 and v3) and the native serial
audit log (``--xxxxxxxx-A--`` sections, one multi-line record per transaction)."""
from __future__ import annotations

import functools
import ipaddress
import re

from ..event import CRITICAL, HIGH, INFO, LOW, MEDIUM, Event, severity_from_word
from ..syslog import Header, MONTHS, bsd_time
import calendar

_BRACKET = re.compile(r'\[(file|line|id|rev|msg|data|severity|ver|maturity|accuracy|tag|hostname|uri|unique_id) "((?:[^"\\]++|\\.)*+)"\]')
_APACHE_TIME = re.compile(r"\[(?:[A-Za-z]{3} )?([A-Za-z]{3}) (\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d+))? (\d{4})\]")
_NGINX_TIME = re.compile(r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) ")
_CLIENT = re.compile(r"\[client ([^\]]+)\]")
_NGINX_CLIENT = re.compile(r", client: ([^,\s]+)")
_NGINX_SERVER = re.compile(r", server: ([^,\s]+)")
_SEV_NUM = {"0": CRITICAL, "1": CRITICAL, "2": HIGH, "3": HIGH, "4": MEDIUM, "5": LOW, "6": INFO, "7": INFO}
_SEV_WORD = {"EMERGENCY": CRITICAL, "ALERT": CRITICAL, "CRITICAL": HIGH, "ERROR": HIGH,
             "WARNING": MEDIUM, "NOTICE": LOW, "INFO": INFO, "DEBUG": INFO}
_CRS2_TAGS = (("SQL_INJECTION", "attack-sqli"), ("XSS", "attack-xss"), ("LFI", "attack-lfi"),
              ("RFI", "attack-rfi"), ("COMMAND_INJECTION", "attack-rce"), ("PHP_INJECTION", "attack-php"),
              ("PROTOCOL_VIOLATION", "attack-protocol"), ("PROTOCOL_ANOMALY", "attack-protocol"),
              ("SCANNER", "attack-reputation-scanner"), ("AUTOMATION", "attack-reputation-scanner"))
_FILE_ATTACK = re.compile(r"-ATTACK-([A-Z]+)\.conf")
_AUDIT_A = re.compile(r"\[(\d\d)/(\w{3})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.\d+)? ([+-]\d{4})\] (\S+) (\S+) (\d+) (\S+) (\d+)")
AUDIT_BOUNDARY = re.compile(r"^--([0-9a-zA-Z]{8,})-([A-Z])--$")


def _unescape(v: str) -> str:
    return v.replace('\\"', '"') if '\\"' in v else v


def rule_fields(msg: str) -> dict:
    """The bracketed ``[id "..."]``-style fields of one rule message (tags collected in a list)."""
    out: dict = {"tags": []}
    for k, v in _BRACKET.findall(msg):
        v = _unescape(v)
        if k == "tag":
            out["tags"].append(v)
        elif k not in out:
            out[k] = v
    return out


def category(f: dict) -> str | None:
    for t in f.get("tags", ()):
        if t.startswith("attack-"):
            return t
    m = _FILE_ATTACK.search(f.get("file", ""))
    if m:
        return "attack-" + m.group(1).lower()
    for t in f.get("tags", ()):
        for key, cat in _CRS2_TAGS:
            if key in t:
                return cat
    tags = f.get("tags")
    return tags[0].lower() if tags else None


def _severity(f: dict) -> int | None:
    s = f.get("severity")
    if s is None:
        return None
    return _SEV_NUM.get(s) if s in _SEV_NUM else _SEV_WORD.get(s.upper(), severity_from_word(s))


def _fill(ev: Event, f: dict, text: str) -> None:
    ev.sig_id = f.get("id")
    ev.sig_name = f.get("msg")
    ev.category = category(f)
    ev.severity = _severity(f)
    ev.action = "block" if "Access denied" in text or "Intercepted" in text else "alert"
    if f.get("hostname"):
        ev.extra["hostname"] = f["hostname"]
    if f.get("uri"):
        ev.extra["uri"] = f["uri"]
    if f.get("tags"):
        ev.extra["tags"] = f["tags"]


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def _is_ip(s: str) -> bool:
    # fast path for the common case, a canonical dotted quad (what ip_address accepts as IPv4)
    return _QUAD.fullmatch(s) is not None or _is_ip_slow(s)


@functools.lru_cache(maxsize=4096)
def _is_ip_slow(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def _client(values: list[str], apache24: bool) -> tuple[str | None, int | None]:
    """Apache 2.4 writes ``[client ADDR:PORT]`` and ModSecurity adds ``[client ADDR]``."""
    if not values:
        return None, None
    first = values[0].strip()
    addr = None
    for v in values[1:]:                # the first of the others that is an address
        v = v.strip()
        if _is_ip(v):
            addr = v
            break
    port = None
    if addr and first.startswith(addr + ":") and first[len(addr) + 1:].isdecimal():
        return addr, int(first[len(addr) + 1:])
    host, sep, p = first.rpartition(":")
    if sep and p.isdecimal() and _is_ip(host.strip("[]")) and ("." in host or apache24 or not _is_ip(first)):
        return host.strip("[]"), int(p)
    return (addr or first), port


def _clients(text: str) -> list[str]:
    """The values of every ``[client VALUE]`` in order.  A scan, not a regex: ``\\[client ([^]]+)]``
    tried from every ``[client `` rescanned the rest of the text when no ``]`` followed (a 64 KB
    line of repeated ``[client `` took seconds)."""
    if len(text) < 1024:        # short (the usual prefix): the regex, at most ~0.1 ms however crafted
        return _CLIENT.findall(text)
    out: list[str] = []
    i = text.find("[client ")
    while i >= 0:
        j = text.find("]", i + 8)
        if j < 0:
            break                      # no "]" after this one: none after the later ones either
        if j > i + 8:
            out.append(text[i + 8:j])
            i = text.find("[client ", j + 1)
        else:
            i = text.find("[client ", i + 1)
    return out


def looks_like_errorlog(body: str) -> bool:
    return "ModSecurity:" in body


# a time with its year does not depend on the reference time: results are remembered
_dated_time = functools.lru_cache(maxsize=4096)(lambda *fields: bsd_time(*fields, None))


def parse_errorlog(header: Header | None, body: str, raw: str, ref: float | None) -> Event:
    ev = Event("modsecurity", "modsecurity-apache", raw)
    if header is not None:
        ev.time, ev.device = header.time, header.host
    m = _APACHE_TIME.match(body)
    if m:
        mon, dd, h, mi, s, frac, y = m.groups()
        ev.time = _dated_time(mon, dd, y, h, mi, s, frac[:6] if frac else None) or ev.time
        apache24 = bool(frac) or "[pid " in body[:120] and ":tid " in body[:160]
        ev.src, ev.sport = _client(_clients(body.split("ModSecurity:", 1)[0]), apache24)
    else:
        mn = _NGINX_TIME.match(body)
        if mn:
            ev.format = "modsecurity-nginx"
            y, mo, d, h, mi, s = map(int, mn.groups())
            try:
                ev.time = float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
            except (ValueError, OverflowError):
                pass
        mc = _NGINX_CLIENT.search(body)
        if mc:
            ev.src = mc.group(1)
        else:
            ev.src, ev.sport = _client(_clients(body), False)
        ms = _NGINX_SERVER.search(body)
        if ms:
            ev.extra["server"] = ms.group(1)
    msg = body.split("ModSecurity:", 1)[1] if "ModSecurity:" in body else body
    if not _is_rule_message(msg):
        # ModSecurity's own engine messages (audit log write failures, DBM and mutex errors,
        # request body limits): about the server, not an alert from the client
        ev.extra["client"] = ev.src
        ev.src = ev.sport = None
        ev.category = "modsecurity-engine"
        ev.sig_name = msg.strip()[:200] or None
        ev.severity = _APACHE_LEVEL.get(_apache_level(body))
        return ev
    _fill(ev, rule_fields(msg), msg)
    return ev


# The message classes a rule match writes (ModSecurity 2 reference manual, "Actions": disruptive
# actions log "Access denied with code N", "Access allowed", "Redirecting", "Proxying", "Pausing";
# non-disruptive matches "Warning."); every rule message also names its rule with [id "..."].
# Anything else ("Audit log: Failed writing ...", "Failed to lock global mutex", "Request body no
# files data length is larger than the configured limit") is the engine talking about itself.
_RULE_CLASSES = ("Access denied", "Access allowed", "Warning.", "Redirecting", "Proxying", "Pausing",
                 "Intercepted")


def _is_rule_message(msg: str) -> bool:
    return '[id "' in msg or msg[:64].lstrip().startswith(_RULE_CLASSES)


_APACHE_LEVEL = {"emerg": CRITICAL, "alert": CRITICAL, "crit": HIGH, "error": HIGH, "warn": MEDIUM,
                 "notice": LOW, "info": INFO, "debug": INFO}


def _apache_level(body: str) -> str | None:
    """The level of an Apache 2.4 "[module:level]" or 2.2 "[level]" field, or nginx's "[level]"."""
    for part in body[:200].split("] [")[:3]:
        part = part.strip("[] ")
        level = part.rpartition(":")[2]
        if level in _APACHE_LEVEL:
            return level
    return None


def _pick(messages: list[str]) -> tuple[dict, str]:
    """The most telling rule message: the first attack-* one (not the anomaly-score rules), else
    the first with an id.  Messages are parsed only as far as needed."""
    fallback = None
    for m in messages:
        if not isinstance(m, str):
            continue
        f = rule_fields(m)
        if any(t.startswith("attack-") for t in f["tags"]) and not f.get("id", "").startswith(("949", "959", "980")):
            return f, m
        if fallback is None or (not fallback[0].get("id") and f.get("id")):
            fallback = (f, m)
    return fallback or ({"tags": []}, "")


@functools.lru_cache(maxsize=4096)
def _apache_audit_time(s: str) -> float | None:
    m = re.match(r"(\d\d)/(\w{3})/(\d{4}):(\d\d):(\d\d):(\d\d)(?:\.\d+)? ([+-])(\d\d)(\d\d)", s or "")
    if not m:
        return None
    d, mon, y, h, mi, se, sign, oh, om = m.groups()
    month = MONTHS.get(mon.lower())
    if month is None:
        return None
    try:
        ts = calendar.timegm((int(y), month, int(d), int(h), int(mi), int(se), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    off = int(oh) * 3600 + int(om) * 60
    return float(ts - off if sign == "+" else ts + off)


def parse_json(obj: dict, raw: str) -> Event:
    ev = Event("modsecurity", "modsecurity-json", raw)
    tx = obj.get("transaction") if isinstance(obj.get("transaction"), dict) else {}
    if "audit_data" in obj or "remote_address" in tx:          # ModSecurity 2 (Apache)
        ev.time = _apache_audit_time(str(tx.get("time", "")))
        ev.src, ev.sport = tx.get("remote_address"), _port(tx.get("remote_port"))
        ev.dst, ev.dport = tx.get("local_address"), _port(tx.get("local_port"))
        ad = obj.get("audit_data") if isinstance(obj.get("audit_data"), dict) else {}
        msgs = ad.get("messages") if isinstance(ad.get("messages"), list) else []
        f, m = _pick(msgs)
        _fill(ev, f, m)
        action = ad.get("action") if isinstance(ad.get("action"), dict) else {}
        if action.get("intercepted") or any("Access denied" in str(x) for x in msgs):
            ev.action = "block"
    else:                                                       # libmodsecurity 3
        ev.format = "modsecurity-json3"
        ev.src, ev.sport = tx.get("client_ip"), _port(tx.get("client_port"))
        ev.dst, ev.dport = tx.get("host_ip"), _port(tx.get("host_port"))
        ts = tx.get("time_stamp")
        if isinstance(ts, str):
            p = ts.split()
            if len(p) == 5:
                ev.time = bsd_time(p[1], p[2], p[4], *p[3].split(":")[:3], None, None) if p[3].count(":") == 2 else None
        msgs = tx.get("messages") if isinstance(tx.get("messages"), list) else []
        best = None
        for mm in msgs:
            if not isinstance(mm, dict):
                continue
            det = mm.get("details") if isinstance(mm.get("details"), dict) else {}
            f = {"id": det.get("ruleId"), "msg": mm.get("message"), "severity": det.get("severity"),
                 "tags": [t for t in det.get("tags", []) if isinstance(t, str)] if isinstance(det.get("tags"), list) else [],
                 "file": det.get("file", "")}
            if best is None or (category(f) or "").startswith("attack-") and not (category(best) or "").startswith("attack-"):
                best = f
        if best:
            _fill(ev, {k: (str(v) if v is not None and k != "tags" else v) for k, v in best.items()}, "")
        resp = tx.get("response") if isinstance(tx.get("response"), dict) else {}
        if isinstance(resp.get("http_code"), int) and resp["http_code"] == 403 and best:
            ev.action = "block"
    if ev.src is not None:
        ev.src = str(ev.src)
    if ev.dst is not None:
        ev.dst = str(ev.dst)
    return ev


def _port(v) -> int | None:
    try:
        p = int(v)
    except (TypeError, ValueError):
        return None
    return p if 0 <= p < 65536 else None


def parse_native(record: str) -> Event:
    """Native serial audit log: one transaction, sections A (who), H (messages, action)..."""
    ev = Event("modsecurity", "modsecurity-native", record)
    section = None
    msgs: list[str] = []
    intercepted = False
    for ln in record.split("\n"):
        if not ln:
            continue
        c = ln[0]
        mb = AUDIT_BOUNDARY.match(ln.strip()) if c == "-" or c in " \t" else None
        if mb:
            section = mb.group(2)
            continue
        if section == "A" and ev.src is None:
            ma = _AUDIT_A.match(ln)
            if ma:
                d, mon, y, h, mi, s, tz, _uid, src, sport, dst, dport = ma.groups()
                ev.time = _apache_audit_time(f"{d}/{mon}/{y}:{h}:{mi}:{s} {tz}")
                ev.src, ev.sport, ev.dst, ev.dport = src, _port(sport), dst, _port(dport)
        elif section == "H":
            if ln.startswith("Message: "):
                msgs.append(ln[9:])
            elif ln.startswith("Action: Intercepted"):
                intercepted = True
    f, m = _pick(msgs)
    _fill(ev, f, m)
    if intercepted:
        ev.action = "block"
    return ev
