"""Families of pathological messages for the parsers (used by ``bench/collector_hostile.py`` and the
hostile-input tests).

A family is one valid message of a format (``SEEDS``), cut at a point that its parser reaches
(``cuts``), with one short token repeated there until the message has the wanted size, followed
either by the rest of the message, by nothing (truncated), or by a tail that sends it down
another parser's path.  The tokens are the characters and words the parsers look for: spaces,
``=`` and ``\\``, quotes, brackets, ``[client ``, ``key:"``, the Snort ``[**]`` parts, digits.
A parser that backtracks or rescans on one of them shows up as a family whose time grows faster
than its size.
"""
from __future__ import annotations

from typing import Iterator

SEEDS: dict[str, str] = {
    "cef": "<134>Nov 23 10:00:01 fw CEF:0|Vendor|Product|1.0|100|Threat blocked|8|src=10.2.1.1 "
           "spt=4444 dst=10.0.1.1 dpt=80 proto=TCP act=blocked msg=something happened",
    "checkpoint-kv": '<134>1 2026-11-23T10:00:01Z gw CheckPoint 16700 - [action:"Accept"; ifdir:"inbound"; '
                     'origin:"10.0.0.1"; src:"10.3.1.1"; dst:"10.0.1.1"; proto:"6"; s_port:"4444"; '
                     'service:"443"; product:"VPN-1 & FireWall-1"; rule_name:"Allow web"]',
    "checkpoint-sd": '<134>1 2026-11-23T10:00:01Z gw CheckPoint 16700 - [Fields@1.3.6.1.4.1.2620 '
                     'action="Accept" src="10.3.1.1" dst="10.0.1.1"] msg',
    "checkpoint-body": 'time:"1677657427"; action:"Drop"; src:"1.2.3.4"; dst:"5.6.7.8"',
    "modsecurity-apache": '<131>Nov 23 10:00:01 www apache-error: [Mon Nov 23 10:00:01.123456 2026] '
                          '[security2:error] [pid 1:tid 2] [client 10.4.1.1:5555] [client 10.4.1.1] '
                          'ModSecurity: Access denied with code 403 (phase 2). [file "/x/REQUEST-942-'
                          'APPLICATION-ATTACK-SQLI.conf"] [line "1"] [id "942100"] [msg "SQL Injection"] '
                          '[severity "CRITICAL"] [tag "attack-sqli"] [hostname "h"] [uri "/"] [unique_id "u"]',
    "modsecurity-nginx": '2026/11/23 10:00:01 [error] 1#1: *1 [client 1.2.3.4] ModSecurity: Access denied '
                         '[id "1"] [msg "x"], client: 1.2.3.4, server: a, request: "GET /"',
    "modsecurity-native": '--abcdefgh-A--\n[23/Nov/2026:10:00:01 +0000] X 1.2.3.4 5 6.7.8.9 80\n'
                          '--abcdefgh-H--\nMessage: Access denied [id "1"] [msg "x"]\nAction: Intercepted\n'
                          '--abcdefgh-Z--',
    "modsecurity-json": '{"transaction":{"time":"23/Nov/2026:10:00:00 +0000","remote_address":"1.2.3.4"},'
                        '"audit_data":{"messages":["Warning [id \\"1\\"] [tag \\"attack-sqli\\"]"]}}',
    "snort-fast": "11/23-10:00:01.123456  [**] [1:2012811:2] ET DNS Query [**] [Classification: Bad] "
                  "[Priority: 2] {UDP} 10.0.0.1:1029 -> 10.0.1.1:53",
    "snort-syslog": "<38>Nov 23 10:00:01 ids snort: [1:2012811:2] ET DNS Query to a .tk domain "
                    "[Classification: Potentially Bad Traffic] [Priority: 2] {UDP} 10.1.1.1:1029 -> 10.0.1.1:53",
    "snort-full": "[**] [1:1:1] msg [**]\n[Classification: x] [Priority: 1]\n"
                  "11/23-10:00:01.1 1.2.3.4:1 -> 5.6.7.8:2\nTCP TTL",
    "snort-csv": "11/23-10:00:01.123456 ,1,2,3,msg,TCP,1.2.3.4,5,6.7.8.9,80,a,b",
    "snort-json": '{"seconds":1700000000,"timestamp":"11/23-10:00:01.1","src_ap":"1.2.3.4:5",'
                  '"dst_ap":"6.7.8.9:80","rule":"1:2:3","msg":"x","action":"allow"}',
    "suricata-eve": '{"timestamp":"2026-11-23T10:00:01.1+0000","event_type":"alert","src_ip":"1.2.3.4",'
                    '"alert":{"signature_id":1,"signature":"x"}}',
    "suricata-fast": "11/23/2026-10:00:01.123456  [**] [1:2034125:4] ET x [**] [Classification: y] "
                     "[Priority: 1] {TCP} 1.2.3.4:1 -> 5.6.7.8:80",
    "syslog-rfc5424": '<13>1 2026-11-23T10:00:01Z host app 1 id [a b="c"][d@1 e="f\\"]"] msg',
    "syslog-rfc3164": "<13>Nov 23 10:00:01 host app[1]: msg",
    "syslog-v": "Nov 23 10:00:01 <4.6> host app[1]: msg",
}

TOKENS = (" ", "  =", "=", "a", "a=", " a=", "\\", "\\=", '"', '\\"', "[", "]", "[client ", "[client a",
          ":", "a:", 'a:"', 'a:"x";', 'a="', "|", "{", "}", "<", "<1>", "[**] ", "[1:1:1] ", '[id "',
          '[tag "', "-", "1", "0", "1 ", ", client: ", "[Priority: ", "[Classification: ", "{TCP} ",
          " -> ", "--abcdefgh-A--\n", "\n", "ModSecurity:", "[a", "@1", "a b", "[1:", "1:1", ",", "\t",
          "CEF:0|", "\\|", "Nov 23 10:00:01 ", "<auth.info> ", "[x@1 ", 'k="', "\ufeff")

TAILS = ("", " ModSecurity: x")


def cuts(seed: str) -> list[int]:
    """Points inside the seed its parser reaches: the end, the middle, after the first structure."""
    pts = {len(seed), len(seed) // 2}
    for ch, start in (("|", 30), ("[", 0), (" ", 25), ("=", -1), ('"', 0), ("ModSecurity", 0)):
        i = seed.rfind(ch) if start < 0 else seed.find(ch, start)
        if i >= 0:
            pts.add(i + (0 if ch == "ModSecurity" else 1))
    return sorted(pts)


def family(seed: str, cut: int, token: str, tail: str | None, size: int) -> str:
    """The member of one family with (about) ``size`` characters."""
    after = seed[cut:] if tail is None else tail
    k = max(1, (size - cut - len(after)) // len(token))
    return seed[:cut] + token * k + after


def families(fmt: str) -> Iterator[tuple[int, str, str | None]]:
    """(cut, token, tail) for every family of one seed; tail None = the rest of the seed."""
    seed = SEEDS[fmt]
    for c in cuts(seed):
        for tok in TOKENS:
            for tail in (None, *TAILS):
                yield c, tok, tail
