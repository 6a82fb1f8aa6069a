"""Bulk set loads as one raw nfnetlink batch: flush and refill sets of ``bridge vigil`` in one
transaction without the nft parser.

Why: ``nft -f`` of a 100k-element script spends more time in nft's own parser and evaluation
(~0.3 s user) than the kernel spends on the batch (~0.2 s); a 1M snapshot or restore pays ten times
that.  Python packs the same netlink messages nft would send (checked against nft's own encoding
with strace and by listing sets written this way with nft, tests/integration/test_nfnetlink.py) in
a fraction of that time.  Only used for ``replace()`` (snapshots and restores); the table, chains
and deltas stay with nft scripts.

One batch = NFNL_MSG_BATCH_BEGIN, per set a DELSETELEM without elements (flush) and NEWSETELEM
messages of up to ~2,300 elements, NFNL_MSG_BATCH_END: the kernel swaps old contents for new at
commit, or on any error aborts the whole batch and keeps the old contents.

Element encodings (what nft 1.0.6 sends):
- hash set: key, timeout in ms (u64 big-endian) when given;
- interval set: sorted ranges, each a start element (with the timeout) and an end element (the
  first address after the range, flag INTERVAL_END; none when the range reaches the top address,
  whose start then carries nft's "open interval" user data); a zero end element first when the
  first range does not start at address 0;
- flow: ``src . dst . proto . dport`` concatenated in 4-byte registers (proto one byte, port two
  bytes big-endian, zero padded).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from array import array
from typing import Iterable

from .netlink import (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_NETFILTER, NFGEN, NLA, NLA_F_NESTED, NLH, NLM_F_ACK,
                      NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR, SO_RCVBUFFORCE, SO_SNDBUFFORCE, SOL_NETLINK,
                      NetlinkError, attr, error_code, set_buffer)

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFPROTO_BRIDGE = 7
NLMSGERR_ATTR_MSG = 1

# NFTA_SET_ELEM_LIST_*: TABLE 1, SET 2, ELEMENTS 3; NFTA_SET_ELEM_*: KEY 1, FLAGS 3, TIMEOUT 4,
# USERDATA 6; NFTA_DATA_VALUE 1; NFT_SET_ELEM_INTERVAL_END 1
_MAX_NEST = 65535 - 4                       # an attribute's length is 16 bits
_HDR, _NFGEN, _ATTR = NLH, NFGEN, NLA
_T_ELEM = struct.Struct(">8sQ8s")           # list elem + timeout header, timeout, key header
_OPEN_UDATA = b"\x0a\x00\x06\x00\x01\x04\x01\x00\x00\x00\x00\x00"   # NFTNL_UDATA_SET_ELEM_FLAGS = open
_PROTO = {"tcp": 6, "udp": 17, "sctp": 132}
_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


_attr = attr


def _key_bytes(keylen: int) -> tuple[bytes, bytes]:
    """(prefix of an element without timeout, key header after a timeout) for a key of keylen."""
    key_nest = 4 + 4 + keylen                                  # KEY { DATA_VALUE { key } }
    plain = _ATTR.pack(4 + key_nest, 1 | NLA_F_NESTED) + _ATTR.pack(key_nest, 1 | NLA_F_NESTED) + \
        _ATTR.pack(4 + keylen, 1)
    timed_hdr = _ATTR.pack(key_nest, 1 | NLA_F_NESTED) + _ATTR.pack(4 + keylen, 1)
    return plain, timed_hdr


def hash_elements(keys: list[bytes], timeouts: list[int | None], keylen: int) -> list[bytes]:
    """Encoded NFTA_LIST_ELEMs of a hash set (every key ``keylen`` bytes, a multiple of 4)."""
    plain, timed_hdr = _key_bytes(keylen)
    lead = _ATTR.pack(4 + 12 + len(timed_hdr) + keylen, 1 | NLA_F_NESTED) + _ATTR.pack(12, 4)
    pack = _T_ELEM.pack
    out = []
    for k, t in zip(keys, timeouts):
        out.append(plain + k if t is None else pack(lead, t, timed_hdr) + k)
    return out


def interval_elements(ranges: list[tuple[int, int, int | None]], width: int) -> list[bytes]:
    """Encoded elements of an interval set from sorted, disjoint (first, last, timeout_ms) ranges
    of ``width``-byte addresses."""
    top = (1 << (8 * width)) - 1
    plain, timed_hdr = _key_bytes(width)
    lead = _ATTR.pack(4 + 12 + len(timed_hdr) + width, 1 | NLA_F_NESTED) + _ATTR.pack(12, 4)
    end_pre = (_ATTR.pack(4 + 8 + len(plain) - 4 + width, 1 | NLA_F_NESTED) + _ATTR.pack(8, 3)
               + b"\0\0\0\x01" + plain[4:])
    out = []
    if ranges and ranges[0][0] != 0:
        out.append(end_pre + bytes(width))
    for first, last, t in ranges:
        k = first.to_bytes(width, "big")
        if last == top:
            body = (plain[4:] + k) if t is None else (_ATTR.pack(12, 4) + struct.pack(">Q", t) + timed_hdr + k)
            body += _OPEN_UDATA
            out.append(_ATTR.pack(4 + len(body), 1 | NLA_F_NESTED) + body)
            continue
        out.append(plain + k if t is None else _T_ELEM.pack(lead, t, timed_hdr) + k)
        out.append(end_pre + (last + 1).to_bytes(width, "big"))
    return out


def packed_hash_elements(keys: bytes, keylen: int, timeouts=None) -> bytes:
    """``hash_elements`` of fixed-width keys packed in one ``bytes`` (and ``timeouts``: an array of
    ms, native order, same count; None: no timeouts), as one ``bytes`` of fixed-size records built
    column by column in C (strided slice assignment), not one Python object per element."""
    n = len(keys) // keylen
    plain, timed_hdr = _key_bytes(keylen)
    if timeouts is None:
        size = len(plain) + keylen
        buf = bytearray((plain + bytes(keylen)) * n)
        off = len(plain)
    else:
        if len(timeouts) != n:
            raise NetlinkError(f"{len(timeouts)} timeouts for {n} keys")
        lead = _ATTR.pack(4 + 12 + len(timed_hdr) + keylen, 1 | NLA_F_NESTED) + _ATTR.pack(12, 4)
        size = len(lead) + 8 + len(timed_hdr) + keylen
        buf = bytearray((lead + bytes(8) + timed_hdr + bytes(keylen)) * n)
        t = array("Q", timeouts)
        if _LITTLE:
            t.byteswap()
        tb = t.tobytes()
        for j in range(8):
            buf[len(lead) + j::size] = tb[j::8]
        off = len(lead) + 8 + len(timed_hdr)
    for j in range(keylen):
        buf[off + j::size] = keys[j::keylen]
    return bytes(buf)


def packed_key_elements(keys: bytes, keylen: int) -> bytes:
    """Key-only elements (for a delete) of packed keys."""
    return packed_hash_elements(keys, keylen, None)


# -- keys from the element texts nftables.py writes -----------------------------------------------

def _addr(text: str, family: int) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, text)
    except OSError:
        raise NetlinkError(f"not an IPv{family} address: {text!r}") from None


def address_keys(texts: Iterable[str], family: int) -> list[bytes]:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    pton = socket.inet_pton
    try:
        return [pton(af, t) for t in texts]
    except OSError:
        for t in texts:
            _addr(t, family)
        raise


def flow_keys(texts: Iterable[str], family: int) -> list[bytes]:
    """``src . dst . proto . dport`` -> concatenated key (registers of 4 bytes)."""
    out = []
    for t in texts:
        parts = t.split(" . ")
        if len(parts) != 4 or parts[2] not in _PROTO or not parts[3].isdigit() or not 0 < int(parts[3]) < 65536:
            raise NetlinkError(f"not a flow element: {t!r}")
        out.append(_addr(parts[0], family) + _addr(parts[1], family)
                   + bytes((_PROTO[parts[2]], 0, 0, 0)) + int(parts[3]).to_bytes(2, "big") + b"\0\0")
    return out


def network_ranges(elems: Iterable[tuple[str, int | None]], family: int) -> list[tuple[int, int, int | None]]:
    """``net/len`` texts (normalised: host bits clear) -> sorted (first, last, timeout) ranges."""
    bits = 32 if family == 4 else 128
    out = []
    for text, t in elems:
        addr, _, plen = text.partition("/")
        if not plen.isdigit() or int(plen) > bits:
            raise NetlinkError(f"not an IPv{family} network: {text!r}")
        first = int.from_bytes(_addr(addr, family), "big")
        span = (1 << (bits - int(plen))) - 1
        if first & span:
            raise NetlinkError(f"host bits set in {text!r}")
        out.append((first, first | span, t))
    out.sort()
    for a, b in zip(out, out[1:]):
        if b[0] <= a[1]:
            raise NetlinkError(f"overlapping networks in one interval set ({a[0]:x}, {b[0]:x})")
    return out


# -- the batch ------------------------------------------------------------------------------------

class Batch:
    """One nftables transaction as netlink messages; ``send()`` commits it or raises."""

    def __init__(self, table: str, family: int = NFPROTO_BRIDGE):
        self.family = family
        self.table_attr = _attr(1, table.encode() + b"\0")
        self.parts: list[bytes] = [self._msg(NFNL_MSG_BATCH_BEGIN, 0, b"", batch=True)]
        self.acked = 0
        self._data: bytes | None = None

    def _msg(self, mtype: int, flags: int, payload: bytes, batch: bool = False) -> bytes:
        seq = len(self.parts) if hasattr(self, "parts") else 0
        if batch:
            nfgen = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
            return _HDR.pack(16 + 4 + len(payload), mtype, NLM_F_REQUEST | flags, seq, 0) + nfgen + payload
        nfgen = _NFGEN.pack(self.family, 0, 0)
        return _HDR.pack(16 + 4 + len(payload), (NFNL_SUBSYS_NFTABLES << 8) | mtype,
                         NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + nfgen + payload

    def flush(self, set_name: str) -> None:
        self.parts.append(self._msg(NFT_MSG_DELSETELEM, 0, self.table_attr + _attr(2, set_name.encode() + b"\0")))
        self.acked += 1

    def add(self, set_name: str, elements: list[bytes]) -> None:
        head = self.table_attr + _attr(2, set_name.encode() + b"\0")
        i, n = 0, len(elements)
        while i < n:
            size, j = 0, i
            while j < n and size + len(elements[j]) <= _MAX_NEST:
                size += len(elements[j])
                j += 1
            nest = b"".join(elements[i:j])
            self.parts.append(self._msg(NFT_MSG_NEWSETELEM, NLM_F_CREATE,
                                        head + _ATTR.pack(4 + len(nest), 3 | NLA_F_NESTED) + nest))
            self.acked += 1
            i = j

    def add_packed(self, set_name: str, records: bytes, size: int, delete: bool = False,
                   exclusive: bool = False) -> None:
        """Elements as fixed-size records (``packed_hash_elements``): NEWSETELEM (or DELSETELEM)
        messages of as many records as fit, sliced from the one buffer.  ``exclusive``: an element
        that exists (a key given twice) fails the whole batch (NLM_F_EXCL)."""
        head = self.table_attr + _attr(2, set_name.encode() + b"\0")
        per = _MAX_NEST // size
        mtype, flags = (NFT_MSG_DELSETELEM, 0) if delete else (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        if exclusive and not delete:
            flags |= NLM_F_EXCL
        for i in range(0, len(records), per * size):
            nest = records[i:i + per * size]
            self.parts.append(self._msg(mtype, flags, head + _ATTR.pack(4 + len(nest), 3 | NLA_F_NESTED) + nest))
            self.acked += 1

    def finish(self) -> bytes:
        """The whole batch, as it goes to the kernel (the dry run records exactly this)."""
        if self._data is None:
            self.parts.append(self._msg(NFNL_MSG_BATCH_END, 0, b"", batch=True))
            self._data = b"".join(self.parts)
        return self._data

    def send(self) -> None:
        data = self.finish()
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise NetlinkError(f"cannot open a netfilter netlink socket: {exc}") from None
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)     # acks without the echoed request
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, len(data) + 65536)
            set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, max(1 << 20, self.acked * 1024))
            sock.bind((0, 0))
            sent = sock.sendto(data, (0, 0))
            if sent != len(data):
                raise NetlinkError(f"netlink sent {sent} of {len(data)} bytes")
            self._acks(sock)
        finally:
            sock.close()

    def _acks(self, sock: socket.socket) -> None:
        """The kernel processes the batch inside sendmsg: each message is answered (ack or error)."""
        sock.settimeout(30.0)
        got, first_error = 0, None
        while got < self.acked:
            try:
                buf = sock.recv(1 << 20)
            except socket.timeout:
                raise NetlinkError(f"no answer from the kernel for {self.acked - got} of {self.acked} messages") from None
            off = 0
            while off + 16 <= len(buf):
                length, mtype, flags, seq, _pid = _HDR.unpack_from(buf, off)
                if length < 16:
                    break
                if mtype == NLMSG_ERROR:
                    err = error_code(buf, off + 16)
                    if seq == 0:          # the batch as a whole (commit failed): no further answers
                        got = self.acked
                    else:
                        got += 1
                    if err and first_error is None:
                        first_error = (err, seq, _ext_msg(buf[off:off + length], flags))
                off += (length + 3) & ~3
        if first_error is not None:
            err, seq, text = first_error
            what = f"message {seq} of the batch" if seq else "the batch"
            raise NetlinkError(f"kernel refused {what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})"
                               + (f": {text}" if text else ""))


def _ext_msg(msg: bytes, flags: int) -> str:
    """The extended ack's text, if the kernel gave one (NLM_F_ACK_TLVS 0x200, capped ack)."""
    if not flags & 0x200 or len(msg) < 36:
        return ""
    off = 16 + 4 + 16                        # header, error, the echoed request header
    while off + 4 <= len(msg):
        n, kind = _ATTR.unpack_from(msg, off)
        if n < 4:
            break
        if kind == NLMSGERR_ATTR_MSG:
            return msg[off + 4:off + n].rstrip(b"\0").decode(errors="replace")
        off += (n + 3) & ~3
    return ""
