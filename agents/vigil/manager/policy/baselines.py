"""Per-engine baselines of normal traffic, learned in traffic time.

While the engine learns, every statistic is a running mean/variance (Welford), so the baseline is
the plain average of all the learning intervals.  After learning it keeps adapting as an
exponentially weighted moving average (``alpha``), and much more slowly (``alpha_suspicious``) in
an interval in which a detection fired, so that an attacker cannot teach the baseline that attacks
are normal (the scheme Slips uses for its per-profile time windows).

Learned per engine:

- services that receive answered traffic (destination, protocol, port) and from where (up to
  ``max_sources`` sources each, plus a count), with bytes per flow;
- per-interval totals per second: new flows, packets, bytes, rejected and half-open ratios;
- maxima over sources within the detection window (what the busiest normal source does): distinct hosts contacted,
  distinct ports on one host, failed connections to one host, new connections to one service,
  packets per second.  Detection thresholds derive from these.
- the sources seen while learning (at most ``max_known_sources``; more are counted in
  ``known_sources_capped``).  Thresholds learned from the busiest normal source apply to the
  sources the baseline knows; a source it never saw gets the configured floor for new connections
  to one service (detections.py): a client's learned bursts must not become a newcomer's allowance
  for credential guessing.

Everything is in traffic time: only intervals that carried flows count.  State is one JSON text
per engine in the ``baselines`` table of the manager's storage (SQLite ``state_dir/baselines/
baselines.sqlite``, or the shared PostgreSQL database, where every manager learns from the same
flows and the last to save wins); ``<engine>.json`` files of earlier versions are imported once.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..storage import Database, migrate
from ..storage.db import SQLiteDatabase

log = logging.getLogger(__name__)

RATE_METRICS = ("new_flows_ps", "pkts_ps", "bytes_ps", "rejected_ratio", "halfopen_ratio")
SOURCE_METRICS = ("src_hosts", "src_ports_per_host", "src_failed_per_host", "src_new_per_service", "src_pps")


@dataclass
class Stat:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0          # Welford's sum of squared deviations (learning); EWMA variance after
    max: float = 0.0
    ewma: bool = False

    def update(self, x: float, alpha: float | None = None, track_max: bool = True) -> None:
        """Welford while ``alpha`` is None (learning); EWMA with ``alpha`` afterwards.

        ``track_max`` False for a suspicious interval: an attack may nudge the average slowly but
        must never become the largest normal value (thresholds derive from it)."""
        self.n += 1
        if track_max:
            self.max = max(self.max, x)
        if alpha is None or not self.ewma and self.n <= 1:
            d = x - self.mean
            self.mean += d / self.n
            self.m2 += d * (x - self.mean)
            return
        if not self.ewma:  # switch from Welford: carry the learned variance over
            self.m2 = self.var
            self.ewma = True
        d = x - self.mean
        self.mean += alpha * d
        self.m2 = (1 - alpha) * (self.m2 + alpha * d * d)

    @property
    def var(self) -> float:
        if self.ewma:
            return self.m2
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def to_json(self) -> list:
        return [self.n, self.mean, self.m2, self.max, self.ewma]

    @classmethod
    def from_json(cls, v: list) -> "Stat":
        return cls(int(v[0]), float(v[1]), float(v[2]), float(v[3]), bool(v[4]))


class Baseline:
    def __init__(self, engine: str, max_services: int = 5000, max_sources: int = 32,
                 max_known_sources: int = 65536):
        self.engine = engine
        self.max_services = max_services
        self.max_sources = max_sources
        self.learned_seconds = 0.0
        self.intervals = 0
        self.rates: dict[str, Stat] = {m: Stat() for m in RATE_METRICS}
        self.sources: dict[str, Stat] = {m: Stat() for m in SOURCE_METRICS}
        # "proto/dst/dport" -> {"flows": n, "bytes": Stat, "sources": [..], "sources_n": n, "learned": bool}
        self.services: dict[str, dict[str, Any]] = {}
        self.services_capped = 0
        self.max_known_sources = max_known_sources
        self.known_sources: set[str] = set()
        self.known_sources_capped = 0
        self.dirty = False

    # -- learning -------------------------------------------------------------------------
    def observe(self, summary: "IntervalSummary", learning: bool, alpha: float, alpha_suspicious: float,
                suspicious: bool) -> None:
        a = None if learning else (alpha_suspicious if suspicious else alpha)
        secs = max(summary.seconds, 1e-3)
        if summary.flows == 0:
            return
        self.intervals += 1
        if learning:
            self.learned_seconds += secs
            if not suspicious:
                for src in summary.sources:
                    if src in self.known_sources:
                        continue
                    if len(self.known_sources) >= self.max_known_sources:
                        self.known_sources_capped += 1
                        continue
                    self.known_sources.add(src)
            if suspicious:
                # an attack during learning must not become the norm: a would-block interval
                # is left out of the learned averages altogether
                self.dirty = True
                return
        total_new = max(summary.new_flows, 1)
        vals = {"new_flows_ps": summary.new_flows / secs, "pkts_ps": summary.pkts / secs,
                "bytes_ps": summary.bytes / secs, "rejected_ratio": summary.rejected / total_new,
                "halfopen_ratio": summary.halfopen / total_new}
        for m, x in vals.items():
            self.rates[m].update(x, a, track_max=not suspicious)
        if not suspicious:
            # the busiest source of a suspicious interval is the attacker: per-source behaviour is
            # not learned from it at all (the rates above still adapt, slowly)
            for m, x in summary.source_max.items():
                self.sources[m].update(x, a)
        if not suspicious:
            for key, (nbytes, flows, srcs) in summary.services.items():
                self._service(key, nbytes, flows, srcs, learning, a)
        self.dirty = True

    def _service(self, key: str, nbytes: int, flows: int, srcs: set[str], learning: bool, alpha) -> None:
        s = self.services.get(key)
        if s is None:
            if len(self.services) >= self.max_services:
                self.services_capped += 1
                return
            s = self.services[key] = {"flows": 0, "bytes": Stat(), "sources": [], "sources_n": 0,
                                      "learned": learning}
        s["flows"] += flows
        s["bytes"].update(nbytes / max(flows, 1), alpha)
        for src in srcs:
            if src not in s["sources"]:
                s["sources_n"] += 1
                if len(s["sources"]) < self.max_sources:
                    s["sources"].append(src)

    def known_source(self, src: str) -> bool:
        return src in self.known_sources

    def known_service(self, key: str) -> bool:
        s = self.services.get(key)
        return s is not None and s["learned"]

    def threshold(self, metric: str, floor: float, k: float, factor: float, min_intervals: int) -> float:
        """max(floor, mean + k*std, factor * max seen) once enough intervals were learned."""
        st = self.sources[metric]
        if st.n < min_intervals:
            return floor
        return max(floor, st.mean + k * st.std, factor * st.max)

    # -- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"engine": self.engine, "learned_seconds": self.learned_seconds, "intervals": self.intervals,
                "rates": {m: s.to_json() for m, s in self.rates.items()},
                "sources": {m: s.to_json() for m, s in self.sources.items()},
                "services": {k: {**v, "bytes": v["bytes"].to_json()} for k, v in self.services.items()},
                "services_capped": self.services_capped, "known_sources": sorted(self.known_sources),
                "known_sources_capped": self.known_sources_capped}

    @classmethod
    def from_json(cls, d: dict, **kw) -> "Baseline":
        b = cls(str(d["engine"]), **kw)
        b.learned_seconds = float(d.get("learned_seconds", 0.0))
        b.intervals = int(d.get("intervals", 0))
        for m, v in (d.get("rates") or {}).items():
            if m in b.rates:
                b.rates[m] = Stat.from_json(v)
        for m, v in (d.get("sources") or {}).items():
            if m in b.sources:
                b.sources[m] = Stat.from_json(v)
        for k, v in (d.get("services") or {}).items():
            b.services[k] = {**v, "bytes": Stat.from_json(v["bytes"])}
        b.services_capped = int(d.get("services_capped", 0))
        b.known_sources = {str(s) for s in (d.get("known_sources") or [])[:b.max_known_sources]}
        b.known_sources_capped = int(d.get("known_sources_capped", 0))
        return b

    def report(self) -> dict:
        return {"engine": self.engine, "learned_seconds": round(self.learned_seconds, 1),
                "intervals": self.intervals, "known_sources": len(self.known_sources),
                "known_sources_capped": self.known_sources_capped,
                "rates": {m: {"mean": round(s.mean, 3), "std": round(s.std, 3), "max": round(s.max, 3)}
                          for m, s in self.rates.items()},
                "sources": {m: {"mean": round(s.mean, 3), "std": round(s.std, 3), "max": round(s.max, 3)}
                            for m, s in self.sources.items()},
                "services": {k: {"flows": v["flows"], "sources": v["sources"], "sources_n": v["sources_n"],
                                 "bytes_per_flow": round(v["bytes"].mean, 1), "learned": v["learned"]}
                             for k, v in sorted(self.services.items())}}


@dataclass
class IntervalSummary:
    """What one interval (flow batch) of an engine looked like, for the baseline."""
    seconds: float
    flows: int
    new_flows: int
    pkts: int
    bytes: int
    rejected: int
    halfopen: int
    source_max: dict[str, float]
    services: dict[str, tuple[int, int, set[str]]]   # key -> (bytes, new flows, sources)
    sources: frozenset[str] = frozenset()             # source addresses of the interval


MIGRATIONS = ["""
CREATE TABLE IF NOT EXISTS baselines (engine TEXT PRIMARY KEY, body TEXT NOT NULL,
  updated DOUBLE PRECISION NOT NULL)
