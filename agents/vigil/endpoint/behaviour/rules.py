"""Behaviour rules: the YAML schema, its validation and the compiled, ready-to-match form.

A rule file is read with the daemons' typed loader (``vigil.config``): unknown keys, wrong types and
bad values raise ``ConfigError`` naming the file and the dotted key (``rules[2].when.service.exe``).
Beyond types: ids are unique slugs, every rule names a MITRE ATT&CK technique (``T1059`` or
``T1059.004``), ``@name`` references resolve to a list of the file, ``deny`` is only possible in
the exec gate, and each ``event`` accepts only the conditions it can evaluate.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...config import ConfigError, load, loads

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")
TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?")
RULE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

# Which conditions each event source can evaluate.
CONDITIONS = {
    "gate": {"target", "target_not", "service", "not_script", "stdio_socket", "from_network_within"},
    "exec": {"target", "target_not", "target_memfd", "target_deleted", "service", "stdio_socket"},
    "ptrace": {"tracer_not", "target", "target_not"},
}


@dataclass(frozen=True)
class ServiceMatch:
    """The subject, or an ancestor up to ``depth`` generations above it, is a service: its executable's
    base name is in ``exe`` or its systemd unit (from /proc/PID/cgroup) is in ``unit``."""
    exe: list[str] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    depth: int = 4

    def __post_init__(self):
        if not self.exe and not self.unit:
            raise ValueError("give exe or unit (or both)")
        if not 0 <= self.depth <= 16:
            raise ValueError("depth: must be 0..16")


@dataclass(frozen=True)
class When:
    target: list[str] | None = None          # the executed file's base name (globs, @lists)
    target_not: list[str] | None = None      # ... and not one of these (matched on base name and path)
    target_memfd: bool | None = None         # the executed file is a memfd
    target_deleted: bool | None = None       # the executed file was deleted (not a memfd)
    service: ServiceMatch | None = None
    not_script: bool = False                 # not the interpreter named by a script's #! line
    stdio_socket: bool | None = None         # fd 0 or 1 of the subject is an AF_INET/AF_INET6 socket
    tracer_not: list[str] | None = None      # ptrace: the tracer's base name is not one of these
    # the executed file was written (closed after writing) at most this many seconds ago by a process
    # holding a TCP/UDP socket: download and run (FAN_CLOSE_WRITE on the watched mounts)
    from_network_within: float | None = None

    def __post_init__(self):
        if self.from_network_within is not None and not 1 <= self.from_network_within <= 3600:
            raise ValueError("from_network_within: must be 1..3600 seconds")


@dataclass(frozen=True)
class RuleSpec:
    id: str
    technique: str
    event: Literal["gate", "exec", "ptrace"]   # not "on": YAML 1.1 reads an `on` key as true
    when: When
    action: Literal["deny", "kill", "report"]
    description: str = ""
    close_connections: bool = False          # shut down the subject's network sockets on fds 0-2 first
    strict: bool = False                     # only in lockdown mode
    enabled: bool = True

    def __post_init__(self):
        if not RULE_ID.fullmatch(self.id):
            raise ValueError(f"id: {self.id!r} must be a lower-case slug (a-z, 0-9, -)")
        if not TECHNIQUE.fullmatch(self.technique):
            raise ValueError(f"technique: {self.technique!r} is not a MITRE ATT&CK technique id (T1234 or T1234.001)")
        if self.action == "deny" and self.event != "gate":
            raise ValueError("action: deny is only possible for event: gate (the exec has already happened)")
        given = {k for k, v in vars(self.when).items() if v not in (None, False)}
        if not given:
            raise ValueError("when: a rule needs at least one condition")
        extra = given - CONDITIONS[self.event]
        if extra:
            raise ValueError(f"when.{sorted(extra)[0]}: not available for event: {self.event}")


@dataclass(frozen=True)
class RuleFile:
    version: Literal[1] = 1
    lists: dict[str, list[str]] = field(default_factory=dict)
    rules: list[RuleSpec] = field(default_factory=list)

    def __post_init__(self):
        seen = set()
        for i, r in enumerate(self.rules):
            if r.id in seen:
                raise ValueError(f"rules[{i}].id: duplicate id {r.id!r}")
            seen.add(r.id)


class Names:
    """Base names (or paths) matched against literal names and shell globs."""
    __slots__ = ("exact", "globs")

    def __init__(self, patterns):
        self.exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
        self.globs = tuple(p for p in patterns if p not in self.exact)

    def __call__(self, name: str) -> bool:
        if name in self.exact:
            return True
        return any(fnmatch.fnmatchcase(name, g) for g in self.globs)

    def __bool__(self) -> bool:
        return bool(self.exact or self.globs)


@dataclass
class Rule:
    """A rule ready to match: @lists resolved, name lists compiled."""
    id: str
    technique: str
    event: str
    action: str
    description: str
    close_connections: bool
    strict: bool
    target: Names | None
    target_not: Names | None
    target_memfd: bool | None
    target_deleted: bool | None
    service_exe: Names | None
    service_unit: Names | None
    depth: int
    not_script: bool
    stdio_socket: bool | None
    tracer_not: Names | None
    from_network_within: float | None = None


def _resolve(names: list[str] | None, lists: dict[str, list[str]], source: str, key: str) -> Names | None:
    if names is None:
        return None
    out: list[str] = []
    for i, n in enumerate(names):
        if n.startswith("@"):
            if n[1:] not in lists:
                raise ConfigError(source, f"{key}[{i}]", f"no list named {n[1:]!r} in lists")
            out.extend(lists[n[1:]])
        elif not n:
            raise ConfigError(source, f"{key}[{i}]", "empty name")
        else:
            out.append(n)
    return Names(out)


def compile_rules(spec: RuleFile, source: str = "<rules>") -> list[Rule]:
    rules = []
    for i, r in enumerate(spec.rules):
        if not r.enabled:
            continue
        k = f"rules[{i}].when"
        w = r.when
        svc = w.service
        rules.append(Rule(
            id=r.id, technique=r.technique, event=r.event, action=r.action, description=r.description.strip(),
            close_connections=r.close_connections, strict=r.strict,
            target=_resolve(w.target, spec.lists, source, f"{k}.target"),
            target_not=_resolve(w.target_not, spec.lists, source, f"{k}.target_not"),
            target_memfd=w.target_memfd, target_deleted=w.target_deleted,
            service_exe=_resolve(svc.exe, spec.lists, source, f"{k}.service.exe") if svc else None,
            service_unit=_resolve(svc.unit, spec.lists, source, f"{k}.service.unit") if svc else None,
            depth=svc.depth if svc else 0, not_script=w.not_script, stdio_socket=w.stdio_socket,
            tracer_not=_resolve(w.tracer_not, spec.lists, source, f"{k}.tracer_not"),
            from_network_within=w.from_network_within))
    return rules


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """The compiled rules of ``path`` (default: the shipped set); ConfigError names the bad key."""
    path = Path(path) if path else DEFAULT_RULES
    return compile_rules(load(path, RuleFile), str(path))


def loads_rules(text: str, source: str = "<string>") -> list[Rule]:
    return compile_rules(loads(text, RuleFile, source), source)
