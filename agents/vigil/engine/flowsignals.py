"""The flow-set datapath's flow signals (NFLOG samples) -> the scan detector and the flow table.

Without conntrack there are no NEW / ASSURED / DESTROY events.  The kernel's ``pre`` chain
(datapath.flowset_script) samples instead, each under its own rate limit:

- ``new-flow``: a frame whose flow neither direction of which the flow sets hold -- the
  originator's first frame: a probe for the detector, and the hint that tells the flow table which
  side opened the flow (engine/flowset.py);
- ``flow-reply``: a frame whose direction is new while the other is known -- the answer.  For UDP
  and the others that is success; for TCP it is remembered (a SYN-ACK) or a refusal (RST);
- ``flow-ack``: a TCP segment with only ACK among SYN/FIN/RST/ACK that missed the verdict cache:
  past a handshake.  It counts as established only for a flow whose answer was seen, and only when
  neither the answer nor this segment carried a forged source (a scanner that forges the target's
  SYN-ACK, or sends a bare ACK after its SYN, does not look like a client).

Bounded: the flows waiting for their answer are at most ``max_pending`` (oldest forgotten,
counted).  A sample that cannot be decoded is counted and skipped.

Lost signals (``SignalLoss``): each signal rule counts its candidates before its rate limit.  An
adversary who floods bare ACKs or answers past the limit starves the signals that show a busy
client's connections established, and the client would look like a scanner.  The engine reads the
rule counters every few seconds and compares them with the samples that arrived; while a signal is
lossy the detector holds a decision that the lost signals could have changed (detect.py).
"""
from __future__ import annotations

import struct
import time
from collections import OrderedDict
from typing import Callable

from .flowset import PORT_PROTOS
from .nflog import Sample
from .senders import FORGED, five_tuple

SIGNALS = ("new-flow", "flow-reply", "flow-ack")
_SYN, _RST, _ACK = 0x02, 0x04, 0x10


def sample_tuple(s: Sample) -> tuple[int, int, str, str, int, int, int, int] | None:
    """(family, proto, src, dst, sport, dport, tcp flags, detector port) of a sampled IP packet.
    The ports are the flow set's key: 0 for a protocol without ports and for a fragment; the
    detector's port is the destination port, or for ICMP its code (as conntrack reports it).
    None for what is not IPv4/IPv6."""
    ft = five_tuple(s.payload)
    if ft is None:
        return None
    proto, src, sport, dst, dport = ft
    p = s.payload
    fam = 6 if p[0] >> 4 == 6 else 4
    off = (p[0] & 0x0F) * 4 if fam == 4 else 40
    det_port = dport
    if proto not in PORT_PROTOS or (fam == 4 and struct.unpack_from(">H", p, 6)[0] & 0x1FFF):
        sport = dport = 0
    flags = p[off + 13] if proto == 6 and len(p) >= off + 14 else 0
    return fam, proto, src, dst, sport, dport, flags, det_port


class FlowSignals:
    def __init__(self, detector, table, port_names: dict[int, str], counters=None, max_pending: int = 65536,
                 senders=None):
        self.detector = detector
        self.senders = senders                  # senders.Senders: an established flow proves its source
        self.table = table                      # flowset.FlowSetTable (note_first), or None
        self.port_names = port_names
        self.counters = counters
        self.max_pending = max_pending
        self.replied: OrderedDict = OrderedDict()   # orig key -> True once answered (TCP: SYN-ACK)
        self.received: dict[str, int] = dict.fromkeys(SIGNALS, 0)   # samples that arrived, per signal
        self.loss = SignalLoss()

    def _count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    def on_sample(self, s: Sample) -> bool:
        """Handle one sample; False when it is not a flow signal (the protocol checks take it)."""
        if s.prefix not in SIGNALS:
            return False
        self.received[s.prefix] += 1
        t = sample_tuple(s)
        if t is None:
            self._count("flow_signals_malformed")
            return True
        fam, proto, src, dst, sport, dport, flags, det_port = t
        forged = bool(s.mark & FORGED)
        self._count(f"flow_signals_{s.prefix.replace('-', '_')}")
        if s.prefix == "new-flow":
            if self.table is not None:
                self.table.note_first(fam, src, dst, proto, sport, dport, forged=forged,
                                      in_port=self.port_names.get(s.mark & 0xFF, ""),
                                      ts_ms=int(s.ts * 1000) if s.ts else None)
            if self.detector is not None:
                self.detector.on_new((proto, src, dst, sport, dport), src, dst, proto, det_port, forged=forged)
            return True
        if forged:                               # a forged answer or ACK proves nothing
            self._count("flow_signals_forged_ignored")
            return True
        if s.prefix == "flow-reply":
            orig = (proto, dst, src, dport, sport)
            if proto == 6:
                if flags & _RST or not flags & _SYN:
                    return True                  # refused (or mid-stream): not an answer of a probe
                self.replied[orig] = True
                self.replied.move_to_end(orig)
                if self.detector is not None:
                    self.detector.on_answer(orig, False, 6)      # answered, not established (yet)
                while len(self.replied) > self.max_pending:
                    self.replied.popitem(last=False)
                    self._count("flow_signals_pending_forgotten")
            elif self.detector is not None:
                self.detector.on_answer(orig, True, proto)
            return True
        # flow-ack: from the originator, or from the answering side
        for key in ((proto, src, dst, sport, dport), (proto, dst, src, dport, sport)):
            if self.replied.pop(key, None):
                if self.detector is not None:
                    self.detector.on_answer(key, True, 6)
                if self.senders is not None:
                    self.senders.on_assured(6, key[1], key[3], key[2], key[4])
                break
        return True

    def status(self) -> dict:
        return {"awaiting_ack": len(self.replied), "received": dict(self.received), **self.loss.status()}


class SignalLoss:
    """Whether a flow signal lost samples lately: the kernel's counted candidates of each signal
    rule (nftables.log_rule_counters) against the samples that arrived (FlowSignals.received),
    compared at each ``observe``.  A signal that lost more than ``slack`` samples (or 5 % of its
    candidates: samples still on their way to the reader are not lost) since the previous
    observation is lossy for ``window`` seconds."""

    def __init__(self, window: float = 10.0, slack: int = 50, clock: Callable[[], float] = time.monotonic):
        self.window, self.slack, self.clock = window, slack, clock
        self._last: tuple[dict, dict] | None = None
        self.lost_until: dict[str, float] = {}
        self.lost: dict[str, int] = dict.fromkeys(SIGNALS, 0)     # samples lost, in total

    def observe(self, kernel: dict[str, int], received: dict[str, int]) -> None:
        now = self.clock()
        if self._last is not None:
            k0, r0 = self._last
            for sig in SIGNALS:
                cand = kernel.get(sig, 0) - k0.get(sig, 0)
                if cand < 0:            # the chains were rewritten: counters start again
                    continue
                lost = cand - (received.get(sig, 0) - r0.get(sig, 0))
                if lost > max(self.slack, cand // 20):
                    self.lost[sig] += lost
                    self.lost_until[sig] = now + self.window
        self._last = (dict(kernel), dict(received))

    def lossy(self, signal: str) -> bool:
        return self.lost_until.get(signal, 0.0) > self.clock()

    def status(self) -> dict:
        return {"lost": dict(self.lost), "lossy": sorted(s for s in SIGNALS if self.lossy(s))}
