"""The fleet as the policy sees it, and one signed rule set per engine.

``Fleet`` follows each engine's retained status (online, mode, tags, learning progress) and its
retained ``ruleset/state`` (generation applied).  ``Publisher`` turns the decision store into a rule
set per engine — the active decisions that target it and are not would-block there, plus the
allowlist as ``allow`` entries — and, when that set changed, publishes a signed delta and the new
signed snapshot (retained).  The generation is monotonic per engine and kept in the store, and it
starts above whatever the engine reports or the broker still retains, so that a manager whose state
was lost never publishes a generation an engine would refuse.  Several managers on one database: the stored generation only
ever rises (``DecisionStore.raise_meta_int``), so a manager that takes over publishing continues
above the last one's, and only the holder of the publishing lease calls ``sync``.

A decision for the whole fleet: ``sync_all`` stores every changed engine's next generation in a
few transactions (``DecisionStore.raise_meta_ints``), then publishes every engine's delta, and only
then builds, signs and publishes the retained snapshots, so the last engine's delta does not wait
for a thousand snapshots; each entry is built once per sync, each message still signed per engine.

Encoding: binary (rulewire.py, ``vrs1``: ~16 bytes per address entry instead of ~100 of JSON) to an
engine whose status advertises it under ``enforcement.formats``, JSON to any other (older engines
keep working); ``policy.ruleset_format`` forces one for every engine.  Binary sets are issued on a
whole second with lifetimes running to each decision's expiry rounded up, so an unchanged decision
packs to the same bytes in every snapshot and the engine writes only what changed.

Convergence: an engine that was offline receives the retained snapshot when it reconnects; a delta
whose base it does not hold is ignored by it and the snapshot covers it.  When an engine reports a
generation older than the current one for longer than ``resync_after`` seconds, the snapshot is
published again.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...contracts.engine import EngineStatus, RulesetState
from ... import payload, rulewire, ruleset, topics
from ...counters import Counters
from .decisions import DecisionStore, quarantine_networks

log = logging.getLogger(__name__)

EntryKey = tuple[str, str, str]


@dataclass
class EngineView:
    engine: str
    state: str = "unknown"
    mode: str | None = None            # as the engine reports it
    mode_override: str | None = None   # an operator's switch (published in the rule set)
    tags: list[str] = field(default_factory=list)
    learning: dict = field(default_factory=dict)
    version: str | None = None
    last_status: float = 0.0
    applied_generation: int | None = None
    applied_at: float | None = None
    ruleset_error: str | None = None
    ruleset_key_id: str | None = None  # the manager key that signed the applied rule set
    counts: dict = field(default_factory=dict)
    published_generation: int = 0
    behind_since: float | None = None
    state_seen: bool = False           # a ruleset/state message has come
    formats: tuple[str, ...] = ()      # rule-set encodings the engine reads (its enforcement status)

    @property
    def effective_mode(self) -> str:
        return self.mode_override or self.mode or "learning"

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "state": self.state, "online": self.state == "running",
                "mode": self.effective_mode, "reported_mode": self.mode, "mode_override": self.mode_override,
                "tags": self.tags, "learning": self.learning, "version": self.version,
                "last_status": self.last_status, "ruleset_generation": self.applied_generation,
                "applied_generation": self.applied_generation, "published_generation": self.published_generation,
                "ruleset_error": self.ruleset_error, "ruleset_key_id": self.ruleset_key_id,
                "ruleset_counts": self.counts}


class Fleet:
    def __init__(self, store: DecisionStore, counters: Counters):
        self.store = store
        self.counters = counters
        self.engines: dict[str, EngineView] = {}
        self._lock = threading.RLock()
        self._modes_raw: str | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Operators' mode switches as stored (made through this or another manager); True if changed."""
        raw = self.store.get_meta("mode_override")
        if raw == self._modes_raw:
            return False
        self._modes_raw = raw
        try:
            modes = json.loads(raw) if raw else {}
        except ValueError:
            self.counters.inc("fleet_mode_override_unreadable")
            modes = {}
        with self._lock:
            for eid, v in self.engines.items():
                if eid not in modes:
                    v.mode_override = None
            for eid, mode in modes.items():
                if mode in ruleset.MODES:
                    self.view(eid).mode_override = mode
        return True

    def view(self, engine: str) -> EngineView:
        with self._lock:
            v = self.engines.get(engine)
            if v is None:
                v = self.engines[engine] = EngineView(engine)
                raw = self.store.get_meta(f"generation:{engine}")
                v.published_generation = int(raw) if raw else 0
            return v

    def on_status(self, engine: str, st: EngineStatus) -> None:
        v = self.view(engine)
        v.state = st.state
        if st.mode is not None:
            v.mode = st.mode
        if st.tags:
            v.tags = list(st.tags)
        if st.learning is not None:
            v.learning = st.learning
        v.version = st.version or v.version
        fmts = (st.enforcement or {}).get("formats")
        if isinstance(fmts, list):
            v.formats = tuple(f for f in fmts if isinstance(f, str))
        v.last_status = st.ts / 1000.0
        # ruleset/state is the authority; a status only fills in until one has come (retained
        # messages of the two topics may arrive in either order after a restart)
        if st.ruleset_generation is not None and not v.state_seen:
            v.applied_generation = st.ruleset_generation

    def on_ruleset_state(self, engine: str, state: RulesetState) -> None:
        v = self.view(engine)
        if state.generation is not None:
            v.applied_generation = state.generation
            v.state_seen = True
        v.applied_at = (state.applied_at or 0) / 1000.0 or None
        v.ruleset_error = state.error
        v.ruleset_key_id = state.key_id
        v.counts = dict(state.counts)

    def set_mode(self, engine: str, mode: str | None) -> EngineView:
        if mode not in (None, *ruleset.MODES):
            raise ValueError(f"mode {mode!r} is not learning or enforcing")
        self.refresh()   # keep the other engines' switches made through another manager
        v = self.view(engine)
        v.mode_override = mode
        self._modes_raw = json.dumps({e: x.mode_override for e, x in self.engines.items() if x.mode_override})
        self.store.set_meta("mode_override", self._modes_raw)
        return v

    def learning_engines(self) -> set[str]:
        return {e for e, v in self.engines.items() if v.effective_mode == "learning"}

    def list(self) -> list[dict]:
        with self._lock:
            return [self.engines[k].as_dict() for k in sorted(self.engines)]


