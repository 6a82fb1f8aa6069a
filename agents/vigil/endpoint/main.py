"""vigil-endpoint: execution control on one host.

The agent is two processes.  The *decider* (decider.py) owns the fanotify group and answers every
exec; this process — the agent — talks MQTT to the manager (verdict requests with correlation data,
verdict pushes, sample uploads), batches execution reports, publishes a retained status with a
last-will, and serves the local console over its control socket.  If the agent dies the decider
dies with it (PR_SET_PDEATHSIG) and the kernel allows whatever was waiting.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import __version__, topics
from ..contracts import decider as proto
from ..config import to_dict
from ..contracts.endpoint import (DEFAULT_TTL, BehaviourEvent, BehaviourExceptions, EndpointEvent, EndpointEvents, EndpointStatus,
                                  ExecEvent, Sample, SampleRequest, VerdictChanges, VerdictRequest, VerdictResponse)
from ..contracts.envelope import PayloadError
from ..control import ControlServer
from ..counters import Counters
from ..daemon import FatalError, StartupError, main as daemon_main
from ..mqtt import MqttClient, Will, new_client_id, response_properties
from .config import EndpointConfig

log = logging.getLogger(__name__)

RECENT = 200
MAX_EXCEPTIONS = 256        # the manager's set reaches the decider in one datagram (≤ 1 MB)


class EndpointService:
    def __init__(self, cfg: EndpointConfig):
        self.cfg = cfg
        self.counters = Counters()
        self.host = socket.gethostname()
        self.mode = cfg.mode
        self.status_topic = topics.endpoint(cfg.endpoint_id, "status")
        self.response_topic = topics.endpoint(cfg.endpoint_id, "verdict/response")
        will = Will(self.status_topic, EndpointStatus(state="offline").encode(cfg.endpoint_id))
        # The network thread sleeps up to a quarter of the keepalive (not paho's 1 s): a publish from
        # another thread or incoming data wakes it at once, and a ping is due only every keepalive,
        # so it goes out at most keepalive/4 late — well inside the broker's 1.5 × keepalive.
        self.mqtt = MqttClient(cfg.mqtt, new_client_id(f"endpoint-{cfg.endpoint_id}"), self.counters, will=will,
                               on_connected=self._on_connected, loop_timeout=max(1.0, cfg.mqtt.keepalive / 4))
        self.control = ControlServer(cfg.control_socket)
        self.control.register("endpoint.status", self.console_status)
        self.control.register("endpoint.recent", self.recent_decisions)
        self._events: collections.deque = collections.deque()
        self._events_lock = threading.Lock()
        self._batch_started: float | None = None   # when the oldest waiting event arrived (monotonic)
        self._recent: collections.deque = collections.deque(maxlen=RECENT)
        self._paths: collections.OrderedDict[str, str] = collections.OrderedDict()  # sha -> last path
        self._asks: dict[bytes, tuple[str, float]] = {}   # correlation -> (sha, sent monotonic)
        self._asks_lock = threading.Lock()
        self._corr = 0
        self._stats: dict[str, Any] = {}
        self._stats_event = threading.Event()
        self.decider: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self._decider_lock = threading.Lock()      # restarts (reader thread) vs. shutdown (run)
        self._stopping = threading.Event()
        self._stop: threading.Event | None = None  # run()'s stop event
        self._fatal: str | None = None
        self._exceptions: list | None = None       # the manager's behaviour exceptions for this endpoint

    # -- the decider process ----------------------------------------------------------------
    def start_decider(self, timeout: float = 10.0, reader: bool = True) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, theirs):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        conf = {"mode": self.mode, "decision_deadline": self.cfg.decision_deadline,
                "max_hash_bytes": self.cfg.max_hash_bytes, "cache_entries": self.cfg.cache_entries,
                "excluded": self.cfg.excluded(), "mounts": [str(m) for m in self.cfg.mounts],
                "cover_loader": self.cfg.cover_loader, "report_interval": self.cfg.batch_interval,
                "kernel_cache": self.cfg.kernel_cache, "kernel_cache_refresh": self.cfg.kernel_cache_refresh, "sock_fd": theirs.fileno(), "parent_pid": os.getpid(),
                "behaviour": to_dict(self.cfg.behaviour) if self.cfg.behaviour.enabled else None}
        self.decider = subprocess.Popen([sys.executable, "-m", "vigil.endpoint.decider", json.dumps(conf)],
                                        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        ours.settimeout(timeout)
        try:
            first = proto.from_wire(ours.recv(1 << 16) or b"{}")
        except (socket.timeout, PayloadError) as exc:
            self.decider.kill()
            raise StartupError(f"the decider process did not start: {exc}") from None
        if not isinstance(first, proto.Ready):
            self.decider.wait(5)
            raise StartupError(f"cannot watch executions: {getattr(first, 'error', first)}")
        ours.settimeout(None)
        self.sock = ours
        log.info("decider %d watching %s in %s mode", first.pid, ", ".join(first.mounts), self.mode)
        if self.cfg.behaviour.enabled and not first.behaviour:
            self.counters.inc("behaviour_start_failures")
            log.error("behaviour rules could not start in the decider; the exec gate runs without them")
        if self._exceptions is not None:           # a restarted decider gets the manager's set again
            self.to_decider(proto.Exceptions(exceptions=self._exceptions))
        if reader:
            threading.Thread(target=self._read_decider, args=(ours,), name="decider-reader", daemon=True).start()

    def to_decider(self, msg: proto.Message) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            sock.send(msg.wire())
        except OSError:
            self.counters.inc("decider_send_errors")

    def _read_decider(self, sock: socket.socket | None) -> None:
        """The decider's messages, and the event batches: this thread publishes them, so the agent
        has no timer of its own for them.  A summary (``evs``, sent by the decider once per
        batch_interval while cached execs run) is published on arrival, a block at once; any
        other waiting event within batch_interval (a recv timeout, armed only while one waits).
        When the decider ends, this thread starts the next one and goes on reading from it: it
        must live on, as the decider's parent death signal follows the thread that spawned it."""
        while sock is not None:
            self._read_messages(sock)
            sock = self._decider_gone(sock)

    def _read_messages(self, sock: socket.socket) -> None:
        timeout: float | None = None
        while True:
            started = self._batch_started
            wait = None if started is None else max(0.001, started + self.cfg.batch_interval - time.monotonic())
            try:
                if wait != timeout:
                    sock.settimeout(wait)
                    timeout = wait
                raw = sock.recv(1 << 20)
            except (TimeoutError, BlockingIOError):
                self.flush_events()
                continue
            except OSError:
                raw = b""
            if not raw:
                return
            try:
                msg = proto.from_wire(raw)
            except PayloadError:
                self.counters.inc("decider_bad_messages")
                continue
            if isinstance(msg, ExecEvent):          # proto.Exec: one execution
                self._on_decision(msg)
            elif isinstance(msg, proto.ExecBatch):
                if msg.invalid:
                    self.counters.inc("decider_bad_messages", msg.invalid)
                for ev in msg.events:
                    self._on_decision(ev)
                self.flush_events()
            elif isinstance(msg, proto.Behaviour):
                self._on_behaviour(msg)
            elif isinstance(msg, proto.Ask):
                self._ask(msg.sha256, msg.size, msg.path)
            elif isinstance(msg, proto.Stats):
                self._stats = msg.body()
                self._stats_event.set()
            else:
                self.counters.inc("decider_bad_messages")

    def _decider_gone(self, sock: socket.socket) -> socket.socket | None:
        """The decider closed its end (it exited): start the next one at once; its socket, or None
        when the agent is stopping or the start failed (then the agent stops with the error)."""
        with self._decider_lock:
            if self._stopping.is_set() or sock is not self.sock or self.decider is None:
                return None
            try:
                self.decider.wait(2)
            except subprocess.TimeoutExpired:
                self.decider.kill()
                self.decider.wait()
            self.counters.inc("decider_restarts")
            log.error("the decider exited (%s); restarting it", self.decider.returncode)
            self.sock = None
            sock.close()
            try:
                self.start_decider(reader=False)
            except StartupError as exc:
                self._fatal = str(exc)
                if self._stop is not None:
                    self._stop.set()
                return None
            return self.sock

    def _on_decision(self, decision: ExecEvent) -> None:
        self.counters.inc(f"executions_{decision.action}", decision.count)
        if decision.sha256:
            self._remember_path(decision.sha256, decision.path)
        ev = ExecEvent.body(decision)     # as an ExecEvent (an Exec message would add its "t")
        self._recent.append(ev)
        with self._events_lock:
            self._events.append(ev)
            if self._batch_started is None:
                self._batch_started = time.monotonic()
            if len(self._events) > self.cfg.max_pending_events:
                self._events.popleft()
                self.counters.inc("events_dropped")
        if decision.action != "allowed":
            self.flush_events()   # a block is news for the manager (quarantine): do not wait for the batch

    def _on_behaviour(self, match: BehaviourEvent) -> None:
        """A behaviour rule matched (behaviour/engine.py): reported at once, like a block."""
        ev = BehaviourEvent.body(match)   # as a BehaviourEvent (kind: behaviour; a Behaviour message would add its "t")
        self.counters.inc(f"behaviour_{match.action.replace('-', '_')}")
        log.warning("behaviour %s: rule %s (%s) pid %s %s", match.action, match.rule, match.technique,
                    match.pid, match.path)
        self._recent.append(ev)
        with self._events_lock:
            self._events.append(ev)
            if len(self._events) > self.cfg.max_pending_events:
                self._events.popleft()
                self.counters.inc("events_dropped")
        self.flush_events()

    def _remember_path(self, sha: str, path: str) -> None:
        self._paths[sha] = path
        self._paths.move_to_end(sha)
        if len(self._paths) > 4096:
            self._paths.popitem(last=False)

    # -- verdicts over MQTT ----------------------------------------------------------------
    def _ask(self, sha: str, size: int | None, path: str) -> None:
        if path:
            self._remember_path(sha, path)       # the manager may ask for the sample before the event
        if not self.mqtt.connected.is_set():
            self.counters.inc("verdict_requests_offline")
            self.to_decider(proto.Verdict(sha256=sha, error="offline"))
            return
        with self._asks_lock:
            self._corr += 1
            corr = self._corr.to_bytes(8, "big")
            self._asks[corr] = (sha, time.monotonic())
        request = VerdictRequest(sha256=sha, size=size, path=path)
        self.mqtt.publish(topics.endpoint(self.cfg.endpoint_id, "verdict/request"),
                          request.encode(self.cfg.endpoint_id), qos=1,
                          properties=response_properties(self.response_topic, corr))
        self.counters.inc("verdict_requests")

    def _on_response(self, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        with self._asks_lock:
            ask = self._asks.pop(corr, None) if corr else None
        if ask is None:
            self.counters.inc("verdict_responses_unmatched")  # late (after the deadline) or not ours
            return
        sha = ask[0]
        try:
            r = VerdictResponse.decode(msg.payload)
            if r.status != "ok":
                raise PayloadError("error-status", str(r.error))
            if r.sha256 != sha or r.verdict is None:
                raise PayloadError("bad-verdict", f"{r.sha256} {r.verdict!r}")
        except PayloadError as exc:
            self.counters.inc(f"verdict_responses_rejected_{exc.reason}")
            self.to_decider(proto.Verdict(sha256=sha, error=f"manager: {exc.reason}"))
            return
        self.counters.inc("verdict_responses")
        self.to_decider(proto.Verdict(sha256=sha, verdict=r.verdict, source=r.source, ttl=float(r.ttl or DEFAULT_TTL)))

    def _on_push(self, msg) -> None:
        try:
            changes = VerdictChanges.decode(msg.payload)
        except PayloadError as exc:
            self.counters.inc(f"verdict_pushes_rejected_{exc.reason}")
            return
        if changes.invalid:
            self.counters.inc("verdict_pushes_rejected_bad-field", changes.invalid)
        self.counters.inc("verdict_pushes", len(changes.verdicts))
        if changes.verdicts:
            self.to_decider(proto.Push(verdicts=[dataclasses.replace(v, ttl=float(v.ttl or DEFAULT_TTL))
                                                 for v in changes.verdicts]))

    def _on_exceptions(self, msg, pushed: BehaviourExceptions) -> None:
        """The manager's behaviour-rule exceptions (retained, the whole set): those naming this
        endpoint replace the last set in the decider, without a restart.  Items that do not check
        out were dropped by the contract and are counted here."""
        if pushed.invalid:
            self.counters.inc("behaviour_exceptions_rejected", pushed.invalid)
            log.warning("behaviour exceptions: %d invalid entries from the manager ignored", pushed.invalid)
        mine = [e for e in pushed.exceptions if e.applies_to(self.cfg.endpoint_id)]
        if len(mine) > MAX_EXCEPTIONS:
            self.counters.inc("behaviour_exceptions_rejected", len(mine) - MAX_EXCEPTIONS)
            log.warning("behaviour exceptions: %d for this endpoint, only the first %d applied",
                        len(mine), MAX_EXCEPTIONS)
            mine = mine[:MAX_EXCEPTIONS]
        self._exceptions = mine
        self.counters.inc("behaviour_exceptions_received")
        log.info("behaviour exceptions from the manager: %d for this endpoint (of %d)", len(mine),
                 len(pushed.exceptions))
        if self.cfg.behaviour.enabled:
            self.to_decider(proto.Exceptions(exceptions=mine))

    def _on_sample_request(self, msg) -> None:
        threading.Thread(target=self._send_sample, args=(msg.payload,), name="sample", daemon=True).start()

    def _send_sample(self, raw: bytes) -> None:
        topic = topics.endpoint(self.cfg.endpoint_id, "sample")
        try:
            req = SampleRequest.decode(raw)
            sha = req.sha256
            cap = min(req.max_bytes or self.cfg.sample_max_bytes, self.cfg.sample_max_bytes)
        except PayloadError as exc:
            self.counters.inc("sample_requests_rejected")
            log.warning("bad sample request: %s", exc)
            return

        def refuse(error: str) -> None:
            self.counters.inc(f"samples_refused_{error}")
            self.mqtt.publish(topic, Sample(sha256=sha, status="error", error=error).encode(self.cfg.endpoint_id))

        path = self._paths.get(sha)
        if not path:
            return refuse("unknown-hash")
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size > cap:
                    return refuse("too-large")
                data = f.read(cap + 1)
        except OSError:
            return refuse("unreadable")
        if len(data) > cap:
            return refuse("too-large")
        if hashlib.sha256(data).hexdigest() != sha:
            return refuse("changed")
        self.mqtt.publish(topic, Sample(sha256=sha, size=len(data), path=path,
                                        data=base64.b64encode(data).decode()).encode(self.cfg.endpoint_id))
        self.counters.inc("samples_sent")
        log.info("sent sample %s (%d bytes) to the manager", sha, len(data))

    # -- status and events -------------------------------------------------------------------
    def address(self) -> str | None:
        if self.cfg.address:
            return self.cfg.address
        try:
            sock = self.mqtt.paho.socket()
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                return sock.getsockname()[0]
        except OSError:
            pass
        return None

    def _on_connected(self) -> None:
        self.publish_status()
        self.flush_events()      # what waited while the broker was away

    def publish_status(self) -> None:
        st = self._stats   # the decider's last answer; a fresh one is asked for the next status
        self.to_decider(proto.StatsQuery())
        status = EndpointStatus(
            state="online", mode=self.mode, version=__version__, host=self.host, address=self.address(),
            mounts=[str(m) for m in self.cfg.mounts],
            cache={"verdicts": st.get("verdict_cache"), "identities": st.get("identity_cache"),
                   "hits": st.get("cache_hits"), "misses": st.get("cache_misses")},
            decisions={k: v for k, v in (st.get("counters") or {}).items()
                       if k.startswith("decisions_") or k in ("timeouts", "offline_answers")},
            counters=self.counters.snapshot())
        self.mqtt.publish(self.status_topic, status.encode(self.cfg.endpoint_id), qos=1, retain=True)

    def flush_events(self) -> None:
        if not self.mqtt.connected.is_set():
            with self._events_lock:      # kept (bounded) until the broker is back; retried then and
                if self._events:         # every batch_interval
                    self._batch_started = time.monotonic()
            return
        with self._events_lock:
            batch = list(self._events)
            self._events.clear()
            self._batch_started = None
        if not batch:
            return
        for i in range(0, len(batch), 500):
            events = EndpointEvents(host=self.host, address=self.address(), mode=self.mode,
                                    events=[EndpointEvent.from_body(e) for e in batch[i:i + 500]])
            self.mqtt.publish(topics.endpoint(self.cfg.endpoint_id, "events"),
                              events.encode(self.cfg.endpoint_id), qos=1)
        self.counters.inc("events_sent", len(batch))

    def decider_stats(self, timeout: float = 1.0) -> dict[str, Any]:
        self._stats_event.clear()
        self.to_decider(proto.StatsQuery())
        if not self._stats_event.wait(timeout):
            return {"error": "the decider did not answer"}
        return {k: v for k, v in self._stats.items() if k != "t"}

    def console_status(self) -> dict[str, Any]:
        return {"endpoint": self.cfg.endpoint_id, "host": self.host, "mode": self.mode,
                "mqtt_connected": self.mqtt.connected.is_set(), "address": self.address(),
                "mounts": [str(m) for m in self.cfg.mounts], "decision_deadline": self.cfg.decision_deadline,
                "decider_pid": self.decider.pid if self.decider else None, "decider": self.decider_stats(),
                "counters": self.counters.snapshot(), "rss_kb": _rss_kb(), "events_waiting": len(self._events),
                "behaviour_exceptions": [e.body() for e in self._exceptions or ()],
                "threads": {t.name: t.native_id for t in threading.enumerate()}}

    def recent_decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        if not isinstance(limit, int) or limit < 1:
            limit = 20
        return list(self._recent)[-limit:]

    # -- main loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.start_decider()
        eid = self.cfg.endpoint_id
        self.mqtt.subscribe(self.response_topic, self._on_response)
        self.mqtt.subscribe(topics.VERDICTS, self._on_push)
        if self.cfg.behaviour.enabled:
            self.mqtt.subscribe_kind(topics.BEHAVIOUR_EXCEPTIONS, BehaviourExceptions, self._on_exceptions)
        self.mqtt.subscribe(topics.endpoint(eid, "sample/request"), self._on_sample_request)
        self.control.start()
        self.mqtt.start()
        self._stop = stop
        # Nothing here runs per batch: the decider-reader thread publishes events and restarts a
        # dead decider.  This thread wakes for the status (every status_interval) and, while the
        # broker is unreachable, every batch_interval to notice a refusal (mqtt.fatal).
        next_status = time.monotonic() + self.cfg.status_interval
        try:
            while True:
                now = time.monotonic()
                wait = next_status - now
                if not self.mqtt.connected.is_set():
                    wait = min(wait, self.cfg.batch_interval)
                if stop.wait(max(0.0, wait)):
                    if self._fatal:      # set (with stop) by a decider restart that failed
                        raise StartupError(self._fatal)
                    break
                now = time.monotonic()
                if now >= next_status:
                    self.publish_status()
                    next_status = now + self.cfg.status_interval
                    with self._asks_lock:
                        for corr in [c for c, (_, t) in self._asks.items() if now - t > 30]:
                            del self._asks[corr]
                if self.mqtt.fatal:
                    raise FatalError(f"MQTT broker refused the endpoint: {self.mqtt.fatal}")
        finally:
            self._stopping.set()
            with self._decider_lock:
                if self.decider is not None and self.decider.poll() is None:
                    self.decider.terminate()
                    try:
                        self.decider.wait(5)
                    except subprocess.TimeoutExpired:
                        self.decider.kill()
            self.flush_events()
            self.mqtt.publish_wait(self.status_topic, EndpointStatus(state="offline").encode(eid),
                                   retain=True, timeout=2)
            self.mqtt.stop()
            self.control.stop()
            log.info("counters at exit: %s", self.counters.snapshot())


def _rss_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    return daemon_main("endpoint", EndpointConfig, EndpointService, argv,
                       description="Vigil endpoint agent: allow or block every execution by its verdict")


if __name__ == "__main__":
    raise SystemExit(main())
