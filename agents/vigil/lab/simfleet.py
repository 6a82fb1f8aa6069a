"""Simulated engines for fleet-size tests and benchmarks: many real MQTT clients in one thread.

Each ``SimEngine`` is a real MQTT v5 client (paho, its own connection, client id ``engine-<id>``,
a retained status with a last-will) that speaks the engine's contracts: it publishes flow batches
(``FlowBatch``, ``seq`` growing) and event batches (``EventBatch``) through the engine's own
spool publisher (``vigil.spool.SpoolPublisher``: a batch is kept until the broker's PUBACK), a
retained ``EngineStatus``, and applies the signed rule sets the manager sends it: it verifies the
signature with the manager's public key (``vigil.ruleset.decode_snapshot`` / ``decode_delta``),
keeps the entries in memory (snapshot replaces, delta applies on exactly the generation held) and
reports ``RulesetState`` as the engine does.  Nothing touches the kernel.

``SimFleet`` drives any number of them from one thread: paho's external-loop hooks put every
client's socket in one ``selectors`` loop, so a thousand engines cost one thread and a thousand
sockets, not a thousand threads.  The fleet counts what each engine sent, had acknowledged and
rejected, and records when each watched rule-set value first reached each engine (``arrivals``),
which is how a test or a benchmark measures a decision's spread.

Used by tests/integration/test_fleet_scale.py, tests/integration/test_durable_ingest.py and
bench/fleet_scale.py.
"""
from __future__ import annotations

import logging
import random
import selectors
import socket
import threading
import time
from collections import Counter as _Tally
from pathlib import Path
from typing import Any, Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .. import payload, ruleset, topics
from ..contracts.engine import EngineEvent, EngineStatus, EventBatch, FlowBatch, RulesetState
from ..contracts.envelope import PayloadError
from ..counters import Counters
from ..spool import Spool, SpoolPublisher

log = logging.getLogger(__name__)


class _MemorySpool:
    """The spool's interface without files (a thousand engines need no disk to keep a batch until
    its PUBACK; ``spool_dir`` gives an engine the real on-disk ``Spool``)."""

    def __init__(self, what: str, counters: Counters):
        self.what = what
        self.counters = counters
        self.entries: dict[int, bytes] = {}

    def put(self, seq: int, data: bytes) -> bool:
        self.entries[seq] = data
        return True

    def read(self, seq: int) -> bytes | None:
        return self.entries.get(seq)

    def remove(self, seq: int) -> None:
        self.entries.pop(seq, None)

    def __len__(self) -> int:
        return len(self.entries)


