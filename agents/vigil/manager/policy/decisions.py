"""The decision store: what is blocked, where, why and until when (DESIGN.md "Decisions and rule sets").

One database holds (``storage``: a SQLite file under the manager's state_dir, or the PostgreSQL
database that several managers share)

- ``decisions``: id, scope, value, action, origin, reason, created/expires (UTC epoch seconds),
  offence count, targets (``[]`` = every engine, else engine ids and ``tag:<tag>``), state
  (``active``, ``expired``, ``removed``, ``superseded``) and ``would_block_on`` — the engines that were learning
  when the decision was made: on those it is only reported, never enforced;
- ``offences``: per (scope, value) how often it offended and when last, for the duration ladder;
- ``allowlist``: operator entries (configured entries — management network, gateways — live in
  the config and are merged in memory);
- ``suppress``: values an operator unblocked, and until when detections may not block them again.

Rules, in order: an allowlisted value is never blocked (whatever the origin); a suppressed value is
not blocked again by a non-operator origin; a proposal for a value that already has an active
decision with the same targets merges into it (no new offence, so one long scan is one offence);
otherwise the offence count rises and the ladder picks the duration unless the request names one.

Several managers on one database: each keeps the active decisions in memory and re-reads what the
others changed (``refresh``, every ``poll_interval``); a proposal, an unblock or an extension runs in
a transaction that holds a lock on the value, after reading that value's rows afresh, so two
managers that see the same scan at the same moment make one decision, not two.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ... import ruleset
from ...counters import Counters
from ..storage import Database, migrate
from ..storage.db import SQLiteDatabase

log = logging.getLogger(__name__)

OPERATOR = "operator"


@dataclass
class Decision:
    id: str
    scope: str
    value: str
    action: str
    origin: str
    reason: str
    created: float
    expires: float | None
    offences: int = 1
    engines: list[str] = field(default_factory=list)
    state: str = "active"
    would_block_on: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0

    def targets(self, engine: str, tags: Iterable[str] = ()) -> bool:
        if not self.engines:
            return True
        tags = set(tags)
        return any(t == engine or (t.startswith("tag:") and t[4:] in tags) for t in self.engines)

    def active_at(self, now: float) -> bool:
        return self.state == "active" and (self.expires is None or self.expires > now)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["remaining"] = None if self.expires is None else max(0.0, round(self.expires - time.time(), 1))
        return d


class Rejected(Exception):
    """A proposal that was not turned into a decision; ``reason``: allowlisted, suppressed, invalid."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def parse_targets(engines: Iterable[str] | None) -> list[str]:
    out = []
    for t in engines or []:
        if not isinstance(t, str) or not t:
            raise ValueError(f"engine target {t!r} is not a string")
        name = t[4:] if t.startswith("tag:") else t
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
            raise ValueError(f"engine target {t!r} is not an engine id or tag:<tag>")
        out.append(t)
    return sorted(set(out))


def covers(net: ipaddress._BaseNetwork, scope: str, value: str) -> bool:
    """Does the allowlisted network ``net`` cover a value of ``scope``?

    An ip or flow is covered when its (source) address lies inside; a cidr when it overlaps at all
    (blocking a /16 that contains a gateway would block the gateway)."""
    try:
        if scope == "ip":
            a = ipaddress.ip_address(value)
            return a.version == net.version and a in net
        if scope == "flow":
            src, dst = value.split("|")[:2]
            a, _b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
            return a.version == net.version and a in net
        n = ipaddress.ip_network(value, strict=False)
        return n.version == net.version and n.overlaps(net)
    except ValueError:
        return False


