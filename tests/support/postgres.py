"""A real, throwaway PostgreSQL for tests, and the storage backends the store suites run against.

``PostgresServer`` runs Debian's ``initdb`` and ``pg_ctl`` into a fresh temporary directory, as the
``postgres`` user when the tests run as root (PostgreSQL refuses to run as root), listening only on
a unix socket in that directory (no TCP port).  ``stop()`` stops it and removes the directory; the
pytest fixtures below always call it, also when a test fails.

Fixtures (import them into a test module):

- ``postgres_server`` (session): one server for the whole run;
- ``storage`` (function, parametrised ``sqlite`` / ``postgresql``): a ``Backend`` whose ``db(name)``
  opens a store's database — a SQLite file under the test's tmp_path, or a fresh PostgreSQL
  schema made for this test (a schema, not a database: CREATE DATABASE costs a second here;
  ``config`` is the matching ``StorageConfig``, None for SQLite).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from vigil.manager.storage import StorageConfig, open_database


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/setup installs Debian's postgresql)")
        self.reap_orphans(self.bindir)
        self.dir = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self.data = self.dir / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        self.started = False

    @staticmethod
    def reap_orphans(bindir: Path) -> None:
        """Servers left by a test run that was killed (its owner process is gone): stopped, removed."""
        for owner in Path(tempfile.gettempdir()).glob("vigil-pg-*/owner.pid"):
            try:
                pid = int(owner.read_text())
            except (OSError, ValueError):
                continue
            if os.path.exists(f"/proc/{pid}"):
                continue
            data = owner.parent / "data"
            if (data / "postmaster.pid").exists():
                cmd = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
                if os.geteuid() == 0:
                    cmd = ["runuser", "-u", "postgres", "--", *cmd]
                subprocess.run(cmd, capture_output=True, timeout=60, check=False)
            shutil.rmtree(owner.parent, ignore_errors=True)

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)

    def start(self) -> "PostgresServer":
        try:
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                      "--auth=trust", "--encoding=UTF8", "--no-sync")
        except subprocess.CalledProcessError as exc:
            self.stop()
            raise RuntimeError(f"initdb failed: {exc.stderr}") from None
        return self.resume()

    def pause(self) -> None:
        """Stop the server, keeping its data (an outage); ``resume()`` starts it again."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.started = False

    def resume(self) -> "PostgresServer":
        try:
            opts = (f"-c listen_addresses='' -k {self.dir} -c fsync=off -c synchronous_commit=off "
                    "-c full_page_writes=off -c max_connections=200")
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                      "-o", opts, "-w", "-t", "60", "start", timeout=90)
            self.started = True
        except subprocess.CalledProcessError as exc:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log[-2000:]}") from None
        return self

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.dir} port=5432 dbname={dbname} user={self.user}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg
        name = name or "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_schema(self) -> tuple[str, str]:
        """A fresh schema; returns it and a DSN whose sessions use it."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return name, self.dsn() + f" options='-csearch_path={name}'"

    def drop_schema(self, name: str) -> None:
        import psycopg
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    def stop(self) -> None:
        if self.started:
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Backend:
    name: str
    tmp_path: Path
    config: StorageConfig | None

    def under(self, name: str) -> "Backend":
        """The same database (PostgreSQL) or a fresh directory (SQLite) for a second manager."""
        return Backend(self.name, self.tmp_path / name, self.config)

    def db(self, store: str = "store"):
        return open_database(self.config, self.tmp_path / f"{store}.sqlite")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        yield Backend("sqlite", tmp_path, None)
        return
    server = request.getfixturevalue("postgres_server")
    name, dsn = server.create_schema()
    try:
        yield Backend("postgresql", tmp_path, StorageConfig(backend="postgresql", dsn=dsn))
    finally:
        server.drop_schema(name)
