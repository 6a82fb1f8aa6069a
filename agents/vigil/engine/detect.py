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

Forged sources (senders.py): a flow whose first frame carried an address owned by another MAC (the
kernel's ``FORGED`` mark bit, exact per flow) never counts against that address.  Such probes are
counted per forged address on their own; when they add up to a scan or to ``spoof_min_flows``
unanswered flows (a SYN flood with a forged source), the finding is attributed to the MAC and
bridge port the forged frames came from (sampled): that MAC/port is blocked (``block_local_mac``)
and a ``spoofing`` event names it; the address's owner is never blocked for it.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Callable

log = logging.getLogger(__name__)

FORGED_KEY = "forged|"      # source key of flows whose first frame carried a forged address
MAX_SIBLINGS = 8            # addresses of one MAC blocked together at most (more: a router's MAC)


class _Scale:
    """One slow time scale of one source: distinct failed targets (at most ``min_targets``, the
    oldest dropped first) and decayed counts of all and of failed probes (time constant = the
    scale), so a source that mostly succeeds never adds up however long it runs."""
    __slots__ = ("targets", "tot", "fail", "t")

    def __init__(self, t: float):
        self.targets: dict = {}           # (dst, (proto, dport)) -> last failed probe time
        self.tot = self.fail = 0.0
        self.t = t

    def add(self, t: float, failed: bool, target, seconds: float, cap: int) -> None:
        if t > self.t:
            decay = math.exp(-(t - self.t) / seconds)
            self.tot *= decay
            self.fail *= decay
            self.t = t
        self.tot += 1.0
        if not failed:
            return
        self.fail += 1.0
        self.targets[target] = t
        if len(self.targets) > cap:
            horizon = t - seconds
            for k in [k for k, v in self.targets.items() if v < horizon]:
                del self.targets[k]
            while len(self.targets) > cap:
                del self.targets[min(self.targets, key=self.targets.__getitem__)]


class _Source:
    __slots__ = ("probes", "ports", "hosts", "ok", "replied", "last_eval", "over_since", "slow", "held")

    def __init__(self):
        self.probes: deque = deque()      # (t, key, dst, port)
        self.ports: Counter = Counter()   # (proto, dport) -> probes in window
        self.hosts: Counter = Counter()   # dst -> probes in window
        self.ok: set = set()              # keys of probes that were answered/established
        self.replied: set = set()         # TCP probes answered (SYN-ACK) but not established
        self.held = False                 # a decision held for lost signals was reported
        self.last_eval = 0.0
        self.over_since: float | None = None
        self.slow: list[_Scale] | None = None   # per cfg.scales, made at the first finished probe


class ScanDetector:
    def __init__(self, cfg, mode: Callable[[], str], emit: Callable[[dict], None],
                 enforcer: Callable[[], object | None] = lambda: None, counters=None,
                 clock: Callable[[], float] = time.monotonic, senders=None):
        self.cfg = cfg
        self.senders = senders            # senders.Senders: who forges an address (None: no attribution)
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
        self.slow_found: list[tuple] = []              # slow-scale findings for evaluate()
        self.scales = [(float(s), int(n)) for s, n in cfg.scales]
        self.lock = threading.Lock()
        self.decisions = 0
        self.would_block = 0
        # flow-set datapath: signal -> whether its samples were lost lately (flowsignals.SignalLoss);
        # None with conntrack, whose events are not rate-limited
        self.signal_loss: Callable[[str], bool] | None = None
        self._held_events: list[dict] = []             # emitted by evaluate() once the lock is free

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    # -- events ---------------------------------------------------------------------------------
    def on_new(self, key, src: str, dst: str, proto: int, dport: int, forged: bool = False) -> None:
        now = self.clock()
        if forged:
            src = FORGED_KEY + src       # counted apart: never against the address's owner
            self._count("detector_forged_flows")
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
            self._expire(st, now, src)
            if len(st.probes) >= self.cfg.max_probes_per_source:   # bounded: oldest judged early
                self._pop(st, src)
                self._count("detector_probes_capped")
            st.probes.append((now, key, dst, (proto, dport)))
            st.ports[(proto, dport)] += 1
            st.hosts[dst] += 1
            self.flow_src[key] = src
            if self._over(src, st):
                if src not in self.pending:
                    log.debug("detector: %s over the threshold (%d ports, %d hosts, first probe %.3fs ago)",
                              src, len(st.ports), len(st.hosts), now - st.probes[0][0])
                self.pending.add(src)
        self.evaluate()

    def on_answer(self, key, established: bool, proto: int) -> None:
        """A REPLY or ASSURED event: TCP counts once established, other protocols on reply (a TCP
        reply before that is remembered: it matters when the established signal may be lost)."""
        with self.lock:
            src = self.flow_src.get(key)
            if src is None:
                return
            st = self.sources.get(src)
            if st is None:
                return
            if proto == 6 and not established:
                st.replied.add(key)
            else:
                st.ok.add(key)

    def on_destroy(self, key) -> None:
        with self.lock:
            self.flow_src.pop(key, None)

    def _expire(self, st: _Source, now: float, src: str) -> None:
        horizon = now - self.cfg.window
        while st.probes and st.probes[0][0] < horizon:
            self._pop(st, src)

    def _pop(self, st: _Source, src: str) -> None:
        """The oldest probe leaves the fast window; its outcome feeds the slow time scales."""
        t, k, dst, port = st.probes.popleft()
        st.ports[port] -= 1
        if not st.ports[port]:
            del st.ports[port]
        st.hosts[dst] -= 1
        if not st.hosts[dst]:
            del st.hosts[dst]
        failed = k not in st.ok
        st.ok.discard(k)
        st.replied.discard(k)
        self.flow_src.pop(k, None)
        if not self.scales:
            return
        if st.slow is None:
            st.slow = [_Scale(t) for _ in self.scales]
        for (seconds, need), sc in zip(self.scales, st.slow):
            sc.add(t, failed, (dst, port), seconds, need)
            if failed and len(sc.targets) >= need and sc.fail >= sc.tot * (1.0 - self.cfg.max_success_ratio):
                oldest = min(sc.targets.values())
                if t - oldest <= seconds:
                    self.slow_found.append((src, seconds, dict(sc.targets), 1.0 - sc.fail / max(sc.tot, 1e-9)))
                    break

    # -- decisions ------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Re-check sources over the thresholds; called on events and about every 50 ms."""
        if not self.pending and not self.slow_found:
            return
        now = self.clock()
        found = []
        with self.lock:
            slow, self.slow_found = self.slow_found, []
            for src, seconds, targets, ratio in slow:
                if src in self.decided:
                    continue
                if not src.startswith(FORGED_KEY) and self._signals_lossy():
                    self._count("detector_slow_held_signal_loss")   # its failures may be lost answers
                    continue
                senders = None
                if src.startswith(FORGED_KEY):
                    senders = self.senders.senders_of(src[len(FORGED_KEY):], since=now - seconds) \
                        if self.senders else []
                self.decided[src] = now + self.cfg.block_ttl
                self.pending.discard(src)
                st = self.sources.pop(src, None)
                for _, k, _, _ in (st.probes if st is not None else ()):
                    self.flow_src.pop(k, None)
                n_ports = len({p for _, p in targets})
                n_hosts = len({d for d, _ in targets})
                span = now - min(targets.values())
                self._count("detector_slow_findings")
                found.append((src, n_ports, n_hosts, len(targets), ratio, span, senders, seconds))
            for src in list(self.pending):
                st = self.sources.get(src)
                if st is None:
                    self.pending.discard(src)
                    continue
                self._expire(st, now, src)
                n_ports, n_hosts = len(st.ports), len(st.hosts)
                if not self._over(src, st):
                    self.pending.discard(src)
                    st.over_since = None
                    continue
                if st.over_since is None:
                    st.over_since = now
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
                if not src.startswith(FORGED_KEY) and self._held(src, st, mature, ok):
                    continue
                senders = None
                if src.startswith(FORGED_KEY):
                    senders = self.senders.senders_of(src[len(FORGED_KEY):]) if self.senders else []
                    if not senders and now - st.over_since < self.cfg.attribution_wait:
                        continue     # the sampled frames that name the sender are on their way
                self.pending.discard(src)
                self.decided[src] = now + self.cfg.block_ttl
                span = now - st.probes[0][0] if st.probes else 0.0
                found.append((src, n_ports, n_hosts, len(st.probes), ratio, span, senders, None))
                del self.sources[src]
                for _, k, _, _ in st.probes:
                    self.flow_src.pop(k, None)
        with self.lock:
            held, self._held_events = self._held_events, []
        for ev in held:
            self.emit(ev)
        for src, n_ports, n_hosts, probes, ratio, span, senders, scale in found:
            if src.startswith(FORGED_KEY):
                self._decide_forged(src, n_ports, n_hosts, probes, ratio, span, senders, scale)
            else:
                self._decide(src, n_ports, n_hosts, probes, ratio, span, scale)

    def _signals_lossy(self) -> bool:
        return self.signal_loss is not None and (self.signal_loss("flow-ack") or self.signal_loss("flow-reply"))

    def _held(self, src: str, st: _Source, mature: list, ok: int) -> bool:
        """While the kernel's rate limits lose flow signals (the flow-set datapath), a source is not
        blocked if its probes whose outcome a lost signal could hide would make it a client: an
        adversary who floods past the limits must not get a busy client blocked.  Reported once
        per source (action ``held``); decided when the signals are whole again."""
        if self.signal_loss is None:
            return False
        unsure = 0
        if self.signal_loss("flow-ack"):       # answered, the ACK that completes it maybe lost
            unsure += sum(1 for k in mature if k in st.replied and k not in st.ok)
        if self.signal_loss("flow-reply"):     # no answer seen, maybe lost
            unsure += sum(1 for k in mature if k not in st.replied and k not in st.ok)
        if (ok + unsure) / len(mature) <= self.cfg.max_success_ratio:
            return False
        self._count("detector_held_signal_loss")
        if not st.held:
            st.held = True
            detail = (f"scan-like: {len(st.ports)} ports, {len(st.hosts)} hosts, {ok} of {len(mature)} probes "
                      f"established, {unsure} unsure: flow signals were lost to the kernel's rate limit, "
                      "decision held")
            log.warning("detector: held %s (%s)", src, detail)
            self._held_events.append({"type": "scan", "action": "held", "src": src, "severity": "low", "detail": detail,
                       "distinct_ports": len(st.ports), "distinct_hosts": len(st.hosts),
                       "probes": len(st.probes), "success_ratio": round(ok / len(mature), 3),
                       "origin": "engine-local"})
        return True

    def _over(self, key: str, st: _Source) -> bool:
        if len(st.ports) >= self.cfg.min_ports or len(st.hosts) >= self.cfg.min_hosts:
            return True
        return key.startswith(FORGED_KEY) and len(st.probes) >= self.cfg.spoof_min_flows

    def _decide_forged(self, key, n_ports, n_hosts, probes, ratio, span, senders, scale=None) -> None:
        """Forged-source traffic: attributed to the MAC/port that sent it, never to the address."""
        addr = key[len(FORGED_KEY):]
        what = "scan" if scale or n_ports >= self.cfg.min_ports or n_hosts >= self.cfg.min_hosts else "flood"
        owner = self.senders.owner(addr) if self.senders else None
        base = {"type": "spoofing", "severity": "high", "forged_src": addr, "finding": what,
                "owner_mac": owner[0] if owner else None, "owner_port": owner[1] if owner else None,
                "distinct_ports": n_ports, "distinct_hosts": n_hosts, "probes": probes,
                "success_ratio": round(ratio, 3), "ttl": self.cfg.block_ttl, "origin": "engine-local",
                "scope": "mac"}
        summary = (f"{_slow(scale)}{what} with forged source {addr}: {n_ports} ports, {n_hosts} hosts, "
                   f"{probes} flows in {span:.1f}s, {ratio:.0%} established")
        if not senders:
            self._count("detector_forged_unattributed")
            ev = {**base, "action": "none", "detail": summary + " (no sampled frame names the sender)"}
            log.warning("detector: %s", ev["detail"])
            self.emit(ev)
            return
        for mac, port, seen in senders:
            reason = f"{summary}; sent by {mac} on {port or '?'} ({seen} sampled frames)"
            if owner:
                reason += f"; {addr} belongs to {owner[0]} on {owner[1] or '?'}"
            ev = {**base, "mac": mac, "in_port": port, "sampled_frames": seen, "detail": reason}
            owns = self.senders.owned_by(mac) if self.senders else set()
            if any(self._protected(a) for a in owns):
                ev["action"] = "none"
                ev["detail"] += " (the sender owns an address in detect.never_block)"
                self._count("detector_protected")
            else:
                self._enforce(ev, lambda enf, m=mac, p=port, o=owns, r=reason:
                              enf.block_local_mac(m, p, self.cfg.block_ttl, r, owns=sorted(o)),
                              "block_local_mac")
            log.warning("detector: %s %s on %s (%s)", ev["action"], mac, port, reason)
            self.emit(ev)

    def _enforce(self, ev: dict, call, method: str) -> None:
        if self.mode() != "enforcing":
            ev["action"] = "would-block"
            self.would_block += 1
            self._count("detector_would_block")
            return
        enf = self.enforcer()
        if enf is None or not hasattr(enf, method):
            ev["action"] = "would-block"
            ev["detail"] += " (no enforcement part: not enforced)"
            self._count("detector_no_enforcer")
            return
        try:
            done = call(enf)
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
            log.exception("%s failed", method)

    def _decide(self, src, n_ports, n_hosts, probes, ratio, span, scale=None) -> None:
        reason = (f"{_slow(scale)}scan: {n_ports} ports, {n_hosts} hosts, {probes} "
                  f"{'failed targets' if scale else 'probes'} in {span:.1f}s, {ratio:.0%} established")
        ev = {"type": "scan", "detail": reason, "src": src, "severity": "high", "time_scale": scale or self.cfg.window,
              "distinct_ports": n_ports, "distinct_hosts": n_hosts, "probes": probes,
              "success_ratio": round(ratio, 3), "ttl": self.cfg.block_ttl, "origin": "engine-local"}
        if self._protected(src):
            ev["action"] = "none"
            ev["detail"] += " (source is in detect.never_block)"
            self._count("detector_protected")
        else:
            self._enforce(ev, lambda enf: enf.block_local(src, self.cfg.block_ttl, reason), "block_local")
            if ev["action"] == "block" and self.cfg.block_all_addresses_of_mac:
                self._block_siblings(src, reason, ev)
        log.warning("detector: %s %s (%s)", ev["action"], src, reason)
        self.emit(ev)

    def _block_siblings(self, src: str, reason: str, ev: dict) -> None:
        """``detect.block_all_addresses_of_mac``: the other IPv4/IPv6 addresses the blocked source's
        MAC owns go with it (a host does not dodge a block by switching family).  Only for a host's
        MAC: one owning more than ``MAX_SIBLINGS`` addresses is a router's, whose addresses are
        other people's."""
        owner = self.senders.owner(src) if self.senders else None
        if owner is None:
            return
        mac = owner[0]
        siblings = sorted(self.senders.owned_by(mac) - {src})
        if len(siblings) + 1 > MAX_SIBLINGS:
            ev["siblings_skipped"] = f"{mac} owns {len(siblings) + 1} addresses: a router, not a host"
            self._count("detector_siblings_router")
            return
        enf = self.enforcer()
        done = []
        for a in siblings:
            if self._protected(a):
                continue
            try:
                if enf.block_local(a, self.cfg.block_ttl, f"{reason}; same MAC {mac} as {src}") is not False:
                    done.append(a)
            except Exception:
                self._count("detector_block_errors")
                log.exception("block_local(%s) failed", a)
        if done:
            ev["mac"] = mac
            ev["also_blocked"] = done
            ev["detail"] += f"; also blocked {', '.join(done)} (same MAC {mac})"
            self._count("detector_sibling_blocks", len(done))

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


def _slow(scale: float | None) -> str:
    return f"slow ({scale:.0f}s scale) " if scale else ""
