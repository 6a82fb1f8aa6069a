"""Rule sets between manager and engines: format, validation, canonical JSON and Ed25519 signing.

The contract is in docs/DESIGN-NOTES.md ("Rule sets").  The manager builds a snapshot or a delta
with ``snapshot_body`` / ``delta_body`` and turns it into signed MQTT bytes with ``encode_signed``;
an engine turns bytes back into a checked ``Snapshot`` / ``Delta`` with ``decode_snapshot`` /
``decode_delta``, which raise ``payload.PayloadError`` with a short reason (counted by callers):

``unsigned``, ``bad-signature``, ``unknown-key``, ``bad-alg``, ``wrong-engine``, ``bad-field``,
``bad-entry``, ``duplicate-entry``, ``bad-generation`` (plus the envelope reasons of payload.py).

Signature: ``{"alg": "ed25519", "key_id": ..., "sig": base64}`` over ``canonical(msg)`` of the
whole message without ``signature`` (envelope fields included).
"""
from __future__ import annotations

import base64
import gc
import hashlib
import ipaddress
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import payload
from .contracts import vocab
from .contracts.engine import RulesetMeta
from .files import atomic_write
from .payload import PayloadError

# the vocabulary of entries and rule sets (contracts.vocab), named here for this module's readers
ACTIONS, SCOPES, MODES, FLOW_PROTOS, MAX_TEXT, MAX_TTL = (
    vocab.ACTIONS, vocab.SCOPES, vocab.MODES, vocab.FLOW_PROTOS, vocab.MAX_TEXT, vocab.MAX_TTL)
_OCTETS = frozenset(str(i) for i in range(256))      # canonical octets: no sign, space or leading 0

PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


# -- canonical JSON and keys ------------------------------------------------------------------

def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are signed: ``obj`` without ``signature``, keys sorted, no whitespace, ASCII."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of sha256(raw 32-byte public key)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """PKCS8 PEM, unencrypted, mode 0600, written atomically."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write(path, pem, 0o600)


def save_public_key(key: Ed25519PublicKey, path: Path) -> None:
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(path, pem, 0o644)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Raises ValueError (with the path) if the file is missing, unreadable or not an Ed25519 key."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: cannot load private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: cannot load public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def generate_keypair(state_dir: Path) -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """Create ``signing.key`` / ``signing.pub`` in ``state_dir`` unless they exist; return the pair.

    Idempotent: the manager calls it at every start; an existing key is loaded, never replaced.
    """
    state_dir = Path(state_dir)
    priv_path, pub_path = state_dir / PRIVATE_KEY_FILE, state_dir / PUBLIC_KEY_FILE
    if priv_path.exists():
        priv = load_private_key(priv_path)
    else:
        state_dir.mkdir(parents=True, exist_ok=True)
        priv = Ed25519PrivateKey.generate()
        save_private_key(priv, priv_path)
    pub = priv.public_key()
    if not pub_path.exists() or _pub_differs(pub_path, pub):
        save_public_key(pub, pub_path)
    return priv, pub


load_or_create_keypair = generate_keypair


def _pub_differs(path: Path, pub: Ed25519PublicKey) -> bool:
    try:
        return key_id(load_public_key(path)) != key_id(pub)
    except ValueError:
        return True


# -- signing ----------------------------------------------------------------------------------

def sign(msg: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``msg`` with a ``signature`` over its canonical form (any old signature replaced)."""
    sig = key.sign(canonical(msg))
    out = {k: v for k, v in msg.items() if k != "signature"}
    out["signature"] = {"alg": "ed25519", "key_id": key_id(key), "sig": base64.b64encode(sig).decode("ascii")}
    return out


def trusted_keys(keys) -> dict[str, Ed25519PublicKey]:
    """The engine's trusted manager key(s) by key_id: one key, an iterable of keys, or a mapping
    key_id -> key (as given)."""
    if isinstance(keys, Ed25519PublicKey):
        return {key_id(keys): keys}
    if isinstance(keys, dict):
        return keys
    return {key_id(k): k for k in keys}


