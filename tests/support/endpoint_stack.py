"""A real vigil-endpoint (and the services around it) for the endpoint tests, started and torn down
the same way everywhere.

``endpoint_agent(run, name, mqtt, mounts, mode, ...)``: a context manager running a real agent with
its configuration written to ``run/<name>.yaml``, waiting for its MQTT connection, and on exit
stopping it and checking that no fanotify mark survives on ``mark_ids`` (mount ids).  ``argv_prefix``
wraps the command (e.g. ``unshare`` for a private mount namespace); ``mark_ids`` may be a callable
evaluated once the agent runs (to read mount ids from its namespace).  The agent gets ``.sock``.

``Teardown``: collects what a module fixture starts (processes with ``stop()``, objects with
``close()``) and ends them in reverse order, each even if an earlier one fails.
``wait_connected(proc, timeout)``: waits for a vigil daemon's "mqtt: connected" log line.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterable

import yaml

from tests.support.fanotify import fanotify_marks_on
from vigil.lab.services import ManagedProcess, vigil_command


def wait_connected(p: ManagedProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while "mqtt: connected" not in p.log_text():
        assert p.alive(), p.log_text()
        assert time.monotonic() < deadline, p.log_text()
        time.sleep(0.05)


@contextlib.contextmanager
def endpoint_agent(run: Path, name: str, mqtt: dict, mounts: Iterable, mode: str, *,
                   mark_ids: Iterable[int] | Callable[[ManagedProcess], Iterable[int]] = (),
                   argv_prefix: tuple[str, ...] = (), timeout: float = 15.0, **over):
    cfg = {"endpoint_id": name, "mqtt": mqtt, "mode": mode, "mounts": [str(m) for m in mounts],
           "state_dir": str(run / f"state-{name}"), "control_socket": str(run / f"{name}.sock"),
           "batch_interval": 0.3}
    cfg.update(over)
    path = run / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = ManagedProcess(name, [*argv_prefix, *vigil_command("vigil-endpoint"), "-c", str(path)], run).start()
    ids: list[int] = [] if callable(mark_ids) else list(mark_ids)
    try:
        wait_connected(p, timeout)
        if callable(mark_ids):
            ids = list(mark_ids(p))
        p.sock = run / f"{name}.sock"
        yield p
    finally:
        p.stop(timeout=5)
        for mid in ids:
            assert not fanotify_marks_on(mid), "a fanotify mark outlived the agent"


class Teardown:
    """What a fixture started, ended in reverse order (each even when an earlier end fails)."""

    def __init__(self):
        self.items: list = []

    def add(self, item):
        self.items.append(item)
        return item

    def close(self) -> None:
        errors = []
        for item in reversed(self.items):
            try:
                (item.stop if hasattr(item, "stop") else item.close)()
            except Exception as exc:  # noqa: BLE001 - go on ending the rest, then report
                errors.append(exc)
        self.items.clear()
        if errors:
            raise errors[0]
