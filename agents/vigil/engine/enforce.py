"""The enforcement part of vigil-engine: signed rule sets from the manager into ``bridge vigil``.

- Subscribes to ``vigil/v1/engine/{id}/ruleset`` (retained snapshot) and ``.../ruleset/delta``;
  messages are handed to one worker thread (the MQTT loop never waits for the kernel) and applied
  in arrival order.
- A rule set is applied only if its Ed25519 signature checks against a trusted manager key (one,
  or several while the manager's signing key rotates), it is for this engine, well formed, and
  newer than the one held (a delta must build on exactly the held generation).  Anything else is
  rejected with a logged, counted reason (``ruleset_rejected_<reason>``) and the kernel keeps the
  last good rule set.
- Rule sets come as JSON or binary (``vrs1``, rulewire.py; the status lists both under
  ``formats`` so the manager may send binary).  A binary snapshot's address blocks stay packed
  and are written as only what changed (enforce_packed.py).
- Every apply is one nft transaction (engine/nftables.py); the result goes out retained on
  ``.../ruleset/state``; the rule set is kept in ``<state_dir>/ruleset.json`` with absolute
  expiries and restored at start in one transaction, remaining lifetimes recomputed.
- ``block_local(address, ttl, reason)`` puts the engine's own fast reactions into the local sets,
  which rule sets never touch.
- The table stays when the engine stops or dies: the kernel goes on enforcing and expiring.
"""
from __future__ import annotations

import gc
import hashlib
import ipaddress
import json
import logging
import queue
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import payload, rulewire, ruleset, topics
from ..contracts.engine import RulesetState
from ..files import atomic_write
from ..payload import PayloadError
from .api import EngineContext
from .config import EnforcementConfig
from .datapath import SEEN_SETS
from . import enforce_packed as pk
from . import nftables as nft
from .enforce_plan import Held, PlanError, Policy

log = logging.getLogger(__name__)

STATE_FILE = "ruleset.json"
LOCAL_FILE = "local-blocks.json"
KEY_RETRY = 10.0
PURGE_EVERY = 5.0
SAVE_EVERY = 5.0
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ROW = ("id", "action", "scope", "value", "ttl", "origin", "reason", "expires")