class SimEngine:
    def __init__(self, fleet: "SimFleet", engine_id: str, spool_dir: Path | None = None):
        self.fleet = fleet
        self.id = engine_id
        self.counters = Counters()
        self.connected = threading.Event()          # SpoolPublisher reads it
        self.generation: int | None = None
        self.entries: dict[tuple[str, str, str], ruleset.Entry] = {}
        self.flow_seq = 0
        self.event_seq = 0
        self.sock: socket.socket | None = None
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"engine-{engine_id}", protocol=paho.MQTTv5)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(20)
        c.will_set(topics.engine(engine_id, "status"),
                   EngineStatus(state="offline", engine=engine_id).encode(engine_id), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = fleet._socket_open
        c.on_socket_close = fleet._socket_close
        c.on_socket_register_write = fleet._register_write
        c.on_socket_unregister_write = fleet._unregister_write
        c.user_data_set(self)
        self.client = c
        if spool_dir is not None:
            flows = Spool(spool_dir / "flows", 64 << 20, self.counters, "flow_batches")
            events = Spool(spool_dir / "events", 16 << 20, self.counters, "event_batches")
            self.flow_seq = flows.last_seq()
        else:
            flows = _MemorySpool("flow_batches", self.counters)
            events = _MemorySpool("event_batches", self.counters)
        self.flows = SpoolPublisher(self, topics.engine(engine_id, "flows"), flows, self.counters)
        self.events = SpoolPublisher(self, topics.engine(engine_id, "events"), events, self.counters)

    # -- what SpoolPublisher needs of an MQTT client ----------------------------------------
    def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, data, qos=qos, retain=retain)

    # -- paho callbacks (the fleet's thread) --------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            self.fleet.tally["connect_refused"] += 1
            return
        client.subscribe([(topics.engine(self.id, "ruleset"), 1), (topics.engine(self.id, "ruleset/delta"), 1)])
        self.connected.set()
        self.fleet.tally["connects"] += 1
        self.publish_status()

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        if self.connected.is_set():
            self.fleet.tally["disconnects"] += 1
        self.connected.clear()

    def _on_message(self, client, userdata, msg):
        try:
            if msg.topic.endswith("/delta"):
                self._apply_delta(msg.payload)
            elif msg.payload:
                self._apply_snapshot(msg.payload)
        except PayloadError as exc:
            self.fleet.tally[f"ruleset_rejected_{exc.reason}"] += 1
            self._report(error=f"{exc.reason}: {exc}")

    # -- rule sets ------------------------------------------------------------------------------
    def _apply_snapshot(self, raw: bytes) -> None:
        snap = ruleset.decode_snapshot(raw, self.fleet.public_key, self.id)
        if self.generation is not None and snap.generation <= self.generation:
            self.fleet.tally["ruleset_same_or_old"] += 1
            return
        self.entries = {e.key: e for e in snap.entries}
        self.generation = snap.generation
        self.fleet.tally["snapshots_applied"] += 1
        self._applied(snap.entries)

    def _apply_delta(self, raw: bytes) -> None:
        d = ruleset.decode_delta(raw, self.fleet.public_key, self.id)
        if self.generation is None or d.base_generation != self.generation:
            # the engine's rule: a delta must build on exactly the generation held (the manager
            # sends the snapshot again when the reported generation stays behind)
            self.fleet.tally["ruleset_rejected_base-mismatch"] += 1
            self._report(error="base-mismatch")
            return
        for key in d.remove:
            self.entries.pop(key, None)
        for e in d.add:
            self.entries[e.key] = e
        self.generation = d.generation
        self.fleet.tally["deltas_applied"] += 1
        self._applied(d.add)

    def _applied(self, added: Iterable[ruleset.Entry]) -> None:
        watch = self.fleet.watch
        if watch:
            now = time.monotonic()
            for e in added:
                if e.value in watch:
                    self.fleet.arrivals.setdefault(e.value, {}).setdefault(self.id, now)
        self._report(error=None)

    def _report(self, error: str | None) -> None:
        counts: dict[str, int] = _Tally(e.action for e in self.entries.values())
        st = RulesetState(engine=self.id, generation=self.generation, applied_at=payload.now_ms(),
                          counts=dict(counts), error=error, backend="simulated")
        self.client.publish(topics.engine(self.id, "ruleset/state"), st.encode(self.id), qos=1, retain=True)

    # -- what an engine publishes ----------------------------------------------------------------
    def publish_status(self) -> None:
        st = EngineStatus(state="running", engine=self.id, mode="enforcing", ruleset_generation=self.generation,
                          flow_interval=self.fleet.flow_interval, version="simulated",
                          learning={"progress": 1.0}, counters=dict(self.counters.snapshot()))
        self.client.publish(topics.engine(self.id, "status"), st.encode(self.id), qos=1, retain=True)

    def publish_flows(self, records: int) -> int:
        self.flow_seq += 1
        now = payload.now_ms()
        start = now - int(self.fleet.flow_interval * 1000)
        rnd = self.fleet.rnd
        flows = []
        for _ in range(records):
            port = rnd.choice((22, 53, 80, 443, 8080, 3306))
            flows.append({"id": rnd.getrandbits(31), "family": 4, "proto": "udp" if port == 53 else "tcp",
                          "src": f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
                          "sport": rnd.randrange(1024, 65535), "dst": "10.77.0.10", "dport": port,
                          "in_port": "eth0", "vlan": None, "start": start, "end": now, "duration": 0.5,
                          "new": True, "state": "CLOSE", "conn_state": "SF", "replied": True, "assured": True,
                          "orig_pkts": 6, "orig_bytes": 700, "resp_pkts": 5, "resp_bytes": 4000,
                          "orig_pkts_total": 6, "orig_bytes_total": 700, "resp_pkts_total": 5,
                          "resp_bytes_total": 4000})
        batch = FlowBatch(engine=self.id, seq=self.flow_seq, interval={"start": start, "end": now},
                          source="simulated", mode="enforcing", flows=flows)
        self.flows.submit(self.flow_seq, batch.encode(self.id))
        return self.flow_seq

    def publish_event(self, src: str, detail: str, severity: str = "info") -> int:
        self.event_seq += 1
        ev = EngineEvent(type="tcp-flags", severity=severity, ts=payload.now_ms(), src=src, detail=detail,
                         action="none")
        self.events.submit(self.event_seq, EventBatch(engine=self.id, seq=self.event_seq, events=[ev]).encode(self.id))
        return self.event_seq

    def pump(self) -> None:
        self.flows.pump()
        self.events.pump()

    @property
    def backlog(self) -> int:
        return self.flows.backlog + self.events.backlog


