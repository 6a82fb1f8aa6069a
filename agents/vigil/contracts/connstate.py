"""How a flow record's ``conn_state`` is derived from conntrack's view of a flow (engine/flows.py
documents the letters), and the conntrack numbers it reads.  Shared by the engine, which reads them
from the kernel, and the manager, which derives them from a recorded capture (policy/pcaplearn.py),
so both write the same records."""
from __future__ import annotations

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 47: "gre"}
TCP_STATES = {0: "none", 1: "syn_sent", 2: "syn_recv", 3: "established", 4: "fin_wait",
              5: "close_wait", 6: "last_ack", 7: "time_wait", 8: "close", 9: "syn_sent2"}
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2

_SYN_STATES = (0, 1, 9)   # none, syn_sent, syn_sent2
_FIN_STATES = (4, 5, 6, 7)  # fin_wait, close_wait, last_ack, time_wait


def conn_state(proto: int, tcp_state: int | None, status: int, ended: bool, resp_pkts: int = 0) -> str:
    # A SYN answered only by a RST is killed by conntrack before it sets SEEN_REPLY; the reply
    # counter still shows the RST.
    replied = bool(status & IPS_SEEN_REPLY) or resp_pkts > 0
    assured = bool(status & IPS_ASSURED)
    if proto != 6:
        if not replied:
            return "S0"
        return "SF" if ended else "S1"
    if tcp_state is None:
        return "OTH"
    if not replied:
        return "S0" if tcp_state in _SYN_STATES or tcp_state == 8 else "OTH"
    if tcp_state == 8:  # close: after a RST
        return "RST" if assured else "REJ"
    if tcp_state == 2:
        return "SH"
    if tcp_state in _FIN_STATES:
        return "SF"
    if tcp_state == 3:
        return "SF" if ended else "S1"
    return "OTH"
