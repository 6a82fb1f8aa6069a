"""The policy component: baselines, detections, the decision store and one signed rule set per engine.

Built first among the manager's components, it becomes ``ctx.decisions``: every other component
(collector correlations, endpoint quarantine, the verdict service) proposes blocks through
``propose(DecisionRequest)``.  It reads flow batches, statuses and engine events from the ingest
component in the same process (one MQTT subscription per topic per process), or subscribes itself
when the process runs no ingest.  With ``partition_count`` > 1, several policy processes split the
engines between them by a hash of the engine id.

Several managers on one PostgreSQL database (``storage``): every one ingests, detects and takes
operator commands, writing to the shared store; each re-reads what the others changed every
``storage.poll_interval``; only the holder of the publishing lease (one per partition) publishes
rule sets, and when it dies the next manager to ask takes the lease and continues the generations.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
import zlib
from typing import Any

from ... import ruleset, topics
from ...contracts.engine import EngineStatus, EventBatch, FlowBatch, RulesetState
from ...contracts.ids import valid_id
from ...contracts.vocab import NOT_DECIDED, SEVERITY_RANK
from ...control import ControlError
from ...daemon import StartupError
from ...influx import line
from ..api import DecisionRequest
from .baselines import BaselineStore
from .decisions import OPERATOR, Decision, DecisionStore, Rejected, parse_targets, quarantine_networks
from .detections import Detector
from . import pcaplearn
from .fleet import Fleet, Publisher, snapshot_generation
from .config import PolicyConfig
from ..seqtrack import SeqTracker, sending_engine
from ..storage import open_database, open_lease

log = logging.getLogger(__name__)


def _invalid(exc: Exception) -> ControlError:
    return ControlError("invalid", str(exc).strip("'\""))


class PolicyComponent:
    name = "policy"

    def __init__(self, cfg: PolicyConfig, ctx):
        self.cfg = cfg
        self.ctx = ctx
        self.counters = ctx.counters
        self._lock = threading.RLock()
        storage = getattr(ctx, "storage", None)
        self.storage = storage
        self.store = DecisionStore(open_database(storage, ctx.state_dir / "decisions.sqlite"), ctx.counters,
                                   cfg.ladder, cfg.offence_memory, cfg.unblock_suppress, cfg.allowlist,
                                   cfg.max_active_decisions)
        self.fleet = Fleet(self.store, ctx.counters)
        self.baselines = BaselineStore(open_database(storage, ctx.state_dir / "baselines" / "baselines.sqlite"),
                                       import_dir=ctx.state_dir / "baselines")
        self.detectors: dict[str, Detector] = {}
        if cfg.signing_key_file is not None:
            # the fleet's key, shared by its managers (engines hold its public half)
            try:
                self.key = ruleset.load_private_key(cfg.signing_key_file)
            except ValueError as exc:
                raise StartupError(f"policy.signing_key_file: {exc}") from None
            ruleset.save_public_key(self.key.public_key(), ctx.state_dir / ruleset.PUBLIC_KEY_FILE)
        else:
            self.key, _pub = ruleset.generate_keypair(ctx.state_dir)
        self.lease = open_lease(storage, f"publisher-{cfg.partition_index}-of-{cfg.partition_count}",
                                ctx.state_dir)
        self.leading = False
        self._lease_lock = threading.Lock()
        self._last_refresh = time.monotonic()
        if cfg.public_key_file is not None:
            cfg.public_key_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ctx.state_dir / ruleset.PUBLIC_KEY_FILE, cfg.public_key_file)
        log.info("rule sets signed with key %s (public key %s)", ruleset.key_id(self.key),
                 ctx.state_dir / ruleset.PUBLIC_KEY_FILE)
        self.publisher = Publisher(ctx.manager_id, self.fleet, self.store, self.key, ctx.mqtt, ctx.counters,
                                   resync_after=cfg.resync_after, ruleset_format=cfg.ruleset_format)
        self._published_version = -1
        self._last_save = time.monotonic()
        self._last_sync = 0.0
        self._recent: dict[tuple, tuple[float, str]] = {}
        self._last_end: dict[str, int] = {}
        self._seq = SeqTracker(ctx.counters, "policy_batches_duplicate")
        ctx.decisions = self
        # Our own subscriptions, never shared: a partition needs every batch of its engines, whatever
        # share of them the ingest component of this process writes.
        m = ctx.mqtt
        m.subscribe_kind(topics.engine("+", "flows"), FlowBatch, self._on_flows_msg, qos=1)
        m.subscribe_kind(topics.engine("+", "status"), EngineStatus, self._on_status_msg, qos=1)
        m.subscribe_kind(topics.engine("+", "events"), EventBatch, self._on_events_msg, qos=1)
        m.subscribe_kind(topics.engine("+", "ruleset/state"), RulesetState, self._on_ruleset_state, qos=1)
        m.subscribe(topics.engine("+", "ruleset"), self._on_retained_snapshot, qos=1)
        c = ctx.control
        c.register("engines.list", self.list_engines)
        c.register("engines.mode", self.set_mode)
        c.register("engines.report", self.learning_report)
        c.register("engines.baseline", self.baseline)
        c.register("engines.learn_pcap", self.learn_pcap)
        c.register("decisions.list", self.list_decisions)
        c.register("decisions.add", self.add_decision)
        c.register("decisions.delete", self.delete_decision)
        c.register("decisions.extend", self.extend_decision)
        c.register("allowlist.list", self.store.allow_list)
        c.register("allowlist.add", self.allow_add)
        c.register("allowlist.delete", self.allow_delete)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        pass

    def _on_flows_msg(self, msg, batch: FlowBatch) -> None:
        engine = sending_engine(msg.topic, batch.engine, self.counters)
        if engine is None or self._seq.check(engine, batch.seq) == "duplicate":
            return
        self.on_flows(engine, batch)

    def _on_status_msg(self, msg, st: EngineStatus) -> None:
        engine = sending_engine(msg.topic, st.engine, self.counters)
        if engine is not None:
            self.on_status(engine, st)

    def _on_events_msg(self, msg, batch: EventBatch) -> None:
        engine = sending_engine(msg.topic, batch.engine, self.counters)
        if engine is not None:
            self.on_events(engine, batch)

    def tick(self) -> None:
        now = time.monotonic()
        self._check_lease()               # first: a manager that lost the database stops publishing
        try:
            if self.store.shared and now - self._last_refresh >= self.storage.poll_interval:
                self._last_refresh = now
                self.store.refresh()          # what the other managers decided
                if self.fleet.refresh():      # an operator's mode switch made through another manager
                    self._published_version = -1
            self.store.expire()
        except Exception as exc:  # database unreachable: count, keep ticking (the kernel expires rules)
            self.counters.inc("policy_storage_errors")
            log.error("policy storage failed: %s", exc)
            return
        if self.leading and (self.store.version != self._published_version or now - self._last_sync >= 5.0):
            self._published_version = self.store.version
            self._last_sync = now
            self.publisher.sync_all()
        if now - self._last_save >= self.cfg.baseline_save_interval:
            self._last_save = now
            with self._lock:
                self.baselines.save()

    def _check_lease(self) -> None:
        with self._lease_lock:   # tick, control and MQTT threads: one transition, counted once
            self._check_lease_locked()

    def _check_lease_locked(self) -> None:
        leading = self.lease.check()
        if leading and not self.leading:
            self.counters.inc("publisher_lease_taken")
            log.info("publishing lease %s taken: this manager publishes the rule sets now", self.lease.name)
            self.publisher.take_over()
            self._published_version = -1
        elif self.leading and not leading:
            self.counters.inc("publisher_lease_lost")
            log.warning("publishing lease %s lost: another manager publishes the rule sets", self.lease.name)
        self.leading = leading

    def close(self) -> None:
        with self._lock:
            self.baselines.save()
        self.lease.release()
        self.store.close()
        self.baselines.close()

    def status(self) -> dict[str, Any]:
        return {"active_decisions": len(self.store.active), "engines": len(self.fleet.engines),
                "key_id": ruleset.key_id(self.key), "publishing": self.leading,
                "storage": self.storage.backend if self.storage else "sqlite"}

    def mine(self, engine: str) -> bool:
        n = self.cfg.partition_count
        return n == 1 or zlib.crc32(engine.encode()) % n == self.cfg.partition_index

    # -- inputs ---------------------------------------------------------------------------
    def on_status(self, engine: str, st: EngineStatus) -> None:
        if self.mine(engine):
            self.fleet.on_status(engine, st)
            # a (re)started engine: make sure it gets the current rule set promptly
            self._published_version = -1

    def _on_ruleset_state(self, msg, state: RulesetState) -> None:
        engine = sending_engine(msg.topic, state.engine, self.counters)
        if engine is not None and self.mine(engine):
            self.fleet.on_ruleset_state(engine, state)

    def _on_retained_snapshot(self, msg) -> None:
        dev = topics.device_of(msg.topic)
        if not msg.payload or dev is None or not self.mine(dev[1]) or not msg.retain:
            return
        gen = snapshot_generation(msg.payload)
        if gen is not None:
            self.publisher.forget_retained(dev[1], gen)

    def on_flows(self, engine: str, batch: FlowBatch) -> None:
        if not self.mine(engine):
            self.counters.inc("policy_batches_other_partition")
            return
        flows = batch.flows
        bounds = batch.interval_bounds()
        if bounds:
            start, end = bounds
            seconds = max(0.001, (end - start) / 1000.0)
        else:
            start = end = 0
            seconds = 1.0
        last_end = self._last_end.get(engine)
        # the first batch after a gap (engine restart, or our own): packet rates are not trusted
        rates = last_end is not None and start - last_end <= max(5000, 3 * (end - start))
        # new connections are those that started in this interval (with a poll's slack); a
        # restarted engine's first batch also carries flows that began long before it
        since_ms = start - max(2000, end - start) if start else None
        self._last_end[engine] = max(end, last_end or 0)
        view = self.fleet.view(engine)
        if batch.mode is not None:
            view.mode = batch.mode
        learning = view.effective_mode == "learning"
        with self._lock:
            det = self.detectors.get(engine)
            if det is None:
                det = self.detectors[engine] = Detector(engine, self.cfg.detection.thresholds())
            base = self.baselines.get(engine)
            learned = (not learning and base.learned_seconds >= self.cfg.detection.new_service_min_learned)
            findings, summary = det.evaluate(flows, seconds, base, learned, rates=rates, since_ms=since_ms)
            base.observe(summary, learning, self.cfg.baseline_alpha, self.cfg.baseline_alpha_suspicious,
                         suspicious=bool(findings))
        self.counters.inc("policy_batches")
        if not self.cfg.detection.enabled:
            return
        for fnd in findings:
            self._propose_finding(engine, fnd, learning)

    def _propose_finding(self, engine: str, fnd, learning: bool) -> None:
        # The same finding repeats every interval of the window while the decision it made is still
        # in force: skip those cheaply instead of merging each into the store.
        key = (engine, fnd.kind, fnd.value)
        now = time.monotonic()
        prev = self._recent.get(key)
        if prev is not None and now - prev[0] < self.cfg.detection.window and prev[1] in self.store.active \
                and (engine in self.store.active[prev[1]].would_block_on) == learning:
            return
        if len(self._recent) > 100_000:
            self._recent = {k: v for k, v in self._recent.items() if now - v[0] < self.cfg.detection.window}
        targets = [] if self.cfg.detection.target == "global" else [engine]
        self.counters.inc(f"detections_{fnd.kind.replace('-', '_')}")
        res = self.propose(DecisionRequest(scope=fnd.scope, value=fnd.value, origin=f"flow-anomaly:{fnd.kind}",
                                           reason=fnd.reason, engines=targets,
                                           evidence={**fnd.evidence, "engine": engine}))
        if res.get("decision"):
            self._recent[key] = (now, res["decision"]["id"])

    def on_events(self, engine: str, batch: EventBatch) -> None:
        """Engine protocol events: each with a source address and a severity at or above the
        configured one (or ``action: block``: the engine blocked it itself) becomes a decision on
        that engine."""
        if batch.invalid:
            self.counters.inc("engine_events_malformed", batch.invalid)
        if not self.mine(engine) or not self.cfg.detection.events:
            return
        floor = SEVERITY_RANK[self.cfg.detection.event_min_severity]
        now_ms, max_age_ms = time.time() * 1000, self.cfg.detection.event_max_age * 1000
        for ev in batch.events:
            if ev.type == "spoofing" and ev.mac and ev.in_port and ev.action in ("block", "would-block"):
                self._propose_spoofing(engine, ev, floor, now_ms, max_age_ms)
                continue
            # "none": the engine's own never-block list; "held": evidence the engine knows incomplete
            if ev.src is None or ev.action in NOT_DECIDED:
                if ev.src is None and SEVERITY_RANK[ev.severity] >= floor:
                    self.counters.inc("engine_events_without_address")   # e.g. ARP rebind: a MAC only
                continue
            if SEVERITY_RANK[ev.severity] < floor and ev.action != "block":
                continue
            if ev.ts is not None and now_ms - ev.ts > max_age_ms:
                # spooled through a broker outage: the engine's own short block has long run
                # out; a decision now would punish whoever holds the address today
                self.counters.inc("engine_events_stale")
                continue
            kind = ev.type[:60]
            reason = (ev.detail or kind)[:400]
            body = ev.body()
            self.propose(DecisionRequest(scope="ip", value=ev.src, origin=f"engine-local:{kind}",
                                         reason=f"engine {engine}: {reason}", engines=[engine],
                                         evidence={"engine": engine, "event": {k: body[k] for k in list(body)[:20]}}))

    def _propose_spoofing(self, engine: str, ev, floor: int, now_ms: float, max_age_ms: float) -> None:
        """The engine attributed forged-source traffic to a MAC/port: a ``mac`` decision on that
        engine (never one on the forged address, whose owner did nothing)."""
        if ev.ts is not None and now_ms - ev.ts > max_age_ms:
            self.counters.inc("engine_events_stale")
            return
        if SEVERITY_RANK[ev.severity] < floor and ev.action != "block":
            return
        body = ev.body()
        self.counters.inc("engine_events_spoofing")
        self.propose(DecisionRequest(scope="mac", value=f"{ev.mac}|{ev.in_port}", origin="engine-local:spoofing",
                                     reason=f"engine {engine}: {(ev.detail or 'spoofing')[:400]}", engines=[engine],
                                     evidence={"engine": engine, "forged_src": ev.forged_src,
                                               "event": {k: body[k] for k in list(body)[:20]}}))

    # -- the decision sink ----------------------------------------------------------------
    def _learning_targets(self, targets: list[str]) -> list[str]:
        learning = self.fleet.learning_engines()
        if not targets:
            return sorted(learning)
        out = []
        for e in learning:
            v = self.fleet.view(e)
            if any(t == e or (t.startswith("tag:") and t[4:] in v.tags) for t in targets):
                out.append(e)
        return sorted(out)

    def propose(self, req: DecisionRequest) -> dict[str, Any]:
        """Record a proposal; returns {"status": created|merged|rejected, ...}. Never raises."""
        try:
            targets = parse_targets(req.engines)
            reason, evidence = req.reason, req.evidence
            if isinstance(evidence, dict) and evidence.get("quarantine"):
                reason, evidence = self._quarantine(req)
            d, created = self.store.propose_created(req.scope, req.value, req.origin, reason, req.duration, targets,
                                   evidence, learning=self._learning_targets(targets)
                                   if req.origin != OPERATOR else ())
        except Rejected as exc:
            log.info("proposal %s %s from %s not taken: %s", req.scope, req.value, req.origin, exc)
            return {"status": "rejected", "reason": exc.reason, "error": str(exc)}
        except ValueError as exc:
            self.counters.inc("decisions_rejected_invalid")
            log.warning("invalid proposal from %s (%s %r): %s", req.origin, req.scope, req.value, exc)
            return {"status": "rejected", "reason": "invalid", "error": str(exc)}
        except Exception as exc:  # the database is unreachable or failed: the proposer must not crash
            self.counters.inc("decisions_storage_errors")
            log.error("proposal %s %s from %s not stored: storage failed: %s", req.scope, req.value,
                      req.origin, exc)
            return {"status": "rejected", "reason": "storage", "error": f"storage failed: {exc}"}
        if created:
            self._write_point(d, "created")
            if time.monotonic() - self._last_sync >= 0.2:
                self._sync_now()  # a new block goes out now, not at the next tick
        return {"status": "created" if created else "merged", "decision": d.as_dict()}

    def _quarantine(self, req: DecisionRequest) -> tuple[str, dict]:
        """A quarantine (the verdict service's proposal when an endpoint ran or was denied a
        malicious file): an ip drop whose ``allow_networks`` (the management network) travel with
        it as allow entries in the rule sets that enforce it.  The engines accept anything to or
        from an allow entry before any drop, so the address reaches only those networks.

        Like every automatic decision it is would-block on engines that are learning (DESIGN.md:
        only operator rules and allowlists apply in both modes)."""
        if req.scope != "ip":
            raise ValueError(f"a quarantine is an ip decision, not {req.scope!r}")
        raw = req.evidence.get("allow_networks")
        raw = raw if isinstance(raw, list) else []
        nets = quarantine_networks(req.evidence)
        if len(nets) < len(set(map(str, raw))):
            bad = len(set(map(str, raw))) - len(nets)
            self.counters.inc("quarantine_allow_networks_invalid", bad)
            log.warning("quarantine of %s from %s: %d allow_networks entries are not networks; left out",
                        req.value, req.origin, bad)
        evidence = {**req.evidence, "allow_networks": nets}
        self.counters.inc("quarantine_proposals")
        prefix = f"quarantine (reachable only: {', '.join(nets) or 'nothing'}): "
        reason = req.reason if req.reason.startswith("quarantine") else prefix + req.reason
        return reason, evidence

    def _write_point(self, d: Decision, event: str) -> None:
        try:
            self.ctx.writer.write([line("decisions", {"origin": d.origin.split(":")[0], "event": event},
                                        {"id": d.id, "scope": d.scope, "value": d.value, "reason": d.reason,
                                         "origin_detail": d.origin, "offences": d.offences,
                                         "duration": (d.expires - time.time()) if d.expires else -1.0,
                                         "engines": ",".join(d.engines) or "*",
                                         "would_block": ",".join(d.would_block_on)}, time.time_ns())])
        except Exception:  # statistics must never stop a decision
            log.exception("writing the decision point failed")

    # -- control methods ------------------------------------------------------------------
    def _check_engines(self, engines) -> list[str]:
        try:
            targets = parse_targets(engines if isinstance(engines, list) else
                                    ([engines] if engines else []))
        except ValueError as exc:
            raise _invalid(exc) from None
        for t in targets:
            if not t.startswith("tag:") and t not in self.fleet.engines:
                raise ControlError("not-found", f"unknown engine {t!r} (known: "
                                                f"{', '.join(sorted(self.fleet.engines)) or 'none'})")
        return targets

    def list_engines(self) -> list[dict]:
        if self.store.shared and not self.leading:
            # the publisher is another manager: what it published is in the database, not here
            for engine, raw in self.store.meta_with_prefix("generation:").items():
                v = self.fleet.engines.get(engine)
                if v is not None and raw.isdigit():
                    v.published_generation = max(v.published_generation, int(raw))
        out = []
        for e in self.fleet.list():
            b = self.baselines.baselines.get(e["engine"])
            e["learned_seconds"] = round(b.learned_seconds, 1) if b else 0.0
            e["would_block"] = len([d for d in self.store.active.values() if e["engine"] in d.would_block_on])
            e["enforced"] = len(self.store.enforced_for(e["engine"], e["tags"]))
            out.append(e)
        return out

    def set_mode(self, engine: str, mode: str | None = None) -> dict:
        if engine not in self.fleet.engines:
            raise ControlError("not-found", f"unknown engine {engine!r}")
        if mode in ("auto", "", None):
            mode = None
        try:
            v = self.fleet.set_mode(engine, mode)
        except ValueError as exc:
            raise _invalid(exc) from None
        if mode == "enforcing":
            # would-block decisions stay reports: enforcement starts with what is detected from now on
            pass
        self._published_version = -1
        log.info("operator set the mode of %s to %s", engine, mode or "the engine's own")
        return v.as_dict()

    def learning_report(self, engine: str | None = None, limit: int = 1000) -> list[dict]:
        if engine is not None:
            self._check_engines([engine])
        rows = self.store.list(state="all", limit=limit, would_block=True)
        return [d.as_dict() for d in rows if engine is None or engine in d.would_block_on]

    def baseline(self, engine: str) -> dict:
        if engine not in self.baselines.baselines:
            raise ControlError("not-found", f"no baseline for engine {engine!r}")
        with self._lock:
            return self.baselines.baselines[engine].report()

    def learn_pcap(self, engine: str, file: str, interval: float = 10.0, enforce: bool = False) -> dict:
        """Learn ``engine``'s baseline from a capture file on this host (pcaplearn.py), in capture
        time, through the same steps as live flow batches; ``enforce``: then switch the engine to
        enforcing (an operator's mode override), so it enforces on its first day."""
        if not isinstance(engine, str) or not valid_id(engine):
            raise ControlError("invalid", f"engine: not an engine id: {engine!r}")
        if not isinstance(file, str) or not file.startswith("/"):
            raise ControlError("invalid", f"file: an absolute path on the manager's host, got {file!r}")
        path = file
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or not 0.2 <= interval <= 3600:
            raise ControlError("invalid", f"interval: between 0.2 and 3600 seconds (the engine's flows.interval), "
                                          f"got {interval!r}")
        if enforce and engine not in self.fleet.engines:
            raise ControlError("not-found", f"unknown engine {engine!r}: it must have reported once to be switched "
                                            "to enforcing (learn without --enforce first)")
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise ControlError("not-found", f"cannot read the capture {path}: {exc.strerror or exc}") from None
        with f:
            with self._lock:
                base = self.baselines.get(engine)
            rep = pcaplearn.learn(f, base, self.cfg.detection.thresholds(), interval=float(interval),
                                  alpha=self.cfg.baseline_alpha, alpha_suspicious=self.cfg.baseline_alpha_suspicious,
                                  locked=lambda: self._lock)
        with self._lock:
            self.baselines.save()
        if rep["errors"]:
            self.counters.inc("pcap_learn_errors", sum(rep["errors"].values()))   # by reason: in the reply
        self.counters.inc("pcap_learn_runs")
        log.info("baseline of %s learned from %s: %d packets, %d intervals, %.0f s of traffic added, errors %s",
                 engine, path, rep["packets"], rep["intervals"], rep["learned_seconds_added"], rep["errors"] or "none")
        if enforce:
            if rep["learned_seconds"] < self.cfg.detection.new_service_min_learned:
                raise ControlError("invalid", f"the baseline holds {rep['learned_seconds']:.0f} s of traffic, less than "
                                              f"{self.cfg.detection.new_service_min_learned:.0f} s: not switched to "
                                              "enforcing (learned what there was)")
            rep["mode"] = self.set_mode(engine, "enforcing")["mode"]
        return rep

    def list_decisions(self, state: str = "active", engine: str | None = None, origin: str | None = None,
                       value: str | None = None, limit: int = 1000) -> list[dict]:
        if state not in ("active", "expired", "removed", "superseded", "all"):
            raise ControlError("invalid", f"state {state!r}: one of active, expired, removed, superseded, all")
        if engine is not None:
            self._check_engines([engine])
        return [d.as_dict() for d in self.store.list(state=state, engine=engine, origin=origin,
                                                     value=value, limit=int(limit))]

    def add_decision(self, scope: str, value: str, duration: float | None = None, reason: str = "",
                     engines: list[str] | None = None) -> dict:
        targets = self._check_engines(engines or [])
        try:
            value = ruleset.normalise_value(scope, value)
        except ValueError as exc:
            raise _invalid(exc) from None
        res = self.propose(DecisionRequest(scope=scope, value=value, origin=OPERATOR,
                                           reason=reason or "added by an operator", duration=duration,
                                           engines=targets))
        if res["status"] == "rejected":
            code = {"invalid": "invalid", "storage": "unavailable"}.get(res["reason"], "conflict")
            raise ControlError(code, res["error"])
        self._sync_now()
        return res["decision"]

    def delete_decision(self, key: str, suppress: float | None = None) -> list[dict]:
        try:
            found = self.store.unblock(key, suppress)
        except KeyError:
            raise ControlError("not-found", f"no active decision with id or value {key!r}") from None
        for d in found:
            self._write_point(d, "removed")
        self._sync_now()
        return [d.as_dict() for d in found]

    def extend_decision(self, key: str, duration: float) -> list[dict]:
        try:
            found = self.store.extend(key, float(duration))
        except KeyError:
            raise ControlError("not-found", f"no active decision with id or value {key!r}") from None
        except (TypeError, ValueError) as exc:
            raise _invalid(exc) from None
        self._sync_now()
        return [d.as_dict() for d in found]

    def allow_add(self, value: str, note: str = "") -> dict:
        try:
            r = self.store.allow_add(value, note)
        except ValueError as exc:
            raise _invalid(exc) from None
        self._sync_now()
        return r

    def allow_delete(self, key: str) -> dict:
        try:
            r = self.store.allow_delete(key)
        except KeyError:
            raise ControlError("not-found", f"no operator allowlist entry {key!r}") from None
        self._sync_now()
        return r

    def _sync_now(self) -> None:
        """Operator changes go out at once (not at the next tick): an unblock must reach the
        kernel within seconds."""
        if not self.leading:
            self._check_lease()
        if not self.leading:
            return  # the publisher (another manager) sends it after its next refresh
        self._published_version = self.store.version
        self._last_sync = time.monotonic()
        self.publisher.sync_all()
