"""The manager's state behind one interface: SQLite embedded, PostgreSQL for several managers."""
from .config import StorageConfig
from .db import Database, StorageError, migrate, open_database
from .lease import Lease, open_lease

__all__ = ["Database", "Lease", "StorageConfig", "StorageError", "migrate", "open_database", "open_lease"]