"""]


class BaselineStore:
    """``db``: the storage database, or a directory (its own SQLite file there, and the directory's
    ``<engine>.json`` files of earlier versions imported)."""

    def __init__(self, db: Database | Path, import_dir: Path | None = None, **kw):
        if not isinstance(db, Database):
            import_dir = Path(db)
            db = SQLiteDatabase(import_dir / "baselines.sqlite")
        self.db = db
        self.kw = kw
        self.baselines: dict[str, Baseline] = {}
        migrate(db, "baselines", MIGRATIONS)
        for engine, body in db.query("SELECT engine, body FROM baselines"):
            try:
                b = Baseline.from_json(json.loads(body), **kw)
                self.baselines[b.engine] = b
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.error("stored baseline of %s unreadable (%s); that engine starts learning afresh", engine, exc)
        if import_dir is not None and import_dir.is_dir():
            self._import(import_dir)

    def _import(self, directory: Path) -> None:
        for p in sorted(directory.glob("*.json")):
            try:
                b = Baseline.from_json(json.loads(p.read_text()), **self.kw)
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                log.error("baseline file %s unreadable (%s); that engine starts learning afresh", p, exc)
                continue
            if b.engine not in self.baselines:
                self.baselines[b.engine] = b
                b.dirty = True
                log.info("baseline of %s imported from %s", b.engine, p)
        self.save()
        for p in directory.glob("*.json"):
            if p.stem in self.baselines:
                p.rename(p.with_suffix(".json.imported"))

    def get(self, engine: str) -> Baseline:
        b = self.baselines.get(engine)
        if b is None:
            b = self.baselines[engine] = Baseline(engine, **self.kw)
        return b

    def save(self) -> int:
        dirty = [b for b in list(self.baselines.values()) if b.dirty]
        if not dirty:
            return 0
        now = time.time()
        with self.db.transaction():
            for b in dirty:
                self.db.execute("INSERT INTO baselines (engine, body, updated) VALUES (?,?,?) ON CONFLICT (engine) "
                                "DO UPDATE SET body=excluded.body, updated=excluded.updated",
                                (b.engine, json.dumps(b.to_json()), now))
                b.dirty = False
        return len(dirty)

    def reset(self, engine: str) -> None:
        self.baselines.pop(engine, None)
        self.db.execute("DELETE FROM baselines WHERE engine=?", (engine,))

    def close(self) -> None:
        self.db.close()
