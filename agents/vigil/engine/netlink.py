"""Netlink framing for the engine's three netfilter conversations (one module, one error type):
conntrack (flow dumps and events), NFLOG (packet samples) and the nftables batch (rule-set writes).

- ``NLH`` / ``NLA`` / ``NFGEN``: the nlmsghdr, attribute and nfgenmsg headers;
- ``attr(kind, data)``: one attribute, padded to 4 bytes;
- ``nfnl_message(subsys, mtype, flags, seq, family, res_id, payload)``: one nfnetlink message;
- ``iter_messages(buf, n)``: (type, flags, payload start, end) of each message in a receive buffer,
  raising ``struct.error`` on a length that does not fit (a reader counts and drops the buffer);
- ``error_code(buf, start)``: the errno of an NLMSG_ERROR (0: an ack);
- ``open_socket(rcvbuf)``: a NETLINK_NETFILTER socket with a large receive buffer.
"""
from __future__ import annotations

import socket
import struct
from typing import Iterator

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 1, 10, 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33

NLH = struct.Struct("=IHHII")          # nlmsghdr: length, type, flags, seq, pid
NLA = struct.Struct("=HH")             # nlattr: length, type
NFGEN = struct.Struct("=BBH")          # nfgenmsg: family, version, res_id (big-endian, written pre-swapped)
BE16 = struct.Struct(">H")
BE32 = struct.Struct(">I")
BE64 = struct.Struct(">Q")


class NetlinkError(OSError):
    """The kernel refused a netlink request, or a netlink conversation failed."""


def attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return NLA.pack(n, kind) + data + b"\0" * (-n & 3)


def nfnl_message(subsys: int, mtype: int, flags: int, seq: int, family: int = socket.AF_UNSPEC,
                 res_id: int = 0, payload: bytes = b"") -> bytes:
    """One nfnetlink message; ``subsys`` None-like 0 with a batch ``mtype`` for batch begin/end."""
    body = NFGEN.pack(family, 0, res_id) + payload
    return NLH.pack(16 + len(body), (subsys << 8) | mtype, flags, seq, 0) + body


def iter_messages(data, length: int) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, payload start, message end) of each netlink message in a receive buffer."""
    pos = 0
    while pos + 16 <= length:
        mlen, mtype, flags, _seq, _pid = NLH.unpack_from(data, pos)
        if mlen < 16 or pos + mlen > length:
            raise struct.error(f"bad netlink message length {mlen} at {pos}")
        yield mtype, flags, pos + 16, pos + mlen
        pos += (mlen + 3) & ~3


def error_code(data, start: int) -> int:
    """The errno an NLMSG_ERROR carries (``start``: its payload); 0 is an ack."""
    return -struct.unpack_from("=i", data, start)[0]


def set_buffer(sock: socket.socket, force_opt: int, plain_opt: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)      # needs CAP_NET_ADMIN
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain_opt, size)


def open_socket(rcvbuf: int) -> socket.socket:
    """A NETLINK_NETFILTER socket, bound, with (up to) ``rcvbuf`` bytes of receive buffer."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    set_buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
    s.bind((0, 0))
    return s
