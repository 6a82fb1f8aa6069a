"""Grafana's dashboard schema, as grafana-foundation-sdk's typed models carry it, applied to a
dashboard's JSON: every key must be one the schema knows (a key the models drop on a round trip
is unknown), and every value must have the type the models declare (Literal choices, enums,
numbers, nested objects). Used by tests/roles/test_grafana.py.
"""
from __future__ import annotations

import enum
import json
import typing

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

register_default_plugins()     # panel options and queries decode into their plugins' models

# Keys Grafana itself writes into dashboards it saves but its schema (the SDK's models) lacks:
# the built-in annotation's marker and a query variable's display copy of its query.
LEGACY_KEYS = {"builtIn", "definition"}

PRIMITIVES = (str, int, float, bool, type(None))


def _check_value(v, hint, path: str, errs: list[str]) -> None:
    if hint is typing.Any or hint is object:
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        for a in args:            # the alternative of the value's own shape decides
            if isinstance(a, type) and a not in PRIMITIVES and isinstance(v, a):
                return _check_value(v, a, path, errs)
            if typing.get_origin(a) in (list, dict) and isinstance(v, typing.get_origin(a)):
                return _check_value(v, a, path, errs)
        for a in args:
            trial: list[str] = []
            _check_value(v, a, path, trial)
            if not trial:
                return
        errs.append(f"{path}: {v!r} is none of {hint}")
    elif hint is type(None):
        if v is not None:
            errs.append(f"{path}: {v!r} is not null")
    elif origin is typing.Literal:
        if v not in args:
            errs.append(f"{path}: {v!r} is not one of {args}")
    elif origin is list:
        if not isinstance(v, list):
            errs.append(f"{path}: {v!r} is not a list")
            return
        for i, x in enumerate(v):
            _check_value(x, args[0] if args else typing.Any, f"{path}[{i}]", errs)
    elif origin is dict:
        if not isinstance(v, dict):
            errs.append(f"{path}: {v!r} is not an object")
            return
        for k, x in v.items():
            _check_value(x, args[1] if args else typing.Any, f"{path}.{k}", errs)
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        if not (isinstance(v, hint) or v in [m.value for m in hint]):
            errs.append(f"{path}: {v!r} is not one of {[m.value for m in hint]}")
    elif hint is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errs.append(f"{path}: {v!r} is not a number")
    elif hint is int:
        if isinstance(v, bool) or not isinstance(v, int):
            errs.append(f"{path}: {v!r} is not an integer")
    elif isinstance(hint, type):
        if isinstance(v, dict) and hasattr(hint, "from_json"):
            v = hint.from_json(v)             # the SDK leaves some nested objects undecoded
        if not isinstance(v, hint):
            errs.append(f"{path}: {type(v).__name__} {v!r:.60} is not {hint.__name__}")
        elif hasattr(v, "to_json") and not isinstance(v, PRIMITIVES):
            _check_object(v, path, errs)


def _check_object(obj, path: str, errs: list[str]) -> None:
    for name, hint in typing.get_type_hints(type(obj)).items():
        if hasattr(obj, name):
            _check_value(getattr(obj, name), hint, f"{path}.{name}", errs)


def _lossless(orig, out, path: str, errs: list[str]) -> None:
    if isinstance(orig, dict):
        if not isinstance(out, dict):
            errs.append(f"{path}: not an object in the schema")
            return
        for k, v in orig.items():
            if k not in out:
                if k not in LEGACY_KEYS:
                    errs.append(f"{path}.{k}: not in Grafana's dashboard schema")
                continue
            _lossless(v, out[k], f"{path}.{k}", errs)
    elif isinstance(orig, list):
        if not isinstance(out, list) or len(out) != len(orig):
            errs.append(f"{path}: the list does not survive the schema")
            return
        for i, (a, b) in enumerate(zip(orig, out)):
            _lossless(a, b, f"{path}[{i}]", errs)
    elif orig != out:
        errs.append(f"{path}: {orig!r} became {out!r}")


def validate(dashboard: dict) -> list[str]:
    """Errors of one dashboard's JSON against the schema; empty when it conforms."""
    if not isinstance(dashboard, dict):
        return ["dashboard: not an object"]
    model = Dashboard.from_json(dashboard)
    errs: list[str] = []
    _check_object(model, "dashboard", errs)
    _lossless(dashboard, json.loads(json.dumps(model, cls=JSONEncoder)), "dashboard", errs)
    return errs
