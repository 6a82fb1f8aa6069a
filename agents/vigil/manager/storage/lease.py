"""Who publishes rule sets: exactly one manager at a time (DESIGN.md "Scale beyond one host").

On PostgreSQL the publisher holds a session-level advisory lock on a connection of its own.  The
database releases it when that session ends — at once when the holder's process dies (its socket
closes), within the keepalive time when its host or network goes away — and the next manager to
ask (every tick) takes it.  No election of our own: the database is the one arbiter.  The session
sets server-side TCP keepalives so a vanished holder's lock is freed in ~11 s, not hours.

On SQLite (one manager per state directory) an ``flock`` on a file in the state directory plays the
same part, so two managers started by mistake on one state directory do not both publish.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

from .config import StorageConfig
from .db import StorageError, _lock_id, connect_postgres

log = logging.getLogger(__name__)


class Lease:
    """``check`` and ``release`` may be called from any thread (the supervisor's tick, control and
    MQTT threads publishing at once); one at a time, or two sessions could be opened and the one
    holding the lock dropped."""

    def __init__(self, name: str):
        self.name = name
        self.holding = False
        self._mutex = threading.Lock()

    def check(self) -> bool:
        """Try to take the lease if not held; verify it if held. True while this manager holds it."""
        with self._mutex:
            return self._check()

    def release(self) -> None:
        with self._mutex:
            self._release()

    def _check(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError


class FileLease(Lease):
    def __init__(self, name: str, path: Path):
        super().__init__(name)
        self.path = path
        self._fd: int | None = None

    def _check(self) -> bool:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._fd = fd
            self.holding = True
        return True

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.holding = False


class AdvisoryLease(Lease):
    def __init__(self, name: str, cfg: StorageConfig):
        super().__init__(name)
        self.cfg = cfg
        self.key: int | None = None   # per database and schema: two installations may share a server
        self._conn = None
        self.last_error: str | None = None

    def _connect(self):
        conn = connect_postgres(self.cfg, application_name=f"vigil-lease {self.name}"[:60])
        # the server notices a silent holder (host down, cable cut) within idle + interval * count
        conn.execute("SET tcp_keepalives_idle = 5")
        conn.execute("SET tcp_keepalives_interval = 2")
        conn.execute("SET tcp_keepalives_count = 3")
        where = conn.execute("SELECT current_database(), current_schema()").fetchone()
        self.key = _lock_id(f"vigil-lease:{where[0]}:{where[1]}:{self.name}")
        return conn

    def _check(self) -> bool:
        import psycopg
        try:
            if self._conn is None or self._conn.closed:
                self.holding = False
                self._conn = self._connect()
            if self.holding:
                self._conn.execute("SELECT 1")   # the session, and with it the lock, is still there
                return True
            got = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
            self.holding = bool(got)
            self.last_error = None
            return self.holding
        except (psycopg.Error, StorageError, OSError) as exc:
            if self.holding or self.last_error != str(exc):
                log.warning("publishing lease %s: database unreachable (%s); not publishing", self.name, exc)
            self.last_error = str(exc)
            self.holding = False
            self._drop()
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass
            self._conn = None

    def _release(self) -> None:
        # unlock before closing: the server ends a closed session a moment later, and the next
        # manager should not have to wait for that at a clean shutdown
        if self.holding and self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception:  # closing below frees it anyway
                pass
        self.holding = False
        self._drop()


def open_lease(cfg: StorageConfig | None, name: str, state_dir: Path) -> Lease:
    if cfg is None or cfg.backend == "sqlite":
        return FileLease(name, state_dir / f"{name}.lease")
    return AdvisoryLease(name, cfg)
