"""Fast local scan detector, fed by conntrack events (sub-second; no polling).

Per source it keeps the probes (new flows) of the last ``window`` seconds with incremental counts of
distinct destination ports and hosts.  A source becomes a scanner when it reached ``min_ports``
distinct ports or ``min_hosts`` distinct hosts AND, among its probes older than ``grace`` (enough
time for a real server to answer and the client to complete the handshake), at most
``max_success_ratio`` were established (TCP: conntrack ASSURED; other protocols: any reply).
A nmap SYN scan never completes a handshake; a client talking to its servers does, so client
traffic does not match even when it opens many connections.

Decision: in ``enforcing`` mode the source is blocked through the enforcement part's
``block_local(address, ttl, reason)`` with a short expiry (longer reactions are the manager's);
in ``learning`` mode the same finding is reported as ``would-block`` and nothing is enforced.
Either way one event goes out.  A decided source is not decided again until its block expires.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Callable

log = logging.getLogger(__name__)


class _Source:
    __slots__ = ("probes", "ports", "hosts", "ok", "last_eval")

    def __init__(self):
        self.probes: deque = deque()      # (t, key, dst, port)
        self.ports: Counter = Counter()   # (proto, dport) -> probes in window
        self.hosts: Counter = Counter()   # dst -> probes in window
        self.ok: set = set()              # keys of probes that were answered/established
        self.last_eval = 0.0


class ScanDetector:
    def __init__(self, cfg, mode: Callable[[], str], emit: Callable[[dict], None],
                 enforcer: Callable[[], object | None] = lambda: None, counters=None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.mode = mode
        self.emit = emit
        self.enforcer = enforcer
        self.counters = counters
        self.clock = clock
        self.never = [ipaddress.ip_network(c, strict=False) for c in cfg.never_block]
        self.sources: OrderedDict[str, _Source] = OrderedDict()
        self.flow_src: dict = {}                       # flow key -> src, for REPLY/ASSURED events
        self.decided: dict[str, float] = {}            # src -> until (monotonic)
        self.pending: set[str] = set()                 # sources to re-evaluate once probes mature
        self.lock = threading.Lock()
        self.decisions = 0
        self.would_block = 0

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    # -- events ---------------------------------------------------------------------------------
    def on_new(self, key, src: str, dst: str, proto: int, dport: int) -> None:
        now = self.clock()
        with self.lock:
            until = self.decided.get(src)
            if until is not None:
                if until > now:
                    return
                del self.decided[src]
            st = self.sources.get(src)
            if st is None:
                st = self.sources[src] = _Source()
                while len(self.sources) > self.cfg.max_sources:
                    old, ost = self.sources.popitem(last=False)
                    for _, k, _, _ in ost.probes:
                        self.flow_src.pop(k, None)
                    self._count("detector_sources_forgotten")
            else:
                self.sources.move_to_end(src)
            self._expire(st, now)
            st.probes.append((now, key, dst, (proto, dport)))
            st.ports[(proto, dport)] += 1
            st.hosts[dst] += 1
            self.flow_src[key] = src
            if len(st.ports) >= self.cfg.min_ports or len(st.hosts) >= self.cfg.min_hosts:
                if src not in self.pending:
                    log.debug("detector: %s over the threshold (%d ports, %d hosts, first probe %.3fs ago)",
                              src, len(st.ports), len(st.hosts), now - st.probes[0][0])
                self.pending.add(src)
        self.evaluate()

    def on_answer(self, key, established: bool, proto: int) -> None:
        """A REPLY or ASSURED event: TCP counts once established, other protocols on reply."""
        if proto == 6 and not established:
            return
        with self.lock:
            src = self.flow_src.get(key)
            if src is None:
                return
            st = self.sources.get(src)
            if st is not None:
                st.ok.add(key)

    def on_destroy(self, key) -> None:
        with self.lock:
            self.flow_src.pop(key, None)

    def _expire(self, st: _Source, now: float) -> None:
        horizon = now - self.cfg.window
        while st.probes and st.probes[0][0] < horizon:
            _, k, dst, port = st.probes.popleft()
            st.ports[port] -= 1
            if not st.ports[port]:
                del st.ports[port]
            st.hosts[dst] -= 1
            if not st.hosts[dst]:
                del st.hosts[dst]
            st.ok.discard(k)
            self.flow_src.pop(k, None)

    # -- decisions ------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Re-check sources over the thresholds; called on events and about every 50 ms."""
        if not self.pending:
            return
        now = self.clock()
        found = []
        with self.lock:
            for src in list(self.pending):
                st = self.sources.get(src)
                if st is None:
                    self.pending.discard(src)
                    continue
                self._expire(st, now)
                n_ports, n_hosts = len(st.ports), len(st.hosts)
                if n_ports < self.cfg.min_ports and n_hosts < self.cfg.min_hosts:
                    self.pending.discard(src)
                    continue
                if now - st.last_eval < 0.02:
                    continue
                st.last_eval = now
                mature = [k for t, k, _, _ in st.probes if t <= now - self.cfg.grace]
                need = min(self.cfg.min_ports, self.cfg.min_hosts) // 2
                if len(mature) < need:
                    continue  # wait until enough probes had time to be answered
                ok = sum(1 for k in mature if k in st.ok)
                ratio = ok / len(mature)
                if ratio > self.cfg.max_success_ratio:
                    self.pending.discard(src)  # busy but successful: a client, not a scanner
                    continue
                self.pending.discard(src)
                self.decided[src] = now + self.cfg.block_ttl
                span = now - st.probes[0][0] if st.probes else 0.0
                found.append((src, n_ports, n_hosts, len(st.probes), ratio, span))
                del self.sources[src]
                for _, k, _, _ in st.probes:
                    self.flow_src.pop(k, None)
        for item in found:
            self._decide(*item)

    def _decide(self, src, n_ports, n_hosts, probes, ratio, span) -> None:
        reason = (f"scan: {n_ports} ports, {n_hosts} hosts, {probes} probes in {span:.1f}s, "
                  f"{ratio:.0%} established")
        ev = {"type": "scan", "detail": reason, "src": src, "severity": "high",
              "distinct_ports": n_ports, "distinct_hosts": n_hosts, "probes": probes,
              "success_ratio": round(ratio, 3), "ttl": self.cfg.block_ttl, "origin": "engine-local"}
        if self._protected(src):
            ev["action"] = "none"
            ev["detail"] += " (source is in detect.never_block)"
            self._count("detector_protected")
        elif self.mode() != "enforcing":
            ev["action"] = "would-block"
            self.would_block += 1
            self._count("detector_would_block")
        else:
            enf = self.enforcer()
            if enf is None or not hasattr(enf, "block_local"):
                ev["action"] = "would-block"
                ev["detail"] += " (no enforcement part: not enforced)"
                self._count("detector_no_enforcer")
            else:
                try:
                    done = enf.block_local(src, self.cfg.block_ttl, reason)
                    if done is False:  # refused (guarded address, full table, kernel error)
                        ev["action"] = "block-refused"
                        self._count("detector_block_refused")
                    else:
                        ev["action"] = "block"
                        self.decisions += 1
                        self._count("detector_blocks")
                except Exception as exc:  # the writer failed: say so, do not crash the reader
                    ev["action"] = "block-failed"
                    ev["error"] = str(exc)
                    self._count("detector_block_errors")
                    log.exception("block_local(%s) failed", src)
        log.warning("detector: %s %s (%s)", ev["action"], src, reason)
        self.emit(ev)

    def _protected(self, src: str) -> bool:
        try:
            a = ipaddress.ip_address(src)
        except ValueError:
            return True
        return any(a in n for n in self.never)

    def status(self) -> dict:
        with self.lock:
            return {"sources": len(self.sources), "decided": len(self.decided),
                    "blocks": self.decisions, "would_block": self.would_block}