# Versioned: append a migration, never edit one that shipped.  The first is written so that it also
# adopts a decisions.sqlite made before migrations existed (same tables, IF NOT EXISTS).
MIGRATIONS = ["""
CREATE TABLE IF NOT EXISTS decisions (
  id TEXT PRIMARY KEY, scope TEXT, value TEXT, action TEXT, origin TEXT, reason TEXT,
  created DOUBLE PRECISION, expires DOUBLE PRECISION, offences INTEGER, engines TEXT, state TEXT,
  would_block_on TEXT, evidence TEXT, updated DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS decisions_state ON decisions(state);
CREATE TABLE IF NOT EXISTS offences (scope TEXT, value TEXT, count INTEGER, last DOUBLE PRECISION,
  PRIMARY KEY (scope, value));
CREATE TABLE IF NOT EXISTS allowlist (id TEXT PRIMARY KEY, value TEXT UNIQUE, note TEXT,
  created DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS suppress (scope TEXT, value TEXT, until DOUBLE PRECISION,
  PRIMARY KEY (scope, value));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)
""", """
CREATE INDEX IF NOT EXISTS decisions_updated ON decisions(updated);
CREATE INDEX IF NOT EXISTS decisions_value ON decisions(scope, value)
"""]

# Rows another manager wrote are re-read this long after their time stamp, so that a transaction
# that committed a little after the one we saw (or a manager whose clock is a little behind) is not
# skipped.  Managers' clocks must agree to within this (NTP).
REFRESH_OVERLAP = 5.0

_DECISION_COLS = ("id, scope, value, action, origin, reason, created, expires, offences, engines, state, "
                  "would_block_on, evidence, updated")
_UPSERT_DECISION = (f"INSERT INTO decisions ({_DECISION_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
                        f"{c}=excluded.{c}" for c in _DECISION_COLS.split(", ")[1:]))


def _changes(d: "Decision") -> tuple:
    """What of a decision can change a rule set or a report."""
    return (d.state, d.expires, d.engines, d.would_block_on, d.origin, d.reason, d.evidence.get("quarantine"),
            d.evidence.get("allow_networks"))


