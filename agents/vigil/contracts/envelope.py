"""The MQTT payload envelope of DESIGN.md: UTF-8 JSON objects with ``schema``, ``ts`` and the sender.

``encode(kind, sender, body)`` builds one; ``decode(raw, kind)`` checks one and raises
``PayloadError`` with a reason that callers log and count.  Readers ignore unknown keys and reject
an unknown major version.
"""
from __future__ import annotations

import json
import time
from typing import Any

MAJOR = {  # kind -> major version this code speaks
    "status": 1,
    "flows": 1,
    "events": 1,
    "ruleset": 1,
    "ruleset-delta": 1,
    "ruleset-state": 1,
    "verdict-request": 1,
    "verdict-response": 1,
    "verdicts": 1,
    "endpoint-status": 1,
    "endpoint-events": 1,
    "sample-request": 1,
    "sample": 1,
    "behaviour-exceptions": 1,
}


class PayloadError(ValueError):
    """A payload that cannot be used; ``reason`` is a short stable token for counters."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


def now_ms() -> int:
    return int(time.time() * 1000)


def encode(kind: str, sender: str, body: dict[str, Any], ts: int | None = None) -> bytes:
    msg = {"schema": f"vigil.{kind}/{MAJOR[kind]}", "ts": now_ms() if ts is None else ts, "sender": sender}
    msg.update(body)
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(raw: bytes, kind: str) -> dict[str, Any]:
    try:
        msg = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PayloadError("not-utf8", str(exc)) from None
    except json.JSONDecodeError as exc:
        raise PayloadError("not-json", str(exc)) from None
    if not isinstance(msg, dict):
        raise PayloadError("not-object", f"top level is {type(msg).__name__}")
    schema = msg.get("schema")
    if not isinstance(schema, str) or "/" not in schema:
        raise PayloadError("no-schema", f"schema field missing or malformed: {schema!r}")
    name, _, major = schema.rpartition("/")
    if name != f"vigil.{kind}":
        raise PayloadError("wrong-kind", f"expected vigil.{kind}, got {name}")
    if major != str(MAJOR[kind]):
        raise PayloadError("unknown-major", f"{schema} (this reader speaks major {MAJOR[kind]})")
    if not isinstance(msg.get("ts"), int):
        raise PayloadError("no-ts", "ts must be an integer (epoch ms)")
    return msg