def check_signature(signed: bytes | memoryview, signer: str, sig: bytes, keys) -> Ed25519PublicKey:
    """THE signature check of every rule set, JSON or binary: ``sig`` (raw Ed25519) over exactly
    ``signed`` by the trusted key whose id is ``signer``.  ``keys``: see ``trusted_keys``.  Raises
    PayloadError ``unknown-key`` or ``bad-signature``; returns the key that signed."""
    trusted = trusted_keys(keys)
    key = trusted.get(signer) if isinstance(signer, str) else None    # a forged key_id may be any JSON
    if key is None:
        raise PayloadError("unknown-key", f"signed by key {signer!r}, trusted: {', '.join(sorted(trusted)) or 'none'}")
    try:
        key.verify(bytes(sig), bytes(signed))
    except (InvalidSignature, ValueError, TypeError):
        raise PayloadError("bad-signature", "signature does not match the content") from None
    return key


def verify(msg: dict[str, Any], keys) -> None:
    """Raise PayloadError unless ``msg`` carries a valid signature by one of ``keys``."""
    sig = msg.get("signature")
    if sig is None:
        raise PayloadError("unsigned", "no signature field")
    if not isinstance(sig, dict) or not isinstance(sig.get("sig"), str):
        raise PayloadError("bad-signature", "signature must be an object with a base64 'sig'")
    if sig.get("alg") != "ed25519":
        raise PayloadError("bad-alg", f"signature alg {sig.get('alg')!r} (expected ed25519)")
    try:
        raw = base64.b64decode(sig["sig"], validate=True)
    except (ValueError, TypeError):
        raw = None
    if raw is None:
        claimed = sig.get("key_id")
        if not isinstance(claimed, str) or claimed not in trusted_keys(keys):
            check_signature(b"", claimed, b"", keys)     # raises unknown-key
        raise PayloadError("bad-signature", "sig is not base64")
    check_signature(canonical(msg), sig.get("key_id"), raw, keys)


def encode_signed(kind: str, sender: str, body: dict[str, Any], key: Ed25519PrivateKey,
                  ts: int | None = None) -> bytes:
    """The MQTT payload: envelope (schema, ts, sender) + body, signed. ``kind``: ruleset or ruleset-delta.

    Written as the canonical bytes with ``"signature"`` appended as the last member, so that a
    receiver can verify the bytes as they came (``open_signed``) instead of re-encoding the
    parsed message (0.12-0.14 s of a 100k-entry snapshot's decode)."""
    msg = json.loads(payload.encode(kind, sender, body, ts=ts))
    signed = canonical(msg)
    sig = {"alg": "ed25519", "key_id": key_id(key), "sig": base64.b64encode(key.sign(signed)).decode("ascii")}
    return signed[:-1] + _SIG_MEMBER + json.dumps(sig, separators=(",", ":")).encode("ascii") + b"}"


_SIG_MEMBER = b',"signature":'


def open_signed(raw: bytes, kind: str, keys) -> dict[str, Any]:
    """``payload.decode`` + ``verify``.  Fast path: when ``raw`` is signed bytes followed by a
    ``"signature"`` member (what encode_signed writes) and the signature checks over exactly those
    bytes, the message is parsed from the signed bytes themselves -- what the manager signed,
    with no re-encoding.  Anything else (another member order or spacing, a bad or missing
    signature) goes the full way: parse, re-encode canonically, verify, with its reasons."""
    if keys is not None:
        i = raw.rfind(_SIG_MEMBER)
        if i > 0 and raw.endswith(b"}"):
            try:
                sig = json.loads(raw[i + len(_SIG_MEMBER):-1])
            except (ValueError, UnicodeDecodeError):
                sig = None
            if isinstance(sig, dict) and sig.get("alg") == "ed25519" and isinstance(sig.get("sig"), str):
                signed = raw[:i] + b"}"
                try:
                    check_signature(signed, sig.get("key_id"), base64.b64decode(sig["sig"], validate=True), keys)
                except (PayloadError, ValueError, TypeError):
                    pass
                else:
                    if len(signed) >= _BIG:
                        with quiet_gc():
                            msg = payload.decode(signed, kind)
                    else:
                        msg = payload.decode(signed, kind)
                    if "signature" not in msg:
                        msg["signature"] = sig
                        return msg
    msg = payload.decode(raw, kind)
    if keys is not None:
        verify(msg, keys)
    return msg


