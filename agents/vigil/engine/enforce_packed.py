"""The address entries of a binary rule set (rulewire.py), held and planned packed.

A binary snapshot's ``ip`` blocks (drop/allow, IPv4/IPv6: the bulk of a fleet-size set) never become
one Python object per entry on the way to the kernel: expiries become kernel timeouts in one list
pass, keys and timeouts become netlink records column by column (nfnetlink.packed_hash_elements),
and the whole set is one transaction.  What the engine must know afterwards per entry (for deltas,
counts, expiry and the saved state) is an index ``key -> manager expiry`` built lazily -- after the
kernel took the set -- and reused by the next snapshot to write only what changed.

Keys in an index: IPv4 as the int of its 4 bytes in native order (what ``array('I')`` yields from
the packed bytes), IPv6 as its 16 bytes.  Expiries are the manager's epoch seconds, 0 = none.
"""
from __future__ import annotations

import socket
import sys
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..rulewire import Block

ORDER = sys.byteorder


def ip_key(family: int, value: str):
    """The index key of an address text."""
    if family == 4:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, value), ORDER)
    return socket.inet_pton(socket.AF_INET6, value)


def key_bytes(family: int, key) -> bytes:
    return key.to_bytes(4, ORDER) if family == 4 else key


def key_text(family: int, key) -> str:
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, key_bytes(family, key))


def _iter_keys(family: int, blob: bytes):
    if family == 4:
        return array("I", blob).tolist()
    return [blob[i:i + 16] for i in range(0, len(blob), 16)]


@dataclass
class IpCols:
    """One kernel hash set's entries from a binary snapshot (plus what deltas did since)."""
    set_name: str
    family: int
    block: Block | None
    keys: bytes                                  # kept rows' keys, packed
    expires: array                               # kept rows' manager expiry (s), 'I'
    rows: list[int] | None                       # kept rows of ``block``; None: all, in order
    index: dict | None = None                    # key -> expiry; built by ``ensure_index``
    extra: dict = field(default_factory=dict)    # key -> (id, origin, reason) put by deltas
    next_expiry: int = 0                         # smallest expiry > 0 held (0: none)
    touched: bool = False                        # a delta or an expiry changed it since the snapshot

    @property
    def width(self) -> int:
        return 4 if self.family == 4 else 16

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.expires)

    def ensure_index(self) -> dict:
        if self.index is None:
            self.index = dict(zip(_iter_keys(self.family, self.keys), self.expires.tolist()))
        return self.index

    def rows_meta(self) -> Iterator[tuple[object, int, str, str, str]]:
        """(key, expiry, id, origin, reason) of every entry held (for the saved state)."""
        index = self.ensure_index()
        b = self.block
        rows = range(len(self.expires)) if self.rows is None else self.rows
        seen = set()
        if b is not None:
            metas = b.owner.metas
            for key, row in zip(_iter_keys(self.family, self.keys), rows):
                e = index.get(key)
                if e is None or key in self.extra:
                    continue
                seen.add(key)
                origin, reason = metas[b.metas[row]]
                yield key, e, b.entry_id(row), origin, reason
        for key, (eid, origin, reason) in self.extra.items():
            e = index.get(key)
            if e is not None:
                yield key, e, eid, origin, reason


