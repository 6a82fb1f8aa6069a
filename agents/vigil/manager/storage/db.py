"""One small database interface over SQLite (embedded default) and PostgreSQL (several managers).

The stores write portable SQL: ``?`` placeholders, ``INSERT ... ON CONFLICT (...) DO UPDATE`` for
upserts (SQLite >= 3.24), ``DOUBLE PRECISION`` for times (PostgreSQL's ``REAL`` is 4 bytes: an epoch
in it is off by minutes) and ``{serial}`` for an auto-numbered key.  ``Database`` rewrites the
placeholders for psycopg, serialises threads on one connection, gives transactions that nest, and a
``lock(key)`` that makes a read-then-write atomic across managers (a transaction-scoped advisory lock
on PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` already holds the whole database).

Schema versions: each store passes its list of migrations to ``migrate``; ``schema_versions``
records, per store, how many were applied.  Migrations run at start, in one transaction, under a
lock, so two managers starting together apply each one once.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from ...daemon import StartupError
from .config import StorageConfig

log = logging.getLogger(__name__)


class StorageError(StartupError):
    """The database cannot be opened or its schema is not one this manager knows."""


class Database:
    dialect = "sqlite"
    shared = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0   # transaction nesting (per connection; the lock makes it per thread)

    # -- to implement --------------------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[Any] | None):
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _end(self, ok: bool) -> None:
        raise NotImplementedError

    def lock(self, key: str) -> None:
        """Within ``transaction()``: hold ``key`` against other managers until it ends."""

    def close(self) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def ddl(self, sql: str) -> str:
        return sql.replace("{serial}", "INTEGER PRIMARY KEY AUTOINCREMENT")

    def execute(self, sql: str, params: Sequence[Any] = ()):
        """Run one statement; the result has ``rowcount``, ``fetchone()``, ``fetchall()`` and iterates."""
        with self._lock:
            return self._execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return list(self._execute(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        with self._lock:
            return self._execute(sql, params).fetchone()

    @contextmanager
    def transaction(self) -> Iterator["Database"]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._begin()
            self._depth = 1
            ok = False
            try:
                yield self
                ok = True
            finally:
                self._depth = 0
                self._end(ok)

    def script(self, sql: str) -> None:
        """Several statements separated by ``;`` (none may contain one in a literal)."""
        with self.transaction():
            for stmt in self.ddl(sql).split(";"):
                if stmt.strip():
                    self._execute(stmt, ())


class SQLiteDatabase(Database):
    dialect = "sqlite"
    shared = False

    def __init__(self, path: Path | str):
        super().__init__()
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")

    def _execute(self, sql, params):
        return self._db.execute(sql, params or ())

    def _begin(self):
        self._db.execute("BEGIN IMMEDIATE")

    def _end(self, ok):
        self._db.execute("COMMIT" if ok else "ROLLBACK")

    def close(self):
        with self._lock:
            self._db.close()


def _lock_id(key: str) -> int:
    """A stable signed 64-bit advisory lock id for a text key."""
    h = zlib.crc32(key.encode()) << 32 | zlib.crc32(key.encode()[::-1])
    return h - (1 << 64) if h >= 1 << 63 else h


def connect_postgres(cfg: StorageConfig, **extra):
    import psycopg  # only sites with backend postgresql need the driver loaded
    kw: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, int(cfg.connect_timeout))}
    if cfg.password_file is not None:
        try:
            kw["password"] = cfg.password_file.read_text().strip()
        except OSError as exc:
            raise StorageError(f"storage.password_file {cfg.password_file}: {exc}") from None
    kw.update(extra)
    try:
        return psycopg.connect(cfg.dsn, **kw)
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL ({cfg.dsn!r}): {str(exc).strip()}") from None


class PostgresDatabase(Database):
    dialect = "postgresql"
    shared = True

    def __init__(self, cfg: StorageConfig):
        super().__init__()
        self.cfg = cfg
        self._conn = connect_postgres(cfg)
        self.reconnects = 0
        self._where: str | None = None

    def ddl(self, sql: str) -> str:
        return sql.replace("{serial}", "BIGSERIAL PRIMARY KEY")

    def _execute(self, sql, params):
        import psycopg
        sql = sql.replace("?", "%s")
        try:
            return self._conn.execute(sql, params or None)
        except psycopg.OperationalError:
            # The server restarted or the connection broke: outside a transaction one statement is
            # safe to run again on a new connection (inside one, the caller's transaction is lost).
            if self._depth or not self._conn.closed:
                raise
            log.warning("PostgreSQL connection lost; reconnecting")
            self._conn = connect_postgres(self.cfg)
            self.reconnects += 1
            return self._conn.execute(sql, params or None)

    def _begin(self):
        import psycopg
        if not self._conn.closed:
            try:
                self._conn.execute("BEGIN")
                return
            except psycopg.OperationalError:
                if not self._conn.closed:
                    raise
        # nothing has run yet in this transaction: a new connection is safe (server restarted,
        # session terminated, failover)
        log.warning("PostgreSQL connection lost; reconnecting")
        self._conn = connect_postgres(self.cfg)
        self.reconnects += 1
        self._conn.execute("BEGIN")

    def _end(self, ok):
        if self._conn.closed:
            return
        self._conn.execute("COMMIT" if ok else "ROLLBACK")

    def lock(self, key: str) -> None:
        if self._where is None:
            self._where = self._execute("SELECT current_database() || ':' || current_schema()", ()).fetchone()[0]
        self._execute("SELECT pg_advisory_xact_lock(?)", (_lock_id(f"{self._where}:{key}"),))

    def close(self):
        with self._lock:
            self._conn.close()


def open_database(cfg: StorageConfig | None, sqlite_path: Path) -> Database:
    """The database of one store: its own SQLite file, or the site's shared PostgreSQL database."""
    if cfg is None or cfg.backend == "sqlite":
        return SQLiteDatabase(sqlite_path)
    return PostgresDatabase(cfg)


SCHEMA_VERSIONS = """CREATE TABLE IF NOT EXISTS schema_versions (
  component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied DOUBLE PRECISION NOT NULL)"""


def migrate(db: Database, component: str, migrations: Sequence[str]) -> int:
    """Bring ``component``'s tables to the newest of ``migrations`` (each a script); returns the
    version.  Refuses a database whose version is newer than the code (a newer manager wrote it)."""
    with db.transaction():
        db.lock("vigil-migrate")
        db.execute(SCHEMA_VERSIONS)
        row = db.one("SELECT version FROM schema_versions WHERE component=?", (component,))
        have = row[0] if row else 0
        if have > len(migrations):
            raise StorageError(f"the {component} tables are at schema version {have}; this manager knows "
                               f"only up to {len(migrations)} (was the database used by a newer version?)")
        for v in range(have + 1, len(migrations) + 1):
            db.script(migrations[v - 1])
            log.info("%s storage: applied schema migration %d (%s)", component, v, db.dialect)
        if have < len(migrations):
            db.execute("INSERT INTO schema_versions VALUES (?,?,?) ON CONFLICT (component) DO UPDATE "
                       "SET version=excluded.version, applied=excluded.applied",
                       (component, len(migrations), time.time()))
    return len(migrations)
