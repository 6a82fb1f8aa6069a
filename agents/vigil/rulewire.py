"""The compact signed binary encoding of rule sets and deltas (``vrs1``), next to the JSON one.

A fleet-size rule set costs ~104 bytes per entry as JSON; here an IPv4 drop entry costs 16 (key 4,
expiry 4, metadata index 2, decision id 6).  The layout is in docs/DESIGN-NOTES.md ("Binary rule
sets"); all integers are big-endian::

    head    "VRS" version=1 kind(1 snapshot, 2 delta) mode(0 none, 1 learning, 2 enforcing)
            nblocks u16, ts u64, generation u64, base_generation u64, issued_at u64 (ms)
            engine, sender: u16 length + UTF-8
    strings u32 count, each u16 length + UTF-8      (origins, reasons, id prefixes)
    metas   u32 count, each (u32 origin, u32 reason) string indices; meta index width = 2 if
            count <= 65535 else 4
    blocks  op(0 entries/add, 1 remove) action(0 drop, 1 allow) scope(0 ip, 1 cidr, 2 flow)
            family(4 or 6) count u32, keys count*width (ip 4/16; cidr address + prefix length
            5/17; flow src dst proto dport 11/35); for op 0 also expires count*u32 (epoch seconds
            of the manager's clock, 0 = no expiry), meta indices, and the ids: prefix (string
            index u32), width u8; width > 0: each id is the prefix + width bytes as lower-case hex,
            width 0: each id is u16 length + UTF-8
    trailer key_id (8 bytes: the first 16 hex digits of sha256(public key)) + Ed25519 signature
            (64 bytes) over every byte before the trailer

Decoding keeps the entries packed (``Block``: keys as one ``bytes``, expiries as an ``array``): an
engine plans and writes the kernel batch from the columns; ``Block.entries()`` materialises
``Entry`` tuples for the few entries that take the general path (networks, flows, guarded) and for
tools.  Errors are ``PayloadError`` with the reasons of ruleset.py plus ``truncated``, ``bad-magic``,
``bad-version``, ``over-cap``.  The whole message is refused on any error: nothing is applied.
"""
from __future__ import annotations

import ipaddress
import math
import re
import socket
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterator

from . import payload
from .contracts import vocab
from .payload import PayloadError
from .ruleset import Entry, _check_head, check_signature, key_id, quiet_gc

MAGIC = b"VRS"
VERSION = 1
FORMAT = "vrs1"               # the name engines advertise and the manager's switch uses
KINDS = {"ruleset": 1, "ruleset-delta": 2}
_KIND_NAMES = {v: k for k, v in KINDS.items()}
_MODES = {None: 0, "learning": 1, "enforcing": 2}
_MODE_NAMES = {v: k for k, v in _MODES.items()}
_ACTIONS = ("drop", "allow")
_SCOPES = ("ip", "cidr", "flow")
_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}
_PROTO_NAMES = {v: k for k, v in _PROTOS.items()}
OP_ADD, OP_REMOVE = 0, 1
SIG_LEN = 8 + 64
DEFAULT_MAX_ENTRIES = 4_000_000

_HEAD = struct.Struct(">3sBBBHQQQQ")
_BLOCK = struct.Struct(">BBBBI")
_U16, _U32 = struct.Struct(">H"), struct.Struct(">I")
_HEX_ID = re.compile(r"^(.*?)((?:[0-9a-f]{2})+)$")


def key_width(scope: str, family: int) -> int:
    a = 4 if family == 4 else 16
    return {"ip": a, "cidr": a + 1, "flow": 2 * a + 3}[scope]


def is_binary(raw: bytes) -> bool:
    return raw[:3] == MAGIC


# -- values <-> packed keys ------------------------------------------------------------------------

def pack_value(scope: str, value: str) -> tuple[int, bytes]:
    """(family, packed key) of a normalised value."""
    if scope == "ip":
        fam = 6 if ":" in value else 4
        return fam, socket.inet_pton(socket.AF_INET6 if fam == 6 else socket.AF_INET, value)
    if scope == "cidr":
        net = ipaddress.ip_network(value)
        return net.version, net.network_address.packed + bytes((net.prefixlen,))
    src, dst, proto, dport = value.split("|")
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return a.version, a.packed + b.packed + bytes((_PROTOS[proto],)) + int(dport).to_bytes(2, "big")


