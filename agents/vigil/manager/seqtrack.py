"""Batches an engine numbers (``seq``): a QoS 1 redelivery or a spool replay must count once.

Every consumer of numbered batches keeps its own tracker (ingest for what it writes, the policy for
what it evaluates): each has its own subscription, so each sees its own redeliveries.
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field

from .. import topics
from ..counters import Counters

log = logging.getLogger(__name__)


@dataclass
class _SeqState:
    last: int = 0
    seen_recent: set[int] = field(default_factory=set)


class SeqTracker:
    def __init__(self, counters: Counters, duplicate_counter: str, gap_counter: str | None = None):
        self.counters = counters
        self.duplicate_counter = duplicate_counter
        self.gap_counter = gap_counter
        self._seq: dict[str, _SeqState] = defaultdict(_SeqState)
        self._lock = threading.Lock()

    def check(self, engine: str, seq: int) -> str:
        """'new' or 'duplicate' (seen already, or far behind) — and counts gaps."""
        with self._lock:
            st = self._seq[engine]
            if seq in st.seen_recent or (st.last and seq <= st.last - 10_000):
                self.counters.inc(self.duplicate_counter)
                return "duplicate"
            if self.gap_counter and st.last and seq > st.last + 1:
                self.counters.inc(self.gap_counter, seq - st.last - 1)
            if seq > st.last:
                st.last = seq
            st.seen_recent.add(seq)
            if len(st.seen_recent) > 4096:
                floor = st.last - 2048
                st.seen_recent = {s for s in st.seen_recent if s > floor}
            return "new"


def sending_engine(topic: str, claimed: str | None, counters: Counters) -> str | None:
    """The engine a message came from (its topic); None, counted, when the body claims another."""
    dev = topics.device_of(topic)
    if dev is None or dev[0] != "engine" or (claimed is not None and claimed != dev[1]):
        counters.inc("payload_rejected_wrong_sender")
        log.warning("message on %s claims engine %r; ignored", topic, claimed)
        return None
    return dev[1]
