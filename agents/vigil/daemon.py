"""The common shape of every Vigil daemon (DESIGN.md "Daemons and the CLI").

One config file (``/etc/vigil/<name>.yaml`` unless ``--config``), checked at start with errors that
name the key; ``--check-config`` for systemd's ``ExecStartPre``; logs to stderr; foreground;
SIGTERM/SIGINT stop it cleanly.  A daemon module provides its config schema and a ``Service`` with
``run(stop)`` that returns soon after ``stop`` is set.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Callable, Protocol, TypeVar

from . import __version__
from .config import ConfigError, load, to_dict

log = logging.getLogger(__name__)
C = TypeVar("C")

EXIT_CONFIG = 2


class Service(Protocol):
    def run(self, stop: threading.Event) -> None: ...


def setup_logging(level: str = "INFO", as_json: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        # journald adds its own timestamp; the lab's log files want one, so keep it short.
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def main(name: str, schema: type[C], make_service: Callable[[C], Service],
         argv: list[str] | None = None, description: str = "") -> int:
    parser = argparse.ArgumentParser(prog=f"vigil-{name}", description=description)
    parser.add_argument("-c", "--config", default=f"/etc/vigil/{name}.yaml",
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it resolved, and exit (0 = valid)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config, schema)
    except ConfigError as exc:
        print(f"vigil-{name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
        print(f"vigil-{name}: configuration {args.config} is valid", file=sys.stderr)
        return 0
    log_cfg = getattr(cfg, "log", None)
    setup_logging(getattr(log_cfg, "level", "INFO"), getattr(log_cfg, "json", False))
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service = make_service(cfg)
        log.info("vigil-%s %s starting (config %s)", name, __version__, args.config)
        service.run(stop)
    except ConfigError as exc:  # a problem only found while starting (e.g. a key file)
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except FatalError as exc:
        log.error("stopping: %s", exc)
        return 1
    log.info("vigil-%s stopped", name)
    return 0


class StartupError(RuntimeError):
    """Raised by a service that cannot start (missing kernel feature, unreadable key...)."""


class FatalError(RuntimeError):
    """Raised by a running service that cannot go on and wants its service manager to restart it
    (the broker refused its credentials): exit status 1."""
