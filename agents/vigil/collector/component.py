"""The collector as a manager component: listeners → parsers → InfluxDB and correlation → decisions.

Threads: the asyncio listener thread (``server``) and one worker that parses, stores and
correlates.  Decisions are handed to ``ctx.decisions`` from ``tick()`` (the manager's supervisor
thread), so the decision sink never has to be thread-safe towards the collector.

Throughput: one worker thread, CPU-bound, ~26 us per message of the mixed ingest corpus (parse
and header ~55 %, correlation ~25 %, line protocol ~13 %; docs/collector.md, Performance).
Correlation state is kept out of the cyclic GC's way (plain tuples and dicts of plain values):
with Events held in it, full collections were a quarter to a half of the worker's time.

Parsing in worker processes was measured and NOT built: with N processes fed whole batches of
frames and returning (line, compact fields) -- correlation and storage staying here -- the
end-to-end bench ran at 33.2k/29.5k msg/s (1 process) and 27.6k/31.5k (2) against 35.9k/31.2k
for this single worker, because on the 2-core target influxd (~17 us of CPU per point) and the
sender share the cores, and the manager process still spends ~12 us per message (correlation
~6 us; receiving ~660 bytes of results per message and rebuilding events the rest).  On a host
with spare cores it would pay (without InfluxDB: 47k msg/s with 1 parse process against 40k).  If it is built, correlation must not be sharded by sender address: rules group by event
fields (``src`` by default), and a sequence rule such as scan-then-sqli needs a Snort sensor's
and a web server's events about one attacker in the same state -- so correlation stays in one
place, or events are routed to correlators by the hash of each rule's ``group_by`` value.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

from ..influx import line
from ..manager.api import Context, DecisionRequest
from .config import CollectorConfig
from .correlation import Correlator, Firing, is_ip, load_rules
from .event import SEVERITY_NAMES, Event
from .parsers import ParseStats, parse
from .server import SourceMap, SyslogServer

log = logging.getLogger(__name__)

MEASUREMENT = "security_event"
_TAG_ACTIONS = {"allow", "block", "alert"}


_TAG_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_prefix_cache: dict[tuple, str] = {}


def _str_field(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + v + '"'


def event_line(ev: Event, peer: str, ts_ns: int, raw_max: int) -> str:
    """One point; tags are few and bounded (type, format, severity, action class, named source).

    Equivalent to ``influx.line`` (tested against it), built faster: the tag part is cached per
    tag combination and only string/int fields occur."""
    action = (ev.action if ev.action in _TAG_ACTIONS else "other") if ev.action else None
    source = ev.source if ev.source != peer else None
    key = (ev.source_type, ev.format, ev.severity, action, source)
    prefix = _prefix_cache.get(key)
    if prefix is None:
        tags = {"source_type": ev.source_type, "format": ev.format,
                "severity": SEVERITY_NAMES[ev.severity] if ev.severity is not None else None,
                "action": action, "source": source}
        prefix = MEASUREMENT + "".join(f",{k}={str(v).translate(_TAG_ESC)}" for k, v in sorted(tags.items())
                                       if v is not None and v != "")
        if len(_prefix_cache) > 10000:
            _prefix_cache.clear()
        _prefix_cache[key] = prefix
    sf = _str_field
    parts = [prefix, " peer=", sf(peer)]
    add = parts.append
    v = ev.device
    if v is not None:
        add(",device=")
        add(sf(v))
    v = ev.src
    if v is not None:
        add(",src=")
        add(sf(v))
    v = ev.dst
    if v is not None:
        add(",dst=")
        add(sf(v))
    v = ev.proto
    if v is not None:
        add(",proto=")
        add(sf(v))
    v = ev.action
    if v is not None:
        add(",action_raw=")
        add(sf(v))
    v = ev.sig_id
    if v is not None:
        add(",sig_id=")
        add(sf(v))
    v = ev.sig_name
    if v is not None:
        add(",sig_name=")
        add(sf(v))
    v = ev.category
    if v is not None:
        add(",category=")
        add(sf(v))
    if ev.sport is not None:
        add(f",sport={ev.sport}i")
    if ev.dport is not None:
        add(f",dport={ev.dport}i")
    if ev.time is not None:
        add(f",event_time={int(ev.time * 1000)}i")
    add(",raw=")
    add(sf(ev.raw[:raw_max]))
    add(f" {ts_ns}")
    return "".join(parts)


class CollectorComponent:
    name = "collector"

    def __init__(self, cfg: CollectorConfig, ctx: Context):
        self.cfg, self.ctx = cfg, ctx
        self.counters = ctx.counters
        self.sources = SourceMap(cfg.sources)
        self.rules = load_rules(cfg.rule_paths())
        self.firings: deque[Firing] = deque(maxlen=10000)
        self.correlator = Correlator(self.rules, self._on_fire, cfg.max_groups, ctx.counters)
        self.server = SyslogServer(cfg, ctx.counters, self.sources)
        self.stats = ParseStats()
        self.proposed: deque[dict] = deque(maxlen=50)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="collector-worker", daemon=True)
        self._last_ns = 0
        self._last_expire = time.monotonic()
        ctx.control.register("collector.status", lambda **_: self.status())
        log.info("collector: %d correlation rules loaded (%s)", len(self.rules),
                 ", ".join(r.name for r in self.rules))

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()
        self.server.start()

    def close(self) -> None:
        self.server.stop()
        self._stop.set()
        self._worker.join(5)
        self.tick()   # propose what is still queued

    def tick(self) -> None:
        while self.firings:
            self._propose(self.firings.popleft())

    # -- work ----------------------------------------------------------------------------------
    def _work(self) -> None:
        q = self.server.queue
        while not self._stop.is_set() or not q.empty():
            if time.monotonic() - self._last_expire > 10:
                # correlation state belongs to this thread: expire it here, never from tick()
                self.correlator.expire(time.time())
                self._last_expire = time.monotonic()
            try:
                sender, msgs = q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.handle(sender, msgs)
            except Exception:        # never lose the worker to one bad batch
                self.counters.inc("collector_worker_errors")
                log.exception("collector: failed on a batch of %d messages from %s", len(msgs), sender)

    def handle(self, sender: str, msgs: list[bytes], now: float | None = None, keep: bool = False) -> list[Event]:
        """Parse, store and correlate one batch; the events are returned only with ``keep`` (the
        worker lets each one go once it is done with it: a batch of live events survived GC
        collections and made full collections frequent)."""
        src_cfg = self.sources.lookup(sender)
        name = src_cfg.name if src_cfg else sender
        hint = src_cfg.format if src_cfg else "auto"
        out_lines: list[str] = []
        events: list[Event] = []
        now = time.time() if now is None else now
        # the loop runs for every message: names it uses are looked up once per batch
        stats, process, raw_max = self.stats, self.correlator.process, self.cfg.raw_max
        add_line, time_ns = out_lines.append, time.time_ns
        add_event = events.append if keep else None
        empty = 0
        last = self._last_ns
        try:
            for data in msgs:
                ev = parse(data.decode("utf-8", errors="replace"), hint=hint, stats=stats)
                if ev is None:
                    empty += 1
                    continue
                ev.source = name
                ts = time_ns()
                if ts <= last:                 # unique timestamps: InfluxDB would merge equal points
                    ts = last + 1
                last = ts
                add_line(event_line(ev, sender, ts, raw_max))
                process(ev, now)
                if add_event is not None:
                    add_event(ev)
        finally:
            self._last_ns = last
            if empty:
                self.counters.inc("collector_empty_messages", empty)
        if out_lines:
            self.ctx.writer.write(out_lines)
            self.counters.inc("collector_events", len(out_lines))
        return events

    def _on_fire(self, f: Firing) -> None:
        self.counters.inc("correlation_fired")
        self.firings.append(f)

    def _propose(self, f: Firing) -> None:
        rule = f.rule
        if not is_ip(f.group):
            self.counters.inc("correlation_group_not_an_address")
            log.warning("collector: rule %s fired for %r, which is not an address; no decision",
                        rule.name, f.group)
            return
        req = DecisionRequest(scope="ip", value=f.group, origin=f"correlation:{rule.name}",
                              reason=f"{rule.reason} ({f.count} in {rule.window:g}s)",
                              duration=rule.duration,
                              evidence={"rule": rule.name, "type": rule.type, "group_by": rule.group_by,
                                        "count": f.count, "window": rule.window, "events": f.events})
        try:
            self.ctx.decisions.propose(req)
        except Exception:
            self.counters.inc("correlation_propose_errors")
            log.exception("collector: proposing a decision for rule %s failed", rule.name)
            return
        self.counters.inc("correlation_decisions_proposed")
        self.proposed.append({"rule": rule.name, "value": f.group, "at": time.time()})
        log.info("collector: rule %s fired for %s (%d events); decision proposed", rule.name, f.group, f.count)
        try:
            self.ctx.writer.write([line("correlation", {"rule": rule.name},
                                        {"value": f.group, "count": f.count, "reason": req.reason},
                                        time.time_ns())])
        except ValueError:
            pass

    def status(self) -> dict[str, Any]:
        return {"listening": {k: f"{h}:{p}" for k, (h, p) in self.server.bound.items()},
                "connections": self.server.connections,
                "tls_handshake_failures": self.server.tls_handshake_failures(),
                "queue": self.server.queue.qsize(),
                "parsed": dict(self.stats.parsed), "parse_errors": dict(self.stats.errors),
                "rules": {r.name: self.correlator.fired[r.name] for r in self.rules},
                "correlation_groups": self.correlator.groups(),
                "rate_limited_by_sender": dict(self.server.per_source_dropped),
                "recent_decisions": list(self.proposed)}
