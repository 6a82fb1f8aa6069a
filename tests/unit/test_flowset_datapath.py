"""The flow-set datapath (flows.source: flowset): its nft script, the enforcement table written with
it, the verdict caches flushed by every change, and the flow signals fed to the detector.  The
kernel's acceptance and the real traffic are in tests/integration/test_flowset_engine.py and the
lab tier's attacks (tests/lab, ``BOTH_DATAPATHS``)."""
from __future__ import annotations

import socket
import struct

import pytest

from vigil.engine import datapath
from vigil.engine import nftables as nft
from vigil.engine.flowsignals import FlowSignals, sample_tuple
from vigil.engine.nflog import Sample
from vigil.engine.senders import FORGED

pytestmark = pytest.mark.unit

PORTS = ["eth0", "eth1"]


def _chain(script: str, name: str) -> list[str]:
    return [l.split(f"add rule bridge vigil {name} ", 1)[1] for l in script.splitlines()
            if l.startswith(f"add rule bridge vigil {name} ")]


def test_a_checked_flow_costs_one_lookup_and_one_update_before_anything_else():
    script = datapath.flowset_script(PORTS, datapath.SampleSpec(7, 100, 200), 120)
    pre = _chain(script, "pre")
    # the four hit rules come first: ports v4, v6, then the portless sets
    for rule, (seen, flows) in zip(pre[:4], (("seen4", "flows4"), ("seen6", "flows6"),
                                              ("seenn4", "flowsn4"), ("seenn6", "flowsn6"))):
        assert f"@{seen} update @{flows} " in rule and rule.endswith(" accept")
    assert "th sport . th dport" in pre[0] and "th sport" not in pre[2]
    # the block lookups run before any flow is counted or cached
    jumps = [i for i, r in enumerate(pre) if r.endswith("jump v4") or r.endswith("jump v6")]
    gotos = [i for i, r in enumerate(pre) if " goto flow" in r]
    assert len(jumps) == 2 and len(gotos) == 4 and max(jumps) < min(gotos)
    assert "type filter hook prerouting priority -300" in script and "hook forward" not in script
    # every sampling rule is rate-limited; the flow signals each have a limit too
    logs = [l for l in script.splitlines() if " log " in l]
    assert logs and all("limit rate" in l for l in logs)
    for sig in datapath.FLOWSET_SIGNALS:
        assert f'prefix "{sig}"' in script
    assert 'limit rate 2000/second burst 2000 packets log group 7 prefix "new-flow"' in script


def test_forged_frames_and_handshakes_never_enter_the_verdict_cache():
    script = datapath.flowset_script(PORTS, datapath.SampleSpec(7), 120)
    for chain in ("flow4p", "flow6p", "flow4n", "flow6n"):
        adds = [r for r in _chain(script, chain) if " add @seen" in r]
        assert adds and all(f"meta mark & {datapath.FORGED_BIT:#x} == 0" in r for r in adds)
        if chain.endswith("p"):
            assert any("tcp flags & (syn|rst|ack) == ack" in r for r in adds)
        updates = [i for i, r in enumerate(_chain(script, chain)) if r.startswith("update @flows")]
        assert updates and updates[0] < [i for i, r in enumerate(_chain(script, chain)) if " add @seen" in r][0]


def test_without_sampling_no_log_rules_but_the_datapath_still_counts():
    script = datapath.flowset_script(PORTS, datapath.SampleSpec(0), 60)
    assert " log " not in script and "update @flows4" in script and "timeout 60s" in script


