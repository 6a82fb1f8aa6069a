"""The store of every hash seen: its current verdict and the history of how it got there.

SQLite (``verdicts.sqlite`` under the state_dir) by default, or the PostgreSQL database several
managers share (``storage``); the schema is versioned (``MIGRATIONS``) and brought up to date at
start.  One connection shared by the MQTT, analysis and control threads, serialised by a lock.
Every read goes to the database (nothing is cached here), so managers sharing one see one verdict
database.  A verdict row carries
its source (``list:<file>``, ``yara:<rule>``, ``clamav:<name>``, ``operator``, ``analysis``), the
time it was set and its TTL for endpoint caches.  ``operator`` verdicts win over analysis results
until the operator clears them.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..storage import Database, migrate
from ..storage.db import SQLiteDatabase

# Versioned: append, never edit a shipped one.  The first also adopts a verdicts.sqlite made before
# migrations existed (IF NOT EXISTS; same columns).
MIGRATIONS = ["""
CREATE TABLE IF NOT EXISTS hashes (
    sha256 TEXT PRIMARY KEY,
    size BIGINT,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    seen_count BIGINT NOT NULL DEFAULT 0,
    verdict TEXT NOT NULL DEFAULT 'unknown',
    source TEXT NOT NULL DEFAULT '',
    verdict_ts DOUBLE PRECISION NOT NULL,
    ttl DOUBLE PRECISION NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    analysis TEXT NOT NULL DEFAULT 'none',
    last_path TEXT NOT NULL DEFAULT '',
    last_endpoint TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS history (
    id {serial},
    sha256 TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    verdict TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS history_sha ON history(sha256, ts);
CREATE INDEX IF NOT EXISTS hashes_verdict ON hashes(verdict, last_seen)
"""]
# analysis: none / queued / waiting-sample / done / failed
# history kind: verdict / seen / analysis / executed / blocked / would-block

_COLS = ("sha256, size, first_seen, last_seen, seen_count, verdict, source, verdict_ts, ttl, detail, analysis, "
         "last_path, last_endpoint")


@dataclass
class Record:
    sha256: str
    size: int | None
    first_seen: float
    last_seen: float
    seen_count: int
    verdict: str
    source: str
    verdict_ts: float
    ttl: float
    detail: str
    analysis: str
    last_path: str
    last_endpoint: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_sha256(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s)


class VerdictStore:
    def __init__(self, db: Database | Path | str, history_per_hash: int = 200):
        self._lock = threading.RLock()
        self._db = db if isinstance(db, Database) else SQLiteDatabase(db)
        migrate(self._db, "verdicts", MIGRATIONS)
        self.history_per_hash = history_per_hash

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, sha: str) -> Record | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM hashes WHERE sha256=?", (sha,)).fetchone()
        return Record(*row) if row else None

    def seen(self, sha: str, size: int | None, endpoint: str, path: str, ttl_unknown: float,
             now: float | None = None) -> tuple[Record, bool]:
        """Record one sighting; returns the record and whether the hash is new."""
        now = time.time() if now is None else now
        with self._lock, self._db.transaction():
            cur = self._db.execute(
                "INSERT INTO hashes(sha256,size,first_seen,last_seen,seen_count,verdict_ts,ttl,last_path,last_endpoint)"
                " VALUES(?,?,?,?,1,?,?,?,?) ON CONFLICT(sha256) DO NOTHING",
                (sha, size, now, now, now, ttl_unknown, path[:1024], endpoint))
            new = cur.rowcount == 1
            if new:
                self._db.execute("INSERT INTO history(sha256,ts,kind,verdict,source,detail) VALUES(?,?,?,?,?,?)",
                                 (sha, now, "seen", "unknown", endpoint, path[:1024]))
            else:
                self._db.execute("UPDATE hashes SET last_seen=?, seen_count=seen_count+1, last_path=?,"
                                 " last_endpoint=?, size=COALESCE(size,?) WHERE sha256=?",
                                 (now, path[:1024], endpoint, size, sha))
            row = self._db.execute(f"SELECT {_COLS} FROM hashes WHERE sha256=?", (sha,)).fetchone()
        return Record(*row), new

    def set_verdict(self, sha: str, verdict: str, source: str, ttl: float, detail: str = "",
                    now: float | None = None) -> tuple[Record, bool]:
        """Set a verdict (creating the row if needed); returns (record, changed)."""
        now = time.time() if now is None else now
        with self._lock, self._db.transaction():
            self._db.lock(f"hash:{sha}")   # read-then-write, atomic across managers
            old = self._db.execute("SELECT verdict, source FROM hashes WHERE sha256=?", (sha,)).fetchone()
            if old is None:
                self._db.execute("INSERT INTO hashes(sha256,size,first_seen,last_seen,seen_count,verdict,source,"
                                 "verdict_ts,ttl,detail) VALUES(?,NULL,?,?,0,?,?,?,?,?)",
                                 (sha, now, now, verdict, source, now, ttl, detail[:1024]))
            else:
                self._db.execute("UPDATE hashes SET verdict=?, source=?, verdict_ts=?, ttl=?, detail=? WHERE sha256=?",
                                 (verdict, source, now, ttl, detail[:1024], sha))
            self._db.execute("INSERT INTO history(sha256,ts,kind,verdict,source,detail) VALUES(?,?,?,?,?,?)",
                             (sha, now, "verdict", verdict, source, detail[:1024]))
            self._trim(sha)
            row = self._db.execute(f"SELECT {_COLS} FROM hashes WHERE sha256=?", (sha,)).fetchone()
        changed = old is None or old[0] != verdict or old[1] != source
        return Record(*row), changed

    def set_analysis(self, sha: str, state: str, detail: str = "") -> None:
        with self._lock, self._db.transaction():
            self._db.execute("UPDATE hashes SET analysis=? WHERE sha256=?", (state, sha))
            if detail:
                self._db.execute("INSERT INTO history(sha256,ts,kind,verdict,source,detail) VALUES(?,?,?,?,?,?)",
                                 (sha, time.time(), "analysis", "", state, detail[:1024]))

    def note(self, sha: str, kind: str, verdict: str, source: str, detail: str, ts: float | None = None) -> None:
        with self._lock, self._db.transaction():
            self._db.execute("INSERT INTO history(sha256,ts,kind,verdict,source,detail) VALUES(?,?,?,?,?,?)",
                             (sha, time.time() if ts is None else ts, kind, verdict, source, detail[:1024]))
            self._trim(sha)

    def history(self, sha: str, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT ts,kind,verdict,source,detail FROM history WHERE sha256=?"
                                    " ORDER BY id DESC LIMIT ?", (sha, limit)).fetchall()
        return [dict(zip(("ts", "kind", "verdict", "source", "detail"), r)) for r in reversed(rows)]

    def unknowns(self, limit: int = 100) -> list[Record]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM hashes WHERE verdict='unknown' ORDER BY last_seen DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [Record(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT verdict, COUNT(*) FROM hashes GROUP BY verdict").fetchall()
        return {v: n for v, n in rows}

    def pending_analysis(self) -> list[str]:
        """Hashes whose analysis was queued but not finished (re-queued after a manager restart)."""
        with self._lock:
            rows = self._db.execute("SELECT sha256 FROM hashes WHERE analysis IN ('queued','waiting-sample')"
                                    " ORDER BY last_seen").fetchall()
        return [r[0] for r in rows]

    def _trim(self, sha: str) -> None:
        self._db.execute("DELETE FROM history WHERE sha256=? AND id NOT IN (SELECT id FROM history WHERE sha256=?"
                         " ORDER BY id DESC LIMIT ?)", (sha, sha, self.history_per_hash))