def _addr_text(family: int, b: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, b)
    return str(ipaddress.IPv6Address(b))         # ipaddress's text, as normalise_value writes it


def unpack_value(scope: str, family: int, key: bytes) -> str:
    """The normalised value text (as ruleset.normalise_value gives it) of a packed key."""
    a = 4 if family == 4 else 16
    if scope == "ip":
        return _addr_text(family, key)
    if scope == "cidr":
        return f"{_addr_text(family, key[:a])}/{key[a]}"
    return (f"{_addr_text(family, key[:a])}|{_addr_text(family, key[a:2 * a])}|"
            f"{_PROTO_NAMES[key[2 * a]]}|{int.from_bytes(key[2 * a + 1:], 'big')}")


# -- decoded form --------------------------------------------------------------------------------

@dataclass
class Block:
    """One (op, action, scope, family) group of a decoded message, kept packed."""
    op: int
    action: str
    scope: str
    family: int
    count: int
    keys: bytes                          # count * width
    expires: array | None = None         # 'I' (native order): manager epoch seconds, 0 = none
    metas: array | None = None           # index into Packed.metas
    id_prefix: str = ""
    id_width: int = 0                    # > 0: ids packed as hex bytes; 0: ids as strings
    id_bytes: bytes = b""
    id_list: list[str] | None = None
    owner: "Packed | None" = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return key_width(self.scope, self.family)

    def key(self, i: int) -> bytes:
        w = self.width
        return self.keys[i * w:(i + 1) * w]

    def entry_id(self, i: int) -> str:
        if self.id_width:
            w = self.id_width
            return self.id_prefix + self.id_bytes[i * w:(i + 1) * w].hex()
        return self.id_list[i]

    def ttl(self, i: int) -> int | None:
        """Seconds from issue to expiry, rounded up (None: no expiry; 0: already expired)."""
        e = self.expires[i]
        if e == 0:
            return None
        return max(0, math.ceil((e * 1000 - self.owner.issued_at) / 1000))

    def entry(self, i: int) -> Entry:
        origin, reason = self.owner.metas[self.metas[i]]
        return Entry(self.entry_id(i), self.action, self.scope,
                     unpack_value(self.scope, self.family, self.key(i)), self.ttl(i), origin, reason)

    def entries(self) -> Iterator[Entry]:
        for i in range(self.count):
            yield self.entry(i)

    def removals(self) -> Iterator[tuple[str, str, str]]:
        for i in range(self.count):
            yield (self.action, self.scope, unpack_value(self.scope, self.family, self.key(i)))


@dataclass
class Packed:
    """A decoded, verified, checked binary snapshot or delta."""
    kind: str
    engine: str
    sender: str
    ts: int
    generation: int
    base_generation: int | None
    issued_at: int
    mode: str | None
    blocks: list[Block]
    metas: list[tuple[str, str]]
    key_id: str = ""
    size: int = 0                        # bytes on the wire

    @property
    def count(self) -> int:
        return sum(b.count for b in self.blocks if b.op == OP_ADD)

    def entries(self) -> Iterator[Entry]:
        for b in self.blocks:
            if b.op == OP_ADD:
                yield from b.entries()

    def removals(self) -> Iterator[tuple[str, str, str]]:
        for b in self.blocks:
            if b.op == OP_REMOVE:
                yield from b.removals()


# -- encoding ----------------------------------------------------------------------------------------

class _Strings:
    def __init__(self):
        self.index: dict[str, int] = {}

    def __call__(self, s: str) -> int:
        i = self.index.get(s)
        if i is None:
            i = self.index[s] = len(self.index)
        return i


