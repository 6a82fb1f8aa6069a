"""vigilctl engines: the fleet as the manager sees it; mode switch; learning report."""
from __future__ import annotations

import math
import os

from .decisions import COLUMNS as DECISION_COLUMNS, rows as decision_rows
from .output import emit, ts


def register(sub) -> None:
    p = sub.add_parser("engines", help="list engines: online, mode, learning progress, rule-set generation")
    s = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=cmd_list)
    s.add_parser("list", help="list engines (the default)").set_defaults(func=cmd_list)
    m = s.add_parser("mode", help="switch an engine to learning or enforcing (auto: its own clock)")
    m.add_argument("engine")
    m.add_argument("mode", choices=["learning", "enforcing", "auto"])
    m.set_defaults(func=cmd_mode)
    r = s.add_parser("report", help="learning report: what enforcement would have blocked")
    r.add_argument("engine", nargs="?")
    r.set_defaults(func=cmd_report)
    b = s.add_parser("baseline", help="the learned baseline of an engine")
    b.add_argument("engine")
    b.set_defaults(func=cmd_baseline)
    lp = s.add_parser("learn-pcap", help="learn an engine's baseline from a capture of normal traffic "
                                         "(pcap/pcapng, e.g. tcpdump -w on a span port), in capture time")
    lp.add_argument("engine")
    lp.add_argument("file", help="the capture, on the manager's host")
    lp.add_argument("--interval", type=float, default=10.0,
                    help="the engine's flow interval (flows.interval, seconds; default 10)")
    lp.add_argument("--enforce", action="store_true", help="then switch the engine to enforcing")
    lp.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the manager")
    lp.set_defaults(func=cmd_learn_pcap)


def cmd_list(args, client) -> None:
    engines = client("engines.list")
    for e in engines:
        e["seen"] = ts(e.get("ts") or (e.get("last_status") or 0) * 1000)
        e["learning_pct"] = learning_column(e)
        if "online" not in e:
            e["online"] = e.get("state") == "running"
        e["generation"] = f"{e.get('ruleset_generation')}/{e['published_generation']}" \
            if "published_generation" in e else e.get("ruleset_generation")
    emit(args, engines, [("ENGINE", "engine"), ("ONLINE", "online"), ("STATE", "state"), ("MODE", "mode"),
                         ("LEARNING", "learning_pct"), ("GENERATION", "generation"),
                         ("BLOCKS", "enforced"), ("WOULD-BLOCK", "would_block"), ("VERSION", "version"),
                         ("LAST SEEN", "seen")])


def learning_column(e: dict) -> str:
    """Learning progress while an engine learns; ``done`` once it enforces, whether its clock ran
    out or an operator switched it (its clock then stops short of 100 %).  Floored, so 99.9 %
    is not shown as 100 %."""
    if e.get("mode") == "enforcing":
        return "done"
    progress = float((e.get("learning") or {}).get("progress", 0) or 0)
    return f"{math.floor(100 * min(max(progress, 0.0), 1.0))}%"


def cmd_mode(args, client) -> None:
    e = client("engines.mode", engine=args.engine, mode=None if args.mode == "auto" else args.mode)
    emit(args, e, [("ENGINE", "engine"), ("MODE", "mode"), ("OVERRIDE", "mode_override"),
                   ("REPORTED", "reported_mode")])


def cmd_report(args, client) -> None:
    params = {"engine": args.engine} if args.engine else {}
    emit(args, decision_rows(client("engines.report", **params)), DECISION_COLUMNS)


def cmd_learn_pcap(args, client) -> None:
    rep = client("engines.learn_pcap", _timeout=args.timeout, engine=args.engine,
                 file=os.path.abspath(args.file), interval=args.interval, enforce=args.enforce)
    if not getattr(args, "json", False):
        rep["errors"] = ", ".join(f"{k}: {v}" for k, v in sorted(rep.get("errors", {}).items())) or "none"
    emit(args, rep, [("ENGINE", "engine"), ("PACKETS", "packets"), ("INTERVALS", "intervals"),
                     ("SUSPICIOUS", "suspicious_intervals"), ("ADDED S", "learned_seconds_added"),
                     ("LEARNED S", "learned_seconds"), ("MODE", "mode"), ("ERRORS", "errors")])


def cmd_baseline(args, client) -> None:
    emit(args, client("engines.baseline", engine=args.engine))
