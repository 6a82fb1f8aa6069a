"""vigilctl exceptions: operator exceptions to the endpoints' behaviour rules.

  vigilctl exceptions list
  vigilctl exceptions add --rule RULE [--path GLOB] [--unit GLOB] [--user NAME]
                          [--endpoint ID-GLOB ...] [--comment TEXT] [--id ID]
  vigilctl exceptions remove ID

The manager keeps the set and pushes it (retained) to every endpoint, which applies it without a
restart.  ``--rule '*'`` excepts every rule; at least one of path, unit or user is required.
"""
from __future__ import annotations

from .output import emit, ts

COLUMNS = [("ID", "id"), ("RULE", "rule"), ("PATH", "path"), ("UNIT", "unit"), ("USER", "user"),
           ("ENDPOINTS", "endpoints"), ("ADDED", "added"), ("COMMENT", "comment")]


def register(sub) -> None:
    p = sub.add_parser("exceptions", help="behaviour-rule exceptions pushed to endpoints: list, add, remove")
    s = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=cmd_list)
    s.add_parser("list", help="every exception the manager pushes").set_defaults(func=cmd_list)
    add = s.add_parser("add", help="let a rule not fire for a path, a unit or a user")
    add.add_argument("--rule", required=True, help="a behaviour rule id, or '*' for every rule")
    add.add_argument("--path", help="glob on the executed file (the tracer for ptrace rules)")
    add.add_argument("--unit", help="glob on the process's systemd unit (e.g. 'myapp.service')")
    add.add_argument("--user", help="user name the process runs as")
    add.add_argument("--endpoint", action="append", default=[], dest="endpoints",
                     help="endpoint id (glob) it applies to; repeat for several; default: all")
    add.add_argument("--comment", default="", help="why (shown in the list)")
    add.add_argument("--id", help="an id of your choice (default: generated)")
    add.set_defaults(func=cmd_add)
    r = s.add_parser("remove", help="remove an exception by id")
    r.add_argument("id")
    r.set_defaults(func=cmd_remove)


def _rows(items: list[dict]) -> list[dict]:
    for r in items:
        r["added"] = ts(r.get("created"))
        r.setdefault("endpoints", [])
        if not r["endpoints"]:
            r["endpoints"] = ["*"]
    return items


def cmd_list(args, client) -> None:
    emit(args, _rows(client("behaviour.exceptions.list")), COLUMNS)


def cmd_add(args, client) -> None:
    from .vigilctl import UsageError
    if not (args.path or args.unit or args.user):
        raise UsageError("give --path, --unit or --user (an exception for everything would switch the rule off)")
    spec = {"rule": args.rule, "path": args.path, "unit": args.unit, "user": args.user, "endpoints": args.endpoints,
            "comment": args.comment, "id": args.id}
    r = client("behaviour.exceptions.add", exception={k: v for k, v in spec.items() if v is not None})
    emit(args, _rows([r]), COLUMNS)


def cmd_remove(args, client) -> None:
    emit(args, _rows([client("behaviour.exceptions.remove", id=args.id)]), COLUMNS)
