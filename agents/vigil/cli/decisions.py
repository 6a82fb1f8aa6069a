"""vigilctl decisions: list, add, delete (unblock) and extend the manager's decisions."""
from __future__ import annotations

import re

from .. import ruleset
from .output import emit, ts

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

COLUMNS = [("ID", "id"), ("SCOPE", "scope"), ("VALUE", "value"), ("ORIGIN", "origin"),
           ("TARGETS", "targets"), ("OFFENCE", "offences"), ("EXPIRES", "expires_at"),
           ("LEFT", "left"), ("STATE", "state"), ("REASON", "reason")]


def duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h``, ``2d``, ``1w`` -> seconds (UsageError otherwise)."""
    from .vigilctl import UsageError
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"invalid duration {text!r}: use a positive number with s, m, h, d or w (e.g. 10m)")
    secs = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if secs > ruleset.MAX_TTL:
        raise UsageError(f"invalid duration {text!r}: at most {ruleset.MAX_TTL // 86400} days")
    return secs


def scoped_value(value: str, scope: str | None) -> tuple[str, str]:
    """Guess the scope (flow has '|', cidr has '/', else ip) and check the value."""
    from .vigilctl import UsageError
    scope = scope or ("flow" if "|" in value else "cidr" if "/" in value else "ip")
    try:
        return scope, ruleset.normalise_value(scope, value)
    except ValueError as exc:
        raise UsageError(f"invalid {scope} value {value!r}: {exc}") from None


def human_left(sec) -> str:
    if sec is None:
        return "never"
    sec = int(sec)
    if sec >= 86400:
        return f"{sec // 86400}d{(sec % 86400) // 3600}h"
    if sec >= 3600:
        return f"{sec // 3600}h{(sec % 3600) // 60}m"
    if sec >= 60:
        return f"{sec // 60}m{sec % 60}s"
    return f"{sec}s"


def rows(items: list[dict]) -> list[dict]:
    for d in items:
        d["targets"] = ",".join(d.get("engines") or []) or "all"
        if d.get("would_block_on"):
            d["targets"] += f" (would-block: {','.join(d['would_block_on'])})"
        d["expires_at"] = ts(d["expires"] * 1000) if d.get("expires") else "never"
        d["left"] = human_left(d.get("remaining")) if d.get("state") == "active" else "-"
    return items


def register(sub) -> None:
    p = sub.add_parser("decisions", help="list, add, delete (unblock) and extend decisions")
    s = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=cmd_list, state="active", engine=None, origin=None, value=None, limit=1000)

    ls = s.add_parser("list", help="list decisions (active by default)")
    ls.add_argument("--state", default="active", choices=["active", "expired", "removed", "superseded", "all"])
    ls.add_argument("--engine", help="only decisions that apply to this engine")
    ls.add_argument("--origin", help="only this origin (prefix, e.g. flow-anomaly)")
    ls.add_argument("--value", help="only this address, CIDR, flow or decision id")
    ls.add_argument("--limit", type=int, default=1000)
    ls.set_defaults(func=cmd_list)

    add = s.add_parser("add", help="block an address, CIDR or flow (src|dst|proto|dport)")
    add.add_argument("value")
    add.add_argument("--scope", choices=list(ruleset.SCOPES), help="default: guessed from the value")
    add.add_argument("--duration", "-d", help="e.g. 30m, 2h, 7d (default: the ladder)")
    add.add_argument("--reason", "-r", default="")
    add.add_argument("--engine", "-e", action="append", default=[],
                     help="target engine id or tag:<tag> (repeatable; default: every engine)")
    add.set_defaults(func=cmd_add)

    for name in ("delete", "unblock"):
        d = s.add_parser(name, help="remove a decision (by id or value); detections may not re-block "
                                    "it for a while")
        d.add_argument("key", help="decision id, or the blocked address/CIDR/flow")
        d.add_argument("--suppress", help="how long detections may not re-block it (default: configured)")
        d.set_defaults(func=cmd_delete)

    ext = s.add_parser("extend", help="extend a decision by a duration")
    ext.add_argument("key", help="decision id or value")
    ext.add_argument("duration", help="e.g. 1h")
    ext.set_defaults(func=cmd_extend)


def cmd_list(args, client) -> None:
    params = {"state": args.state, "limit": args.limit}
    for k in ("engine", "origin", "value"):
        if getattr(args, k, None):
            params[k] = getattr(args, k)
    emit(args, rows(client("decisions.list", **params)), COLUMNS)


def cmd_add(args, client) -> None:
    scope, value = scoped_value(args.value, args.scope)
    params = {"scope": scope, "value": value, "reason": args.reason, "engines": args.engine}
    if args.duration:
        params["duration"] = duration(args.duration)
    emit(args, rows([client("decisions.add", **params)]), COLUMNS)


def cmd_delete(args, client) -> None:
    params = {"key": args.key}
    if args.suppress:
        params["suppress"] = duration(args.suppress)
    emit(args, rows(client("decisions.delete", **params)), COLUMNS)


def cmd_extend(args, client) -> None:
    emit(args, rows(client("decisions.extend", key=args.key, duration=duration(args.duration))), COLUMNS)
