"""Waiting in tests until something holds.

``wait_for(pred, timeout, what)`` calls ``pred()`` every ``interval`` seconds until it returns
something truthy and returns that value; after ``timeout`` seconds it raises ``AssertionError``
naming ``what``, the timeout and the last value ``pred`` returned.  For a failure's report,
``lab=`` appends the tail of every lab process's log and ``explain=`` (a callable) a diagnostic of
the test's own.  ``retry_on=`` names exceptions that mean "not yet" (e.g. the database that only
appears with the first write): they are retried, and the last one is reported as the last value.
"""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

LOG_TAIL = 2000


def wait_for(pred: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2, lab: Any = None,
             explain: Callable[[], str] | None = None,
             retry_on: tuple[type[BaseException], ...] = ()) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except retry_on as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    report = [f"timed out after {timeout}s waiting for {what}; last: {last!r}"]
    if explain is not None:
        try:
            report.append(str(explain()))
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the failure it explains
            report.append(f"(explain failed: {exc!r})")
    if lab is not None:
        report += [f"--- {name}\n{proc.log_text()[-LOG_TAIL:]}" for name, proc in lab.procs.items()]
    raise AssertionError("\n".join(report))