@dataclass
class _Plan:
    """One engine's part of a sync: its set as wanted, what changed since it was last published."""
    engine: str
    view: EngineView
    want: dict
    add: dict
    remove: list
    mode: str | None
    force: bool
    had: bool            # something was published to it before (a delta may go out)
    binary: bool
    gen: int = 0
    entries: int = 0


class Publisher:
    def __init__(self, manager_id: str, fleet: Fleet, store: DecisionStore, key, mqtt, counters: Counters,
                 resync_after: float = 10.0, clock=time.time, ruleset_format: str = "auto"):
        self.manager_id = manager_id
        self.fleet = fleet
        self.store = store
        self.key = key
        self.mqtt = mqtt
        self.counters = counters
        self.resync_after = resync_after
        self.clock = clock
        self.ruleset_format = ruleset_format
        # engine -> {entry key: (decision id, expires)} as last published
        self._published: dict[str, dict[EntryKey, tuple[str, float | None, dict]]] = {}
        self._published_mode: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def desired(self, engine: str) -> dict[EntryKey, tuple[str, float | None, dict]]:
        v = self.fleet.view(engine)
        out: dict[EntryKey, tuple[str, float | None, dict]] = {}
        for i, net in enumerate(self.store.allow_networks()):
            k = ("allow", "cidr", str(net))
            out[k] = (f"allow-{i}", None, {"origin": "allowlist", "reason": "allowlisted"})
        for d in sorted(self.store.enforced_for(engine, v.tags), key=lambda d: d.created):
            k = (d.action, d.scope, d.value)
            prev = out.get(k)
            if prev is None or (prev[1] is not None and (d.expires is None or d.expires > prev[1])):
                out[k] = (d.id, d.expires, {"origin": d.origin, "reason": d.reason})
            # A quarantine: its management networks stay reachable for as long as it lasts (the
            # engine accepts to/from allow entries before any drop). An allowlist entry for the
            # same network wins (no expiry); the longest quarantine wins among several.
            for net in quarantine_networks(d.evidence):
                k = ("allow", "cidr", net)
                prev = out.get(k)
                if prev is None or (prev[1] is not None and (d.expires is None or d.expires > prev[1])):
                    out[k] = (f"{d.id}-allow", d.expires,
                              {"origin": d.origin, "reason": f"quarantine of {d.value}: reachable network"})
        return out

    def _entry(self, k: EntryKey, val: tuple[str, float | None, dict], now: float, whole: bool = False) -> dict:
        """``whole``: ``now`` is a whole second and the ttl runs to the decision's expiry rounded up,
        so that issue time + ttl is the same integer in every snapshot (binary sets are diffed by it)."""
        did, expires, meta = val
        if expires is None:
            ttl = None
        elif whole:
            ttl = max(1, math.ceil(expires) - int(now))
        else:
            ttl = max(1, math.ceil(expires - now))
        return ruleset.entry(did, k[0], k[1], k[2], ttl, meta["origin"][:200], meta["reason"][:500])

    def binary_for(self, engine: str) -> bool:
        if self.ruleset_format == "auto":
            return rulewire.FORMAT in self.fleet.view(engine).formats
        return self.ruleset_format == rulewire.FORMAT

    def _encode(self, kind: str, body: dict, binary: bool, ts: int) -> bytes:
        if binary and rulewire.carries(body):
            return rulewire.encode(kind, self.manager_id, body, self.key, ts=ts)
        if binary:   # an entry vrs1 has no block for (scope mac): the engine reads JSON as well
            self.counters.inc("ruleset_binary_fallback_json")
        return ruleset.encode_signed(kind, self.manager_id, body, self.key, ts=ts)

    def take_over(self) -> None:
        """This manager has just become the publisher: forget what it last published itself (another
        manager may have published since) and continue from the stored generations; the next sync
        sends every engine a full snapshot."""
        with self._lock:
            self._published.clear()
            self._published_mode.clear()
            for engine, v in list(self.fleet.engines.items()):
                raw = self.store.get_meta(f"generation:{engine}")
                v.published_generation = max(v.published_generation, int(raw) if raw else 0)
                v.behind_since = None

    def sync(self, engine: str, force_snapshot: bool = False) -> bool:
        """Publish what changed for one engine; True when something was published."""
        return self._sync([(engine, force_snapshot)]) > 0

    def _plan(self, engine: str, force: bool) -> _Plan | None:
        """What ``engine`` is to receive, or None when its set and mode did not change."""
        v = self.fleet.view(engine)
        want = self.desired(engine)
        have = self._published.get(engine)
        mode = v.mode_override
        if have is not None and not force:
            add = {k: val for k, val in want.items() if have.get(k, (None, "x"))[:2] != val[:2]}
            remove = [k for k in have if k not in want]
            if not add and not remove and self._published_mode.get(engine) == mode:
                return None
        else:
            add, remove = want, []
        return _Plan(engine, v, want, add, remove, mode, force, have is not None, self.binary_for(engine))

    def _cached_entry(self, cache: dict, k: EntryKey, val, now: float, whole: bool) -> dict:
        """One entry dict per (entry, encoding) for a whole sync: a global decision is the same
        entry in every engine's set, built and checked once (bodies copy the dicts they hold)."""
        ck = (k, val[0], val[1], val[2]["origin"], val[2]["reason"], whole)
        e = cache.get(ck)
        if e is None:
            e = cache[ck] = self._entry(k, val, now, whole)
        return e

    def _sync(self, jobs: list[tuple[str, bool]]) -> int:
        """Publish to every engine of ``jobs`` (engine, force a snapshot) whose set changed.

        In three passes, so that a global decision reaches a large fleet quickly: every changed
        engine's next generation is stored first, in a few transactions instead of one commit per
        engine (stored before anything is published, as ever); then every engine's delta (what
        an engine applies first; a snapshot for an engine that gets no delta); then the retained
        snapshots of the engines that got a delta (the catch-up for one that missed it)."""
        with self._lock:
            now = self.clock()
            cache: dict = {}
            plans: list[_Plan] = []
            for engine, force in jobs:
                try:
                    p = self._plan(engine, force)
                except Exception:
                    self.counters.inc("ruleset_publish_errors")
                    log.exception("building the rule set of %s failed", engine)
                    continue
                if p is not None:
                    plans.append(p)
            if not plans:
                return 0
            want_gen = {f"generation:{p.engine}": max(p.view.published_generation, p.view.applied_generation or 0) + 1
                        for p in plans}
            try:
                gens = self.store.raise_meta_ints(want_gen, above=True)
            except Exception:
                self.counters.inc("ruleset_publish_errors", len(plans))
                log.exception("storing the generations of %d rule sets failed; nothing published", len(plans))
                return 0
            now_whole = float(int(now))

            def snapshot(p: _Plan) -> str:
                t = now_whole if p.binary else now
                issued = int(t * 1000)
                entries = [self._cached_entry(cache, k, val, t, p.binary) for k, val in p.want.items()]
                body = ruleset.snapshot_body(p.engine, p.gen, entries, mode=p.mode, issued_at=issued)
                self.mqtt.publish(topics.engine(p.engine, "ruleset"), self._encode("ruleset", body, p.binary, issued),
                                  qos=1, retain=True)
                if p.binary:
                    self.counters.inc("ruleset_binary_published")
                self.counters.inc("ruleset_snapshots_published")
                p.entries = len(entries)
                return "done"

            def delta_or_snapshot(p: _Plan) -> str:
                v = p.view
                base = v.published_generation
                p.gen = v.published_generation = gens[f"generation:{p.engine}"]
                # another manager published in between (gen != base + 1): our delta base is not the engine's
                if not (p.had and base and not p.force and p.gen == base + 1):
                    return snapshot(p)
                t = now_whole if p.binary else now
                issued = int(t * 1000)
                delta = ruleset.delta_body(p.engine, base, p.gen,
                                           [self._cached_entry(cache, k, val, t, p.binary) for k, val in p.add.items()],
                                           [ruleset.removal(*k) for k in p.remove], mode=p.mode, issued_at=issued)
                self.mqtt.publish(topics.engine(p.engine, "ruleset/delta"),
                                  self._encode("ruleset-delta", delta, p.binary, issued), qos=1)
                self.counters.inc("ruleset_deltas_published")
                return "delta"

            def attempt(p: _Plan, step) -> str | None:
                try:
                    return step(p)
                except Exception:  # this engine only: the others still get theirs
                    self.counters.inc("ruleset_publish_errors")
                    log.exception("publishing the rule set of %s failed", p.engine)
                    return None

            firsts = [(p, attempt(p, delta_or_snapshot)) for p in plans]
            done = [p for p, r in firsts if r == "done"]
            # the snapshots of the engines that got a delta, built and signed only now: every delta is out
            done += [p for p, r in firsts if r == "delta" and attempt(p, snapshot) == "done"]
            for p in done:
                self._published[p.engine] = p.want
                self._published_mode[p.engine] = p.mode
                p.view.behind_since = None
                log.info("rule set for %s: generation %d, %d entries (+%d -%d)", p.engine, p.gen, p.entries,
                         len(p.add), len(p.remove))
            return len(done)

    def sync_all(self) -> int:
        now = self.clock()
        jobs: list[tuple[str, bool]] = []
        for engine, v in list(self.fleet.engines.items()):
            force = False
            if v.applied_generation is not None and v.applied_generation < v.published_generation \
                    and v.state == "running":
                if v.behind_since is None:
                    v.behind_since = now
                elif now - v.behind_since > self.resync_after:
                    force = True  # it missed a delta or the snapshot: publish the full set again
                    self.counters.inc("ruleset_resyncs")
                    log.info("engine %s applied generation %s < %d for %.0fs; resending the snapshot",
                             engine, v.applied_generation, v.published_generation, now - v.behind_since)
            else:
                v.behind_since = None
            jobs.append((engine, force))
        return self._sync(jobs)

    def forget_retained(self, engine: str, snapshot_generation: int) -> None:
        """A retained snapshot found on the broker at start: generations continue above it."""
        v = self.fleet.view(engine)
        if snapshot_generation > v.published_generation:
            v.published_generation = self.store.raise_meta_int(f"generation:{engine}", snapshot_generation)


def snapshot_generation(raw: bytes) -> int | None:
    if rulewire.is_binary(raw):
        return rulewire.peek_generation(raw)
    try:
        msg = payload.decode(raw, "ruleset")
    except payload.PayloadError:
        return None
    gen = msg.get("generation")
    return gen if isinstance(gen, int) else None