class Enforcement:
    name = "enforcement"

    def __init__(self, cfg: EnforcementConfig, ctx: EngineContext):
        self.cfg = cfg
        self.ctx = ctx
        self.engine_id = ctx.cfg.engine_id
        guards = [*cfg.management_networks, *cfg.gateways]
        self.writer = nft.NftWriter(nft.make_backend(cfg.backend), guards)
        self.policy = Policy(guards, cfg.max_elements)
        self.lock = threading.RLock()
        self.key = None
        self.key_error: str | None = None
        self._key_tried = 0.0
        self._table_tried = 0.0
        self.generation: int | None = None
        self.issued_at: int | None = None
        self.applied_at: int | None = None
        self.mode: str | None = None
        self.key_id: str | None = None
        # sha256 of the raw bytes of the last snapshot applied, and its generation: the retained
        # snapshot that arrives after a restart is recognised without decoding it again
        self.snapshot_digest: tuple[str, int] | None = None
        self.error: str | None = None
        self.rejected: dict[str, int] = {}
        self.ready = False
        self.local: dict[str, float] = {}          # address -> expiry (epoch s)
        self.local_reasons: dict[str, str] = {}
        self.local_macs: dict[tuple[str, str], float] = {}   # (mac, port) -> expiry (epoch s)
        self.last_apply_ms: float | None = None
        self._dirty = False
        self._closing = False
        self._save_wanted = threading.Event()
        self._save_lock = threading.Lock()
        self._saver: threading.Thread | None = None
        self._last_purge = 0.0
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self.state_path = Path(ctx.state_dir) / STATE_FILE
        self.local_path = Path(ctx.state_dir) / LOCAL_FILE
        self.topic_snapshot = topics.engine(self.engine_id, "ruleset")
        self.topic_delta = topics.engine(self.engine_id, "ruleset/delta")
        self.topic_state = topics.engine(self.engine_id, "ruleset/state")

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._load_key()
        if getattr(self.ctx, "datapath_script", None) is not None:
            self.writer.use_flowset(self.ctx.datapath_script, list(SEEN_SETS))
        self._ensure_table()
        if self.ready:
            self._restore()
        self._worker = threading.Thread(target=self._work, name="enforcement", daemon=True)
        self._worker.start()
        self._saver = threading.Thread(target=self._save_loop, name="enforcement-save", daemon=True)
        self._saver.start()
        self.ctx.mqtt.subscribe(self.topic_snapshot, lambda m: self._queue.put(("ruleset", m.payload)))
        self.ctx.mqtt.subscribe(self.topic_delta, lambda m: self._queue.put(("ruleset-delta", m.payload)))
        self.publish_state()

    def tick(self) -> None:
        now = time.time()
        if self.key is None and now - self._key_tried >= KEY_RETRY:
            self._load_key()
        if not self.ready and now - self._table_tried >= KEY_RETRY:
            self._ensure_table()
            if self.ready:
                self._restore()
        if now - self._last_purge >= PURGE_EVERY:
            self._last_purge = now
            with self.lock:
                gone = self.policy.purge(now)
                for a in [a for a, e in self.local.items() if e <= now]:
                    del self.local[a]
                    self.local_reasons.pop(a, None)
            if gone:
                self.ctx.counters.inc("ruleset_entries_expired", gone)

    def _save_loop(self) -> None:
        while not self._closing:
            self._save_wanted.wait()
            self._save_wanted.clear()
            if self._closing:
                return
            took = 0.0
            if self._dirty:
                t0 = time.process_time()
                self._persist()
                took = time.process_time() - t0
            # at most one save per SAVE_EVERY, and saving at most SAVE_SHARE of a core: a stream of
            # deltas must not keep re-saving a large set (1M rows: seconds of CPU) on cores the
            # bridge needs.  The kernel holds the state meanwhile; a crash restores an older
            # generation, which the manager's resync corrects.
            deadline = time.monotonic() + save_gap(took)
            while not self._closing and time.monotonic() < deadline:
                time.sleep(0.1)

    def close(self) -> None:
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=5)
        self._closing = True
        self._save_wanted.set()
        if self._saver is not None:
            self._saver.join(timeout=5)
        if self._dirty:
            self._persist()
        # The table is deliberately left in place: fail-open means the kernel keeps enforcing.

    # -- setup ------------------------------------------------------------------------------
    def _load_key(self) -> None:
        """The manager keys this engine trusts, key_id -> key (``manager_public_key`` and any
        ``manager_public_keys``): rule sets signed by any of them are applied.  One unreadable
        file rejects every rule set until all can be read (a half-loaded trust list would hide a
        broken rotation)."""
        self._key_tried = time.time()
        paths = [p for p in (self.cfg.manager_public_key, *self.cfg.manager_public_keys) if p is not None]
        if not paths:
            self.key_error = "no manager_public_key configured: every rule set is rejected"
            if self.key is None and not getattr(self, "_warned_key", False):
                log.warning("enforcement: %s", self.key_error)
                self._warned_key = True
            return
        try:
            self.key = ruleset.trusted_keys(ruleset.load_public_key(p) for p in paths)
            self.key_error = None
            log.info("enforcement: manager keys %s trusted (%s)", ", ".join(self.key),
                     ", ".join(map(str, paths)))
        except ValueError as exc:
            if self.key_error != str(exc):
                log.error("enforcement: %s (rule sets are rejected until it can be read)", exc)
            self.key_error = str(exc)

    def _ensure_table(self) -> None:
        self._table_tried = time.time()
        try:
            self.writer.ensure_table()
            self.ready = True
        except nft.NftError as exc:
            self.ready = False
            self.error = f"kernel: {exc}"
            self.ctx.counters.inc("enforcement_table_errors")
            log.error("enforcement: cannot create table bridge vigil: %s", exc)

    def _restore(self) -> None:
        now = time.time()
        state = _read_json(self.state_path)
        local = _read_json(self.local_path) or {}
        held: list[Held] = []
        if state is not None:
            try:
                if state.get("engine") != self.engine_id:
                    raise ValueError(f"saved for engine {state.get('engine')!r}")
                nfields = len(_ROW) - 1
                for d in state["entries"]:
                    if isinstance(d, list):       # a compact row: the entry's fields, then expires
                        if len(d) != len(_ROW):
                            raise ValueError(f"a saved row has {len(d)} fields, not {len(_ROW)}")
                        exp = d[nfields]
                        d = dict(zip(_ROW[:nfields], d))
                    else:
                        exp = d.get("expires")
                        d = {k: v for k, v in d.items() if k != "expires"}
                    if exp is not None and not isinstance(exp, (int, float)):
                        raise ValueError("expires must be a number or null")
                    held.append(Held(ruleset.parse_entry(d), exp))
            except (ValueError, KeyError, TypeError, PayloadError) as exc:
                self.ctx.counters.inc("ruleset_restore_errors")
                log.error("enforcement: ignoring unusable %s: %s", self.state_path, exc)
                state, held = None, []
        loc: dict[str, float] = {}
        for addr, exp in (local.items() if isinstance(local, dict) else []):
            try:
                a = str(ipaddress.ip_address(addr))
            except ValueError:
                continue
            if isinstance(exp, (int, float)) and exp - now >= 0.001 and not self.policy.guarded_address(a):
                loc[a] = float(exp)
        extra = {nft.LOCAL[4]: [], nft.LOCAL[6]: []}
        for a, exp in loc.items():
            extra[nft.LOCAL[ipaddress.ip_address(a).version]].append((a, max(1, int((exp - now) * 1000))))
        if state is None and not loc:
            return
        try:
            with self.lock:
                if state is not None:
                    plan = self.policy.plan_restore(held, now)
                    self.policy.apply(self.writer, plan, now, extra=extra)
                    self.policy.commit(plan)
                    self.generation = state.get("generation")
                    self.issued_at = state.get("issued_at")
                    self.applied_at = state.get("applied_at")
                    self.mode = state.get("mode")
                    self.key_id = state.get("key_id")
                    sd = state.get("snapshot_sha256")
                    if (isinstance(sd, list) and len(sd) == 2 and isinstance(sd[0], str)
                            and isinstance(sd[1], int) and not isinstance(sd[1], bool)):
                        self.snapshot_digest = (sd[0], sd[1])
                    dropped = plan.skipped.get("expired", 0)
                else:
                    self.writer.replace(extra)
                    dropped = 0
                self.local = loc
            _freeze_if_big(self.policy.entry_count())
            log.info("enforcement: restored generation %s (%d entries, %d expired while down, %d local blocks)",
                     self.generation, self.policy.entry_count(), dropped, len(loc))
            self.ctx.counters.inc("ruleset_restores")
        except (PlanError, nft.NftError) as exc:
            self.ctx.counters.inc("ruleset_restore_errors")
            self.error = f"restore: {exc}"
            log.error("enforcement: restoring the saved rule set failed: %s", exc)

    # -- rule sets --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, raw = item
            try:
                self.handle(kind, raw, persist=False)
            except Exception:
                self.ctx.counters.inc("enforcement_errors")
                log.exception("enforcement: handling a %s failed", kind)
            if self._queue.empty() and self.policy.cols:
                with self.lock:
                    self.policy.warm()      # index a binary snapshot's sets before a delta needs it
            # saving is another thread's job: a delta never waits behind the save of a big set
            if self._dirty and self._queue.empty():
                self._save_wanted.set()

    def handle(self, kind: str, raw: bytes, persist: bool = True) -> bool:
        """Check and apply one snapshot (``ruleset``) or delta (``ruleset-delta``); True if applied."""
        t0 = time.monotonic()
        try:
            if not raw:
                raise PayloadError("empty", "empty payload (retained rule set cleared)")
            if self.key is None:
                raise PayloadError("no-key", self.key_error or "no manager key")
            if not self.ready:
                self._ensure_table()
                if not self.ready:
                    raise PayloadError("kernel", self.error or "table not available")
            if kind == "ruleset":
                digest = hashlib.sha256(raw).hexdigest()
                known = self.snapshot_digest
                if (known is not None and known[0] == digest and self.generation is not None
                        and self.key_id in self.key):
                    # the very bytes applied (and verified) before: its generation is known
                    if known[1] == self.generation:
                        self.ctx.counters.inc("ruleset_same_generation")
                        return False
                    if known[1] < self.generation:
                        raise PayloadError("old-generation",
                                           f"snapshot generation {known[1]} is older than held {self.generation}")
                if rulewire.is_binary(raw):
                    # binary (rulewire.py): verified over the exact bytes, kept packed; duplicate
                    # addresses are refused by the kernel batch (or the diff's index), whole
                    rs = rulewire.decode(raw, self.key, self.engine_id, kind="ruleset",
                                         max_entries=self.cfg.max_elements, check_ip_duplicates=False)
                    plan_of = self.policy.plan_packed
                else:
                    msg = ruleset.open_snapshot(raw, self.key, self.engine_id)
                    if self.generation is not None and msg["generation"] == self.generation:
                        # e.g. the retained snapshot after a restore: parsing 1M entries costs seconds
                        self.ctx.counters.inc("ruleset_same_generation")
                        return False
                    rs = ruleset.snapshot_entries(msg)
                    del msg

                    def plan_of(rs, now):
                        return self.policy.plan_snapshot(rs.entries, rs.issued_at, now)
                with self.lock:
                    if self.generation is not None and rs.generation == self.generation:
                        self.ctx.counters.inc("ruleset_same_generation")
                        return False
                    if self.generation is not None and rs.generation < self.generation:
                        raise PayloadError("old-generation",
                                           f"snapshot generation {rs.generation} is older than held {self.generation}")
                    now = time.time()
                    plan = plan_of(rs, now)
                    self.policy.apply(self.writer, plan, now)
                    self.policy.commit(plan)
                    self.snapshot_digest = (digest, rs.generation)
            else:
                rs = ruleset.decode_delta(raw, self.key, self.engine_id)
                with self.lock:
                    if self.generation is not None and rs.generation <= self.generation:
                        raise PayloadError("old-generation",
                                           f"delta generation {rs.generation} is not newer than held {self.generation}")
                    if rs.base_generation != self.generation:
                        raise PayloadError("base-mismatch",
                                           f"delta builds on generation {rs.base_generation}, held is {self.generation}")
                    now = time.time()
                    plan = self.policy.plan_delta(rs.add, rs.remove, rs.issued_at, now)
                    self.policy.apply(self.writer, plan, now)
                    self.policy.commit(plan)
        except PayloadError as exc:
            self._reject(kind, exc.reason, str(exc))
            return False
        except PlanError as exc:
            self._reject(kind, exc.reason, str(exc))
            return False
        except nft.NftError as exc:
            self._reject(kind, "kernel", f"kernel refused the transaction: {exc}")
            return False
        with self.lock:
            self.generation, self.issued_at = rs.generation, rs.issued_at
            self.applied_at = payload.now_ms()
            self.key_id = rs.key_id
            self.mode = rs.mode
            self.error = None
            self.last_apply_ms = round((time.monotonic() - t0) * 1000, 2)
            for reason, n in plan.skipped.items():
                self.ctx.counters.inc(f"ruleset_entries_{reason.replace('-', '_')}", n)
        if kind == "ruleset":
            _freeze_if_big(self.policy.entry_count())
        self.ctx.counters.inc("ruleset_applied" if kind == "ruleset" else "ruleset_deltas_applied")
        log.info("enforcement: applied %s generation %d in %.1f ms (%d entries; skipped %s)",
                 "snapshot" if kind == "ruleset" else "delta", rs.generation, self.last_apply_ms,
                 self.policy.entry_count(), plan.skipped or "none")
        if rs.mode is not None:
            self._mode_override(rs.mode)
        self._dirty = True
        self.publish_state()
        if persist:
            self._persist()
        return True

    def _reject(self, kind: str, reason: str, detail: str) -> None:
        with self.lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            self.error = f"{kind} rejected: {detail}"
        self.ctx.counters.inc(f"ruleset_rejected_{reason.replace('-', '_')}")
        log.warning("enforcement: %s rejected (%s); keeping generation %s", kind, detail, self.generation)
        self.publish_state()

    def _mode_override(self, mode: str) -> None:
        try:
            current = self.ctx.mode()
        except Exception:
            current = None
        if mode == current:
            return
        if self.ctx.set_mode is None:
            self.ctx.counters.inc("mode_override_unsupported")
            log.warning("enforcement: rule set asks for mode %s but this engine cannot switch modes", mode)
            return
        self.ctx.set_mode(mode)
        self.ctx.counters.inc("mode_overrides")
        log.info("enforcement: mode set to %s by the manager's rule set", mode)

    # -- local blocks -----------------------------------------------------------------------
    def block_local(self, address: str, ttl: float, reason: str) -> bool:
        """Block ``address`` (both directions) for ``ttl`` seconds in the engine-local sets.

        Returns False (counted) for an invalid or guarded address, a full local table, or a
        kernel error.  Blocking again re-asserts the timeout."""
        try:
            a = ipaddress.ip_address(address)
        except ValueError:
            self.ctx.counters.inc("local_block_invalid")
            return False
        if self.policy.guarded_address(str(a)):
            self.ctx.counters.inc("local_block_guarded")
            log.warning("enforcement: not blocking %s locally: it is a management network or gateway", a)
            return False
        ttl = min(max(1.0, float(ttl)), float(self.cfg.max_local_ttl))
        now = time.time()
        with self.lock:
            if str(a) not in self.local and len(self.local) >= self.cfg.max_local:
                for k in [k for k, e in self.local.items() if e <= now]:
                    del self.local[k]
                if len(self.local) >= self.cfg.max_local:
                    self.ctx.counters.inc("local_block_full")
                    return False
            try:
                self.writer.update({nft.LOCAL[a.version]: [(str(a), int(ttl * 1000))]}, {})
            except nft.NftError as exc:
                self.ctx.counters.inc("local_block_errors")
                log.error("enforcement: local block of %s failed: %s", a, exc)
                return False
            self.local[str(a)] = now + ttl
            self.local_reasons[str(a)] = reason
            snapshot = dict(self.local)
        self.ctx.counters.inc("local_blocks")
        log.info("enforcement: blocked %s locally for %.0fs (%s)", a, ttl, reason)
        _write_json(self.local_path, snapshot)
        return True

    def block_local_mac(self, mac: str, port: str, ttl: float, reason: str, owns=()) -> bool:
        """Block frames from ``mac`` on bridge port ``port`` (a sender of forged source addresses)
        for ``ttl`` seconds.  Refused (False, counted) for a malformed MAC or port, or a MAC that
        owns a guarded address (a gateway's MAC is never blocked: it carries everyone)."""
        mac = str(mac).lower()
        if not _MAC.match(mac) or port not in self.ctx.cfg.bridge.ports:
            self.ctx.counters.inc("local_block_invalid")
            return False
        if any(self.policy.guarded_address(a) for a in owns):
            self.ctx.counters.inc("local_block_guarded")
            log.warning("enforcement: not blocking %s: it owns a management address or gateway", mac)
            return False
        ttl = min(max(1.0, float(ttl)), float(self.cfg.max_local_ttl))
        now = time.time()
        with self.lock:
            self.local_macs = {k: e for k, e in self.local_macs.items() if e > now}
            if (mac, port) not in self.local_macs and len(self.local_macs) >= self.cfg.max_local:
                self.ctx.counters.inc("local_block_full")
                return False
            try:
                self.writer.block_mac(mac, port, int(ttl * 1000))
            except nft.NftError as exc:
                self.ctx.counters.inc("local_block_errors")
                log.error("enforcement: local block of %s on %s failed: %s", mac, port, exc)
                return False
            self.local_macs[(mac, port)] = now + ttl
        self.ctx.counters.inc("local_mac_blocks")
        log.info("enforcement: blocked %s on %s locally for %.0fs (%s)", mac, port, ttl, reason)
        return True

    # -- state ------------------------------------------------------------------------------
    def _persist(self) -> None:
        with self._save_lock:           # the saver thread and close() never write at once
            self._persist_locked()

    def _persist_locked(self) -> None:
        with self.lock:
            self._dirty = False
            held = list(self.policy.entries.values())     # Held objects are replaced, never mutated
            # packed sets: their index copied (C speed), rows made outside the lock
            cols = [replace(c, index=dict(c.index) if c.index is not None else None, extra=dict(c.extra))
                    for c in self.policy.cols.values()]
            doc = {"version": 1, "engine": self.engine_id, "generation": self.generation,
                   "issued_at": self.issued_at, "applied_at": self.applied_at, "mode": self.mode,
                   "key_id": self.key_id,
                   "snapshot_sha256": list(self.snapshot_digest) if self.snapshot_digest else None}
        # compact rows (id, action, scope, value, ttl, origin, reason, expires): 1M entries must be
        # saved well within a service manager's stop timeout
        doc["fields"] = list(_ROW)
        doc["entries"] = [[h.entry.id, h.entry.action, h.entry.scope, h.entry.value, h.entry.ttl,
                           h.entry.origin, h.entry.reason, h.expires] for h in held]
        doc["entries"] += _packed_rows(cols, time.time())
        try:
            _write_json(self.state_path, doc)
        except OSError as exc:
            self.ctx.counters.inc("ruleset_persist_errors")
            log.error("enforcement: cannot save %s: %s", self.state_path, exc)

    def state_body(self) -> dict[str, Any]:
        now = time.time()
        with self.lock:
            counts = self.policy.counts(now)
            local = {4: 0, 6: 0}
            for a, e in self.local.items():
                if e > now:
                    local[ipaddress.ip_address(a).version] += 1
            counts.update({nft.LOCAL[4]: local[4], nft.LOCAL[6]: local[6],
                           nft.LOCAL_MAC: sum(1 for e in self.local_macs.values() if e > now)})
            return {"engine": self.engine_id, "generation": self.generation, "applied_at": self.applied_at,
                    "issued_at": self.issued_at, "counts": counts, "error": self.error,
                    "rejected": dict(self.rejected), "key_id": self.key_id,
                    "backend": self.writer.backend.name}

    def publish_state(self) -> None:
        try:
            body = self.state_body()
            self.ctx.mqtt.publish(self.topic_state, RulesetState.from_body(body).encode(self.engine_id),
                                  qos=1, retain=True)
        except Exception:
            self.ctx.counters.inc("ruleset_state_errors")
            log.exception("enforcement: cannot publish ruleset/state")

    def status(self) -> dict[str, Any]:
        body = self.state_body()
        try:
            drops = self.writer.drop_counters() if self.ready else {}
        except nft.NftError as exc:
            drops = {"error": str(exc)}
        return {"generation": body["generation"], "applied_at": body["applied_at"], "counts": body["counts"],
                "error": body["error"], "rejected": body["rejected"], "backend": body["backend"],
                "last_apply_ms": self.last_apply_ms, "drops": drops, "table_ready": self.ready,
                "formats": ["json", rulewire.FORMAT],     # what the manager may send (rulewire.py)
                "key": self.key_error or (", ".join(self.key) if self.key else None)}