def _text(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 65535:
        raise ValueError("text longer than 65535 bytes")
    return _U16.pack(len(b)) + b


def _expiry(d: dict[str, Any], issued_at: int) -> int:
    if "expires" in d:
        e = d["expires"]
        return 0 if e is None else int(e)
    ttl = d.get("ttl")
    return 0 if ttl is None else -(-(issued_at + int(ttl) * 1000) // 1000)


def encode(kind: str, sender: str, body: dict[str, Any], key, ts: int | None = None) -> bytes:
    """A signed binary message from the body ruleset.snapshot_body / delta_body build (already
    checked there).  Entries may carry ``expires`` (epoch seconds) instead of ``ttl``: the
    manager's own expiry, so that the same decision packs to the same bytes in every snapshot."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not ruleset or ruleset-delta")
    issued_at = int(body["issued_at"])
    strings, metas_index = _Strings(), {}
    groups: dict[tuple[int, str, str, int], list] = {}
    adds = body.get("entries") if kind == "ruleset" else body.get("add", [])
    for d in adds or ():
        d = d.to_dict() if isinstance(d, Entry) else d
        fam, k = pack_value(d["scope"], d["value"])
        meta = (strings(d.get("origin") or ""), strings(d.get("reason") or ""))
        mi = metas_index.setdefault(meta, len(metas_index))
        groups.setdefault((OP_ADD, d["action"], d["scope"], fam), []).append((k, _expiry(d, issued_at), mi, d["id"]))
    for r in (body.get("remove", []) if kind == "ruleset-delta" else ()):
        fam, k = pack_value(r["scope"], r["value"])
        groups.setdefault((OP_REMOVE, r["action"], r["scope"], fam), []).append((k,))
    mw = "H" if len(metas_index) <= 65535 else "I"
    blocks = []
    for (op, action, scope, fam), rows in groups.items():
        parts = [_BLOCK.pack(op, _ACTIONS.index(action), _SCOPES.index(scope), fam, len(rows)),
                 b"".join(r[0] for r in rows)]
        if op == OP_ADD:
            parts.append(_be(array("I", [r[1] for r in rows])))
            parts.append(_be(array(mw, [r[2] for r in rows])))
            parts.append(_ids([r[3] for r in rows], strings))
        blocks.append(b"".join(parts))
    ts = payload.now_ms() if ts is None else ts
    head = _HEAD.pack(MAGIC, VERSION, KINDS[kind], _MODES[body.get("mode")], len(blocks), ts,
                      body["generation"], body.get("base_generation") or 0, issued_at)
    tables = [_U32.pack(len(strings.index))] + [_text(s) for s in strings.index]
    tables.append(_U32.pack(len(metas_index)))
    tables += [struct.pack(">II", o, r) for o, r in metas_index]
    signed = b"".join([head, _text(body["engine"]), _text(sender), *tables, *blocks])
    return signed + bytes.fromhex(key_id(key)) + key.sign(signed)


def _be(a: array) -> bytes:
    if _LITTLE:
        a.byteswap()
    return a.tobytes()


_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


def _ids(ids: list[str], strings: _Strings) -> bytes:
    m = _HEX_ID.match(ids[0]) if ids else None
    if m:
        prefix, width = m.group(1), len(m.group(2)) // 2
        shape = re.compile(re.escape(prefix) + "[0-9a-f]{%d}" % (2 * width))
        if width <= 64 and all(shape.fullmatch(i) for i in ids):
            n = len(prefix)
            return _U32.pack(strings(prefix)) + bytes((width,)) + b"".join(bytes.fromhex(i[n:]) for i in ids)
    return _U32.pack(strings("")) + b"\0" + b"".join(_text(i) for i in ids)


def peek_generation(raw: bytes) -> int | None:
    """The generation in a binary message's head, unchecked (a manager continuing above a
    retained snapshot it finds on the broker)."""
    if len(raw) < _HEAD.size or raw[:3] != MAGIC or raw[3] != VERSION:
        return None
    return _HEAD.unpack_from(raw)[6]


# -- decoding ----------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise PayloadError("truncated", f"message ends inside a field ({n} bytes wanted at {self.pos}, "
                                            f"{len(self.data) - self.pos} left)")
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def text(self, what: str) -> str:
        n = self.u16()
        try:
            s = bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("bad-field", f"{what} is not UTF-8") from None
        if len(s) > vocab.MAX_TEXT:
            raise PayloadError("bad-field", f"{what} longer than {vocab.MAX_TEXT} characters")
        return s

    def column(self, typecode: str, n: int) -> array:
        a = array(typecode)
        a.frombytes(self.take(n * a.itemsize))
        if _LITTLE:
            a.byteswap()
        return a


def decode(raw: bytes, keys, engine_id: str | None = None, kind: str | None = None,
           max_entries: int = DEFAULT_MAX_ENTRIES, check_ip_duplicates: bool = True) -> Packed:
    """Bytes -> verified, checked ``Packed``.  ``keys``: the trusted key(s) (see
    ruleset.check_signature); None skips the signature (display tools only).  ``max_entries``:
    more entries than this in one message -> ``over-cap`` before anything is allocated for them.
    ``check_ip_duplicates`` False: the caller proves address keys distinct itself (an engine: the
    kernel batch adds them exclusively, or the diff's index counts them) -- the one check that
    costs a pass over a million keys here."""
    if raw[:3] != MAGIC:
        raise PayloadError("bad-magic", "not a binary rule set")
    if len(raw) < _HEAD.size + SIG_LEN:
        raise PayloadError("truncated", f"{len(raw)} bytes is shorter than a head and a signature")
    if raw[3] != VERSION:
        raise PayloadError("bad-version", f"binary rule-set version {raw[3]} (this engine reads {VERSION})")
    signed = memoryview(raw)[:-SIG_LEN]
    trailer = raw[-SIG_LEN:]
    kid = trailer[:8].hex()
    if keys is not None:
        check_signature(signed, kid, trailer[8:], keys)
    with quiet_gc():
        msg = _decode_body(_Reader(signed), engine_id, max_entries, check_ip_duplicates)
    if kind is not None and msg.kind != kind:
        raise PayloadError("bad-kind", f"a {msg.kind} message where a {kind} was expected")
    msg.key_id, msg.size = kid, len(raw)
    return msg


def _decode_body(r: _Reader, engine_id: str | None, max_entries: int, dups: bool) -> Packed:
    _magic, _ver, kind, mode, nblocks, ts, gen, base, issued = _HEAD.unpack(r.take(_HEAD.size))
    if kind not in _KIND_NAMES:
        raise PayloadError("bad-field", f"kind {kind} is not 1 (snapshot) or 2 (delta)")
    if mode not in _MODE_NAMES:
        raise PayloadError("bad-field", f"mode {mode} is not 0, 1 or 2")
    kname = _KIND_NAMES[kind]
    engine, sender = r.text("engine"), r.text("sender")
    head = {"engine": engine, "generation": gen, "issued_at": issued, "mode": _MODE_NAMES[mode]}
    if kname == "ruleset-delta":
        head["base_generation"] = base
    _check_head(head, engine_id)
    if kname == "ruleset-delta" and not base < gen:
        raise PayloadError("bad-generation", f"base_generation {base} must be below generation {gen}")
    nstr = r.u32()
    if nstr > len(r.data) // 2:
        raise PayloadError("truncated", f"{nstr} strings cannot fit")
    strings = [r.text("text") for _ in range(nstr)]
    nmeta = r.u32()
    if nmeta * 8 > len(r.data) - r.pos:
        raise PayloadError("truncated", f"{nmeta} metadata pairs cannot fit")
    pairs = r.column("I", 2 * nmeta)
    if nmeta and max(pairs) >= nstr:
        raise PayloadError("bad-field", "a metadata pair names a string that is not there")
    metas = [(strings[pairs[2 * i]], strings[pairs[2 * i + 1]]) for i in range(nmeta)]
    mcode = "H" if nmeta <= 65535 else "I"
    blocks, seen, total = [], set(), 0
    max_exp = issued // 1000 + vocab.MAX_TTL + 1
    for _ in range(nblocks):
        op, act, scope, fam, count = _BLOCK.unpack(r.take(_BLOCK.size))
        if op > 1 or act > 1 or scope > 2 or fam not in (4, 6):
            raise PayloadError("bad-field", f"block header op={op} action={act} scope={scope} family={fam}")
        if op == OP_REMOVE and kname == "ruleset":
            raise PayloadError("bad-field", "a snapshot carries no removals")
        action, sc = _ACTIONS[act], _SCOPES[scope]
        if (op, action, sc, fam) in seen:
            raise PayloadError("bad-field", f"two blocks for {action} {sc} IPv{fam}")
        seen.add((op, action, sc, fam))
        if op == OP_ADD and action == "allow" and sc == "flow":
            raise PayloadError("bad-entry", "allow entries are ip or cidr (flow-level allow is not supported)")
        total += count
        if total > max_entries:
            raise PayloadError("over-cap", f"more than {max_entries} entries in one message")
        w = key_width(sc, fam)
        b = Block(op, action, sc, fam, count, bytes(r.take(count * w)))
        if op == OP_ADD:
            b.expires = r.column("I", count)
            if count and max(b.expires) > max_exp:
                raise PayloadError("bad-entry", f"{action} {sc}: an expiry more than {vocab.MAX_TTL} s after issue")
            b.metas = r.column(mcode, count)
            if count and max(b.metas) >= nmeta:
                raise PayloadError("bad-field", "an entry names metadata that is not there")
            pi, b.id_width = r.u32(), r.u8()
            if pi >= nstr:
                raise PayloadError("bad-field", "an id prefix names a string that is not there")
            b.id_prefix = strings[pi]
            if b.id_width:
                b.id_bytes = bytes(r.take(count * b.id_width))
                if count and not 0 < len(b.id_prefix) + 2 * b.id_width <= vocab.MAX_TEXT:
                    raise PayloadError("bad-entry", "ids longer than allowed")
            else:
                b.id_list = [r.text("id") for _ in range(count)]
                if any(not i or len(i) > vocab.MAX_TEXT for i in b.id_list):
                    raise PayloadError("bad-entry", "an id is empty or too long")
        if dups or b.scope != "ip" or b.op != OP_ADD:
            _check_keys(b)
        blocks.append(b)
    if r.pos != len(r.data):
        raise PayloadError("bad-field", f"{len(r.data) - r.pos} bytes after the last block")
    msg = Packed(kname, engine, sender, ts, gen, base if kname == "ruleset-delta" else None, issued,
                 _MODE_NAMES[mode], blocks, metas)
    for b in blocks:
        b.owner = msg
    return msg


def _check_keys(b: Block) -> None:
    """Every key valid and none twice (the cost is one pass in C for addresses)."""
    w, n = b.width, b.count
    keys = [b.keys[i:i + w] for i in range(0, n * w, w)] if b.scope != "ip" or b.family == 6 else \
        array("I", b.keys)
    if len(set(keys)) != n:
        seen = set()
        for i in range(n):
            k = b.key(i)
            if k in seen:
                what = "add" if b.op == OP_ADD else "remove"
                raise PayloadError("duplicate-entry",
                                   f"{what} holds {b.action} {b.scope} {unpack_value(b.scope, b.family, k)} twice")
            seen.add(k)
    if b.scope == "ip":
        return
    a = 4 if b.family == 4 else 16
    bits = 8 * a
    for k in keys:
        if b.scope == "cidr":
            plen = k[a]
            host = int.from_bytes(k[:a], "big") & ((1 << (bits - plen)) - 1) if plen <= bits else 1
            if plen > bits or host:
                raise PayloadError("bad-entry", f"cidr {k.hex()}: prefix length {plen} or host bits set")
        else:
            if k[2 * a] not in _PROTO_NAMES or int.from_bytes(k[2 * a + 1:], "big") == 0:
                raise PayloadError("bad-entry", f"flow {k.hex()}: protocol {k[2 * a]} or port 0")
            if b.action != "drop":
                raise PayloadError("bad-entry", "flow entries drop")
