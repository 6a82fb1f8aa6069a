"""Copy a single manager's SQLite state into the shared PostgreSQL database (once, when a site goes
from one manager to several).

    python3 -m vigil.manager.storage.copy -c /etc/vigil/manager.yaml [--state-dir DIR]

Reads the manager's configuration (``storage`` must name PostgreSQL), brings both sides to the
current schema, and copies every row of the decision store, the baselines and the verdict database
that the target does not have yet (existing rows win: running it twice changes nothing).  Stop the
manager first; start the managers on PostgreSQL after.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ...config import ConfigError, load
from .config import StorageConfig
from .db import Database, PostgresDatabase, SQLiteDatabase, StorageError, migrate

log = logging.getLogger(__name__)

# (component, SQLite file under state_dir, tables with their key columns); history rows carry an
# auto-numbered id that the target numbers afresh.
STORES = [
    ("decisions", "decisions.sqlite", {"decisions": ["id"], "offences": ["scope", "value"], "allowlist": ["id"],
                                       "suppress": ["scope", "value"], "meta": ["key"]}),
    ("baselines", "baselines/baselines.sqlite", {"baselines": ["engine"]}),
    ("verdicts", "verdicts.sqlite", {"hashes": ["sha256"], "history": []}),
]


def _migrations(component: str) -> list[str]:
    if component == "decisions":
        from ..policy.decisions import MIGRATIONS
    elif component == "baselines":
        from ..policy.baselines import MIGRATIONS
    else:
        from ..verdicts.store import MIGRATIONS
    return MIGRATIONS


def copy_store(src: Database, dst: Database, component: str, tables: dict[str, list[str]]) -> dict[str, int]:
    migrate(src, component, _migrations(component))
    migrate(dst, component, _migrations(component))
    copied: dict[str, int] = {}
    with dst.transaction():
        for table, keys in tables.items():
            cols = [r[1] for r in src.query(f"PRAGMA table_info({table})") if r[1] != "id" or keys]
            rows = src.query(f"SELECT {', '.join(cols)} FROM {table}" + (" ORDER BY id" if not keys else ""))
            marks = ", ".join("?" for _ in cols)
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"
            if keys:   # any unique key (an allowlist value under another id too): the target's row wins
                sql += " ON CONFLICT DO NOTHING"
            elif dst.one(f"SELECT 1 FROM {table} LIMIT 1"):
                copied[table] = 0   # a history already there: copied before, not again
                continue
            n = 0
            for row in rows:
                n += dst.execute(sql, row).rowcount
            copied[table] = n
    return copied


def copy_state(state_dir: Path, target: StorageConfig) -> dict[str, dict[str, int]]:
    if target.backend != "postgresql":
        raise StorageError("storage.backend: the target must be postgresql")
    dst = PostgresDatabase(target)
    out = {}
    try:
        for component, rel, tables in STORES:
            path = state_dir / rel
            if not path.exists():
                continue
            src = SQLiteDatabase(path)
            try:
                out[component] = copy_store(src, dst, component, tables)
            finally:
                src.close()
    finally:
        dst.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from ..config import ManagerConfig
    ap = argparse.ArgumentParser(prog="python3 -m vigil.manager.storage.copy", description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", type=Path, default=Path("/etc/vigil/manager.yaml"))
    ap.add_argument("--state-dir", type=Path, help="the SQLite state to copy (default: the config's state_dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = load(args.config, ManagerConfig)
        result = copy_state(args.state_dir or cfg.state_dir, cfg.storage)
    except (ConfigError, StorageError) as exc:
        print(f"copy: {exc}", file=sys.stderr)
        return 1
    for component, tables in result.items():
        print(f"{component}: " + ", ".join(f"{t} {n} rows" for t, n in tables.items()))
    if not result:
        print("copy: no SQLite state found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