def test_enforcement_table_with_the_datapath_has_no_forward_hook_and_allow_returns():
    dp = datapath.flowset_script(PORTS, datapath.SampleSpec(7), 120)
    import ipaddress
    guards = [ipaddress.ip_network("10.0.0.0/8")]
    script = nft.table_script(guards, dp)
    assert "delete chain bridge vigil forward" in script
    assert "add rule bridge vigil forward" not in script
    v4 = _chain(script, "v4")
    assert v4 and not any(r.endswith(" accept") for r in v4)
    assert sum(r.endswith(" return") for r in v4) >= 2     # the miss rule and the allow rules
    assert any(r.endswith("counter drop comment \"block4 src\"") for r in v4)
    # the conntrack layout is unchanged: forward hook, allow accepts
    plain = nft.table_script(guards)
    assert "add rule bridge vigil forward meta protocol ip jump v4" in plain
    assert any(r.endswith(" accept") for r in _chain(plain, "v4"))


def _flowset_writer() -> nft.NftWriter:
    w = nft.NftWriter(nft.DryRunBackend())
    w.use_flowset(lambda: datapath.flowset_script(PORTS, datapath.SampleSpec(7), 120), list(datapath.SEEN_SETS))
    return w


def test_every_change_flushes_the_verdict_caches_in_its_own_transaction():
    w = _flowset_writer()
    w.ensure_table()
    assert "flush set bridge vigil seen4" in w.backend.scripts[-1]
    w.update({"local4": [("10.1.2.3", 60_000)]}, {})
    delta = w.backend.scripts[-1]
    assert delta.index("add element bridge vigil local4 { 10.1.2.3 timeout 60000ms }") < delta.index(
        "flush set bridge vigil seen4")
    for s in datapath.SEEN_SETS:
        assert f"flush set bridge vigil {s}\n" in delta
    w.block_mac("02:00:00:00:00:01", "eth0", 60_000)
    assert "flush set bridge vigil seen6" in w.backend.scripts[-1]
    # a snapshot goes as one netlink batch: the flushes are in the same bytes
    w.replace({"block4": [("10.9.9.9", None)]})
    batch = w.backend.batches[-1]
    for s in datapath.SEEN_SETS:
        assert s.encode() + b"\0" in batch
    assert "flush set bridge vigil seenn4" in w.backend.scripts[-1]


def test_conntrack_writer_flushes_nothing_extra():
    w = nft.NftWriter(nft.DryRunBackend())
    w.update({"local4": [("10.1.2.3", 60_000)]}, {})
    assert "seen" not in w.backend.scripts[-1]


# -- flow signals ----------------------------------------------------------------------------------

def _ip4(src: str, dst: str, proto: int, l4: bytes, frag: int = 0) -> bytes:
    total = 20 + len(l4)
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + l4


def _tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 1024, 0, 0)


def _sample(prefix: str, payload: bytes, mark: int = 1) -> Sample:
    return Sample(prefix, 7, 0x0800, payload, mark=mark, ts=1000.0)


class _Det:
    def __init__(self):
        self.new, self.answers = [], []

    def on_new(self, key, src, dst, proto, dport, forged=False):
        self.new.append((key, src, dst, proto, dport, forged))

    def on_answer(self, key, established, proto):
        self.answers.append((key, established, proto))


class _Table:
    def __init__(self):
        self.hints = []

    def note_first(self, *a, **kw):
        self.hints.append((a, kw))


A, B = "10.0.0.1", "10.0.0.2"
SYN, RST, ACK = 0x02, 0x04, 0x10


def test_a_handshake_is_a_probe_then_established():
    det, table = _Det(), _Table()
    sig = FlowSignals(det, table, {1: "eth0", 2: "eth1"})
    assert sig.on_sample(_sample("new-flow", _ip4(A, B, 6, _tcp(40000, 80, SYN))))
    assert det.new == [((6, A, B, 40000, 80), A, B, 6, 80, False)]
    assert table.hints[0][0] == (4, A, B, 6, 40000, 80) and table.hints[0][1]["in_port"] == "eth0"
    sig.on_sample(_sample("flow-reply", _ip4(B, A, 6, _tcp(80, 40000, SYN | ACK)), mark=2))
    assert det.answers == [((6, A, B, 40000, 80), False, 6)]    # an answer is not yet a handshake
    sig.on_sample(_sample("flow-ack", _ip4(A, B, 6, _tcp(40000, 80, ACK))))
    assert det.answers[-1] == ((6, A, B, 40000, 80), True, 6)


