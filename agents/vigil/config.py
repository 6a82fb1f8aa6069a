"""Typed configuration for every Vigil daemon.

A daemon's configuration is a tree of frozen dataclasses.  ``load(path, Schema)`` reads one YAML
file, rejects unknown keys, converts and checks every value against its annotation and raises
``ConfigError`` naming the file and the dotted key that is wrong.  Validation beyond types lives
in a dataclass's ``__post_init__`` and raises ``ValueError``; the loader adds the key path.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid; the message names file and key."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


def load(path: str | Path, schema: type[T]) -> T:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    return loads(text, schema, source=str(path))


def loads(text: str, schema: type[T], source: str = "<string>") -> T:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, "", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    return from_dict(data, schema, source)


def from_dict(data: Any, schema: type[T], source: str = "<dict>", key: str = "") -> T:
    return _convert(data, schema, source, key)


def to_dict(obj: Any) -> Any:
    """Plain data (for --check-config output and status payloads)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (Path, ipaddress.IPv4Network, ipaddress.IPv6Network,
                        ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(obj)
    return obj


def _join(key: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{key}[{part}]"
    return f"{key}.{part}" if key else part


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, source, key)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(source, key, "; ".join(errors))
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(source, key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, source, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(source, key, f"must be a list, got {type(value).__name__}")
        (item_tp,) = get_args(tp)[:1] or (Any,)
        items = [_convert(v, item_tp, source, _join(key, i)) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"must be a mapping, got {type(value).__name__}")
        ktp, vtp = get_args(tp) or (Any, Any)
        return {_convert(k, ktp, source, key): _convert(v, vtp, source, _join(key, str(k)))
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(source, key, f"must be a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(source, key, f"must be a path, got {value!r}")
        return Path(value)
    if tp in (ipaddress.IPv4Network, ipaddress.IPv6Network) or tp is _IPNetwork:
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise ConfigError(source, key, f"must be an IP address or CIDR, got {value!r}") from None
    raise ConfigError(source, key, f"unsupported type {tp!r} in schema")  # a programming error


_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _convert_dataclass(value: Any, tp: Any, source: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(source, key or "(top level)", f"must be a mapping, got {type(value).__name__}")
    hints = get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    unknown = sorted(set(map(str, value)) - set(fields))
    if unknown:
        raise ConfigError(source, _join(key, unknown[0]),
                          f"unknown key (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], source, _join(key, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(source, _join(key, name), "required key is missing")
    try:
        return tp(**kwargs)
    except ValueError as exc:
        # __post_init__ raises ValueError("field: problem") or ValueError("problem")
        msg = str(exc)
        sub, sep, problem = msg.partition(": ")
        if sep and sub in fields:
            raise ConfigError(source, _join(key, sub), problem) from None
        raise ConfigError(source, key or "(top level)", msg) from None
