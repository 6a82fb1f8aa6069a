"""vigilctl: the administrator's command line on the manager host.

It talks to the running vigil-manager through its control socket (``--socket``, default
``/run/vigil/manager.sock`` or ``$VIGIL_MANAGER_SOCKET``).  Each command group lives in its own
module under ``vigil.cli`` and registers itself in ``GROUPS``.  Exit codes: 0 ok, 1 the manager
reported an error, 2 bad usage or input, 3 the manager is unreachable.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..control import ControlError, call

# modules with register(subparsers) -> adds commands whose handler is func(args, client)
GROUPS = [
    "vigil.cli.engines",
    "vigil.cli.decisions",
    "vigil.cli.allowlist",
    "vigil.cli.hashes",
    "vigil.cli.behaviour",
    "vigil.cli.keys",
]


class Client:
    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def __call__(self, method: str, _timeout: float = 30.0, **params):
        return call(self.socket_path, method, timeout=_timeout, **params)


class UsageError(Exception):
    """Bad input detected by vigilctl itself (an invalid address, a bad duration)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vigilctl", description="Control a Vigil manager and its fleet.")
    p.add_argument("--socket", default=os.environ.get("VIGIL_MANAGER_SOCKET", "/run/vigil/manager.sock"),
                   help="the manager's control socket (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for mod in GROUPS:
        importlib.import_module(mod).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    client = Client(args.socket)
    try:
        args.func(args, client)
    except UsageError as exc:
        print(f"vigilctl: {exc}", file=sys.stderr)
        return 2
    except ControlError as exc:
        print(f"vigilctl: {exc}", file=sys.stderr)
        return 3 if exc.code == "unreachable" else (2 if exc.code in ("bad-request", "not-found", "invalid") else 1)
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