def test_a_syn_scan_never_looks_established():
    det = _Det()
    sig = FlowSignals(det, None, {})
    for port, answer in ((22, SYN | ACK), (23, RST | ACK)):
        sig.on_sample(_sample("new-flow", _ip4(A, B, 6, _tcp(50000, port, SYN))))
        sig.on_sample(_sample("flow-reply", _ip4(B, A, 6, _tcp(port, 50000, answer))))
    # the scanner's own bare ACK for a refused port, and a forged SYN-ACK then ACK, prove nothing
    sig.on_sample(_sample("flow-ack", _ip4(A, B, 6, _tcp(50000, 23, ACK))))
    sig.on_sample(_sample("new-flow", _ip4(A, B, 6, _tcp(50000, 24, SYN))))
    sig.on_sample(_sample("flow-reply", _ip4(B, A, 6, _tcp(24, 50000, SYN | ACK)), mark=1 | FORGED))
    sig.on_sample(_sample("flow-ack", _ip4(A, B, 6, _tcp(50000, 24, ACK))))
    assert len(det.new) == 3 and [a for a in det.answers if a[1]] == []      # never established


def test_udp_and_icmp_answers_and_forged_probes():
    det = _Det()
    sig = FlowSignals(det, None, {})
    udp = struct.pack(">HHHH", 5353, 53, 8, 0)
    sig.on_sample(_sample("new-flow", _ip4(A, B, 17, udp)))
    sig.on_sample(_sample("flow-reply", _ip4(B, A, 17, struct.pack(">HHHH", 53, 5353, 8, 0))))
    assert det.answers == [((17, A, B, 5353, 53), True, 17)]
    icmp = bytes([8, 0, 0, 0, 0, 1, 0, 1])
    sig.on_sample(_sample("new-flow", _ip4(A, B, 1, icmp), mark=1 | FORGED))
    key, src, dst, proto, dport, forged = det.new[-1]
    assert key == (1, A, B, 0, 0) and proto == 1 and forged      # a portless flow's key
    sig.on_sample(_sample("flow-reply", _ip4(B, A, 1, bytes([0, 0, 0, 0, 0, 1, 0, 1]))))
    assert det.answers[-1] == ((1, A, B, 0, 0), True, 1)


def test_garbage_samples_are_counted_not_raised():
    from vigil.counters import Counters
    c = Counters()
    sig = FlowSignals(_Det(), None, {}, counters=c)
    for junk in (b"", b"\x45", b"\x60" + b"\0" * 10, b"\x99" * 64):
        assert sig.on_sample(_sample("new-flow", junk))
    assert c.get("flow_signals_malformed") == 4
    assert not sig.on_sample(_sample("tcp-xmas", _ip4(A, B, 6, _tcp(1, 2, 0x29))))   # not a signal
    # a fragment's "ports" are payload: keyed as a portless flow
    t = sample_tuple(_sample("new-flow", _ip4(A, B, 17, b"\x13\x88\x00\x35" + b"x" * 8, frag=0x2001)))
    assert t[:6] == (4, 17, A, B, 0, 0)


def test_answers_waiting_for_their_ack_are_bounded():
    sig = FlowSignals(_Det(), None, {}, max_pending=100)
    for i in range(1000):
        sig.on_sample(_sample("flow-reply", _ip4(B, A, 6, _tcp(80, 10000 + i, SYN | ACK))))
    assert sig.status()["awaiting_ack"] == 100



# -- lost signals ----------------------------------------------------------------------------------

