"""vigil-engine: the appliance agent.

A small supervisor loop around replaceable parts: it probes the kernel, installs flow accounting
and sampling rules, and every ``flows.interval`` dumps the kernel's conntrack counters and spools
one batch (published in order, deleted on PUBACK); a retained status (with a last-will) tells
everyone what the engine is doing.  Two reader threads follow the kernel between polls: conntrack
events (final counters of ended flows; NEW/ASSURED for the scan detector) and NFLOG samples (protocol
checks).  Python never sits on the forwarding path: if this process dies, the bridge keeps
forwarding.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from .. import __version__, payload, plugins, topics
from ..contracts.engine import EngineStatus, EventBatch, FlowBatch
from ..counters import Counters
from ..files import atomic_write
from ..daemon import FatalError, StartupError, main as daemon_main
from ..mqtt import MqttClient, Will
from . import datapath, nftables
from .api import EngineContext
from .checks import ProtocolChecks, run_checks
from .config import EngineConfig
from .conntrack import EV_DESTROY, EV_NEW, IPS_ASSURED, IPS_SEEN_REPLY, ConntrackEvents, ConntrackReader
from .detect import ScanDetector
from .flows import FlowTable
from .flowset import FlowSetReader, FlowSetTable
from .flowsignals import FlowSignals
from .nflog import NflogReader
from .senders import FORGED, Senders
from .spool import Spool, SpoolPublisher

SIGNAL_CHECK = 2.0      # seconds between two reads of the flow signals' rule counters
log = logging.getLogger(__name__)

# (config section, "module:factory"): each factory takes (section_config, EngineContext) and returns
# a part; a section that is absent or has enabled: false is not started.
PARTS: list[tuple[str, str]] = [
    ("enforcement", "vigil.engine.enforce:make"),
]


class Learning:
    """Learning progress in traffic time: only intervals that carried traffic count."""

    def __init__(self, cfg, state_path: Path):
        self.period = cfg.period
        self.path = state_path
        self.elapsed = 0.0
        self.mode = cfg.start_mode
        try:
            saved = json.loads(state_path.read_text())
            self.elapsed = float(saved.get("elapsed", 0.0))
            self.mode = saved.get("mode", self.mode)
        except (OSError, ValueError):
            pass
        if self.period == 0:
            self.mode = "enforcing"

    def advance(self, seconds: float) -> None:
        if self.mode != "learning":
            return
        self.elapsed += seconds
        if self.elapsed >= self.period:
            self.mode = "enforcing"
            log.info("learning period of %.0fs traffic time complete; mode is now enforcing", self.period)

    @property
    def progress(self) -> float:
        return 1.0 if self.period == 0 else min(1.0, self.elapsed / self.period)

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"elapsed": self.elapsed, "mode": self.mode}))


class EventOutbox:
    """Local events (checks, detector decisions) go out on ``events`` in small batches; at most
    ``limit`` per flush, the rest counted as ``events_dropped``.  Each batch is spooled on disk
    like a flow batch (``<state>/spool-events``), so a broker outage, even across an engine
    restart, loses none; each carries a ``seq`` that grows across restarts."""

    def __init__(self, publisher: SpoolPublisher, engine_id: str, counters: Counters, limit: int):
        self.publisher, self.engine_id, self.counters, self.limit = publisher, engine_id, counters, limit
        self.seq = publisher.spool.last_seq()
        self._items: list[dict] = []
        self._lock = threading.Lock()
        self.urgent = threading.Event()

    def emit(self, ev: dict) -> None:
        ev.setdefault("ts", payload.now_ms())
        with self._lock:
            if len(self._items) >= self.limit:
                self.counters.inc("events_dropped")
                return
            self._items.append(ev)
        self.counters.inc("events")
        if ev.get("action") in ("block", "would-block"):
            self.urgent.set()

    def flush(self, mode: str) -> None:
        with self._lock:
            items, self._items = self._items, []
        self.urgent.clear()
        if items:
            for ev in items:
                ev.setdefault("mode", mode)
            # unique and increasing across restarts even when the spool was empty at start
            self.seq = max(self.seq + 1, payload.now_ms())
            batch = EventBatch.from_body({"engine": self.engine_id, "seq": self.seq, "events": items})
            if batch.invalid:    # a check wrote an event its contract refuses: a bug, counted and shown
                self.counters.inc("events_invalid", batch.invalid)
                log.error("%d local events do not match their contract; dropped", batch.invalid)
            if not self.publisher.spool.put(self.seq, batch.encode(self.engine_id)):
                self.counters.inc("events_dropped", len(items))
        self.publisher.pump()

    @property
    def backlog(self) -> int:
        return self.publisher.backlog


class EngineService:
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.counters = Counters()
        self.state_dir = cfg.state_dir
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create state_dir {self.state_dir}: {exc}") from None
        self.seq_path = self.state_dir / "flows.seq"
        try:
            self.seq = int(self.seq_path.read_text())
        except (OSError, ValueError):
            self.seq = 0
        self.learning = Learning(cfg.learning, self.state_dir / "learning.json")
        self.features: datapath.KernelFeatures | None = None
        self.status_topic = topics.engine(cfg.engine_id, "status")
        will = Will(self.status_topic, EngineStatus(state="offline").encode(cfg.engine_id))
        self.mqtt = MqttClient(cfg.mqtt, f"engine-{cfg.engine_id}", self.counters, will=will,
                               on_connected=self.publish_status)
        marks = datapath.port_marks(cfg.bridge.ports)
        self.port_names = {m: p for p, m in marks.items()}
        self.table = FlowTable(self.port_names, max_flows=cfg.flows.max_flows)
        self.reader: ConntrackReader | None = None
        self.ct_events: ConntrackEvents | None = None
        self.signals: FlowSignals | None = None      # the flow-set datapath's flow signals
        self._full_warned = -1e9
        self.nflog: NflogReader | None = None
        self.threads: list[threading.Thread] = []
        self.spool = Spool(self.state_dir / "spool", int(cfg.flows.spool_max_mb * 1024 * 1024), self.counters)
        self.publisher = SpoolPublisher(self.mqtt, topics.engine(cfg.engine_id, "flows"), self.spool,
                                        self.counters)
        event_spool = Spool(self.state_dir / "spool-events", int(cfg.samples.events_spool_mb * 1024 * 1024),
                            self.counters, what="event_batches")
        self.outbox = EventOutbox(SpoolPublisher(self.mqtt, topics.engine(cfg.engine_id, "events"), event_spool,
                                                 self.counters),
                                  cfg.engine_id, self.counters, cfg.samples.max_events_per_interval)
        self.checks = ProtocolChecks(cfg.samples.copy_range, list(cfg.samples.dhcp_servers),
                                     mode=lambda: self.learning.mode, port_names=self.port_names,
                                     counters=self.counters, arp_binding_ttl=cfg.samples.arp_binding_ttl)
        self.timeouts_applied: dict[str, int] = {}
        self.stop_event = threading.Event()
        self.ctx = EngineContext(cfg, self.mqtt, self.counters, self.state_dir, self.stop_event,
                                 mode=lambda: self.learning.mode,
                                 set_mode=lambda m: (setattr(self.learning, "mode", m), self.learning.save()))
        self.parts = plugins.build(PARTS, cfg, self.ctx)
        self.ctx.parts.update((p.name, p) for p in self.parts)
        self.senders = Senders(self.port_names, self.counters, owner_ttl=cfg.samples.arp_binding_ttl)
        self.senders_path = self.state_dir / "senders.json"
        self.senders.load(self.senders_path)
        self.table.mac_for = self.senders.mac_for
        self.detector = ScanDetector(cfg.detect, mode=lambda: self.learning.mode, emit=self.outbox.emit,
                                     enforcer=lambda: self.ctx.parts.get("enforcement"),
                                     counters=self.counters, senders=self.senders) if cfg.detect.enabled else None

    # -- status ---------------------------------------------------------------------------
    def status_body(self, state: str = "running") -> dict:
        return {
            "state": state,
            "engine": self.cfg.engine_id,
            "mode": self.learning.mode,
            "learning": {"progress": round(self.learning.progress, 4),
                         "elapsed": round(self.learning.elapsed, 1), "period": self.learning.period},
            "ruleset_generation": getattr(self.ctx.parts.get("enforcement"), "generation", None),
            "kernel": self.features.as_dict() if self.features else None,
            "flows_tracked": len(self.table.flows),
            "flow_interval": self.cfg.flows.interval,
            "tags": self.cfg.tags,
            "version": __version__,
            "counters": {**self.counters.snapshot(), "flows_evicted": self.table.evicted,
                         "flow_records_dropped": self.table.records_dropped,
                         "flow_batches_dropped": self.counters.get("flow_batches_dropped"),
                         "samples": self.counters.get("samples"),
                         "flows_ended_by_event": self.table.ended_by_event,
                         "flows_ended_by_absence": self.table.ended_by_absence},
            "telemetry": {"flow_source": self.features.flow_source if self.features else None,
                          "flow_signals": self.signals.status() if self.signals else None,
                          "ct_events": self.ct_events is not None,
                          "samples": self.nflog is not None,
                          "spool_batches": len(self.spool), "spool_bytes": self.spool.bytes,
                          "event_spool_batches": self.outbox.backlog,
                          "seq": self.seq, "idle_timeouts": self.timeouts_applied},
            "detector": self.detector.status() if self.detector else None,
            "senders": self.senders.status(),
            **{p.name: _safe_status(p) for p in self.parts},
        }

    def status_message(self, state: str = "running") -> bytes:
        """The status through its contract (contracts.engine.EngineStatus)."""
        return EngineStatus.from_body(self.status_body(state)).encode(self.cfg.engine_id)

    def publish_status(self, state: str = "running") -> None:
        self.mqtt.publish(self.status_topic, self.status_message(state), qos=1, retain=True)

    # -- flows ----------------------------------------------------------------------------
    def poll_flows(self, interval_start_ms: int) -> None:
        now_ms = payload.now_ms()
        t0 = time.monotonic()
        if self.flowset:
            records = self.table.update(self._flowset_elements(), now_ms)
        else:
            records = self.table.update(self.reader.dump(self.table.known_by_id()), now_ms)
        self.counters.inc("flow_polls")
        poll_s = time.monotonic() - t0
        if records:
            self.learning.advance((now_ms - interval_start_ms) / 1000.0)
        cap = self.cfg.flows.max_records_per_batch
        for i in range(0, max(1, len(records)), cap):
            chunk = records[i:i + cap]
            if not chunk and i > 0:
                break
            self.seq += 1
            batch = FlowBatch(engine=self.cfg.engine_id, seq=self.seq, source=self.features.flow_source,
                              interval={"start": interval_start_ms, "end": now_ms}, mode=self.learning.mode,
                              flows_tracked=len(self.table.flows), evicted_total=self.table.evicted,
                              dropped_batches_total=self.counters.get("flow_batches_dropped"),
                              poll_ms=round(poll_s * 1000, 2), flows=chunk)
            # seq is persisted before the batch leaves, so a restart never reuses a number
            atomic_write(self.seq_path, str(self.seq))
            self.publisher.submit(self.seq, batch.encode(self.cfg.engine_id))
            self.counters.inc("flow_batches")
            self.counters.inc("flow_records", len(chunk))
        self.learning.save()

    # -- supervisor -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        fcfg = self.cfg.flows
        try:
            self.features = datapath.probe(fcfg.source)
        except datapath.NftError as exc:
            raise StartupError(str(exc)) from None
        log.info("kernel features: %s", self.features.as_dict())
        scfg = self.cfg.samples
        spec = datapath.SampleSpec(scfg.group if scfg.enabled else 0, scfg.rate, scfg.new_flow_rate)
        ports = list(self.cfg.bridge.ports)
        try:
            datapath.install_flow_accounting(self.features, ports, spec, fcfg.flowset_timeout,
                                             scfg.flow_signal_rate)
        except datapath.NftError as exc:
            raise StartupError(f"flow accounting: {exc}") from None
        self.ctx.features = self.features
        if self.flowset:
            # the enforcement part rewrites bridge vigil with the datapath in the same transaction
            self.ctx.datapath_script = lambda: datapath.flowset_script(
                ports, spec, fcfg.flowset_timeout, flow_rate=scfg.flow_signal_rate)
            self.table = FlowSetTable(self.port_names, fcfg.flowset_timeout, max_flows=fcfg.max_flows)
            self.table.mac_for = self.senders.mac_for
            self.reader = FlowSetReader(counters=self.counters, set_size=datapath.FLOWSET_SIZE)
        else:
            self.timeouts_applied = datapath.set_idle_timeouts(dict(fcfg.idle_timeouts))
            self.reader = ConntrackReader(self.counters)
        self.senders.requeue_all()     # the owner sets were just recreated empty
        self._sync_owners()
        self._start_readers()
        for p in self.parts:
            p.start()
        self.mqtt.start()
        interval = self.cfg.flows.interval
        next_poll = time.monotonic() + interval
        next_status = time.monotonic() + self.cfg.status_interval
        interval_start = payload.now_ms()
        next_owner_save = time.monotonic() + 60.0
        next_signal_check = time.monotonic() + SIGNAL_CHECK
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    try:
                        self.poll_flows(interval_start)
                    except Exception:
                        self.counters.inc("flow_poll_errors")
                        log.exception("flow poll failed")
                    interval_start = payload.now_ms()
                    next_poll += interval
                    if next_poll < now:  # we fell behind (suspend, overload): skip, do not burst
                        next_poll = now + interval
                for p in self.parts:
                    try:
                        p.tick()
                    except Exception:
                        self.counters.inc(f"part_errors_{p.name}")
                        log.exception("part %s failed in tick", p.name)
                if now >= next_status:
                    self.publish_status()
                    next_status = now + self.cfg.status_interval
                if self.mqtt.fatal:
                    # refused credentials never heal by waiting: exit non-zero so the service
                    # manager restarts us (and retries) — the kernel's rule set keeps working
                    raise FatalError(f"MQTT broker refused the engine: {self.mqtt.fatal}")
                self._sync_owners()
                if self.signals is not None and now >= next_signal_check:
                    next_signal_check = now + SIGNAL_CHECK
                    self._check_signals()
                if now >= next_owner_save:
                    next_owner_save = now + 60.0
                    self._save_owners()
                self.publisher.pump()
                self.outbox.flush(self.learning.mode)
                # wake early for an urgent event (a block decision) or to drain the spool
                step = 0.2 if self.publisher.backlog or self.outbox.backlog else 1.0
                self.outbox.urgent.wait(max(0.0, min(next_poll, next_status, time.monotonic() + step)
                                            - time.monotonic()))
        finally:
            self.shutdown()

    # -- source attribution (senders.py) ------------------------------------------------------
    def _sync_owners(self) -> None:
        table = "vigil" if self.flowset else datapath.FLOW_TABLE
        script = self.senders.kernel_script(f"bridge {table}")
        if not script:
            return
        try:
            datapath.nft(script, timeout=10.0)
            self.counters.inc("owner_syncs")
        except datapath.NftError as exc:
            self.counters.inc("owner_sync_errors")
            log.error("could not write learned owners to the kernel: %s", exc)

    def _save_owners(self) -> None:
        try:
            self.senders.save(self.senders_path)
        except OSError as exc:
            self.counters.inc("owner_save_errors")
            log.error("could not save learned owners: %s", exc)

    # -- kernel readers (threads) ---------------------------------------------------------------
    def _flowset_elements(self) -> list:
        """One dump of the flow sets.  A set near its size means new flows go uncounted until flows
        expire (enforcement stays exact on the slow path): logged once a minute (the reader counts
        ``flowset_full``)."""
        out = self.reader.dump()
        fullest = max(self.reader.sizes.values(), default=0)
        if fullest >= datapath.FLOWSET_SIZE * 0.98 and time.monotonic() - self._full_warned >= 60:
            self._full_warned = time.monotonic()
            log.warning("a flow set holds %d of %d elements: new flows go uncounted until flows expire "
                        "(a flood of new tuples?)", fullest, datapath.FLOWSET_SIZE)
        return out

    def _check_signals(self) -> None:
        """The flow signals' rule counters (candidates before the rate limit) against the samples
        that arrived: the detector holds decisions while a signal is lossy (flowsignals.SignalLoss)."""
        try:
            kernel = nftables.log_rule_counters()
        except Exception as exc:      # the detector then runs as if nothing were lost: say so
            self.counters.inc("signal_check_errors")
            log.warning("cannot read the flow signals' rule counters: %s", exc)
            return
        self.signals.loss.observe(kernel, self.signals.received)

    @property
    def flowset(self) -> bool:
        return self.features is not None and self.features.flow_source == datapath.FLOWSET

    def _start_readers(self) -> None:
        if self.flowset:
            self._start_nflog()
            if self.nflog is None:
                log.error("flow-set datapath without NFLOG samples: the scan detector gets no signal")
            else:
                self.signals = FlowSignals(self.detector, self.table, self.port_names, self.counters,
                                           senders=self.senders)
                self.signals.loss.window = self.cfg.detect.window
                if self.detector is not None:
                    self.detector.signal_loss = self.signals.loss.lossy
            for t in self.threads:
                t.start()
            return
        try:
            self.ct_events = ConntrackEvents(self.counters)
        except OSError as exc:
            log.error("conntrack events unavailable (%s): ended flows are found by polling only, "
                      "and the scan detector is off", exc)
            self.counters.inc("ct_events_unavailable")
        if self.ct_events is not None:
            self.threads.append(threading.Thread(target=self._ct_loop, name="ct-events", daemon=True))
        self._start_nflog()
        for t in self.threads:
            t.start()

    def _start_nflog(self) -> None:
        scfg = self.cfg.samples
        if scfg.enabled and self.features.nflog:
            try:
                self.nflog = NflogReader(scfg.group, scfg.copy_range, self.counters)
            except OSError as exc:
                log.error("NFLOG group %d unavailable (%s): protocol checks are off", scfg.group, exc)
                self.counters.inc("nflog_unavailable")
        if self.nflog is not None:
            self.threads.append(threading.Thread(target=self._nflog_loop, name="nflog", daemon=True))

    def _ct_loop(self) -> None:
        det = self.detector
        senders = self.senders
        while not self.stop_event.is_set():
            try:
                batch = self.ct_events.read(timeout=0.05)
                now_ms = payload.now_ms()
                for ev, e in batch:
                    if ev == EV_DESTROY:
                        self.table.on_destroy(e, now_ms)
                        senders.forget_flow(e.proto, e.src, e.sport, e.dst, e.dport)
                        if det:
                            det.on_destroy(e.key)
                        continue
                    if ev != EV_NEW and e.status & IPS_ASSURED:
                        senders.on_assured(e.proto, e.src, e.sport, e.dst, e.dport)
                    if det is None:
                        continue
                    if ev == EV_NEW:
                        det.on_new(e.key, e.src, e.dst, e.proto, e.dport, forged=bool(e.mark & FORGED))
                    elif e.status & (IPS_ASSURED | IPS_SEEN_REPLY):
                        det.on_answer(e.key, bool(e.status & IPS_ASSURED), e.proto)
                if det:
                    det.evaluate()
            except Exception:
                if self.stop_event.is_set():
                    return
                self.counters.inc("ct_event_errors")
                log.exception("conntrack event reader failed; continuing")
                time.sleep(0.5)

    def _nflog_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                signals = self.signals
                # with the flow-set datapath the detector's signals come this way: wake often
                for sample in self.nflog.read(timeout=0.05 if signals and self.detector else 0.5):
                    self.senders.on_sample(sample)
                    if signals is not None:
                        signals.on_sample(sample)
                    for ev in run_checks(self.checks, sample):
                        self.outbox.emit(ev)
                if signals is not None and self.detector is not None:
                    self.detector.evaluate()
            except Exception:
                if self.stop_event.is_set():
                    return
                self.counters.inc("nflog_errors")
                log.exception("NFLOG reader failed; continuing")
                time.sleep(0.5)

    def shutdown(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=2.0)
        for r in (self.ct_events, self.nflog):
            if r is not None:
                try:
                    r.close()
                except OSError:
                    pass
        self._save_owners()
        try:
            self.publisher.pump()
            self.outbox.flush(self.learning.mode)
        except Exception:
            log.exception("final flush failed")
        for p in reversed(self.parts):
            try:
                p.close()
            except Exception:
                log.exception("part %s failed to close", p.name)
        # A clean stop says so (retained) rather than leaving the last-will to the broker.
        if self.mqtt.connected.is_set():
            self.mqtt.publish_wait(self.status_topic,
                                   self.status_message("stopped"),
                                   retain=True, timeout=2.0)
        self.mqtt.stop()
        if self.reader is not None:
            self.reader.close()


def _safe_status(part) -> dict:
    try:
        return part.status()
    except Exception as exc:
        return {"error": str(exc)}


def main(argv: list[str] | None = None) -> int:
    return daemon_main("engine", EngineConfig, EngineService, argv,
                       description="Vigil engine agent: flow telemetry and dynamic policy on a bridge")


if __name__ == "__main__":
    raise SystemExit(main())
