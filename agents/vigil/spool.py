"""A bounded on-disk buffer of batches (flow records, local events), published in order with QoS 1.

Every batch is written to ``<spool dir>/<seq>.json`` before it is published and deleted only
after the broker's PUBACK.  While the broker is unreachable batches accumulate on disk (they
survive an engine restart too); on reconnect they go out oldest first.  A batch that does not fit
under ``max_bytes`` is counted in ``<what>_dropped`` (``flow_batches_dropped``,
``event_batches_dropped``) and never silently lost.

paho keeps unacknowledged QoS 1 messages and resends them after a reconnect, so a batch already
handed to paho is not published again; the manager also drops duplicate ``seq`` values.

A PUBACK that says "no matching subscribers" (MQTT v5 reason 16: no manager has ever subscribed,
or the broker restarted and lost a shared subscription while no other matches) does not delete
the batch: it stays in the spool and is published again after ``unrouted_retry`` seconds
(``<what>_unrouted`` counts each such answer).
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

from .files import atomic_write

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, directory: Path, max_bytes: int, counters=None, what: str = "flow_batches"):
        self.dir = directory
        self.max_bytes = max_bytes
        self.counters = counters
        self.what = what             # counter prefix: <what>_dropped
        self.dir.mkdir(parents=True, exist_ok=True)
        self.entries: OrderedDict[int, int] = OrderedDict()  # seq -> size, oldest first
        self.bytes = 0
        found = []
        for p in self.dir.glob("*.json"):
            try:
                found.append((int(p.stem), p.stat().st_size))
            except (ValueError, OSError):
                self._count("spool_files_ignored")
        for seq, size in sorted(found):
            self.entries[seq] = size
            self.bytes += size
        for p in self.dir.glob("*.tmp"):                # a write a crash cut short
            p.unlink(missing_ok=True)
        if self.entries:
            log.info("spool %s: %d batches (%d bytes) waiting from an earlier run", self.dir.name,
                     len(self.entries), self.bytes)

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}.json"

    def put(self, seq: int, data: bytes) -> bool:
        if self.bytes + len(data) > self.max_bytes:
            self._count(f"{self.what}_dropped")
            log.warning("spool %s full (%d bytes): batch %d dropped", self.dir.name, self.bytes, seq)
            return False
        path = self._path(seq)
        try:
            atomic_write(path, data)
        except OSError as exc:
            self._count(f"{self.what}_dropped")
            self._count("spool_write_errors")
            log.error("spool: cannot write batch %d: %s", seq, exc)
            return False
        self.entries[seq] = len(data)
        self.bytes += len(data)
        return True

    def read(self, seq: int) -> bytes | None:
        try:
            return self._path(seq).read_bytes()
        except OSError as exc:
            self._count("spool_read_errors")
            log.error("spool: cannot read batch %d: %s; dropping it", seq, exc)
            self.remove(seq)
            self._count(f"{self.what}_dropped")
            return None

    def remove(self, seq: int) -> None:
        size = self.entries.pop(seq, None)
        if size is None:
            return
        self.bytes -= size
        try:
            self._path(seq).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("spool: cannot delete batch %d: %s", seq, exc)

    def __len__(self) -> int:
        return len(self.entries)

    def last_seq(self) -> int:
        return next(reversed(self.entries), 0)


class SpoolPublisher:
    """Publishes spooled batches oldest first, at most ``max_inflight`` unacknowledged."""

    def __init__(self, mqtt, topic: str, spool: Spool, counters, max_inflight: int = 20,
                 unrouted_retry: float = 5.0, clock=time.monotonic):
        self.mqtt = mqtt
        self.topic = topic
        self.spool = spool
        self.counters = counters
        self.max_inflight = max_inflight
        self.unrouted_retry = unrouted_retry
        self.clock = clock
        self.inflight: OrderedDict[int, object] = OrderedDict()  # seq -> paho MQTTMessageInfo
        self.retry_at: dict[int, float] = {}      # seq -> when to publish again (nobody subscribed)

    def submit(self, seq: int, data: bytes) -> None:
        if self.spool.put(seq, data):
            self.pump()

    def pump(self) -> None:
        """Delete acknowledged batches; publish the next ones if connected."""
        take_unrouted = getattr(self.mqtt, "take_unrouted", None)
        now = self.clock()
        for seq in [s for s, info in self.inflight.items() if info.is_published()]:
            info = self.inflight.pop(seq)
            if take_unrouted is not None and take_unrouted(info.mid):
                if not self.retry_at:
                    log.warning("spool %s: no subscriber for %s; keeping batches until one subscribes",
                                self.spool.what, self.topic)
                self.retry_at[seq] = now + self.unrouted_retry
                self.counters.inc(f"{self.spool.what}_unrouted")
                continue
            self.spool.remove(seq)
            self.counters.inc(f"{self.spool.what}_acked")
        if not self.mqtt.connected.is_set():
            return
        for seq in list(self.spool.entries):
            if len(self.inflight) >= self.max_inflight:
                break
            if seq in self.inflight or self.retry_at.get(seq, 0) > now:
                continue
            self.retry_at.pop(seq, None)
            data = self.spool.read(seq)
            if data is None:
                continue
            info = self.mqtt.publish(self.topic, data, qos=1)
            if info.rc not in (0, 4):  # 4: no connection; paho still queues it and resends
                self.counters.inc(f"{self.spool.what}_publish_errors")
                break
            self.inflight[seq] = info
            self.counters.inc(f"{self.spool.what}_sent")

    @property
    def backlog(self) -> int:
        return len(self.spool)
