"""The verdict service component of vigil-manager.

MQTT (DESIGN.md topics):
- ``vigil/v1/endpoint/+/verdict/request`` (shared subscription; MQTT v5 request with response
  topic and correlation data): answered at once from the store and the hash lists; an unknown hash
  is answered ``unknown`` and queued for analysis once.
- ``vigil/v1/endpoint/{id}/sample/request`` ← the manager asks for a sample when a backend needs
  the file; ``vigil/v1/endpoint/{id}/sample`` → the upload (base64, size-capped, checked against
  the hash it claims).
- ``vigil/v1/verdicts``: every verdict change, so endpoint caches update without polling.
- ``vigil/v1/endpoint/+/events``: execution reports; a malicious execution (or blocked attempt)
  becomes a quarantine proposal when ``quarantine.enabled``.  Behaviour events (``kind:
  behaviour``) are stored as ``endpoint_behaviour`` points (no quarantine from them yet).

Control methods: ``verdicts.get``, ``verdicts.set``, ``verdicts.clear``, ``verdicts.unknowns``,
``verdicts.stats``; ``behaviour.exceptions.*`` (exceptions.py: operator exceptions to the
endpoints' behaviour rules, pushed retained on ``vigil/v1/behaviour/exceptions``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import queue
import threading
import time
from typing import Any

from ... import payload, topics
from ...contracts.endpoint import (BehaviourEvent, EndpointEvents, EndpointStatus, Sample, SampleRequest, VerdictChange, VerdictChanges,
                                   VerdictRequest, VerdictResponse)
from ...control import ControlError
from ...influx import line
from ...mqtt import reply_properties
from ..api import Context, DecisionRequest
from .backends import BackendError, Clamd, Finding, HashLists, Yara
from ...contracts.vocab import VERDICTS
from .config import VerdictsConfig
from .exceptions import ExceptionBook
from ..storage import open_database
from .store import Record, VerdictStore, is_sha256

log = logging.getLogger(__name__)



class VerdictService:
    name = "verdicts"

    def __init__(self, cfg: VerdictsConfig, ctx: Context):
        self.cfg = cfg
        self.ctx = ctx
        self.counters = ctx.counters
        db = cfg.database if cfg.database.is_absolute() else ctx.state_dir / cfg.database
        self.sample_dir = cfg.sample_dir if cfg.sample_dir.is_absolute() else ctx.state_dir / cfg.sample_dir
        self.sample_dir.mkdir(parents=True, exist_ok=True)
        self.store = VerdictStore(open_database(getattr(ctx, "storage", None), db))
        self.lists = HashLists(cfg.known_bad, cfg.known_good)
        self.yara = Yara(cfg.rule_paths(), cfg.yara_binary, cfg.yara_timeout)
        self.clamd = Clamd(cfg.clamd_socket, cfg.clamd_timeout)
        self._queue: queue.Queue[str] = queue.Queue(cfg.queue_max)
        self._samples: dict[str, threading.Event] = {}
        self._samples_lock = threading.Lock()
        self._deferred: dict[str, set[str]] = {}     # endpoint -> hashes whose sample waits for it
        self._endpoints: dict[str, dict[str, Any]] = {}     # id -> {address, host, mode, state}
        self._quarantined: dict[tuple[str, str], float] = {}  # (endpoint, sha) -> until
        self._thread: threading.Thread | None = None
        self._last_list_check = 0.0
        ctl = ctx.control
        ctl.register("verdicts.get", self.ctl_get)
        ctl.register("verdicts.set", self.ctl_set)
        ctl.register("verdicts.clear", self.ctl_clear)
        ctl.register("verdicts.unknowns", self.ctl_unknowns)
        ctl.register("verdicts.stats", self.status)
        self.exceptions = ExceptionBook(ctx.state_dir / "behaviour-exceptions.json", ctx)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        m = self.ctx.mqtt
        m.subscribe(topics.shared(topics.endpoint("+", "verdict/request")), self.on_request)
        m.subscribe(topics.shared(topics.endpoint("+", "events")), self.on_events)
        m.subscribe(topics.endpoint("+", "sample"), self.on_sample)
        m.subscribe(topics.endpoint("+", "status"), self.on_status)
        for sha in self.store.pending_analysis():
            self._enqueue(sha, requeue=True)
        self._thread = threading.Thread(target=self._analysis_loop, name="verdict-analysis", daemon=True)
        self._thread.start()
        log.info("verdicts: %d listed hashes, YARA %s (%d rule files), clamd %s", len(self.lists),
                 "on" if self.yara.available() else "off", len(self.yara.rule_files),
                 "on" if self.clamd.available() else "off")

    def tick(self) -> None:
        self.exceptions.tick()
        now = time.monotonic()
        if now - self._last_list_check >= 1.0:
            self._last_list_check = now
            if self.lists.reload():
                log.info("verdicts: hash lists reloaded (%d hashes)", len(self.lists))
        wall = time.time()
        for k in [k for k, until in self._quarantined.items() if until < wall]:
            del self._quarantined[k]

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.store.close()

    def status(self) -> dict[str, Any]:
        return {"hashes": self.store.counts(), "queue": self._queue.qsize(), "listed": len(self.lists),
                "list_errors": self.lists.errors, "yara": self.yara.available(),
                "yara_rule_files": [str(p) for p in self.yara.rule_files], "clamd": self.clamd.available(),
                "endpoints": self._endpoints}

    # -- deciding --------------------------------------------------------------------------
    def current(self, sha: str, size: int | None = None, endpoint: str = "", path: str = "") -> Record:
        """The verdict for a hash now: store + lists; records the sighting and queues unknowns."""
        rec, _new = self.store.seen(sha, size, endpoint, path, self.cfg.ttl_unknown)
        if rec.source != "operator":
            found = self.lists.lookup(sha)
            if found is not None and (found.verdict, found.source) != (rec.verdict, rec.source):
                rec = self._apply(sha, found)
        if rec.verdict == "unknown" and rec.analysis == "none":
            self._enqueue(sha)
        return rec

    def _apply(self, sha: str, f: Finding, ttl: float | None = None) -> Record:
        rec, changed = self.store.set_verdict(sha, f.verdict, f.source, ttl or self.cfg.ttl(f.verdict), f.detail)
        if changed:
            self.counters.inc(f"verdicts_set_{f.verdict}")
            log.info("verdicts: %s is %s (%s)", sha, f.verdict, f.source)
            self._push(rec)
            if f.verdict == "malicious":
                self._quarantine_past_executions(rec)
        return rec

    def _push(self, rec: Record) -> None:
        change = VerdictChange(sha256=rec.sha256, verdict=rec.verdict, source=rec.source, ttl=rec.ttl)
        self.ctx.mqtt.publish(topics.VERDICTS, VerdictChanges(verdicts=[change]).encode(self.ctx.manager_id), qos=1)
        self.counters.inc("verdicts_pushed")

    # -- MQTT handlers ---------------------------------------------------------------------
    def on_request(self, msg) -> None:
        dev = topics.device_of(msg.topic)
        endpoint = dev[1] if dev else "?"
        rtopic, props = reply_properties(msg)
        try:
            req = VerdictRequest.decode(msg.payload)
        except payload.PayloadError as exc:
            self.counters.inc(f"verdict_requests_rejected_{exc.reason}")
            log.warning("verdicts: bad request from %s: %s", endpoint, exc)
            if rtopic:
                self.ctx.mqtt.publish(rtopic, VerdictResponse(status="error", error=str(exc)).encode(
                    self.ctx.manager_id), qos=1, properties=props)
            return
        self.counters.inc("verdict_requests")
        rec = self.current(req.sha256, req.size, endpoint, req.path)
        if rtopic is None:
            self.counters.inc("verdict_requests_without_response_topic")
            return
        answer = VerdictResponse(status="ok", sha256=req.sha256, verdict=rec.verdict, source=rec.source, ttl=rec.ttl)
        self.ctx.mqtt.publish(rtopic, answer.encode(self.ctx.manager_id), qos=1, properties=props)

    def on_status(self, msg) -> None:
        dev = topics.device_of(msg.topic)
        if not dev or dev[2] != "status" or dev[0] != "endpoint":
            return
        try:
            st = EndpointStatus.decode(msg.payload)
        except payload.PayloadError as exc:
            self.counters.inc(f"endpoint_status_rejected_{exc.reason}")
            return
        self._endpoints[dev[1]] = {"state": st.state, "mode": st.mode, "address": st.address, "host": st.host,
                                   "version": st.version}
        if st.state == "online":
            with self._samples_lock:
                back = self._deferred.pop(dev[1], ())
            for sha in back:
                self._enqueue(sha, requeue=True)

    def on_events(self, msg) -> None:
        dev = topics.device_of(msg.topic)
        endpoint = dev[1] if dev else "?"
        try:
            batch = EndpointEvents.decode(msg.payload)
        except payload.PayloadError as exc:
            self.counters.inc(f"endpoint_events_rejected_{exc.reason}")
            log.warning("verdicts: bad event batch from %s: %s", endpoint, exc)
            return
        host = batch.host if batch.host is not None else endpoint
        address = batch.address
        if address or host:
            self._endpoints.setdefault(endpoint, {}).update({"address": address, "host": host})
        if batch.invalid:
            self.counters.inc("endpoint_events_invalid", batch.invalid)
        points = []
        for ev in batch.events:
            if isinstance(ev, BehaviourEvent):
                points.append(self._behaviour_point(endpoint, host, ev))
                self._maybe_quarantine_behaviour(endpoint, host, address, ev)
                continue
            if not ev.sha256:                # could not be hashed (too large, unreadable): nothing to note
                self.counters.inc("endpoint_events_invalid")
                continue
            self.counters.inc(f"endpoint_executions_{ev.action}", ev.count)
            points.append(line("endpoint_executions",
                               {"endpoint": endpoint, "action": ev.action, "verdict": ev.verdict, "via": ev.via},
                               {"count": ev.count, "sha256": ev.sha256, "path": ev.path[:512], "source": ev.source},
                               ev.ts * 1_000_000 if ev.ts else time.time_ns()))
            if ev.verdict == "benign":
                continue
            path = ev.path[:1024]
            kind = "executed" if ev.action == "allowed" else ev.action
            self.store.note(ev.sha256, kind, ev.verdict, endpoint, f"{host} {address or '-'} {path}",
                            ts=ev.ts / 1000 if ev.ts is not None else None)
            rec = self.store.get(ev.sha256)
            if rec is not None and rec.verdict == "malicious":
                self._maybe_quarantine(endpoint, host, address, rec, path, ev.action)
        if points and self.ctx.writer is not None:
            self.ctx.writer.write(points)

    def _behaviour_point(self, endpoint: str, host: str, ev: BehaviourEvent) -> str:
        """A behaviour rule's match on an endpoint (issue 17) as one ``endpoint_behaviour`` point:
        tags bounded to the rule id, its ATT&CK technique and the action (the contract checked
        them); the process tree as JSON."""
        self.counters.inc(f"endpoint_behaviour_{ev.action.replace('-', '_')}")
        log.warning("verdicts: behaviour %s on %s (%s): rule %s (%s) %s", ev.action, endpoint, host, ev.rule,
                    ev.technique, ev.path[:256])
        return line("endpoint_behaviour",
                    {"endpoint": endpoint, "rule": ev.rule, "technique": ev.technique, "action": ev.action},
                    {"count": 1, "path": ev.path[:512], "parent": (ev.parent or "")[:512], "pid": ev.pid,
                     "sha256": ev.sha256, "tree": json.dumps(ev.tree, separators=(",", ":"))[:8192]},
                    ev.ts * 1_000_000 if ev.ts else time.time_ns())

    def on_sample(self, msg) -> None:
        dev = topics.device_of(msg.topic)
        endpoint = dev[1] if dev else "?"
        try:
            s = Sample.decode(msg.payload)
            sha = s.sha256
        except payload.PayloadError as exc:
            self.counters.inc(f"samples_rejected_{exc.reason}")
            return
        with self._samples_lock:
            waiter = self._samples.get(sha)
        if waiter is None:
            self.counters.inc("samples_unrequested")
            return
        if s.status != "ok":
            self.counters.inc("samples_refused")
            self.store.set_analysis(sha, "waiting-sample", f"{endpoint} could not send it: {s.error}")
            return
        data = s.data
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            self.counters.inc("samples_rejected_bad-data")
            return
        if len(raw) > self.cfg.sample_max_bytes:
            self.counters.inc("samples_rejected_too-large")
            return
        if hashlib.sha256(raw).hexdigest() != sha:
            self.counters.inc("samples_rejected_hash-mismatch")
            log.warning("verdicts: sample from %s does not hash to %s; discarded", endpoint, sha)
            return
        tmp = self.sample_dir / f".{sha}.part"
        tmp.write_bytes(raw)
        os.chmod(tmp, 0o400)
        tmp.replace(self.sample_dir / sha)
        self.counters.inc("samples_received")
        waiter.set()

    # -- analysis ----------------------------------------------------------------------------
    def _enqueue(self, sha: str, requeue: bool = False) -> None:
        try:
            self._queue.put_nowait(sha)
        except queue.Full:
            self.counters.inc("analysis_queue_full")
            return
        if not requeue:
            self.store.set_analysis(sha, "queued")
        self.counters.inc("analysis_queued")

    def _analysis_loop(self) -> None:
        interval = 60.0 / self.cfg.analyses_per_minute
        next_at = 0.0
        stop = self.ctx.stop
        while not stop.is_set():
            try:
                sha = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            wait = next_at - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            next_at = time.monotonic() + interval
            try:
                self.analyse(sha)
            except Exception:
                self.counters.inc("analysis_errors")
                log.exception("verdicts: analysis of %s failed", sha)
                self.store.set_analysis(sha, "failed", "internal error")

    def analyse(self, sha: str) -> Record | None:
        rec = self.store.get(sha)
        if rec is None or rec.verdict != "unknown" or rec.source == "operator":
            if rec is not None:
                self.store.set_analysis(sha, "done")
            return rec
        backends = [b for b in (self.yara, self.clamd) if b.available()]
        if not backends:
            self.store.set_analysis(sha, "done", "no sample backends configured")
            return rec
        sample = self.sample_dir / sha
        if not sample.exists() and not self._fetch_sample(rec):
            return self.store.get(sha)
        findings, errors = [], []
        for b in backends:
            try:
                f = b.scan(sample)
            except BackendError as exc:
                self.counters.inc(f"analysis_backend_errors_{b.name}")
                errors.append(str(exc))
                log.warning("verdicts: %s", exc)
                continue
            if f is not None:
                findings.append(f)
        rank = {"malicious": 0, "grayware": 1, "benign": 2}
        findings.sort(key=lambda f: rank.get(f.verdict, 3))
        self.counters.inc("analyses_done")
        if findings:
            self.store.set_analysis(sha, "done", "; ".join(f.source for f in findings))
            return self._apply(sha, findings[0])
        if errors and len(errors) == len(backends):
            self.store.set_analysis(sha, "failed", "; ".join(errors))
            return rec
        self.store.set_analysis(sha, "done", "no backend found anything")
        if self.cfg.clean_verdict == "benign":
            return self._apply(sha, Finding("benign", "analysis", "no detection"))
        self.store.set_verdict(sha, "unknown", "analysis", self.cfg.ttl_unknown, "analysed; no detection")
        return self.store.get(sha)

    def _fetch_sample(self, rec: Record) -> bool:
        if rec.size is not None and rec.size > self.cfg.sample_max_bytes:
            self.store.set_analysis(rec.sha256, "failed", f"sample of {rec.size} bytes exceeds the cap")
            self.counters.inc("samples_too_large")
            return False
        if not rec.last_endpoint:
            self.store.set_analysis(rec.sha256, "failed", "no endpoint to ask for the sample")
            return False
        if self._endpoints.get(rec.last_endpoint, {}).get("state") == "offline":
            # Nobody would answer: waiting sample_wait here would hold up every analysis behind it
            # (a restarted manager replays the sightings of endpoints that have gone since).  The
            # hash is queued again when that endpoint's status says it is back.
            with self._samples_lock:
                self._deferred.setdefault(rec.last_endpoint, set()).add(rec.sha256)
            self.store.set_analysis(rec.sha256, "waiting-sample", f"{rec.last_endpoint} is offline; asked when back")
            self.counters.inc("samples_deferred_offline")
            return False
        ev = threading.Event()
        with self._samples_lock:
            self._samples[rec.sha256] = ev
        try:
            self.store.set_analysis(rec.sha256, "waiting-sample", f"asked {rec.last_endpoint}")
            ask = SampleRequest(sha256=rec.sha256, max_bytes=self.cfg.sample_max_bytes)
            self.ctx.mqtt.publish(topics.endpoint(rec.last_endpoint, "sample/request"),
                                  ask.encode(self.ctx.manager_id), qos=1)
            self.counters.inc("samples_requested")
            deadline = time.monotonic() + self.cfg.sample_wait
            while not ev.is_set() and time.monotonic() < deadline and not self.ctx.stop.is_set():
                ev.wait(0.2)
        finally:
            with self._samples_lock:
                self._samples.pop(rec.sha256, None)
        if not ev.is_set():
            self.counters.inc("samples_not_received")
            self.store.set_analysis(rec.sha256, "failed", f"no sample from {rec.last_endpoint} "
                                    f"within {self.cfg.sample_wait:.0f}s")
            return False
        return True

    # -- network + endpoint ------------------------------------------------------------------
    def _maybe_quarantine(self, endpoint: str, host: str, address: str | None, rec: Record, path: str,
                          action: str) -> None:
        q = self.cfg.quarantine
        outcome = "executed" if action in ("allowed", "would-block") else "blocked"
        if not q.enabled or outcome not in q.on:
            return
        if not address:
            self.counters.inc("quarantine_without_address")
            log.warning("verdicts: %s %s malicious %s but reported no address; cannot quarantine",
                        host, outcome, rec.sha256)
            return
        key = (endpoint, rec.sha256)
        if self._quarantined.get(key, 0) > time.time():
            return
        self._quarantined[key] = time.time() + q.duration
        reason = (f"endpoint {host} ({address}) {outcome} malicious file sha256:{rec.sha256} "
                  f"[{rec.source}{': ' + rec.detail if rec.detail else ''}] at {path or '?'}")
        req = DecisionRequest(
            scope="ip", value=address, origin=f"endpoint:{rec.source}", reason=reason, duration=q.duration,
            engines=list(q.engines),
            evidence={"quarantine": True, "allow_networks": list(q.allow_networks), "sha256": rec.sha256,
                      "verdict_source": rec.source, "endpoint": endpoint, "host": host, "path": path,
                      "outcome": outcome})
        self.counters.inc("quarantine_proposed")
        log.warning("verdicts: proposing quarantine of %s: %s", address, reason)
        self.ctx.decisions.propose(req)

    def _maybe_quarantine_behaviour(self, endpoint: str, host: str, address: str | None, ev: BehaviourEvent) -> None:
        """A behaviour rule listed in ``quarantine.on_behaviour`` matched on an endpoint: the
        endpoint's address is quarantined like for a malicious file."""
        q, rule = self.cfg.quarantine, ev.rule
        if not q.enabled or not (rule in q.on_behaviour or "*" in q.on_behaviour):
            return
        if not address:
            self.counters.inc("quarantine_without_address")
            return
        key = (endpoint, f"behaviour:{rule}")
        if self._quarantined.get(key, 0) > time.time():
            return
        self._quarantined[key] = time.time() + q.duration
        path = ev.path[:1024]
        reason = (f"endpoint {host} ({address}) behaviour rule {rule} ({ev.technique}) {ev.action}: "
                  f"{path or '?'}")
        req = DecisionRequest(
            scope="ip", value=address, origin=f"endpoint:behaviour:{rule}", reason=reason, duration=q.duration,
            engines=list(q.engines),
            evidence={"quarantine": True, "allow_networks": list(q.allow_networks), "rule": rule,
                      "technique": ev.technique, "endpoint": endpoint, "host": host, "path": path,
                      "sha256": ev.sha256, "outcome": ev.action})
        self.counters.inc("quarantine_proposed")
        log.warning("verdicts: proposing quarantine of %s: %s", address, reason)
        self.ctx.decisions.propose(req)

    def _quarantine_past_executions(self, rec: Record) -> None:
        """A hash that turned malicious after endpoints already ran it: quarantine those endpoints."""
        for h in self.store.history(rec.sha256, limit=200):
            if h["kind"] != "executed":
                continue
            host, _, rest = h["detail"].partition(" ")
            address, _, path = rest.partition(" ")
            self._maybe_quarantine(h["source"], host, None if address == "-" else address, rec, path,
                                   "allowed")

    # -- control methods -----------------------------------------------------------------------
    def _sha(self, sha: Any) -> str:
        if not isinstance(sha, str) or not is_sha256(sha.lower()):
            raise ControlError("invalid", f"not a SHA-256 hash: {sha!r}")
        return sha.lower()

    def ctl_get(self, sha256: str) -> dict[str, Any]:
        sha = self._sha(sha256)
        rec = self.store.get(sha)
        if rec is None:
            raise ControlError("not-found", f"{sha} has never been seen")
        return {"record": rec.as_dict(), "history": self.store.history(sha)}

    def ctl_set(self, sha256: str, verdict: str, reason: str = "", ttl: float | None = None) -> dict[str, Any]:
        sha = self._sha(sha256)
        if verdict not in VERDICTS:
            raise ControlError("invalid", f"verdict must be one of {', '.join(VERDICTS)}")
        if ttl is not None and (not isinstance(ttl, (int, float)) or ttl <= 0):
            raise ControlError("invalid", "ttl must be a positive number of seconds")
        rec, changed = self.store.set_verdict(sha, verdict, "operator", ttl or self.cfg.ttl(verdict),
                                              reason or "operator override")
        self.store.set_analysis(sha, "done")
        self.counters.inc("operator_overrides")
        log.info("verdicts: operator set %s to %s (%s)", sha, verdict, reason or "no reason given")
        self._push(rec)  # pushed even if unchanged: an operator expects the fleet to hear it
        if verdict == "malicious":
            self._quarantine_past_executions(rec)
        return {"record": rec.as_dict(), "changed": changed}

    def ctl_clear(self, sha256: str) -> dict[str, Any]:
        """Drop an operator override: the hash goes back to lists and analysis."""
        sha = self._sha(sha256)
        rec = self.store.get(sha)
        if rec is None:
            raise ControlError("not-found", f"{sha} has never been seen")
        rec, _ = self.store.set_verdict(sha, "unknown", "operator-cleared", self.cfg.ttl_unknown)
        self.store.set_analysis(sha, "none")
        rec = self.current(sha, endpoint=rec.last_endpoint, path=rec.last_path)
        self._push(rec)
        return {"record": rec.as_dict()}

    def ctl_unknowns(self, limit: int = 100) -> list[dict[str, Any]]:
        if not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise ControlError("invalid", "limit must be 1..10000")
        return [r.as_dict() for r in self.store.unknowns(limit)]
