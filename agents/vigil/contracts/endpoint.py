"""What endpoint agents and the manager's verdict service say to each other over MQTT."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .base import (Contract, envelope_field, is_bool, is_dict, is_int, is_list, is_num, is_sha256, is_str,
                   is_str_list, items, one_of, opt, req)
from .envelope import PayloadError
from .vocab import BEHAVIOUR_ACTIONS, ENDPOINT_MODES, EXEC_ACTIONS, RESPONSE_STATUS, VERDICTS

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


BEHAVIOUR_RULE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")     # a behaviour rule's id (bounded: an InfluxDB tag)
TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?")                   # a MITRE ATT&CK technique id


@dataclass(frozen=True, kw_only=True)
class BehaviourEvent(Contract):
    """One behaviour rule's match (issue 17, endpoint/behaviour/): what the process did, what was
    done about it, and the process tree (subject first).  In an events batch it says ``kind: behaviour``."""
    kind: str = opt(one_of(("behaviour",)), "behaviour")
    rule: str = req(lambda v: is_str(v) and BEHAVIOUR_RULE.fullmatch(v) is not None)
    technique: str = req(lambda v: is_str(v) and TECHNIQUE.fullmatch(v) is not None)
    action: str = req(one_of(BEHAVIOUR_ACTIONS))
    event: str = opt(is_str, "")                    # gate, exec, ptrace
    description: str = opt(is_str, "")
    mode: str | None = opt(one_of(ENDPOINT_MODES))
    path: str = opt(is_str, "")
    pid: int | None = opt(is_int)
    service: dict | None = opt(is_dict)             # the service process among the ancestors (pid, exe)
    closed: int = opt(is_int, 0)                    # connections shut down
    latency_us: int | None = opt(is_int)
    ts: int | None = opt(is_int)
    sha256: str | None = opt(is_sha256)
    parent: str | None = opt(is_str)
    tree: list = opt(is_list, factory=list)         # {pid, ppid, comm, exe, cmdline, user, sha256} per process
    writer: dict | None = opt(is_dict)              # download-and-run: who wrote the file
    tracee: dict | None = opt(is_dict)              # ptrace: the traced process


EXCEPTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _glob(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 1024 and "\0" not in v


@dataclass(frozen=True, kw_only=True)
class BehaviourException(Contract):
    """An operator's exception to a behaviour rule (``rule``, or ``*`` for every rule): the rule
    does not fire where every given condition holds — ``path`` a glob on the executed file (the
    tracer for ptrace), ``unit`` a glob on the process's systemd unit, ``user`` a user name.  At
    least one condition: an exception for everything would switch the rule off (do that in the
    agent's configuration).  ``endpoints``: the endpoint ids it applies to (globs); empty: all."""
    id: str = req(lambda v: is_str(v) and EXCEPTION_ID.fullmatch(v) is not None)
    rule: str = opt(lambda v: v == "*" or (is_str(v) and BEHAVIOUR_RULE.fullmatch(v) is not None), "*")
    path: str | None = opt(_glob)
    unit: str | None = opt(_glob)
    user: str | None = opt(lambda v: is_str(v) and 0 < len(v) <= 256)
    endpoints: list = opt(lambda v: is_str_list(v) and len(v) <= 256 and all(map(_glob, v)), factory=list)
    comment: str = opt(lambda v: is_str(v) and len(v) <= 1024, "")
    created: int | None = opt(is_int)

    def __post_init__(self):
        if self.path is None and self.unit is None and self.user is None:
            raise PayloadError("bad-field", "BehaviourException: give path, unit or user")

    def applies_to(self, endpoint_id: str) -> bool:
        import fnmatch
        return not self.endpoints or any(fnmatch.fnmatchcase(endpoint_id, e) for e in self.endpoints)


@dataclass(frozen=True, kw_only=True)
class BehaviourExceptions(Contract):
    """``vigil/v1/behaviour/exceptions`` (retained, published by the manager on start and on every
    change): the operator's whole set of behaviour-rule exceptions; each agent applies those for
    itself, replacing the previous set.  An item that does not check out is dropped and counted."""
    KIND = "behaviour-exceptions"
    exceptions: list[BehaviourException] = items(BehaviourException)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


class EndpointEvent:
    """An item of an events batch: a ``BehaviourEvent`` when it says ``kind: behaviour``, else an ``ExecEvent``."""

    @staticmethod
    def from_body(d: Any) -> ExecEvent | BehaviourEvent:
        if isinstance(d, dict) and "kind" in d:
            if d["kind"] != "behaviour":
                raise PayloadError("bad-field", f"EndpointEvent: unknown kind {str(d['kind'])[:40]!r}")
            return BehaviourEvent.from_body(d)
        return ExecEvent.from_body(d)


@dataclass(frozen=True, kw_only=True)
class EndpointEvents(Contract):
    """``vigil/v1/endpoint/{id}/events``: executions allowed / blocked / would-block, and behaviour
    rule matches (``kind: behaviour``)."""
    KIND = "endpoint-events"
    host: str | None = opt(is_str)
    address: str | None = opt(is_str)
    mode: str | None = opt(one_of(ENDPOINT_MODES))
    events: list[ExecEvent | BehaviourEvent] = items(EndpointEvent)
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
