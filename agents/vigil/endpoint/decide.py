"""The pure parts of the decision path: the mode table and the two caches.

``IdentityCache``: (device, inode, size, mtime, ctime) → SHA-256, so a cached binary is never
re-read (ctime is included because mtime can be set back with utime(2); ctime cannot).
``VerdictCache``: SHA-256 → (verdict, source, expiry), filled by answers and by the manager's pushes.
Both are bounded LRUs.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import NamedTuple

Identity = tuple[int, int, int, int, int]


class Outcome(NamedTuple):
    allow: bool
    action: str       # allowed / blocked / would-block


def decide(mode: str, verdict: str) -> Outcome:
    """The mode table of DESIGN.md; ``verdict`` is unknown also on timeout or manager outage."""
    if verdict == "benign":
        return Outcome(True, "allowed")
    if verdict == "malicious":
        return Outcome(True, "would-block") if mode == "monitor" else Outcome(False, "blocked")
    # unknown and grayware: only lockdown refuses what is not known good
    if mode == "lockdown":
        return Outcome(False, "blocked")
    return Outcome(True, "allowed")


class IdentityCache:
    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[Identity, str] = OrderedDict()

    def get(self, key: Identity) -> str | None:
        sha = self._d.get(key)
        if sha is not None:
            self._d.move_to_end(key)
        return sha

    def put(self, key: Identity, sha: str) -> None:
        self._d[key] = sha
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


class VerdictCache:
    def __init__(self, size: int, clock=time.monotonic):
        self.size = size
        self.clock = clock
        self._d: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self.hits = self.misses = self.expired = 0

    def get(self, sha: str) -> tuple[str, str] | None:
        v = self._d.get(sha)
        if v is None:
            self.misses += 1
            return None
        if v[2] < self.clock():
            del self._d[sha]
            self.expired += 1
            self.misses += 1
            return None
        self._d.move_to_end(sha)
        self.hits += 1
        return v[0], v[1]

    def put(self, sha: str, verdict: str, source: str, ttl: float) -> None:
        self._d[sha] = (verdict, source, self.clock() + max(0.0, ttl))
        self._d.move_to_end(sha)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v, _, _ in self._d.values():
            out[v] = out.get(v, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self._d)