def select(block: Block, set_name: str, now_ms: int,
           guarded: Callable[[int, bytes], list[int]]) -> tuple[IpCols, list[int], list[int]]:
    """The rows of an ``ip`` block to hold: (cols, expired rows, guarded rows).  The common case (no
    entry expired, none guarded, all with an expiry) keeps the block's columns as they are."""
    exp, n, w = block.expires, block.count, block.width
    base = max(block.owner.issued_at, now_ms)
    lim = -(-(base + 1) // 1000)                 # E*1000 - base >= 1 ms  <=>  E >= lim
    bad = guarded(block.family, block.keys)
    if not bad and n and 0 not in exp and min(exp) >= lim:
        return IpCols(set_name, block.family, block, block.keys, exp, None, next_expiry=min(exp)), [], []
    skip = set(bad)
    rows, expired = [], []
    for i, e in enumerate(exp):
        if i in skip:
            continue
        if e and e < lim:
            expired.append(i)
        else:
            rows.append(i)
    kb = block.keys
    keys = b"".join([kb[i * w:(i + 1) * w] for i in rows])
    kept = array("I", [exp[i] for i in rows])
    timed = [e for e in kept if e]
    return (IpCols(set_name, block.family, block, keys, kept, rows, next_expiry=min(timed) if timed else 0),
            expired, bad)


def timeouts(expires: array, issued_at: int, now_ms: int) -> tuple[array | None, list[int] | None]:
    """Kernel timeouts (ms, 'Q') of held expiries, as ``remaining_ttl`` computes them; when some
    entries have no expiry: (timeouts of the timed ones, positions of the untimed ones)."""
    base = max(issued_at, now_ms)
    if 0 not in expires:
        return array("Q", [e * 1000 - base for e in expires]), None
    untimed = [i for i, e in enumerate(expires) if not e]
    return array("Q", [e * 1000 - base for e in expires if e]), untimed


@dataclass
class ColChange:
    """The kernel work on one hash set of a binary snapshot: ``refill`` (flush, then add every
    held key) or a diff against what the kernel holds (``delete`` keys, ``put`` keys re-added with
    their timeouts).  Keys are packed; ``timed``/``untimed`` split them for the encoder."""
    set_name: str
    width: int
    refill: bool
    put_timed: bytes = b""
    put_timeouts: array | None = None
    put_untimed: bytes = b""
    delete: bytes = b""            # keys to make exist and delete (gone, or re-put with a new timeout)

    def count(self) -> int:
        return (len(self.put_timed) + len(self.put_untimed)) // self.width

    def texts(self) -> Iterator[tuple[str, int | None]]:
        fam = 4 if self.width == 4 else 6
        w = self.width
        af = socket.AF_INET if fam == 4 else socket.AF_INET6
        for i in range(0, len(self.put_timed), w):
            yield socket.inet_ntop(af, self.put_timed[i:i + w]), int(self.put_timeouts[i // w])
        for i in range(0, len(self.put_untimed), w):
            yield socket.inet_ntop(af, self.put_untimed[i:i + w]), None

    def deleted_texts(self) -> list[str]:
        af = socket.AF_INET if self.width == 4 else socket.AF_INET6
        return [socket.inet_ntop(af, self.delete[i:i + self.width]) for i in range(0, len(self.delete), self.width)]


def split_keys(keys: bytes, width: int, untimed: list[int] | None) -> tuple[bytes, bytes]:
    """(timed keys, untimed keys) of packed ``keys`` given the untimed positions."""
    if not untimed:
        return keys, b""
    skip = set(untimed)
    n = len(keys) // width
    timed = b"".join([keys[i * width:(i + 1) * width] for i in range(n) if i not in skip])
    return timed, b"".join([keys[i * width:(i + 1) * width] for i in untimed])


def full_change(cols: IpCols, issued_at: int, now_ms: int) -> ColChange:
    tos, untimed = timeouts(cols.expires, issued_at, now_ms)
    timed, plain = split_keys(cols.keys, cols.width, untimed)
    return ColChange(cols.set_name, cols.width, True, timed, tos, plain)


def diff_change(old: IpCols, new: IpCols, issued_at: int, now_ms: int) -> ColChange | None:
    """Only what changed between the held ``old`` and the snapshot's ``new`` (both indexed); None
    when a refill is cheaper (more than half of a large set changed).  Builds ``new``'s index (which also proves
    its keys distinct: the caller checks the length)."""
    if not old.touched and old.keys == new.keys and old.expires == new.expires:
        new.index = old.index          # the same set again (a resend, a resync): nothing to write
        return ColChange(new.set_name, new.width, False)
    o, nw = old.ensure_index(), new.ensure_index()
    get = o.get
    gone = [k for k in o if k not in nw]
    changed = [(k, e) for k, e in nw.items() if get(k) != e]      # faster here than items() - items()
    if len(gone) + len(changed) > max(len(nw) // 2, 4096):
        return None
    fam, base = new.family, max(issued_at, now_ms)
    timed = [(k, e) for k, e in changed if e]
    plain = [k for k, e in changed if not e]
    kb = (lambda k: k.to_bytes(4, ORDER)) if fam == 4 else (lambda k: k)
    return ColChange(new.set_name, new.width, False,
                     b"".join([kb(k) for k, _ in timed]), array("Q", [e * 1000 - base for _, e in timed]),
                     b"".join([kb(k) for k in plain]),
                     b"".join([kb(k) for k in gone] + [kb(k) for k, _ in changed if k in o]))