FREEZE_AT = 10_000
SAVE_SHARE = 0.05


def save_gap(cpu_seconds: float) -> float:
    """Seconds to wait after a save that cost ``cpu_seconds`` of CPU before the next one."""
    return max(SAVE_EVERY, cpu_seconds / SAVE_SHARE)


def _packed_rows(cols, now: float) -> list[list]:
    """Saved rows of packed sets: the manager's expiry (its epoch seconds) as the absolute expiry;
    ttl is then only informative (restore recomputes lifetimes from ``expires``)."""
    rows = []
    for c in cols:
        action = "allow" if c.set_name.startswith("allow") else "drop"
        for key, e, eid, origin, reason in c.rows_meta():
            if e and e <= now:
                continue
            rows.append([eid, action, "ip", pk.key_text(c.family, key), None if not e else max(0, int(e - now)),
                         origin, reason, float(e) if e else None])
    return rows


def _freeze_if_big(n: int) -> None:
    """Move everything alive into the collector's permanent generation after a large rule set is
    adopted: its ~5 objects per entry are long-lived, and each full collection would otherwise walk
    them all (a pause of the delta worker).  Frozen objects are still freed by reference counting."""
    if n >= FREEZE_AT:
        gc.freeze()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("enforcement: cannot read %s: %s", path, exc)
        return None


def _write_json(path: Path, doc: Any) -> None:
    atomic_write(path, json.dumps(doc, separators=(",", ":")))   # the C encoder (json.dump is pure Python)


def make(cfg: EnforcementConfig, ctx: EngineContext) -> Enforcement:
    return Enforcement(cfg, ctx)