# -- entries ----------------------------------------------------------------------------------

class Entry(NamedTuple):
    """One checked entry.  A named tuple rather than a frozen dataclass: a snapshot makes up to
    millions, and a frozen dataclass's __init__ (a setattr per field) cost 0.66 s per 1M here
    against 0.07 s for a tuple."""
    id: str
    action: str             # drop | allow
    scope: str              # ip | cidr | flow
    value: str              # normalised (see normalise_value)
    ttl: int | None         # seconds remaining when issued; None: no expiry
    origin: str = ""
    reason: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return self[1:4]     # (action, scope, value)

    @property
    def family(self) -> int:
        """4 or 6 (for a flow: the family of its addresses)."""
        if self.scope == "mac":
            return 0                 # both families: one set matches the sender's frames
        return 6 if ":" in self.value.split("|", 1)[0] else 4   # values are normalised

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self))


def normalise_value(scope: str, value: Any) -> str:
    """Canonical text of a value, or ValueError.

    ip: an address (``10.0.0.1``, ``2001:db8::1``); cidr: a network, host bits cleared
    (``10.0.0.7/24`` -> ``10.0.0.0/24``); flow: ``src|dst|proto|dport`` with src and dst of one
    family, proto tcp/udp/sctp, dport 1-65535.
    """
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ValueError("value must be a non-empty string")
    if scope == "ip":
        parts = value.split(".")
        if len(parts) == 4 and _OCTETS.issuperset(parts):
            return value          # already a canonical dotted quad (what ipaddress would print)
        return str(ipaddress.ip_address(value))
    if scope == "cidr":
        if "/" not in value:
            raise ValueError(f"cidr value {value!r} has no prefix length")
        return str(ipaddress.ip_network(value, strict=False))
    if scope == "flow":
        parts = value.split("|")
        if len(parts) != 4:
            raise ValueError(f"flow value {value!r} is not src|dst|proto|dport")
        src, dst = ipaddress.ip_address(parts[0]), ipaddress.ip_address(parts[1])
        if src.version != dst.version:
            raise ValueError(f"flow value {value!r} mixes IPv4 and IPv6")
        proto = parts[2].lower()
        if proto not in FLOW_PROTOS:
            raise ValueError(f"flow proto {parts[2]!r} not one of {', '.join(FLOW_PROTOS)}")
        if not parts[3].isdigit() or not 1 <= int(parts[3]) <= 65535:
            raise ValueError(f"flow dport {parts[3]!r} not 1-65535")
        return f"{src}|{dst}|{proto}|{int(parts[3])}"
    if scope == "mac":
        # a sender of forged source addresses, attributed by the engine (engine/senders.py):
        # ``mac|bridge port`` as the engine saw it, e.g. ``02:77:00:00:00:66|eth0``
        mac, sep, port = value.partition("|")
        mac = mac.lower()
        if not sep or not _MAC.match(mac) or not _IFNAME.match(port):
            raise ValueError(f"mac value {value!r} is not mac|port (aa:bb:cc:dd:ee:ff|eth0)")
        return f"{mac}|{port}"
    raise ValueError(f"scope {scope!r} not one of {', '.join(SCOPES)}")


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _text(obj: dict, key: str, required: bool) -> str:
    v = obj.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or (required and not v) or len(v) > MAX_TEXT:
        raise ValueError(f"{key} must be a {'non-empty ' if required else ''}string of at most {MAX_TEXT} characters")
    return v


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_entry(obj: Any) -> Entry:
    """Check one entry of a snapshot or a delta's ``add``; PayloadError("bad-entry") if wrong."""
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"entry is {type(obj).__name__}, not an object")
        action, scope = obj.get("action"), obj.get("scope")
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} not one of {', '.join(ACTIONS)}")
        if scope not in SCOPES:
            raise ValueError(f"scope {scope!r} not one of {', '.join(SCOPES)}")
        if action == "allow" and scope in ("flow", "mac"):
            raise ValueError("allow entries are ip or cidr (flow- or mac-level allow is not supported)")
        value = normalise_value(scope, obj.get("value"))
        ttl = obj.get("ttl")
        if ttl is not None and (not _int(ttl) or not 0 <= ttl <= MAX_TTL):
            raise ValueError(f"ttl must be null or an integer 0-{MAX_TTL} (seconds), got {ttl!r}")
        # the common shapes checked inline (a snapshot holds up to millions); anything else, and
        # every error, goes through _text
        eid, origin, reason = obj.get("id"), obj.get("origin"), obj.get("reason")
        if not (type(eid) is str and 0 < len(eid) <= MAX_TEXT):
            eid = _text(obj, "id", True)
        if origin is None:
            origin = ""
        elif not (type(origin) is str and len(origin) <= MAX_TEXT):
            origin = _text(obj, "origin", False)
        if reason is None:
            reason = ""
        elif not (type(reason) is str and len(reason) <= MAX_TEXT):
            reason = _text(obj, "reason", False)
        return Entry(eid, action, scope, value, ttl, origin, reason)
    except ValueError as exc:
        raise PayloadError("bad-entry", f"{exc} in {_short(obj)}") from None


