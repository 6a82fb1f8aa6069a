"""The manager's storage section (``storage:`` in manager.yaml), apart from the database code so
that loading the configuration imports no database driver."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class StorageConfig:
    # sqlite: one file per store under the manager's state_dir (the embedded default, one manager).
    # postgresql: every store in one database that several managers share.
    backend: str = "sqlite"
    # libpq connection string for postgresql, e.g. "host=/run/postgresql dbname=vigil user=vigil"
    # or "postgresql://vigil@db.example/vigil"; keep the password out of it (password_file).
    dsn: str = ""
    password_file: Path | None = None
    connect_timeout: float = 5.0
    # How often a manager reads what other managers changed (decisions, allowlist), in seconds.
    poll_interval: float = 1.0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: one of {', '.join(BACKENDS)}")
        if self.backend == "postgresql" and not self.dsn:
            raise ValueError("dsn: required with backend postgresql (a libpq connection string)")
        if not 0 < self.connect_timeout <= 300:
            raise ValueError("connect_timeout: must be > 0 and at most 300 seconds")
        if not 0.05 <= self.poll_interval <= 60:
            raise ValueError("poll_interval: must be 0.05..60 seconds")

    @property
    def shared(self) -> bool:
        """Several managers may write the same state (everything cached must be re-read)."""
        return self.backend == "postgresql"
