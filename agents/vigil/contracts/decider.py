"""The endpoint agent <-> decider protocol (one JSON object per datagram on a socketpair, keyed by
``t``).  Both ends are the same package version, so there is no version field; a message of an
unknown ``t`` or with a field that does not check out raises ``PayloadError`` (counted by the
reader as ``decider_bad_messages`` / ``bad_messages``).

agent -> decider: ``Verdict`` (the answer to an ``Ask``, or an error), ``Push`` (verdict changes),
``SetMode``, ``Exceptions`` (the manager's behaviour-rule exceptions), ``Flush`` (send the summary now), ``StatsQuery``.
decider -> agent: ``Ready`` / ``Fatal`` (start-up), ``Ask`` (a hash to look up), ``Exec`` (one
execution), ``ExecBatch`` (a summary of cached executions), ``Behaviour`` (a behaviour rule
matched), ``Stats``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .base import (Contract, is_bool, is_dict, is_int, is_num, is_sha256, is_str, is_str_list, items, one_of,
                   opt, req)
from .endpoint import BehaviourEvent, BehaviourException, ExecEvent, VerdictChange
from .envelope import PayloadError
from .vocab import ENDPOINT_MODES, VERDICTS


class Message(Contract):
    T = ""

    def wire(self) -> bytes:
        return json.dumps({"t": self.T, **self.body()}, separators=(",", ":")).encode()


@dataclass(frozen=True, kw_only=True)
class Verdict(Message):
    T = "verdict"
    sha256: str = req(is_sha256)
    verdict: str | None = opt(one_of(VERDICTS))     # absent when ``error`` says why there is none
    source: str = opt(is_str, "")
    ttl: float = opt(is_num, 60.0)
    error: str | None = opt(is_str)


@dataclass(frozen=True, kw_only=True)
class Push(Message):
    T = "push"
    verdicts: list[VerdictChange] = items(VerdictChange)


@dataclass(frozen=True, kw_only=True)
class SetMode(Message):
    T = "mode"
    mode: str = req(one_of(ENDPOINT_MODES))


@dataclass(frozen=True, kw_only=True)
class Exceptions(Message):
    """The manager's behaviour-rule exceptions for this endpoint (the whole set: replaces the last)."""
    T = "exc"
    exceptions: list[BehaviourException] = items(BehaviourException)


@dataclass(frozen=True, kw_only=True)
class Flush(Message):
    T = "flush"


@dataclass(frozen=True, kw_only=True)
class StatsQuery(Message):
    T = "stats?"


@dataclass(frozen=True, kw_only=True)
class Ready(Message):
    T = "ready"
    pid: int = req(is_int)
    mounts: list = opt(is_str_list, factory=list)
    behaviour: bool = opt(is_bool, False)           # the behaviour rules started in the decider


@dataclass(frozen=True, kw_only=True)
class Fatal(Message):
    T = "fatal"
    error: str = req(is_str)


@dataclass(frozen=True, kw_only=True)
class Ask(Message):
    T = "ask"
    sha256: str = req(is_sha256)
    size: int | None = opt(is_int)
    path: str = opt(is_str, "")


@dataclass(frozen=True, kw_only=True)
class Exec(ExecEvent, Message):
    T = "ev"


@dataclass(frozen=True, kw_only=True)
class ExecBatch(Message):
    T = "evs"
    events: list[ExecEvent] = items(ExecEvent)


@dataclass(frozen=True, kw_only=True)
class Behaviour(BehaviourEvent, Message):
    T = "bev"


@dataclass(frozen=True, kw_only=True)
class Stats(Message):
    T = "stats"
    mode: str | None = opt(one_of(ENDPOINT_MODES))
    counters: dict = opt(is_dict, factory=dict)
    identity_cache: int = opt(is_int, 0)
    verdict_cache: int = opt(is_int, 0)
    verdict_cache_by_verdict: dict = opt(is_dict, factory=dict)
    cache_hits: int = opt(is_int, 0)
    cache_misses: int = opt(is_int, 0)
    pending: int = opt(is_int, 0)
    kernel_cache: bool = opt(is_bool, False)
    ignore_marks: int = opt(is_int, 0)
    behaviour: bool = opt(is_bool, False)
    rss_kb: int = opt(is_int, 0)


MESSAGES: dict[str, type[Message]] = {m.T: m for m in (Verdict, Push, SetMode, Exceptions, Flush, StatsQuery, Ready, Fatal,
                                                       Ask, Exec, ExecBatch, Behaviour, Stats)}


def from_wire(raw: bytes | str | dict[str, Any]) -> Message:
    """One datagram (or an already parsed object) -> its message; PayloadError when it is not one."""
    if isinstance(raw, dict):
        obj = raw
    else:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError("not-json", str(exc)) from None
    if not isinstance(obj, dict):
        raise PayloadError("not-object", type(obj).__name__)
    kind = MESSAGES.get(obj.get("t"))
    if kind is None:
        raise PayloadError("unknown-message", repr(obj.get("t"))[:40])
    return kind.from_body(obj)
