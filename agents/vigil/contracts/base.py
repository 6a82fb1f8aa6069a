"""The machinery every payload kind shares: a frozen dataclass whose fields are the body's keys.

``Kind.decode(raw)`` checks the envelope (``envelope.decode``) and then each field; a field of the
wrong type raises ``PayloadError("bad-field", ...)`` (callers count it by its reason), a key the
class does not define is ignored.  ``obj.encode(sender)`` writes the envelope and the body (a None
field is left out, unless declared ``opt(..., null=True)``: then it is written as null).  ``from_body`` / ``body`` do the same without the envelope, for
items inside a batch and for messages that travel without one (agent <-> decider).

A field is declared with ``req(check)``, ``opt(check, default)`` or ``items(Kind)`` (a list of
nested payloads; an item that does not check out is dropped and counted in the batch's
``invalid``, the rest is kept).  ``extra()`` collects every key the class does not name — for
evidence that is stored as it came (engine event details), never for fields a reader acts on.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any, Callable, ClassVar, TypeVar

from .envelope import PayloadError, decode as decode_envelope, encode as encode_envelope

T = TypeVar("T", bound="Contract")
Check = Callable[[Any], bool]
_MISSING = dataclasses.MISSING


def req(check: Check) -> Any:
    return dataclasses.field(metadata={"check": check, "required": True})


def opt(check: Check, default: Any = None, factory: Callable[[], Any] | None = None, null: bool = False) -> Any:
    """An optional field; ``null=True``: written as null when None (a reader is told "none" rather
    than left to guess from an absent key), otherwise a None field is left out of the body."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check, "null": null})


def items(kind: type) -> Any:
    return dataclasses.field(default_factory=list, metadata={"items": kind})


def extra() -> Any:
    return dataclasses.field(default_factory=dict, metadata={"extra": True})


def envelope_field(default: Any) -> Any:
    """``ts`` and ``sender``: filled from the envelope, not part of the body."""
    return dataclasses.field(default=default, compare=False, metadata={"envelope": True})


# -- checks ---------------------------------------------------------------------------------------
def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def is_list(v: Any) -> bool:
    return isinstance(v, list)


def is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def one_of(words: tuple[str, ...]) -> Check:
    allowed = frozenset(words)
    return lambda v: isinstance(v, str) and v in allowed


def is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def is_ip(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def is_mac(v: Any) -> bool:
    """A MAC address as the engine writes it: six lower-case hex pairs joined by colons."""
    return (isinstance(v, str) and len(v) == 17 and all(v[i] == ":" for i in range(2, 17, 3))
            and all(c in "0123456789abcdef" for i, c in enumerate(v) if i % 3 != 2))


def nullable(check: Check) -> Check:
    return lambda v: v is None or check(v)


# -- the base class -----------------------------------------------------------------------------
class Contract:
    KIND: ClassVar[str] = ""            # the envelope kind; "" for items and envelope-less messages

    @classmethod
    def _spec(cls):
        spec = cls.__dict__.get("_SPEC")
        if spec is None:
            spec = []
            for f in dataclasses.fields(cls):
                m = f.metadata
                spec.append((f.name, m.get("check"), m.get("required", False), m.get("items"),
                             m.get("extra", False), m.get("envelope", False), m.get("null", False)))
            cls._SPEC = spec
        return spec

    @classmethod
    def from_body(cls: type[T], d: Any) -> T:
        if not isinstance(d, dict):
            raise PayloadError("bad-field", f"{cls.__name__}: not an object")
        kw: dict[str, Any] = {}
        invalid = 0
        extra_name = None
        for name, check, required, item_kind, is_extra, is_env, _null in cls._spec():
            if is_env:
                continue
            if is_extra:
                extra_name = name
                continue
            if name not in d or d[name] is None:
                if required:
                    raise PayloadError("bad-field", f"{cls.__name__}: {name} is required")
                continue
            v = d[name]
            if item_kind is not None:
                if not isinstance(v, list):
                    raise PayloadError("bad-field", f"{cls.__name__}: {name} must be a list")
                good = []
                for x in v:
                    try:
                        good.append(item_kind.from_body(x))
                    except PayloadError:
                        invalid += 1
                v = good
            elif check is not None and not check(v):
                raise PayloadError("bad-field", f"{cls.__name__}: {name} is invalid: {str(v)[:80]!r}")
            kw[name] = v
        if extra_name is not None:
            known = {s[0] for s in cls._spec()}
            kw[extra_name] = {k: v for k, v in d.items() if k not in known and k not in _ENVELOPE_KEYS}
        obj = cls(**kw)
        if invalid:
            object.__setattr__(obj, "_invalid", invalid)
        return obj

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _check, _req, item_kind, is_extra, is_env, null in self._spec():
            if is_env:
                continue
            v = getattr(self, name)
            if is_extra:
                for k, x in v.items():
                    out.setdefault(k, x)
                continue
            if v is None:
                if null:
                    out[name] = None
                continue
            out[name] = [x.body() for x in v] if item_kind is not None else v
        return out

    def encode(self, sender: str, ts: int | None = None) -> bytes:
        return encode_envelope(self.KIND, sender, self.body(), ts)

    @classmethod
    def decode(cls: type[T], raw: bytes) -> T:
        msg = decode_envelope(raw, cls.KIND)
        obj = cls.from_body(msg)
        object.__setattr__(obj, "ts", msg["ts"])
        object.__setattr__(obj, "sender", msg.get("sender") if isinstance(msg.get("sender"), str) else "")
        return obj

    @property
    def invalid(self) -> int:
        """Items of this batch dropped because they did not check out."""
        return self.__dict__.get("_invalid", 0)


_ENVELOPE_KEYS = frozenset(("schema", "ts", "sender"))
