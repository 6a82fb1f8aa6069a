"""vigilctl hashes: the verdict service's view of executables, and operator overrides.

  vigilctl hashes show SHA256            the verdict, its source and the hash's history
  vigilctl hashes allow SHA256 [--reason R] [--ttl S]
  vigilctl hashes block SHA256 [--reason R] [--ttl S]
  vigilctl hashes clear SHA256           drop the operator's verdict (lists and analysis decide again)
  vigilctl hashes unknowns [--limit N]   hashes seen but not yet known good or bad
"""
from __future__ import annotations

import sys

from .output import emit


def register(sub) -> None:
    p = sub.add_parser("hashes", help="executable hashes: show, allow, block, clear, list unknowns")
    hs = p.add_subparsers(dest="hashes_cmd", metavar="ACTION")
    hs.required = True
    s = hs.add_parser("show", help="a hash's verdict and history")
    s.add_argument("sha256")
    s.set_defaults(func=cmd_show)
    for name, verdict in (("allow", "benign"), ("block", "malicious")):
        a = hs.add_parser(name, help=f"operator override: mark the hash {verdict}")
        a.add_argument("sha256")
        a.add_argument("--reason", default="", help="why (kept in the hash's history)")
        a.add_argument("--ttl", type=float, default=None, help="how long endpoints may cache it (seconds)")
        a.set_defaults(func=cmd_set, verdict=verdict)
    c = hs.add_parser("clear", help="drop the operator's override")
    c.add_argument("sha256")
    c.set_defaults(func=cmd_clear)
    u = hs.add_parser("unknowns", help="hashes seen on endpoints and not known good or bad")
    u.add_argument("--limit", type=int, default=100)
    u.set_defaults(func=cmd_unknowns)


def _norm(sha: str) -> str:
    from .vigilctl import UsageError
    s = sha.strip().lower().removeprefix("sha256:")
    if len(s) != 64 or any(ch not in "0123456789abcdef" for ch in s):
        raise UsageError(f"not a SHA-256 hash: {sha!r}")
    return s


def cmd_show(args, client) -> None:
    r = client("verdicts.get", sha256=_norm(args.sha256))
    if args.json:
        emit(args, r)
        return
    rec = r["record"]
    print(f"{rec['sha256']}  {rec['verdict'].upper()}  source {rec['source'] or '-'}  ttl {rec['ttl']:.0f}s")
    print(f"  seen {rec['seen_count']} times, last on {rec['last_endpoint'] or '-'} at {rec['last_path'] or '-'}; "
          f"size {rec['size'] if rec['size'] is not None else '?'}; analysis {rec['analysis']}")
    if rec["detail"]:
        print(f"  detail: {rec['detail']}")
    print()
    emit(args, [dict(h, when=_t(h["ts"])) for h in r["history"]],
         [("WHEN", "when"), ("KIND", "kind"), ("VERDICT", "verdict"), ("SOURCE", "source"), ("DETAIL", "detail")])


def cmd_set(args, client) -> None:
    r = client("verdicts.set", sha256=_norm(args.sha256), verdict=args.verdict, reason=args.reason, ttl=args.ttl)
    if args.json:
        emit(args, r)
        return
    rec = r["record"]
    print(f"{rec['sha256']} is now {rec['verdict']} (operator){'' if r['changed'] else ' — unchanged'}; "
          "pushed to endpoints", file=sys.stdout)


def cmd_clear(args, client) -> None:
    r = client("verdicts.clear", sha256=_norm(args.sha256))
    if args.json:
        emit(args, r)
        return
    rec = r["record"]
    print(f"{rec['sha256']}: override removed; now {rec['verdict']} ({rec['source'] or 'no source'})")


def cmd_unknowns(args, client) -> None:
    rows = client("verdicts.unknowns", limit=args.limit)
    for r in rows:
        r["last"] = _t(r["last_seen"])
    emit(args, rows, [("SHA256", "sha256"), ("SEEN", "seen_count"), ("LAST SEEN", "last"),
                      ("ENDPOINT", "last_endpoint"), ("PATH", "last_path"), ("ANALYSIS", "analysis")])


def _t(epoch: float | None) -> str:
    from .output import ts
    return ts(epoch * 1000 if epoch else None)
