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
from collections import Counter, deque
from typing import Any

from ..influx import line
from ..manager.api import Context, DecisionRequest
from .config import CollectorConfig
from .correlation import Correlator, Firing, is_ip, load_rules
from .event import SEVERITY_NAMES, Event
from .parsers import ParseStats, parse, raw_event
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


class Rejected(ValueError):
    """An event that cannot become a point; ``reason`` is the counted name."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


_MAX_MS = 9.2e18          # event_time is an int64 field in ms: |t| below 2**63 ms, finite


def event_line(ev: Event, peer: str, ts_ns: int, raw_max: int) -> str:
    """One point; tags are few and bounded (type, format, severity, action class, named source).

    Equivalent to ``influx.line`` (tested against it), built faster: the tag part is cached per
    tag combination and only string/int fields occur.  Every value is checked before it is
    written (strings are strings, ports 0-65535, severity 0-4, the time finite and within int64
    milliseconds); anything else raises ``Rejected`` -- one bad value must not make InfluxDB
    refuse the whole batch it travels in."""
    sev = ev.severity
    if sev is not None and (type(sev) is not int or not 0 <= sev <= 4):
        raise Rejected("value_range", f"severity {sev!r:.40}")
    action = ev.action
    if action is not None and type(action) is not str:
        raise Rejected("field_type", "action")
    tag_action = (action if action in _TAG_ACTIONS else "other") if action else None
    source = ev.source if ev.source != peer else None
    key = (ev.source_type, ev.format, sev, tag_action, source)
    prefix = _prefix_cache.get(key)
    if prefix is None:
        if type(ev.source_type) is not str or type(ev.format) is not str:
            raise Rejected("field_type", "source_type/format")
        tags = {"source_type": ev.source_type, "format": ev.format,
                "severity": SEVERITY_NAMES[sev] if sev is not None else None,
                "action": tag_action, "source": source}
        prefix = MEASUREMENT + "".join(f",{k}={str(v).translate(_TAG_ESC)}" for k, v in sorted(tags.items())
                                       if v is not None and v != "")
        if len(_prefix_cache) > 10000:
            _prefix_cache.clear()
        _prefix_cache[key] = prefix
    sf = _str_field
    parts = [prefix, " peer=", sf(peer)]
    add = parts.append
    # unrolled (this runs for every message): each string field is checked to be a str
    v = ev.device
    if v is not None:
        if v.__class__ is not str:
            raise Rejected("field_type", "device")
        add(",device=")
        add(sf(v))
    v = ev.src
    if v is not None:
        if v.__class__ is not str:
            raise Rejected("field_type", "src")
        add(",src=")
        add(sf(v))
    v = ev.dst
    if v is not None:
        if v.__class__ is not str:
            raise Rejected("field_type", "dst")
        add(",dst=")
        add(sf(v))
    v = ev.proto
    if v is not None:
        if v.__class__ is not str:
            raise Rejected("field_type", "proto")
        add(",proto=")
        add(sf(v))
    if action is not None:
        add(",action_raw=")
        add(sf(action))
    v = ev.sig_id
    if v is not None:
        if v.__class__ is not str:
            raise Rejected("field_type", "sig_id")
        add(",sig_id=")
        add(sf(v))
    v = ev.sig_name
    if v is not None:
        if v.__class__ is not str:
            raise Rejected("field_type", "sig_name")
        add(",sig_name=")
        add(sf(v))
    v = ev.category
    if v is not None:
        if v.__class__ is not str:
            raise Rejected("field_type", "category")
        add(",category=")
        add(sf(v))
    v = ev.sport
    if v is not None:
        if v.__class__ is not int or not 0 <= v <= 65535:
            raise Rejected("value_range", f"sport {v!r:.40}")
        add(f",sport={v}i")
    v = ev.dport
    if v is not None:
        if v.__class__ is not int or not 0 <= v <= 65535:
            raise Rejected("value_range", f"dport {v!r:.40}")
        add(f",dport={v}i")
    t = ev.time
    if t is not None:
        if t.__class__ is not float and t.__class__ is not int:
            raise Rejected("field_type", "time")
        ms = t * 1000
        if not -_MAX_MS < ms < _MAX_MS:         # also NaN and the infinities
            raise Rejected("value_range", f"time {t!r:.40}")
        add(f",event_time={int(ms)}i")
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
        self.rejected: Counter[str] = Counter()
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
        collections and made full collections frequent).

        Each message is on its own: a message whose event cannot become a point (``Rejected``,
        or anything a parser let through) is counted by reason (``collector_rejected_<reason>``)
        and stored as a raw event instead; a parser that failed already gave a raw event
        (``parser_error``).  The rest of the batch is stored whatever one message holds."""
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
                text = data.decode("utf-8", errors="replace")
                ts = time_ns()
                if ts <= last:                 # unique timestamps: InfluxDB would merge equal points
                    ts = last + 1
                last = ts
                try:
                    ev = parse(text, hint=hint, stats=stats)
                    if ev is None:
                        empty += 1
                        continue
                    ev.source = name
                    add_line(event_line(ev, sender, ts, raw_max))
                    if "parse_error" in ev.extra:
                        self._rejected("parser_error")
                except Exception as exc:       # this message only: never its neighbours
                    ev = self._keep_raw(text, exc, name, sender, ts, raw_max, add_line)
                    if ev is None:
                        continue
                try:
                    process(ev, now)
                except Exception:
                    self._rejected("correlation_error")
                    log.exception("collector: correlation failed on a %s event from %s", ev.format, sender)
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

    def _rejected(self, reason: str) -> None:
        self.rejected[reason] += 1
        self.counters.inc("collector_rejected_" + reason)

    def _keep_raw(self, text: str, exc: Exception, name: str, sender: str, ts: int, raw_max: int,
                  add_line) -> Event | None:
        reason = exc.reason if isinstance(exc, Rejected) else "store_error"
        self._rejected(reason)
        log.debug("collector: message from %s rejected (%s): %s", sender, reason, exc)
        try:
            ev = raw_event(text, (str(exc) if isinstance(exc, Rejected) else f"{reason}: {exc}")[:200])
            ev.source = name
            add_line(event_line(ev, sender, ts, raw_max))
            return ev
        except Exception:              # not even the raw form: counted, the batch goes on
            self._rejected("unstorable")
            log.exception("collector: message from %s could not be stored even raw", sender)
            return None

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
                "rejected": dict(self.rejected),
                "rules": {r.name: self.correlator.fired[r.name] for r in self.rules},
                "correlation_groups": self.correlator.groups(),
                "rate_limited_by_sender": dict(self.server.per_source_dropped),
                "recent_decisions": list(self.proposed)}