class SimFleet:
    """``n`` simulated engines on one selector loop in one background thread.

    ``flow_interval``: seconds between an engine's flow batches (engines are spread evenly over
    it); ``records``: flow records per batch; ``status_interval``: seconds between statuses.
    ``call(fn)`` runs ``fn()`` in the fleet's thread (paho clients are not thread-safe) and waits.
    """

    def __init__(self, mqtt_host: str, mqtt_port: int, n: int, public_key_file: Path | None = None,
                 prefix: str = "sim", flow_interval: float = 10.0, records: int = 5,
                 status_interval: float = 30.0, spool_root: Path | None = None, seed: int = 1):
        self.host, self.port = mqtt_host, mqtt_port
        self.public_key = ruleset.load_public_key(public_key_file) if public_key_file else None
        self.flow_interval = flow_interval
        self.records = records
        self.status_interval = status_interval
        self.rnd = random.Random(seed)
        self.tally: _Tally[str] = _Tally()
        self.watch: set[str] = set()
        self.arrivals: dict[str, dict[str, float]] = {}   # value -> engine -> monotonic first seen
        self.publishing = threading.Event()                # flows/statuses on their timers when set
        self._sel = selectors.DefaultSelector()
        self._by_sock: dict[socket.socket, SimEngine] = {}
        self._calls: list[tuple[Any, threading.Event, list]] = []
        self._calls_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.engines = [SimEngine(self, f"{prefix}{i:04d}",
                                  spool_dir=(spool_root / f"{prefix}{i:04d}") if spool_root else None)
                        for i in range(n)]

    # -- paho external-loop hooks -------------------------------------------------------------
    def _socket_open(self, client, eng, sock):
        self._by_sock[sock] = eng
        eng.sock = sock
        self._sel.register(sock, selectors.EVENT_READ, eng)

    def _socket_close(self, client, eng, sock):
        self._by_sock.pop(sock, None)
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _register_write(self, client, eng, sock):
        try:
            self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, eng)
        except (KeyError, ValueError):
            pass

    def _unregister_write(self, client, eng, sock):
        try:
            self._sel.modify(sock, selectors.EVENT_READ, eng)
        except (KeyError, ValueError):
            pass

    # -- life cycle ----------------------------------------------------------------------------
    def start(self, connect_timeout: float = 60.0) -> "SimFleet":
        self._thread = threading.Thread(target=self._run, name="simfleet", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + connect_timeout
        while time.monotonic() < deadline:
            if self.connected_count() == len(self.engines):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"only {self.connected_count()} of {len(self.engines)} engines connected")

    def stop(self) -> None:
        if self._thread is None:
            return

        def disconnect_all():
            for e in self.engines:
                if e.connected.is_set():
                    e.client.disconnect()
        try:
            self.call(disconnect_all, timeout=10)
        except TimeoutError:
            pass
        time.sleep(0.2)                    # let the DISCONNECTs leave
        self._stop.set()
        self._wake()
        self._thread.join(10)
        self._thread = None
        for e in self.engines:
            if e.client.socket() is not None:
                try:
                    e.client.socket().close()
                except OSError:
                    pass
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def connected_count(self) -> int:
        return sum(1 for e in self.engines if e.connected.is_set())

    def call(self, fn, timeout: float = 30.0):
        """Run ``fn()`` in the fleet's thread and return its result."""
        done = threading.Event()
        box: list = []
        with self._calls_lock:
            self._calls.append((fn, done, box))
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("the fleet's thread did not run the call in time")
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the loop ----------------------------------------------------------------------------------
    def _connect(self, eng: SimEngine) -> None:
        try:
            eng.client.connect(self.host, self.port, keepalive=60)
        except OSError as exc:
            self.tally["connect_errors"] += 1
            log.debug("simfleet: %s cannot connect: %s", eng.id, exc)

    def _run(self) -> None:
        n = len(self.engines)
        now = time.monotonic()
        # spread the engines' timers over their periods, as a real fleet's clocks are
        next_flow = [now + self.flow_interval * (i + 1) / n for i in range(n)]
        next_status = [now + self.status_interval * (i + 1) / n for i in range(n)]
        pending_connect = list(range(n))
        next_misc = now + 1.0
        reconnect_at: dict[int, float] = {}
        while not self._stop.is_set():
            # connect a few at a time so the broker's accept queue never overflows
            for _ in range(min(50, len(pending_connect))):
                self._connect(self.engines[pending_connect.pop(0)])
            timeout = 0.0 if pending_connect else 0.05
            for key, mask in self._sel.select(timeout):
                eng = key.data
                if eng is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                if mask & selectors.EVENT_READ:
                    eng.client.loop_read()
                if mask & selectors.EVENT_WRITE and eng.client.socket() is not None:
                    eng.client.loop_write()
            with self._calls_lock:
                calls, self._calls = self._calls, []
            for fn, done, box in calls:
                try:
                    box.append(fn())
                except BaseException as exc:  # handed to the caller
                    box.append(exc)
                done.set()
            now = time.monotonic()
            if self.publishing.is_set():
                for i, e in enumerate(self.engines):
                    if now >= next_flow[i]:
                        next_flow[i] += self.flow_interval
                        if now > next_flow[i]:
                            next_flow[i] = now + self.flow_interval     # fell behind: no burst
                        e.publish_flows(self.records)
                        self.tally["flow_batches_published"] += 1
                    if now >= next_status[i]:
                        next_status[i] = now + self.status_interval
                        if e.connected.is_set():
                            e.publish_status()
            if now >= next_misc:
                next_misc = now + 1.0
                for i, e in enumerate(self.engines):
                    e.client.loop_misc()
                    e.pump()
                    if e.client.socket() is None and i not in pending_connect:
                        at = reconnect_at.setdefault(i, now + 1.0)
                        if now >= at:
                            reconnect_at.pop(i, None)
                            try:
                                e.client.reconnect()
                            except OSError:
                                reconnect_at[i] = now + 2.0
            else:
                # acknowledged batches leave the spool promptly, new ones go out
                for e in self.engines:
                    if e.flows.inflight or e.events.inflight:
                        e.flows.pump()
                        e.events.pump()

    # -- figures -----------------------------------------------------------------------------
    def wait_all(self, pred, timeout: float) -> int:
        """Wait until ``pred(engine)`` holds for every engine; returns how many it holds for."""
        deadline = time.monotonic() + timeout
        n = 0
        while True:
            n = sum(1 for e in self.engines if pred(e))
            if n == len(self.engines) or time.monotonic() >= deadline:
                return n
            time.sleep(0.05)

    def drain(self, timeout: float) -> dict[str, int]:
        """Stop publishing and wait until every spooled batch has the broker's PUBACK; returns
        ``totals()`` (its ``backlog`` is what is still waiting when ``timeout`` passed)."""
        self.publishing.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.call(lambda: sum(e.backlog for e in self.engines)):
            time.sleep(0.2)
        return self.totals()

    def decision_spread(self, add, value: str, timeout: float = 60.0) -> list[float]:
        """Watch ``value``, run ``add()`` (which makes a decision for it, e.g. through the manager's
        control socket) and wait until every engine applied a rule set holding it; returns the
        seconds from just before ``add()`` until each engine had it (sorted; fewer than the fleet
        when ``timeout`` passed)."""
        self.watch.add(value)
        t0 = time.monotonic()
        add()
        self.wait_all(lambda e: e.id in self.arrivals.get(value, {}), timeout)
        return self.spread(value, t0)

    def spread(self, value: str, t0: float) -> list[float]:
        """Seconds from ``t0`` until ``value`` reached each engine that has it (sorted)."""
        return sorted(t - t0 for t in self.arrivals.get(value, {}).values())

    def totals(self) -> dict[str, int]:
        out = dict(self.tally)
        for e in self.engines:
            for k, v in e.counters.snapshot().items():
                out[k] = out.get(k, 0) + v
        out["backlog"] = sum(e.backlog for e in self.engines)
        return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

