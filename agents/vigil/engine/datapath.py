"""Kernel feature probe and the flow-accounting tables.

Kernels differ (PLATFORM.md): this one has ``br_netfilter`` but no ``nf_conntrack_bridge``; Debian's
stock kernel has both as modules.  ``probe()`` finds out what works; ``install_flow_accounting()``
loads the tables that make the kernel track bridged flows with byte/packet counters:

- ``bridge vigil_flow`` prerouting marks each packet with its ingress port number (1, 2), because
  the ingress bridge port is no longer known once br_netfilter hands the packet to ``inet`` hooks;
- ``inet vigil_flow`` forward copies that mark into the conntrack entry of a new flow (a ``ct``
  expression is also what makes conntrack track flows in this namespace at all);
- with bridge conntrack, the bridge table does both itself.

These tables only mark and count: they never drop.  Enforcement lives in ``bridge vigil``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .nftables import NftError, nft_cli

__all__ = ["NftError", "nft", "probe", "install_flow_accounting"]

log = logging.getLogger(__name__)

FLOW_TABLE = "vigil_flow"


def nft(script: str, check_only: bool = False, timeout: float = 30.0) -> None:
    """Run an nft script as one transaction (``nft -f -``)."""
    nft_cli(script, check_only=check_only, timeout=timeout)


@dataclass
class KernelFeatures:
    conntrack: bool
    conntrack_acct: bool
    br_netfilter: bool
    bridge_conntrack: bool
    nflog: bool
    flow_source: str  # "bridge-conntrack", "br_netfilter-conntrack", "bridge-flowset" or "none"

    def as_dict(self) -> dict:
        return asdict(self)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _write(path: str, value: str) -> bool:
    # a setting already made (sysctl.d, with the unit's /proc/sys read-only) needs no write
    if _read(path) == value:
        return True
    try:
        Path(path).write_text(value)
        return True
    except OSError:
        return False


def probe(source: str = "auto") -> KernelFeatures:
    """What this kernel offers; ``source`` (flows.source): ``flowset`` asks for the flow-set
    datapath (below), which needs only bridge-family dynamic sets with counters."""
    conntrack = _read("/proc/sys/net/netfilter/nf_conntrack_acct") is not None
    acct = _read("/proc/sys/net/netfilter/nf_conntrack_acct") == "1"
    brnf = _read("/proc/sys/net/bridge/bridge-nf-call-iptables") is not None
    try:
        nft("table bridge vigil_probe { chain c { ct state established accept; }; }", check_only=True)
        bridge_ct = True
    except NftError:
        bridge_ct = False
    try:
        nft("table bridge vigil_probe { chain c { log group 7 queue-threshold 1; }; }", check_only=True)
        nflog = True
    except NftError:
        nflog = False
    if source == "flowset":
        try:
            nft(flowset_script(["eth0", "eth1"], SampleSpec(), 120), check_only=True)
            source = FLOWSET
        except NftError as exc:
            raise NftError(f"flows.source flowset: this kernel refuses the flow-set datapath ({exc})") from None
    elif bridge_ct:
        source = "bridge-conntrack"
    elif conntrack and brnf:
        source = "br_netfilter-conntrack"
    else:
        source = "none"
    return KernelFeatures(conntrack, acct, brnf, bridge_ct, nflog, source)


def port_marks(ports: list[str]) -> dict[str, int]:
    """Ingress port -> mark (1-based, in configured order)."""
    return {p: i + 1 for i, p in enumerate(ports)}


# Samples for protocol checks (nflog.py, checks.py): each rule has its own kernel rate limit, so a
# flood of one kind cannot starve the others, and Python never sees more than the sum of the rates.
# The prefix names the rule that sampled a packet.  Bridge prerouting sees frames before
# br_netfilter defragments or conntrack judges them: impossible TCP flags (which conntrack marks
# invalid and never tracks), ARP, DHCP and raw fragments are visible there.
SAMPLE_RULES = (
    ("tcp-null", "tcp flags & (fin|syn|rst|psh|ack|urg) == 0x0"),
    ("tcp-xmas", "tcp flags & (fin|psh|urg) == fin|psh|urg"),
    ("tcp-synfin", "tcp flags & (syn|fin) == syn|fin"),
    ("tcp-synrst", "tcp flags & (syn|rst) == syn|rst"),
    ("arp-reply", "arp operation reply"),
    ("arp-request", "arp operation request"),   # a host speaks for its address (senders.py)
    ("dhcp-server", "udp sport 67 udp dport 68"),
    ("ip-frag", "ip frag-off & 0x3fff != 0"),
    ("ip-options", "ip hdrlength != 5"),
    # frames flagged by FORGED_RULES (which run first): the samples name the forging MAC and port
    ("forged", "meta mark & 0x80000000 == 0x80000000"),
)
# New flows (SYN without ACK, first packet of a conntrack entry): the scan detector's sub-second
# signal besides conntrack NEW events.
NEW_FLOW_SAMPLE = ("new-flow", "ct state new")
# Source attribution (senders.py): bit 31 of the mark flags a frame whose source address is owned by
# another MAC, or whose MAC is a host's (owns few IPv4 addresses) but not the owner of this address.
# The mark rides into the conntrack entry of the flow the frame starts (flow records: ``spoofed``).
FORGED_BIT = 0x80000000
OWNER_SETS = (
    "  set owner4 { type ipv4_addr . ether_addr; flags timeout; size 262144; }\n"
    "  set owned4 { type ipv4_addr; flags timeout; size 262144; }\n"
    "  set hostmac4 { type ether_addr; flags timeout; size 262144; }\n"
    "  set owner6 { type ipv6_addr . ether_addr; flags timeout; size 262144; }\n"
    "  set owned6 { type ipv6_addr; flags timeout; size 262144; }\n")
# A frame whose (address, MAC) pair is a learned owner can be neither kind of forgery: one lookup
# in owner4 settles nearly every IPv4 frame, and only the rest pay for owned4 and hostmac4
# (the same two conditions as before, each now behind the shared "not the owner" test).
FORGED4_CHAIN = (
    "  chain forged4 {\n"
    f"    ip saddr @owned4 meta mark set meta mark | {FORGED_BIT:#x}\n"
    f"    ip saddr != 0.0.0.0 ether saddr @hostmac4 meta mark set meta mark | {FORGED_BIT:#x}\n"
    "  }\n")
FORGED_RULES = (
    "    ip saddr . ether saddr != @owner4 jump forged4\n"
    f"    ip6 saddr @owned6 ip6 saddr . ether saddr != @owner6 meta mark set meta mark | {FORGED_BIT:#x}\n")
# Bulk traffic skips the sampling rules: a plain IPv4/IPv6 TCP segment (ACK set, no SYN/FIN/RST),
# or an IPv4 UDP datagram not from port 67, without IP options, not a fragment and not flagged
# forged, can match none of SAMPLE_RULES (each rule needs one of exactly those), so ``accept`` here
# (which ends only this chain) changes no sample.  It keeps the per-packet rule count of a bulk
# flow at five instead of seventeen (perf: nft_do_chain_bridge was ~3.5 % of the forwarding CPU).
SAMPLE_FAST_PATH = (
    f"    meta mark & {FORGED_BIT:#x} == 0 ip hdrlength 5 ip frag-off & 0x3fff == 0 "
    "tcp flags & (fin|syn|rst|ack) == ack accept\n"
    f"    meta mark & {FORGED_BIT:#x} == 0 ip hdrlength 5 ip frag-off & 0x3fff == 0 udp sport != 67 accept\n"
    f"    meta mark & {FORGED_BIT:#x} == 0 ether type ip6 tcp flags & (fin|syn|rst|ack) == ack accept\n")
# Which conntrack events the kernel generates for bridged flows: NEW (detector), REPLY and ASSURED
# (answered / established, for the detector's success ratio), DESTROY (final counters).
CT_EVENTS = "new,reply,assured,destroy"


@dataclass(frozen=True)
class SampleSpec:
    group: int = 0          # 0: no sampling rules
    rate: int = 100         # samples per second per rule
    new_flow_rate: int = 200


def _limit(rate: int) -> str:
    return f"limit rate {rate}/second burst {max(5, rate)} packets"


def flow_accounting_script(features: KernelFeatures, ports: list[str],
                           samples: SampleSpec | None = None) -> str:
    samples = samples or SampleSpec()
    marks = ", ".join(f'"{p}" : {m}' for p, m in port_marks(ports).items())
    drop_old = (f"table bridge {FLOW_TABLE} {{}}\ndelete table bridge {FLOW_TABLE}\n"
                f"table inet {FLOW_TABLE} {{}}\ndelete table inet {FLOW_TABLE}\n")
    sample_rules = ""
    new_flow = ""
    if samples.group and features.nflog:
        sample_rules = SAMPLE_FAST_PATH + "".join(f'    {match} {_limit(samples.rate)} log group {samples.group} prefix "{name}"\n'
                               for name, match in SAMPLE_RULES)
        name, match = NEW_FLOW_SAMPLE
        new_flow = (f'    {match} {_limit(samples.new_flow_rate)} log group {samples.group} '
                    f'prefix "{name}"\n')
    ct_rule = f"    ct state new ct mark set meta mark ct event set {CT_EVENTS}\n"
    # the 802.1Q id rides in the mark's upper bits (mark = vlan << 8 | port) into conntrack
    # (a map per port: nft's shift of the big-endian ``vlan id`` into the mark does not compute)
    # (``vlan id`` first: an untagged frame leaves at its ether type, before the ifname is copied)
    vlan_rules = "".join(
        f'    vlan id 1-4094 iifname "{p}" meta mark set vlan id map {{ '
        + ", ".join(f"{v} : {v << 8 | m}" for v in range(1, 4095)) + " }\n"
        for p, m in port_marks(ports).items())
    if features.flow_source == "bridge-conntrack":
        return drop_old + f"""table bridge {FLOW_TABLE} {{
{OWNER_SETS}{FORGED4_CHAIN}  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
    meta mark set iifname map {{ {marks} }}
{vlan_rules}{FORGED_RULES}{ct_rule}{new_flow}{sample_rules}  }}
}}
"""
    return drop_old + f"""table bridge {FLOW_TABLE} {{
{OWNER_SETS}{FORGED4_CHAIN}  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
    meta mark set iifname map {{ {marks} }}
{vlan_rules}{FORGED_RULES}{sample_rules}  }}
}}
table inet {FLOW_TABLE} {{
  chain forward {{
    type filter hook forward priority -150; policy accept;
{ct_rule}{new_flow}  }}
}}
"""


# -- the flow-set datapath (flows.source: flowset; docs/DESIGN-NOTES.md, issue 16) ---------------
#
# No br_netfilter, no conntrack: one base chain ``pre`` in ``bridge vigil`` (the enforcement table:
# nft cannot jump across tables) does everything.  A frame of a flow already checked against the rule
# set costs one lookup in ``seen4`` and one counter update in ``flows4``, then ``accept``.  Any other
# frame (a flow's first, a re-check once its ``seen`` element expired or a block flushed ``seen``,
# a frame with a forged source, a TCP SYN/RST, a non-first fragment) takes the full path: port mark,
# forgery checks, the sampling rules, the block lookups (``v4``/``v6``, where an allow verdict is
# ``return``), the flow signals, the counter update and, for a flow past its handshake, ``add @seen``.
#
# Two sets per family because on this kernel a lookup in a set with counters counts the packet too
# but does not refresh the element's timeout: ``flowsN`` (counters, refreshed by every packet, gone
# ``timeout`` seconds after a flow's last one) is the telemetry, read by a netlink dump
# (engine/flowset.py); ``seenN`` (no counters, a fixed life) is the verdict cache.  Each direction of
# a connection is its own element.  Protocols without ports have sets of their own keyed by
# addresses and protocol (``flowsnN``/``seennN``): an ICMP echo's "ports" would be its type and
# checksum, one element per packet (and nft cannot look up a key with constant fields).
#
# Every change to the rule set flushes ``seen4``/``seen6`` in its own transaction (nftables.NftWriter),
# so a block also cuts the flows already running: their next frame misses and meets the lookups.
FLOWSET = "bridge-flowset"
SEEN_TTL = 60                 # seconds a checked flow skips the lookups before it is checked again
FLOWSET_SIZE = 262144         # elements per flow set and verdict cache
NEW_BIT = 0x40000000          # mark: this frame opened a flow (neither direction was in flowsN)
PORT_PROTOS = "{ tcp, udp, udplite, sctp, dccp }"
FLOWSET_SIGNALS = ("new-flow", "flow-reply", "flow-ack")
_FAM = {4: ("ip", "ipv4_addr", "ip"), 6: ("ip6", "ipv6_addr", "ip6")}


def _keys(fam: int, ports: bool) -> tuple[str, str]:
    ip = _FAM[fam][0]
    if ports:
        return (f"{ip} saddr . {ip} daddr . meta l4proto . th sport . th dport",
                f"{ip} daddr . {ip} saddr . meta l4proto . th dport . th sport")
    return f"{ip} saddr . {ip} daddr . meta l4proto", f"{ip} daddr . {ip} saddr . meta l4proto"


def flow_sets(fam: int, ports: bool) -> tuple[str, str]:
    """(telemetry set, verdict-cache set) of one family and key kind."""
    n = "" if ports else "n"
    return f"flows{n}{fam}", f"seen{n}{fam}"


SEEN_SETS = tuple(flow_sets(f, p)[1] for p in (True, False) for f in (4, 6))
FLOW_SETS = tuple(flow_sets(f, p)[0] for p in (True, False) for f in (4, 6))


def flowset_script(ports: list[str], samples: SampleSpec | None, timeout_s: int, table: str = "vigil",
                   flow_rate: int = 0) -> str:
    """The flow-set datapath's part of ``bridge vigil`` (sets, chains ``pre``, ``forged4``, ``flowNp``
    and ``flowNn``; ``v4``/``v6`` only declared: nftables.table_script fills them).  Idempotent: the
    chains are flushed and refilled, the sets keep their elements.  ``flow_rate``: the kernel limit
    of each flow signal (new-flow, flow-reply, flow-ack) per second, default 10x the new-flow rate."""
    samples = samples or SampleSpec()
    t = f"bridge {table}"
    marks = ", ".join(f'"{p}" : {m}' for p, m in port_marks(ports).items())
    decl = [f"table {t} {{", OWNER_SETS.rstrip("\n")]
    for fam in (4, 6):
        a = _FAM[fam][1]
        for ports in (True, False):
            typ = f"{a} . {a} . inet_proto" + (" . inet_service . inet_service" if ports else "")
            flows, seen = flow_sets(fam, ports)
            decl.append(f"  set {flows} {{ type {typ}; flags dynamic,timeout; timeout {int(timeout_s)}s; "
                        f"size {FLOWSET_SIZE}; counter; }}")
            decl.append(f"  set {seen} {{ type {typ}; flags dynamic,timeout; timeout {SEEN_TTL}s; "
                        f"size {FLOWSET_SIZE}; }}")
    decl.append("  chain pre { type filter hook prerouting priority -300; policy accept; }")
    for c in ("forged4", "v4", "v6", "flow4p", "flow4n", "flow6p", "flow6n"):
        decl.append(f"  chain {c} {{ }}")
    decl.append("}")
    lines = decl + [f"flush chain {t} {c}" for c in ("pre", "forged4", "flow4p", "flow4n", "flow6p", "flow6n")]

    def add(chain: str, rule: str) -> None:
        lines.append(f"add rule {t} {chain} {rule}")

    for r in FORGED4_CHAIN.splitlines()[1:-1]:
        add("forged4", r.strip())
    # the hit: a checked flow (ports first: nearly all traffic; a portless protocol's frame misses
    # the first lookup, whose ``th dport`` is its checksum, and meets its own)
    for ports in (True, False):
        for fam in (4, 6):
            k, _ = _keys(fam, ports)
            flows, seen = flow_sets(fam, ports)
            add("pre", f"{k} @{seen} update @{flows} {{ {k} }} accept")
    # the full path
    add("pre", f"meta mark set iifname map {{ {marks} }}")
    for r in FORGED_RULES.splitlines():
        add("pre", r.strip())
    group = samples.group if samples.group else 0
    if group:
        for name, match in SAMPLE_RULES:
            add("pre", f'{match} {_limit(samples.rate)} log group {group} prefix "{name}"')
    # meta protocol: an 802.1Q-tagged frame is IP too (nftables.table_script says why)
    add("pre", "meta protocol ip jump v4")
    add("pre", "meta protocol ip6 jump v6")
    for fam in (4, 6):
        ether = "ip" if fam == 4 else "ip6"
        add("pre", f"meta protocol {ether} meta l4proto {PORT_PROTOS} goto flow{fam}p")
        add("pre", f"meta protocol {ether} goto flow{fam}n")
    rate = flow_rate or 10 * samples.new_flow_rate
    for fam in (4, 6):
        for kind, ports in (("p", True), ("n", False)):
            c = f"flow{fam}{kind}"
            k, rev = _keys(fam, ports)
            flows, seen = flow_sets(fam, ports)
            # signals for the detector (engine/flowsignals.py): a flow opened (neither direction
            # known), answered (this direction new, the other known), past the TCP handshake
            # (a segment with only ACK among SYN/FIN/RST/ACK that missed ``seen``)
            add(c, f"{k} != @{flows} {rev} != @{flows} meta mark set meta mark | {NEW_BIT:#x}")
            if group:
                add(c, f'meta mark & {NEW_BIT:#x} == {NEW_BIT:#x} counter {_limit(rate)} log group {group} '
                       f'prefix "new-flow"')
                # a forged answer or ACK proves nothing (flowsignals.py ignores it): it must not
                # use up the budget of the genuine ones either (forged frames never enter ``seen``,
                # so each one would take a sample)
                genuine = f"meta mark & {(NEW_BIT | FORGED_BIT):#x} == 0"
                add(c, f'{genuine} {k} != @{flows} counter {_limit(rate)} '
                       f'log group {group} prefix "flow-reply"')
                if ports:
                    add(c, f'meta mark & {FORGED_BIT:#x} == 0 tcp flags & (fin|syn|rst|ack) == ack counter '
                           f'{_limit(rate)} log group {group} prefix "flow-ack"')
            add(c, f"update @{flows} {{ {k} }}")
            # a frame with a forged source never makes its flow skip the checks; a TCP flow is
            # marked checked only by a segment of an established connection (ACK, no SYN or RST):
            # handshakes keep taking this path (the detector's signals), and so do crafted flag
            # combinations without ACK (NULL, XMAS, SYN+FIN ...: sampled even inside a known tuple)
            if ports:
                add(c, f"meta mark & {FORGED_BIT:#x} == 0 tcp flags & (syn|rst|ack) == ack add @{seen} {{ {k} }}")
                add(c, f"meta mark & {FORGED_BIT:#x} == 0 meta l4proto != tcp add @{seen} {{ {k} }}")
            else:
                add(c, f"meta mark & {FORGED_BIT:#x} == 0 add @{seen} {{ {k} }}")
    return "\n".join(lines) + "\n"


# Per-protocol idle timeouts are the kernel's conntrack timeouts of this namespace: the kernel ages
# flows out and the DESTROY event gives the final record.
TIMEOUT_SYSCTLS = {
    "tcp": ("nf_conntrack_tcp_timeout_established",),
    # a closed TCP flow lingers in time_wait (kernel default 120 s) before its DESTROY; on a bridge
    # that only watches, a short linger makes the final record arrive soon after the close
    "tcp_closed": ("nf_conntrack_tcp_timeout_time_wait", "nf_conntrack_tcp_timeout_close"),
    "udp": ("nf_conntrack_udp_timeout_stream",),
    "udp_unreplied": ("nf_conntrack_udp_timeout",),
    "icmp": ("nf_conntrack_icmp_timeout", "nf_conntrack_icmpv6_timeout"),
    "other": ("nf_conntrack_generic_timeout",),
}


def set_idle_timeouts(timeouts: dict[str, int]) -> dict[str, int]:
    """Write the conntrack timeouts; returns what was applied (unwritable ones are logged)."""
    applied = {}
    for key, seconds in timeouts.items():
        for name in TIMEOUT_SYSCTLS.get(key, ()):
            if _write(f"/proc/sys/net/netfilter/{name}", str(int(seconds))):
                applied[name] = int(seconds)
            else:
                log.warning("cannot set net.netfilter.%s (idle timeout for %s)", name, key)
    return applied


_FLOWSET_CHAINS = ("pre", "flow4p", "flow4n", "flow6p", "flow6n", "forged4")
_FLOWSET_SETS = (*FLOW_SETS, *SEEN_SETS, "owner4", "owned4", "hostmac4", "owner6", "owned6")
_CT_FORWARD = "table bridge vigil {\n  chain forward { type filter hook forward priority -200; policy accept; }\n}\n"


def flowset_removal(ports: list[str], timeout_s: int = 120) -> str:
    """Undo the flow-set datapath in ``bridge vigil`` (its chains and sets; the rule set stays):
    one transaction that also succeeds when nothing of it is there (declare, flush, delete)."""
    decl = flowset_script(ports, SampleSpec(0), timeout_s).split("flush chain", 1)[0]
    lines = [decl.rstrip("\n")]
    lines += [f"flush chain bridge vigil {c}" for c in _FLOWSET_CHAINS]
    lines += [f"delete chain bridge vigil {c}" for c in _FLOWSET_CHAINS]
    lines += [f"delete set bridge vigil {s}" for s in _FLOWSET_SETS]
    return "\n".join(lines) + "\n"


def install_flowset(ports: list[str], samples: SampleSpec | None, timeout_s: int, flow_rate: int = 0) -> None:
    """The flow-set datapath: br_netfilter's IP hooks off, the conntrack tables and today's
    ``forward`` hook of ``bridge vigil`` gone, ``pre`` in their place -- one transaction."""
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
        path = f"/proc/sys/net/bridge/{name}"
        if _read(path) not in (None, "0") and not _write(path, "0"):
            log.warning("cannot switch off net.bridge.%s: br_netfilter keeps costing every frame", name)
    nft(f"table bridge {FLOW_TABLE} {{}}\ndelete table bridge {FLOW_TABLE}\n"
        f"table inet {FLOW_TABLE} {{}}\ndelete table inet {FLOW_TABLE}\n"
        + _CT_FORWARD + "flush chain bridge vigil forward\ndelete chain bridge vigil forward\n"
        + flowset_script(ports, samples, timeout_s, flow_rate=flow_rate))
    log.info("flow-set datapath installed on ports %s (flow timeout %ss)", ", ".join(ports), timeout_s)


def install_flow_accounting(features: KernelFeatures, ports: list[str],
                            samples: SampleSpec | None = None, flowset_timeout: int = 120,
                            flow_rate: int = 0) -> None:
    if features.flow_source == FLOWSET:
        install_flowset(ports, samples, flowset_timeout, flow_rate)
        return
    if features.flow_source == "none":
        raise NftError("this kernel offers no flow accounting for bridged traffic "
                       "(neither nf_conntrack_bridge nor br_netfilter with conntrack)")
    if not features.conntrack_acct and not _write("/proc/sys/net/netfilter/nf_conntrack_acct", "1"):
        raise NftError("cannot enable net.netfilter.nf_conntrack_acct")
    features.conntrack_acct = True
    # start/stop timestamps in conntrack entries and DESTROY events (flow start and end)
    if not _write("/proc/sys/net/netfilter/nf_conntrack_timestamp", "1"):
        log.warning("cannot enable net.netfilter.nf_conntrack_timestamp; flow start is first sight")
    if features.flow_source == "br_netfilter-conntrack":
        # VLAN-tagged IP frames reach the inet hooks (and conntrack) only with this on
        if _read("/proc/sys/net/bridge/bridge-nf-filter-vlan-tagged") != "1":
            _write("/proc/sys/net/bridge/bridge-nf-filter-vlan-tagged", "1")
        if _read("/proc/sys/net/bridge/bridge-nf-call-iptables") != "1":
            _write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")
        if _read("/proc/sys/net/bridge/bridge-nf-call-ip6tables") != "1":
            _write("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1")
    # coming back from the flow-set datapath: its chains and sets leave bridge vigil first
    nft(flowset_removal(ports, flowset_timeout) + flow_accounting_script(features, ports, samples))
    log.info("flow accounting installed (%s) on ports %s", features.flow_source, ", ".join(ports))


def remove_flow_accounting() -> None:
    try:
        nft(f"table bridge {FLOW_TABLE} {{}}\ndelete table bridge {FLOW_TABLE}\n"
            f"table inet {FLOW_TABLE} {{}}\ndelete table inet {FLOW_TABLE}\n")
    except NftError as exc:
        log.warning("could not remove flow accounting tables: %s", exc)
