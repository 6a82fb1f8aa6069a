"""The fleet as the policy sees it, and one signed rule set per engine.

``Fleet`` follows each engine's retained status (online, mode, tags, learning progress) and its
retained ``ruleset/state`` (generation applied).  ``Publisher`` turns the decision store into a rule
set per engine — the active decisions that target it and are not would-block there, plus the
allowlist as ``allow`` entries — and, when that set changed, publishes a signed delta and the new
signed snapshot (retained).  The generation is monotonic per engine and kept in the store, and it
starts above whatever the engine reports or the broker still retains, so that a manager whose state
was lost never publishes a generation an engine would refuse.

Convergence: an engine that was offline receives the retained snapshot when it reconnects; a delta
whose base it does not hold is ignored by it and the snapshot covers it.  When an engine reports a
generation older than the current one for longer than ``resync_after`` seconds, the snapshot is
published again.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ...contracts.engine import EngineStatus, RulesetState
from ... import payload, ruleset, topics
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
        for key in ("mode_override",):
            raw = store.get_meta(key)
            if raw:
                import json
                for eid, mode in json.loads(raw).items():
                    self.view(eid).mode_override = mode

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
        import json
        if mode not in (None, *ruleset.MODES):
            raise ValueError(f"mode {mode!r} is not learning or enforcing")
        v = self.view(engine)
        v.mode_override = mode
        self.store.set_meta("mode_override", json.dumps(
            {e: x.mode_override for e, x in self.engines.items() if x.mode_override}))
        return v

    def learning_engines(self) -> set[str]:
        return {e for e, v in self.engines.items() if v.effective_mode == "learning"}

    def list(self) -> list[dict]:
        with self._lock:
            return [self.engines[k].as_dict() for k in sorted(self.engines)]


class Publisher:
    def __init__(self, manager_id: str, fleet: Fleet, store: DecisionStore, key, mqtt, counters: Counters,
                 resync_after: float = 10.0, clock=time.time):
        self.manager_id = manager_id
        self.fleet = fleet
        self.store = store
        self.key = key
        self.mqtt = mqtt
        self.counters = counters
        self.resync_after = resync_after
        self.clock = clock
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

    def _entry(self, k: EntryKey, val: tuple[str, float | None, dict], now: float) -> dict:
        did, expires, meta = val
        ttl = None if expires is None else max(1, math.ceil(expires - now))
        return ruleset.entry(did, k[0], k[1], k[2], ttl, meta["origin"][:200], meta["reason"][:500])

    def _next_generation(self, engine: str) -> int:
        v = self.fleet.view(engine)
        gen = max(v.published_generation, v.applied_generation or 0) + 1
        v.published_generation = gen
        self.store.set_meta(f"generation:{engine}", str(gen))
        return gen

    def sync(self, engine: str, force_snapshot: bool = False) -> bool:
        """Publish what changed for one engine; True when something was published."""
        with self._lock:
            now = self.clock()
            v = self.fleet.view(engine)
            want = self.desired(engine)
            have = self._published.get(engine)
            mode = v.mode_override
            if have is not None and not force_snapshot:
                add = {k: val for k, val in want.items() if have.get(k, (None, "x"))[:2] != val[:2]}
                remove = [k for k in have if k not in want]
                if not add and not remove and self._published_mode.get(engine) == mode:
                    return False
            else:
                add, remove = want, []
            base = v.published_generation
            gen = self._next_generation(engine)
            entries = [self._entry(k, val, now) for k, val in want.items()]
            issued = int(now * 1000)
            snap = ruleset.snapshot_body(engine, gen, entries, mode=mode, issued_at=issued)
            if have is not None and base and not force_snapshot:
                delta = ruleset.delta_body(engine, base, gen, [self._entry(k, val, now) for k, val in add.items()],
                                           [ruleset.removal(*k) for k in remove], mode=mode, issued_at=issued)
                self.mqtt.publish(topics.engine(engine, "ruleset/delta"),
                                  ruleset.encode_signed("ruleset-delta", self.manager_id, delta, self.key, ts=issued),
                                  qos=1)
                self.counters.inc("ruleset_deltas_published")
            self.mqtt.publish(topics.engine(engine, "ruleset"),
                              ruleset.encode_signed("ruleset", self.manager_id, snap, self.key, ts=issued),
                              qos=1, retain=True)
            self.counters.inc("ruleset_snapshots_published")
            self._published[engine] = want
            self._published_mode[engine] = mode
            v.behind_since = None
            log.info("rule set for %s: generation %d, %d entries (+%d -%d)", engine, gen, len(entries),
                     len(add), len(remove))
            return True

    def sync_all(self) -> int:
        n = 0
        now = self.clock()
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
            try:
                n += self.sync(engine, force_snapshot=force)
            except Exception:
                self.counters.inc("ruleset_publish_errors")
                log.exception("publishing the rule set of %s failed", engine)
        return n

    def forget_retained(self, engine: str, snapshot_generation: int) -> None:
        """A retained snapshot found on the broker at start: generations continue above it."""
        v = self.fleet.view(engine)
        if snapshot_generation > v.published_generation:
            v.published_generation = snapshot_generation
            self.store.set_meta(f"generation:{engine}", str(snapshot_generation))


def snapshot_generation(raw: bytes) -> int | None:
    try:
        msg = payload.decode(raw, "ruleset")
    except payload.PayloadError:
        return None
    gen = msg.get("generation")
    return gen if isinstance(gen, int) else None
