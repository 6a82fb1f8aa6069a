"""vigilctl engines: the fleet as the manager sees it."""
from __future__ import annotations

from .output import emit, ts


def register(sub) -> None:
    p = sub.add_parser("engines", help="list engines: online, mode, learning progress, rule-set generation")
    p.set_defaults(func=cmd_list)


def cmd_list(args, client) -> None:
    engines = client("engines.list")
    for e in engines:
        e["seen"] = ts(e.get("ts"))
        e["learning_pct"] = f"{100 * (e.get('learning') or {}).get('progress', 0):.0f}%"
    emit(args, engines, [("ENGINE", "engine"), ("STATE", "state"), ("MODE", "mode"),
                         ("LEARNING", "learning_pct"), ("GENERATION", "ruleset_generation"),
                         ("FLOWS", "flows_tracked"), ("VERSION", "version"), ("LAST SEEN", "seen")])