class DecisionStore:
    """Thread-safe (MQTT thread, control socket threads, supervisor loop share it)."""

    def __init__(self, db: Database | Path, counters: Counters, ladder: list[float], offence_memory: float,
                 unblock_suppress: float, static_allow: Iterable[str] = (), max_active: int = 100_000,
                 clock: Callable[[], float] = time.time):
        self.counters = counters
        self.ladder = list(ladder)
        self.offence_memory = offence_memory
        self.unblock_suppress = unblock_suppress
        self.max_active = max_active
        self.clock = clock
        self._lock = threading.RLock()
        self._db = db if isinstance(db, Database) else SQLiteDatabase(db)
        self.shared = self._db.shared
        migrate(self._db, "decisions", MIGRATIONS)
        self.static_allow = [ipaddress.ip_network(v, strict=False) for v in static_allow]
        self.active: dict[str, Decision] = {}
        self._refreshed_at = self.clock()
        for row in self._db.query(f"SELECT {_DECISION_COLS} FROM decisions WHERE state='active'"):
            d = self._row(row)
            self.active[d.id] = d
        self._allow_rows: dict[str, dict] = {}
        self._load_allowlist()
        self.version = 0  # bumped on every change that can alter a rule set

    def _load_allowlist(self) -> bool:
        rows = {aid: {"id": aid, "value": value, "note": note, "created": created, "source": "operator"}
                for aid, value, note, created in self._db.query("SELECT id, value, note, created FROM allowlist")}
        changed = rows != self._allow_rows
        self._allow_rows = rows
        return changed

    def refresh(self) -> int:
        """Read what other managers changed since the last refresh (a no-op on a store of its own);
        returns how many decisions changed here.  A change that can alter a rule set bumps
        ``version`` so that the publisher sends it."""
        if not self.shared:
            return 0
        with self._lock:
            now = self.clock()
            since = self._refreshed_at - REFRESH_OVERLAP
            rows = self._db.query(f"SELECT {_DECISION_COLS} FROM decisions WHERE updated >= ?", (since,))
            self._refreshed_at = now
            n = sum(self._adopt(self._row(r)) for r in rows)
            if self._load_allowlist():
                n += 1
            if n:
                self.version += 1
                self.counters.inc("decisions_refreshed", n)
            return n

    def _adopt(self, d: Decision) -> bool:
        """Take a row read from the database into the in-memory view; True when it changed."""
        mine = self.active.get(d.id)
        if d.state == "active":
            if mine is not None and _changes(mine) == _changes(d):
                return False
            self.active[d.id] = d
            return True
        if mine is None:
            return False
        del self.active[d.id]
        return True

    def _reread_id(self, id_: str) -> None:
        row = self._db.one(f"SELECT {_DECISION_COLS} FROM decisions WHERE id=?", (id_,))
        if row is None:
            self.active.pop(id_, None)
        elif self._adopt(self._row(row)):
            self.version += 1

    def _reread_value(self, scope: str, value: str) -> None:
        """Within a locked transaction: this value's rows as the database has them now."""
        for r in self._db.query(f"SELECT {_DECISION_COLS} FROM decisions WHERE scope=? AND value=?",
                                (scope, value)):
            if self._adopt(self._row(r)):
                self.version += 1   # another manager's change to it: the rule sets may differ

    # -- persistence helpers --------------------------------------------------------------
    @staticmethod
    def _row(row) -> Decision:
        (id_, scope, value, action, origin, reason, created, expires, offences, engines, state,
         wbo, evidence, updated) = row
        try:
            ev = json.loads(evidence or "{}")
        except ValueError:
            ev = {"unreadable": True}
        return Decision(id_, scope, value, action, origin, reason, created, expires, offences,
                        json.loads(engines or "[]"), state, json.loads(wbo or "[]"), ev, updated or created)

    def _save(self, d: Decision) -> None:
        d.updated = self.clock()
        ev = json.dumps(d.evidence, default=str)
        if len(ev) > 8000:  # a cut JSON text would not read back: keep the keys that fit
            self.counters.inc("decision_evidence_truncated")
            ev = json.dumps({k: (v if len(json.dumps(v, default=str)) < 500 else "(too long)")
                             for k, v in list(d.evidence.items())[:40]}, default=str)[:8000]
            if len(ev) >= 8000:
                ev = json.dumps({"truncated": True})
        self._db.execute(_UPSERT_DECISION,
                         (d.id, d.scope, d.value, d.action, d.origin, d.reason, d.created, d.expires,
                          d.offences, json.dumps(d.engines), d.state, json.dumps(d.would_block_on),
                          ev, d.updated))
        self.version += 1

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._db.one("SELECT value FROM meta WHERE key=?", (key,))
            return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?,?) ON CONFLICT (key) DO UPDATE "
                             "SET value=excluded.value", (key, value))

    def meta_with_prefix(self, prefix: str) -> dict[str, str]:
        """Every meta entry whose key starts with ``prefix`` (keyed without it)."""
        with self._lock:
            rows = self._db.query("SELECT key, value FROM meta WHERE key LIKE ?", (prefix.replace("%", "") + "%",))
        return {k[len(prefix):]: v for k, v in rows if k.startswith(prefix)}

    def raise_meta_int(self, key: str, value: int, above: bool = False) -> int:
        """Atomically (across managers) store under ``key`` the larger of ``value`` and what is
        there — or, with ``above``, of ``value`` and one more than what is there — and return it.
        Generations so never go back, and two publishers never hand out the same one."""
        with self._lock, self._db.transaction():
            self._db.lock(f"meta:{key}")
            row = self._db.one("SELECT value FROM meta WHERE key=?", (key,))
            have = int(row[0]) if row and row[0] and row[0].lstrip("-").isdigit() else 0
            new = max(value, have + 1 if above else have)
            if new != have:
                self.set_meta(key, str(new))
            return new

    def raise_meta_ints(self, values: dict[str, int], above: bool = False, chunk: int = 256) -> dict[str, int]:
        """``raise_meta_int`` for many keys in few transactions (one per ``chunk`` keys) instead of
        one commit per key; keys are locked in sorted order, so two batches never deadlock."""
        out: dict[str, int] = {}
        keys = sorted(values)
        for i in range(0, len(keys), chunk):
            with self._lock, self._db.transaction():
                for key in keys[i:i + chunk]:
                    out[key] = self.raise_meta_int(key, values[key], above)
        return out

    # -- allowlist ------------------------------------------------------------------------
    def allow_networks(self) -> list[ipaddress._BaseNetwork]:
        with self._lock:
            return self.static_allow + [ipaddress.ip_network(r["value"], strict=False)
                                        for r in self._allow_rows.values()]

    def allowlisted(self, scope: str, value: str) -> ipaddress._BaseNetwork | None:
        for net in self.allow_networks():
            if covers(net, scope, value):
                return net
        return None

    def allow_list(self) -> list[dict]:
        with self._lock:
            out = [{"id": f"config-{i}", "value": str(n), "note": "configuration", "created": None,
                    "source": "config"} for i, n in enumerate(self.static_allow)]
            return out + sorted(self._allow_rows.values(), key=lambda r: r["created"])

    def allow_add(self, value: str, note: str = "") -> dict:
        net = ipaddress.ip_network(value, strict=False)  # ValueError for bad input
        with self._lock, self._db.transaction():
            self._db.lock("allowlist")
            self._load_allowlist()
            for r in self._allow_rows.values():
                if r["value"] == str(net):
                    return r
            r = {"id": "a-" + uuid.uuid4().hex[:10], "value": str(net), "note": note[:200],
                 "created": self.clock(), "source": "operator"}
            self._db.execute("INSERT INTO allowlist (id, value, note, created) VALUES (?,?,?,?)",
                             (r["id"], r["value"], r["note"], r["created"]))
            self._allow_rows[r["id"]] = r
            # Existing decisions the new entry covers stop at once (allowlists override everything).
            for d in list(self.active.values()):
                if covers(net, d.scope, d.value):
                    self._end(d, "removed")
                    self.counters.inc("decisions_ended_by_allowlist")
            self.version += 1
            return r

    def allow_delete(self, key: str) -> dict:
        with self._lock, self._db.transaction():
            self._db.lock("allowlist")
            self._load_allowlist()
            for aid, r in list(self._allow_rows.items()):
                if key in (aid, r["value"]):
                    self._db.execute("DELETE FROM allowlist WHERE id=?", (aid,))
                    del self._allow_rows[aid]
                    self.version += 1
                    return r
        raise KeyError(key)

    # -- decisions ------------------------------------------------------------------------
    def duration_for(self, offences: int) -> float:
        return self.ladder[min(max(offences, 1), len(self.ladder)) - 1]

    def propose(self, scope: str, value: str, origin: str, reason: str, duration: float | None = None,
                engines: Iterable[str] = (), evidence: dict | None = None,
                learning: Iterable[str] = ()) -> Decision:
        """Record a decision or merge into an existing one; raises Rejected or ValueError.

        ``learning``: the engines this decision targets that are learning now (would-block there).
        """
        return self.propose_created(scope, value, origin, reason, duration, engines, evidence, learning)[0]

    def propose_created(self, scope: str, value: str, origin: str, reason: str, duration: float | None = None,
                        engines: Iterable[str] = (), evidence: dict | None = None,
                        learning: Iterable[str] = ()) -> tuple[Decision, bool]:
        """``propose``, and whether the decision is new (False: merged into one that was active —
        made here or, on a shared database, by another manager)."""
        value = ruleset.normalise_value(scope, value)
        targets = parse_targets(engines)
        if duration is not None and not 0 < duration <= ruleset.MAX_TTL:
            raise ValueError(f"duration {duration!r} must be > 0 and at most {ruleset.MAX_TTL} seconds")
        origin = (origin or "unknown")[:120]
        now = self.clock()
        with self._lock, self._db.transaction():
            if self.shared:
                self._db.lock(f"value:{scope}|{value}")
                self._reread_value(scope, value)
            net = self.allowlisted(scope, value)
            if net is not None:
                self.counters.inc("decisions_rejected_allowlisted")
                raise Rejected("allowlisted", f"{value} is allowlisted ({net})")
            if origin != OPERATOR:
                row = self._db.one("SELECT until FROM suppress WHERE scope=? AND value=?", (scope, value))
                if row and row[0] > now:
                    self.counters.inc("decisions_rejected_suppressed")
                    raise Rejected("suppressed", f"{value} was unblocked by an operator; not re-blocked "
                                                 f"for another {row[0] - now:.0f}s")
            learning = sorted(set(learning)) if origin != OPERATOR else []
            for d in list(self.active.values()):
                if d.scope == scope and d.value == value and d.engines == targets and d.active_at(now):
                    if origin != OPERATOR and not set(d.would_block_on) <= set(learning):
                        # a would-block from the learning period, and its engine enforces now: the
                        # new offence is a decision of its own (the old one stays in the report)
                        self._end(d, "superseded")
                        continue
                    # Same thing still blocked: merge. An operator's explicit duration may extend it.
                    changed = False
                    if origin == OPERATOR and duration is not None:
                        d.expires = max(d.expires or 0, now + duration) if d.expires is not None else None
                        changed = True
                    new_q = quarantine_networks(evidence)
                    if (evidence or {}).get("quarantine") and not d.evidence.get("quarantine"):
                        # a quarantine joins a plain block of the same address: it takes the
                        # quarantine's reason and lasts at least as long as the quarantine asked
                        d.origin, d.reason = origin, (reason or origin)[:500]
                        if duration is not None and d.expires is not None:
                            d.expires = max(d.expires, now + duration)
                        changed = True
                    elif new_q and not set(new_q) <= set(quarantine_networks(d.evidence)):
                        changed = True  # more allow entries travel with it
                    if d.evidence.get("quarantine") and new_q:
                        evidence = {**evidence, "allow_networks": sorted(
                            set(quarantine_networks(d.evidence)) | set(new_q))}
                    d.evidence = {**d.evidence, **(evidence or {}), "merged": d.evidence.get("merged", 0) + 1}
                    self._save(d)
                    if not changed:
                        self.version -= 1  # evidence only: the rule sets do not change
                    self.counters.inc("decisions_merged")
                    return d, False
            if len(self.active) >= self.max_active:
                self.counters.inc("decisions_rejected_full")
                raise Rejected("full", f"{len(self.active)} active decisions: the store is full")
            row = self._db.one("SELECT count, last FROM offences WHERE scope=? AND value=?", (scope, value))
            count = row[0] if row and now - row[1] <= self.offence_memory else 0
            count += 1
            self._db.execute("INSERT INTO offences (scope, value, count, last) VALUES (?,?,?,?) ON CONFLICT "
                             "(scope, value) DO UPDATE SET count=excluded.count, last=excluded.last",
                             (scope, value, count, now))
            if duration is None:
                duration = self.duration_for(count)
            d = Decision(id="d-" + uuid.uuid4().hex[:12], scope=scope, value=value, action="drop",
                         origin=origin, reason=(reason or origin)[:500], created=now,
                         expires=now + duration, offences=count, engines=targets,
                         would_block_on=learning,
                         evidence=dict(evidence or {}))
            self._save(d)              # first: a failed write leaves no decision in memory only
            self.active[d.id] = d
            self.counters.inc("decisions_created")
            log.info("decision %s: %s %s %s for %.0fs (offence %d, origin %s, targets %s%s): %s",
                     d.id, d.action, d.scope, d.value, duration, count, origin, targets or "all",
                     f", would-block on {d.would_block_on}" if d.would_block_on else "", d.reason)
            return d, True

    def _find(self, key: str) -> list[Decision]:
        """Active decisions by id or by value."""
        if key in self.active:
            return [self.active[key]]
        return [d for d in self.active.values() if d.value == key or d.value == _norm_any(key)]

    def _find_locked(self, key: str) -> list[Decision]:
        """Within a transaction: ``_find``, with the values found locked against other managers
        and re-read, so that what is written next starts from the database's current rows."""
        self.refresh()
        found = self._find(key)
        if self.shared and found:
            for scope, value in sorted({(d.scope, d.value) for d in found}):
                self._db.lock(f"value:{scope}|{value}")
                self._reread_value(scope, value)
            found = self._find(key)
        return found

    def _end(self, d: Decision, state: str) -> None:
        d.state = state
        self.active.pop(d.id, None)
        self._save(d)

    def unblock(self, key: str, suppress: float | None = None) -> list[Decision]:
        """End active decisions by id or value; detections may not re-block the value for a while."""
        suppress = self.unblock_suppress if suppress is None else suppress
        with self._lock, self._db.transaction():
            found = self._find_locked(key)
            if not found:
                raise KeyError(key)
            now = self.clock()
            for d in found:
                self._end(d, "removed")
                if suppress > 0:
                    self._db.execute("INSERT INTO suppress (scope, value, until) VALUES (?,?,?) ON CONFLICT "
                                     "(scope, value) DO UPDATE SET until=excluded.until",
                                     (d.scope, d.value, now + suppress))
                log.info("decision %s on %s removed by an operator; re-blocking suppressed for %.0fs",
                         d.id, d.value, suppress)
            self.counters.inc("decisions_unblocked", len(found))
            return found

    def extend(self, key: str, seconds: float) -> list[Decision]:
        if not 0 < seconds <= ruleset.MAX_TTL:
            raise ValueError(f"duration {seconds!r} must be > 0 and at most {ruleset.MAX_TTL} seconds")
        with self._lock, self._db.transaction():
            found = self._find_locked(key)
            if not found:
                raise KeyError(key)
            now = self.clock()
            for d in found:
                if d.expires is not None:
                    d.expires = max(d.expires, now) + seconds
                self._save(d)
            return found

    def expire(self) -> int:
        """Mark decisions past their expiry as expired; returns how many."""
        now = self.clock()
        with self._lock, self._db.transaction():
            gone = [d for d in self.active.values() if d.expires is not None and d.expires <= now]
            ended = 0
            for d in gone:
                # only what the database also has as due: another manager may have extended it
                # since our copy was read (an upsert of our copy would undo that extension)
                cur = self._db.execute("UPDATE decisions SET state='expired', updated=? WHERE id=? AND "
                                       "state='active' AND expires IS NOT NULL AND expires <= ?",
                                       (now, d.id, now))
                if cur.rowcount == 1 or not self.shared:
                    d.state, d.updated = "expired", now
                    self.active.pop(d.id, None)
                    self.version += 1
                    ended += 1
                else:
                    self._reread_id(d.id)
            if ended:
                self.counters.inc("decisions_expired", ended)
            self._db.execute("DELETE FROM suppress WHERE until < ?", (now,))
            return ended

    def list(self, state: str | None = "active", engine: str | None = None, origin: str | None = None,
             value: str | None = None, limit: int = 1000, would_block: bool | None = None) -> list[Decision]:
        with self._lock:
            self.refresh()   # an operator asking one manager sees what was just added through another
            if state == "active":
                rows = list(self.active.values())
            else:
                q, args = f"SELECT {_DECISION_COLS} FROM decisions", []
                if state and state != "all":
                    q += " WHERE state=?"
                    args.append(state)
                q += " ORDER BY created DESC LIMIT ?"
                args.append(max(limit * 4, limit))
                rows = [self._row(r) for r in self._db.query(q, args)]
        out = []
        for d in rows:
            if engine and not (d.targets(engine) or engine in d.engines):
                continue
            if origin and not d.origin.startswith(origin):
                continue
            if value and value not in (d.value, d.id):
                continue
            if would_block is not None and bool(d.would_block_on) != would_block:
                continue
            out.append(d)
        out.sort(key=lambda d: d.created, reverse=True)
        return out[:limit]

    def enforced_for(self, engine: str, tags: Iterable[str] = ()) -> list[Decision]:
        """The active decisions that the rule set of ``engine`` carries."""
        now = self.clock()
        tags = list(tags)
        with self._lock:
            return [d for d in self.active.values() if d.active_at(now) and d.targets(engine, tags)
                    and engine not in d.would_block_on]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def quarantine_networks(evidence: dict | None) -> list[str]:
    """The networks a quarantine decision leaves reachable (``evidence.allow_networks`` of a
    decision whose evidence says ``quarantine``); unparsable entries are left out."""
    if not evidence or not evidence.get("quarantine"):
        return []
    nets = evidence.get("allow_networks")
    if not isinstance(nets, list):
        return []
    out = []
    for n in nets:
        try:
            out.append(str(ipaddress.ip_network(str(n), strict=False)))
        except ValueError:
            continue
    return sorted(set(out))


def _norm_any(value: str) -> str:
    for scope in ("ip", "cidr", "flow"):
        try:
            return ruleset.normalise_value(scope, value)
        except ValueError:
            continue
    return value
