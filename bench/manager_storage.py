"""The manager's stores on PostgreSQL (several managers) against SQLite (the embedded default).

Starts a throwaway PostgreSQL (tests/support/postgres.py: initdb + pg_ctl on a unix socket, fsync
off as in the tests — a production server with fsync on costs more per commit) and measures, on
both backends in the same run:

- decisions created per second (each a new value: a transaction with the value lock, the offence
  upsert and the decision row), ``N`` of them;
- a second manager's ``refresh`` picking up those ``N`` decisions (ms);
- verdict-store sightings per second (``seen``: one upsert and a read per hash).

Prints each figure and its ratio to SQLite's (the baseline).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "agents"))
sys.path.insert(0, str(ROOT))

from tests.support.postgres import PostgresServer  # noqa: E402
from vigil.counters import Counters  # noqa: E402
from vigil.manager.policy.decisions import DecisionStore  # noqa: E402
from vigil.manager.storage import StorageConfig, open_database  # noqa: E402
from vigil.manager.verdicts.store import VerdictStore  # noqa: E402

N = 2000


def store(db) -> DecisionStore:
    return DecisionStore(db, Counters(), ladder=[600, 3600], offence_memory=86400, unblock_suppress=60)


def measure(cfg: StorageConfig | None, tmp: Path) -> dict[str, float]:
    a = store(open_database(cfg, tmp / "decisions.sqlite"))
    b = store(open_database(cfg, tmp / "decisions.sqlite"))
    t = time.perf_counter()
    for i in range(N):
        a.propose("ip", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "flow-anomaly:scan", "bench")
    created = N / (time.perf_counter() - t)
    b.shared = True   # SQLite: force the same re-read a shared store does, for the comparison
    b._refreshed_at = 0.0
    t = time.perf_counter()
    got = b.refresh()
    refresh_ms = (time.perf_counter() - t) * 1000
    assert got >= N, got
    v = VerdictStore(open_database(cfg, tmp / "verdicts.sqlite"))
    t = time.perf_counter()
    for i in range(N):
        v.seen(f"{i:064x}", 100, "ep1", "/usr/bin/x", 300)
    seen = N / (time.perf_counter() - t)
    for s in (a, b, v):
        s.close()
    return {"created": created, "refresh_ms": refresh_ms, "seen": seen}


def main() -> None:
    server = PostgresServer().start()
    try:
        name, dsn = server.create_schema()
        with tempfile.TemporaryDirectory() as d:
            base = measure(None, Path(d))
            pg = measure(StorageConfig(backend="postgresql", dsn=dsn), Path(d))
    finally:
        server.stop()
    print(f"decisions created: PostgreSQL {pg['created']:.0f}/s, SQLite {base['created']:.0f}/s "
          f"(baseline); ratio {pg['created'] / base['created']:.2f}")
    print(f"second manager's refresh of {N} new decisions: PostgreSQL {pg['refresh_ms']:.1f} ms, "
          f"SQLite {base['refresh_ms']:.1f} ms (baseline); ratio {pg['refresh_ms'] / base['refresh_ms']:.2f}")
    print(f"verdict sightings: PostgreSQL {pg['seen']:.0f}/s, SQLite {base['seen']:.0f}/s (baseline); "
          f"ratio {pg['seen'] / base['seen']:.2f}")


if __name__ == "__main__":
    main()