class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_signal_loss_is_the_kernels_candidates_against_the_samples_that_arrived():
    from vigil.engine.flowsignals import SignalLoss
    clock = _Clock()
    loss = SignalLoss(window=10.0, clock=clock)
    loss.observe({"flow-ack": 1000}, {"flow-ack": 0})          # the first reading is the baseline
    assert not loss.lossy("flow-ack")
    clock.t += 2
    loss.observe({"flow-ack": 1500}, {"flow-ack": 480})         # 20 on their way: not lost
    assert not loss.lossy("flow-ack")
    clock.t += 2
    loss.observe({"flow-ack": 9500, "flow-reply": 10}, {"flow-ack": 2500, "flow-reply": 10})
    assert loss.lossy("flow-ack") and not loss.lossy("flow-reply") and loss.lost["flow-ack"] == 5980
    assert loss.status()["lossy"] == ["flow-ack"]
    clock.t += 2
    loss.observe({"flow-ack": 9600}, {"flow-ack": 2600})        # whole again ...
    assert loss.lossy("flow-ack")                              # ... but the last loss is recent
    clock.t += 10
    assert not loss.lossy("flow-ack")
    loss.observe({"flow-ack": 5}, {"flow-ack": 2605})            # rule rewritten: counters restart
    assert not loss.lossy("flow-ack")


def test_flow_signals_count_what_arrived_and_hand_the_detector_replies():
    det = _Det()
    sig = FlowSignals(det, None, {})
    sig.on_sample(_sample("new-flow", _ip4(A, B, 6, _tcp(40000, 80, SYN))))
    sig.on_sample(_sample("flow-reply", _ip4(B, A, 6, _tcp(80, 40000, SYN | ACK))))
    assert det.answers == [((6, A, B, 40000, 80), False, 6)]   # answered, not established
    assert sig.received == {"new-flow": 1, "flow-reply": 1, "flow-ack": 0}


def _busy_client(ack_lost: bool, reply_lost: bool = False):
    """A client connecting to 40 ports of a server whose SYN-ACKs came, but whose completing ACKs
    the kernel's rate limit dropped (an adversary's ACK flood used up the budget)."""
    from vigil.engine.config import DetectConfig
    from vigil.engine.detect import ScanDetector
    clock, events, blocked = _Clock(), [], []

    class Enf:
        def block_local(self, address, ttl, reason):
            blocked.append(address)

    det = ScanDetector(DetectConfig(), mode=lambda: "enforcing", emit=events.append, enforcer=lambda: Enf(),
                       clock=clock)
    det.signal_loss = lambda sig: (sig == "flow-ack" and ack_lost) or (sig == "flow-reply" and reply_lost)
    for port in range(8000, 8040):
        key = (6, A, B, 50000 + port, port)
        det.on_new(key, A, B, 6, port)
        det.on_answer(key, False, 6)                               # the SYN-ACK sample arrived
        clock.t += 0.001
    clock.t += 0.5
    det.evaluate()
    det.evaluate()
    return det, events, blocked


def test_a_busy_client_is_not_blocked_while_the_ack_signal_is_lost():
    det, events, blocked = _busy_client(ack_lost=True)
    assert blocked == [] and [e["action"] for e in events] == ["held"]       # reported once
    assert events[0]["src"] == A and "decision held" in events[0]["detail"]
    # the same evidence without loss is a scan (every answered probe stayed unestablished)
    det, events, blocked = _busy_client(ack_lost=False)
    assert blocked == [A] and [e["action"] for e in events] == ["block"]


def test_lost_replies_hold_a_source_whose_probes_may_have_been_answered():
    from vigil.engine.config import DetectConfig
    from vigil.engine.detect import ScanDetector
    clock, events = _Clock(), []
    det = ScanDetector(DetectConfig(), mode=lambda: "learning", emit=events.append, clock=clock)
    det.signal_loss = lambda sig: sig == "flow-reply"
    for port in range(1, 60):                                     # no reply sample at all
        det.on_new((6, A, B, 40000, port), A, B, 6, port)
        clock.t += 0.001
    clock.t += 0.5
    det.evaluate()
    assert [e["action"] for e in events] == ["held"]
    det.signal_loss = lambda sig: False                           # whole again: decided
    clock.t += 0.1
    det.evaluate()
    assert [e["action"] for e in events] == ["held", "would-block"]
