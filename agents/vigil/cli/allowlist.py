"""vigilctl allowlist: addresses and networks that are never blocked, whatever proposes it."""
from __future__ import annotations

import ipaddress

from .output import emit, ts

COLUMNS = [("ID", "id"), ("VALUE", "value"), ("SOURCE", "source"), ("ADDED", "added"), ("NOTE", "note")]


def register(sub) -> None:
    p = sub.add_parser("allowlist", help="list, add and delete allowlist entries")
    s = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=cmd_list)
    s.add_parser("list", help="list entries (configured and operator)").set_defaults(func=cmd_list)
    add = s.add_parser("add", help="allow an address or CIDR (ends decisions it covers)")
    add.add_argument("value")
    add.add_argument("--note", "-n", default="")
    add.set_defaults(func=cmd_add)
    d = s.add_parser("delete", help="delete an operator entry (by id or value)")
    d.add_argument("key")
    d.set_defaults(func=cmd_delete)


def _rows(items):
    for r in items:
        r["added"] = ts(r["created"] * 1000) if r.get("created") else "-"
    return items


def cmd_list(args, client) -> None:
    emit(args, _rows(client("allowlist.list")), COLUMNS)


def cmd_add(args, client) -> None:
    from .vigilctl import UsageError
    try:
        value = str(ipaddress.ip_network(args.value, strict=False))
    except ValueError:
        raise UsageError(f"invalid address or CIDR {args.value!r}") from None
    emit(args, _rows([client("allowlist.add", value=value, note=args.note)]), COLUMNS)


def cmd_delete(args, client) -> None:
    emit(args, _rows([client("allowlist.delete", key=args.key)]), COLUMNS)