def parse_removal(obj: Any) -> tuple[str, str, str]:
    """A delta's ``remove`` item -> entry key (action, scope, normalised value)."""
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"removal is {type(obj).__name__}, not an object")
        action, scope = obj.get("action"), obj.get("scope")
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} not one of {', '.join(ACTIONS)}")
        if scope not in SCOPES:
            raise ValueError(f"scope {scope!r} not one of {', '.join(SCOPES)}")
        return (action, scope, normalise_value(scope, obj.get("value")))
    except ValueError as exc:
        raise PayloadError("bad-entry", f"{exc} in {_short(obj)}") from None


def _short(obj: Any) -> str:
    text = json.dumps(obj, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def _entries(items: Any, field_name: str) -> list[Entry]:
    if not isinstance(items, list):
        raise PayloadError("bad-field", f"{field_name} must be a list")
    if len(items) < 10_000:
        return _entries_checked(items, field_name)
    with quiet_gc():
        return _entries_checked(items, field_name)


class quiet_gc:
    """No cyclic collection while a large rule set is parsed or planned: only acyclic objects are
    made, and the full collections their allocation triggers would walk everything held (measured:
    1M entries planned in 3.8 s instead of 4.8-5.4 s).  On exit they go to the permanent
    generation (O(1); still freed by reference counting) rather than being walked by the first
    collection after enable (0.85 s of the first apply of a 1M plan was that one collection)."""

    def __enter__(self):
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        gc.freeze()
        if self.was:
            gc.enable()


_BIG = 1 << 20            # bytes: a message this large is parsed with the collector off


_FAST_ACTIONS = frozenset(ACTIONS)
_FIELDS = operator.itemgetter("id", "action", "scope", "value", "ttl", "origin", "reason")


def _entries_checked(items: list, field_name: str) -> list[Entry]:
    """``parse_entry`` of every item, with the common shape (an ``ip`` entry whose value is a
    canonical dotted quad, plain ttl and text fields) accepted inline: every check below is one of
    parse_entry's, stricter where it differs (exact types), and anything else goes through
    parse_entry (identical verdicts on fuzzed entries: tests/unit/test_ruleset.py)."""
    out, seen = [], set()
    make, octets, actions, fields = tuple.__new__, _OCTETS, _FAST_ACTIONS, _FIELDS
    for item in items:
        if type(item) is dict and len(item) == 7:
            try:
                eid, action, scope, value, ttl, origin, reason = fields(item)
            except KeyError:
                scope = None
            if (scope == "ip" and action in actions and type(value) is str
                    and (ttl is None or (type(ttl) is int and 0 <= ttl <= MAX_TTL))
                    and type(eid) is str and 0 < len(eid) <= MAX_TEXT
                    and (origin is None or (type(origin) is str and len(origin) <= MAX_TEXT))
                    and (reason is None or (type(reason) is str and len(reason) <= MAX_TEXT))):
                parts = value.split(".")
                if len(parts) == 4 and octets.issuperset(parts):
                    e = make(Entry, (eid, action, "ip", value, ttl, origin or "", reason or ""))
                else:
                    e = parse_entry(item)
            else:
                e = parse_entry(item)
        else:
            e = parse_entry(item)
        key = e[1:4]
        n = len(seen)
        seen.add(key)
        if len(seen) == n:
            raise PayloadError("duplicate-entry", f"{field_name} holds {e.action} {e.scope} {e.value} twice")
        out.append(e)
    return out


# -- snapshots and deltas ---------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    engine: str
    generation: int
    issued_at: int            # epoch ms
    mode: str | None
    entries: tuple[Entry, ...]
    key_id: str = ""


@dataclass(frozen=True)
class Delta:
    engine: str
    base_generation: int
    generation: int
    issued_at: int
    mode: str | None
    add: tuple[Entry, ...]
    remove: tuple[tuple[str, str, str], ...]
    key_id: str = ""


def entry(id: str, action: str, scope: str, value: str, ttl: int | None, origin: str = "",
          reason: str = "") -> dict[str, Any]:
    """Build one entry dict (checked; the value is normalised)."""
    e = parse_entry({"id": id, "action": action, "scope": scope, "value": value, "ttl": ttl,
                     "origin": origin, "reason": reason})
    return e.to_dict()


def removal(action: str, scope: str, value: str) -> dict[str, str]:
    a, s, v = parse_removal({"action": action, "scope": scope, "value": value})
    return {"action": a, "scope": s, "value": v}


def snapshot_body(engine: str, generation: int, entries: Iterable[dict[str, Any] | Entry],
                  mode: str | None = None, issued_at: int | None = None) -> dict[str, Any]:
    """The body of a snapshot (pass to ``encode_signed("ruleset", ...)``); checked here too."""
    body = {"engine": engine, "generation": generation,
            "issued_at": payload.now_ms() if issued_at is None else issued_at, "mode": mode,
            "entries": [e.to_dict() if isinstance(e, Entry) else dict(e) for e in entries]}
    _check_head(body, engine)
    _entries(body["entries"], "entries")
    return body


def delta_body(engine: str, base_generation: int, generation: int,
               add: Iterable[dict[str, Any] | Entry] = (), remove: Iterable[dict[str, str]] = (),
               mode: str | None = None, issued_at: int | None = None) -> dict[str, Any]:
    body = {"engine": engine, "base_generation": base_generation, "generation": generation,
            "issued_at": payload.now_ms() if issued_at is None else issued_at, "mode": mode,
            "add": [e.to_dict() if isinstance(e, Entry) else dict(e) for e in add],
            "remove": [dict(r) for r in remove]}
    _check_delta(body, engine)
    return body


def _check_head(msg: dict[str, Any], engine_id: str | None) -> None:
    eng = msg.get("engine")
    if not isinstance(eng, str) or not eng:
        raise PayloadError("bad-field", "engine must be a non-empty string")
    if engine_id is not None and eng != engine_id:
        raise PayloadError("wrong-engine", f"rule set is for engine {eng!r}, this is {engine_id!r}")
    gen = msg.get("generation")
    if not _int(gen) or gen < 0:
        raise PayloadError("bad-generation", f"generation must be a non-negative integer, got {gen!r}")
    RulesetMeta.from_body(msg)          # the head's other fields (issued_at, mode): PayloadError bad-field


def _check_delta(msg: dict[str, Any], engine_id: str | None) -> tuple[list[Entry], list[tuple[str, str, str]]]:
    _check_head(msg, engine_id)
    base = msg.get("base_generation")
    if not _int(base) or base < 0 or base >= msg["generation"]:
        raise PayloadError("bad-generation",
                           f"base_generation {base!r} must be an integer below generation {msg['generation']}")
    add = _entries(msg.get("add", []), "add")
    rem = msg.get("remove", [])
    if not isinstance(rem, list):
        raise PayloadError("bad-field", "remove must be a list")
    return add, [parse_removal(r) for r in rem]


def decode_snapshot(raw: bytes, key, engine_id: str | None = None) -> Snapshot:
    """Bytes from the ruleset topic, JSON or binary (rulewire.py) -> checked Snapshot with its
    entries materialised (an engine keeps a binary one packed: rulewire.decode). ``key`` None skips
    the signature check (only for tools that merely display a rule set)."""
    if raw[:3] == b"VRS":
        from . import rulewire
        p = rulewire.decode(raw, key, engine_id, kind="ruleset")
        return Snapshot(engine=p.engine, generation=p.generation, issued_at=p.issued_at, mode=p.mode,
                        entries=tuple(p.entries()), key_id=p.key_id)
    return snapshot_entries(open_snapshot(raw, key, engine_id))


def open_snapshot(raw: bytes, key, engine_id: str | None = None) -> dict[str, Any]:
    """First half of ``decode_snapshot``: the envelope, signature and head (engine, generation,
    issued_at, mode) checked, the entries not yet parsed (most of the cost for a large set), so
    that a receiver can drop a snapshot it already holds cheaply."""
    msg = open_signed(raw, "ruleset", key)
    _check_head(msg, engine_id)
    return msg


def snapshot_entries(msg: dict[str, Any]) -> Snapshot:
    """Second half of ``decode_snapshot``: parse and check the entries of an opened snapshot."""
    entries = _entries(msg.get("entries"), "entries")
    return Snapshot(engine=msg["engine"], generation=msg["generation"], issued_at=msg["issued_at"],
                    mode=msg.get("mode"), entries=tuple(entries),
                    key_id=(msg.get("signature") or {}).get("key_id", "") if isinstance(msg.get("signature"), dict) else "")


def decode_delta(raw: bytes, key, engine_id: str | None = None) -> Delta:
    """Bytes from the delta topic, JSON or binary (rulewire.py) -> checked Delta (a delta is small:
    its entries are materialised either way)."""
    if raw[:3] == b"VRS":
        from . import rulewire
        p = rulewire.decode(raw, key, engine_id, kind="ruleset-delta")
        return Delta(engine=p.engine, base_generation=p.base_generation, generation=p.generation,
                     issued_at=p.issued_at, mode=p.mode, add=tuple(p.entries()), remove=tuple(p.removals()),
                     key_id=p.key_id)
    msg = open_signed(raw, "ruleset-delta", key)
    add, rem = _check_delta(msg, engine_id)
    return Delta(engine=msg["engine"], base_generation=msg["base_generation"], generation=msg["generation"],
                 issued_at=msg["issued_at"], mode=msg.get("mode"), add=tuple(add), remove=tuple(rem),
                 key_id=(msg.get("signature") or {}).get("key_id", "") if isinstance(msg.get("signature"), dict) else "")


def remaining_ttl(e: Entry, issued_at_ms: int, now_ms: int | None = None) -> float | None:
    """Seconds left of ``e`` now: ttl minus the time since issue (never negative clock skew:
    a manager clock ahead of ours does not lengthen entries). None: no expiry."""
    if e.ttl is None:
        return None
    now_ms = payload.now_ms() if now_ms is None else now_ms
    return e.ttl - max(0, now_ms - issued_at_ms) / 1000.0
