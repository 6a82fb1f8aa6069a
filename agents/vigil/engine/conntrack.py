"""Read conntrack entries (with accounting) of the current network namespace.

Each entry becomes a ``CtEntry``: the kernel's flow id, 5-tuple, ingress mark, TCP state and the
cumulative counters per direction.  ``FlowTable`` (flows.py) turns successive dumps into
per-interval deltas.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

log = logging.getLogger(__name__)

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite", 47: "gre"}
TCP_STATES = {0: "none", 1: "syn_sent", 2: "syn_recv", 3: "established", 4: "fin_wait",
              5: "close_wait", 6: "last_ack", 7: "time_wait", 8: "close", 9: "syn_sent2"}
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2


@dataclass(slots=True)
class CtEntry:
    ct_id: int
    family: int  # 4 or 6
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    mark: int
    status: int
    tcp_state: int | None
    orig_pkts: int
    orig_bytes: int
    resp_pkts: int
    resp_bytes: int
    zone: int = 0

    @property
    def key(self) -> tuple:
        return (self.ct_id, self.proto, self.src, self.dst, self.sport, self.dport)


def _attrs(msg_or_nla) -> dict:
    return dict((a[0], a[1]) for a in msg_or_nla["attrs"])


def entry_from_message(msg) -> CtEntry | None:
    """Convert one pyroute2 conntrack message; None for entries we cannot use."""
    a = _attrs(msg)
    orig = a.get("CTA_TUPLE_ORIG")
    if orig is None:
        return None
    ot = _attrs(orig)
    ip = _attrs(ot["CTA_TUPLE_IP"])
    pr = _attrs(ot["CTA_TUPLE_PROTO"])
    if "CTA_IP_V4_SRC" in ip:
        family, src, dst = 4, ip["CTA_IP_V4_SRC"], ip["CTA_IP_V4_DST"]
    elif "CTA_IP_V6_SRC" in ip:
        family, src, dst = 6, ip["CTA_IP_V6_SRC"], ip["CTA_IP_V6_DST"]
    else:
        return None
    co = _attrs(a["CTA_COUNTERS_ORIG"]) if "CTA_COUNTERS_ORIG" in a else {}
    cr = _attrs(a["CTA_COUNTERS_REPLY"]) if "CTA_COUNTERS_REPLY" in a else {}
    tcp_state = None
    pinfo = a.get("CTA_PROTOINFO")
    if pinfo is not None:
        pi = _attrs(pinfo)
        if "CTA_PROTOINFO_TCP" in pi:
            tcp_state = _attrs(pi["CTA_PROTOINFO_TCP"]).get("CTA_PROTOINFO_TCP_STATE")
    return CtEntry(
        ct_id=a.get("CTA_ID", 0), family=family, proto=pr.get("CTA_PROTO_NUM", 0),
        src=src, dst=dst, sport=pr.get("CTA_PROTO_SRC_PORT", 0), dport=pr.get("CTA_PROTO_DST_PORT", 0),
        mark=a.get("CTA_MARK", 0), status=a.get("CTA_STATUS", 0), tcp_state=tcp_state,
        orig_pkts=co.get("CTA_COUNTERS_PACKETS", 0), orig_bytes=co.get("CTA_COUNTERS_BYTES", 0),
        resp_pkts=cr.get("CTA_COUNTERS_PACKETS", 0), resp_bytes=cr.get("CTA_COUNTERS_BYTES", 0),
        zone=a.get("CTA_ZONE", 0) or 0,
    )


class ConntrackReader:
    """Dumps the conntrack table of this namespace through netlink (pyroute2)."""

    def __init__(self):
        from pyroute2 import NFCTSocket
        self._sock_cls = NFCTSocket
        self._sock = None

    def dump(self) -> Iterator[CtEntry]:
        """Every entry, IPv4 and IPv6 (an unspecified-family dump returns both)."""
        if self._sock is None:
            self._sock = self._sock_cls()
        try:
            for msg in self._sock.dump():
                e = entry_from_message(msg)
                if e is not None:
                    yield e
        except OSError as exc:
            log.warning("conntrack dump failed: %s; reopening the socket", exc)
            self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

