"""What endpoint agents and the manager's verdict service say to each other over MQTT."""
from __future__ import annotations

from dataclasses import dataclass

from .base import (Contract, envelope_field, is_bool, is_dict, is_int, is_num, is_sha256, is_str, is_str_list,
                   items, one_of, opt, req)
from .vocab import ENDPOINT_MODES, EXEC_ACTIONS, RESPONSE_STATUS, VERDICTS

DEFAULT_TTL = 60.0          # seconds a verdict is cached when the manager names no lifetime


@dataclass(frozen=True, kw_only=True)
class VerdictRequest(Contract):
    """``vigil/v1/endpoint/{id}/verdict/request`` (MQTT v5 response topic + correlation data)."""
    KIND = "verdict-request"
    sha256: str = req(is_sha256)
    size: int | None = opt(is_int)
    path: str = opt(is_str, "")
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class VerdictResponse(Contract):
    """The answer on the request's response topic: ``status: ok`` with a verdict, or ``error``."""
    KIND = "verdict-response"
    status: str = req(one_of(RESPONSE_STATUS))
    sha256: str | None = opt(is_sha256)
    verdict: str | None = opt(one_of(VERDICTS))
    source: str = opt(is_str, "")
    ttl: float | None = opt(is_num)
    error: str | None = opt(is_str)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class VerdictChange(Contract):
    sha256: str = req(is_sha256)
    verdict: str = req(one_of(VERDICTS))
    source: str = opt(is_str, "")
    ttl: float | None = opt(is_num)


@dataclass(frozen=True, kw_only=True)
class VerdictChanges(Contract):
    """``vigil/v1/verdicts``: verdicts that changed, so endpoint caches follow without polling."""
    KIND = "verdicts"
    verdicts: list[VerdictChange] = items(VerdictChange)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class EndpointStatus(Contract):
    """``vigil/v1/endpoint/{id}/status`` (retained; the last-will says ``state: offline``)."""
    KIND = "endpoint-status"
    state: str = req(one_of(("online", "offline")))
    mode: str | None = opt(one_of(ENDPOINT_MODES))
    version: str | None = opt(is_str)
    host: str | None = opt(is_str)
    address: str | None = opt(is_str)
    mounts: list = opt(is_str_list, factory=list)
    cache: dict = opt(is_dict, factory=dict)        # verdicts, identities, hits, misses
    decisions: dict = opt(is_dict, factory=dict)    # decisions_<action>, timeouts, offline_answers
    counters: dict = opt(is_dict, factory=dict)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class ExecEvent(Contract):
    """One execution (or, with ``count`` > 1, a summary of cached ones) and what was done with it."""
    action: str = req(one_of(EXEC_ACTIONS))
    sha256: str = opt(lambda v: v == "" or is_sha256(v), "")   # "": not hashed (too large, unreadable)
    verdict: str = opt(one_of(VERDICTS), "unknown")
    source: str = opt(is_str, "")
    path: str = opt(is_str, "")
    ts: int | None = opt(is_int)
    pid: int | None = opt(is_int)
    size: int | None = opt(is_int)
    via: str = opt(is_str, "exec")             # exec, or loader (a file run through ld.so)
    mode: str | None = opt(one_of(ENDPOINT_MODES))
    latency_us: int | None = opt(is_int)
    count: int = opt(lambda v: is_int(v) and v > 0, 1)
    cached: bool = opt(is_bool, False)


@dataclass(frozen=True, kw_only=True)
class EndpointEvents(Contract):
    """``vigil/v1/endpoint/{id}/events``: executions allowed / blocked / would-block."""
    KIND = "endpoint-events"
    host: str | None = opt(is_str)
    address: str | None = opt(is_str)
    mode: str | None = opt(one_of(ENDPOINT_MODES))
    events: list[ExecEvent] = items(ExecEvent)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class SampleRequest(Contract):
    """``vigil/v1/endpoint/{id}/sample/request``: the manager asks for a file to analyse."""
    KIND = "sample-request"
    sha256: str = req(is_sha256)
    max_bytes: int | None = opt(lambda v: is_int(v) and v > 0)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class Sample(Contract):
    """``vigil/v1/endpoint/{id}/sample``: the file (base64), or ``status: error`` and why."""
    KIND = "sample"
    sha256: str = req(is_sha256)
    status: str = opt(one_of(RESPONSE_STATUS), "ok")
    error: str | None = opt(is_str)
    size: int | None = opt(is_int)
    path: str | None = opt(is_str)
    data: str | None = opt(is_str)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")
