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
    flow_source: str  # "bridge-conntrack", "br_netfilter-conntrack" or "none"

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


def probe() -> KernelFeatures:
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
    if bridge_ct:
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


def install_flow_accounting(features: KernelFeatures, ports: list[str],
                            samples: SampleSpec | None = None) -> None:
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
    nft(flow_accounting_script(features, ports, samples))
    log.info("flow accounting installed (%s) on ports %s", features.flow_source, ", ".join(ports))


def remove_flow_accounting() -> None:
    try:
        nft(f"table bridge {FLOW_TABLE} {{}}\ndelete table bridge {FLOW_TABLE}\n"
            f"table inet {FLOW_TABLE} {{}}\ndelete table inet {FLOW_TABLE}\n")
    except NftError as exc:
        log.warning("could not remove flow accounting tables: %s", exc)
