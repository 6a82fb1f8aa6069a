"""Named counters: everything a daemon drops, rejects or retries is counted and shown."""
from __future__ import annotations

import threading
from collections import defaultdict


class Counters:
    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, int] = defaultdict(int)

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._values.items()))
