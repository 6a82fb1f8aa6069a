"""Correlation rules (YAML) and the engine that runs them over normalised events.

A rule file holds ``rules:``, a list of rules.  Three types (full reference: docs/collector.md):

- ``threshold``: ``count`` matching events within ``window`` seconds, per ``group_by`` value;
- ``distinct``: ``count`` different values of the ``distinct`` field within ``window``, per group;
- ``sequence``: the ``steps`` matched in order, all within ``window`` of the first, per group.

When a rule fires for a group whose value is an IP address, the engine proposes a decision with
origin ``correlation:<rule name>``.  Files are validated when loaded; a ``RuleError`` names the file
and the key.  State is bounded: at most ``max_groups`` groups per rule (the stalest go first,
counted), and everything older than a rule's window is forgotten on ``expire()``.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from collections import OrderedDict
from operator import attrgetter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .event import FIELDS, SEVERITY_NAMES, Event

log = logging.getLogger(__name__)

RULE_TYPES = ("threshold", "distinct", "sequence")
DEFAULT_RULES = Path(__file__).parent / "rules"
_RULE_KEYS = {"name", "type", "description", "match", "group_by", "window", "count", "distinct",
              "steps", "duration", "reason", "cooldown", "enabled", "events"}
EVENT_CLASSES = ("alerts", "all")
_COND_KEYS = {"regex", "any", "not", "min", "max", "exists"}


class RuleError(ValueError):
    pass


# -- matching -------------------------------------------------------------------------------
def _field_ok(name: str) -> bool:
    return name in FIELDS or (name.startswith("extra.") and len(name) > 6)


def _sev(v: Any) -> Any:
    if isinstance(v, str) and v.lower() in SEVERITY_NAMES:
        return SEVERITY_NAMES.index(v.lower())
    return v


class Matcher:
    """A conjunction of field conditions; ``any: [...]`` inside a match is a disjunction of matchers."""

    def __init__(self, spec: Any, where: str):
        if not isinstance(spec, dict) or not spec:
            raise RuleError(f"{where}: must be a non-empty mapping of field: condition")
        self.tests: list[Callable[[Event], bool]] = []
        rest: list[Callable[[Event], bool]] = []
        # source types this matcher can match at all (None: any); lets the engine skip rules cheaply
        st = spec.get("source_type")
        self.source_types: frozenset[str] | None = (
            frozenset(x.lower() for x in ([st] if isinstance(st, str) else st))
            if isinstance(st, str) or (isinstance(st, list) and all(isinstance(x, str) for x in st)) else None)
        for key, cond in spec.items():
            if key == "any":
                if not isinstance(cond, list) or not cond:
                    raise RuleError(f"{where}.any: must be a non-empty list of matches")
                subs = tuple(Matcher(c, f"{where}.any[{i}]").test for i, c in enumerate(cond))
                self.tests.append(_any_of(subs))
                continue
            if not isinstance(key, str) or not _field_ok(key):
                raise RuleError(f"{where}.{key}: unknown field (fields: {', '.join(FIELDS)}, extra.<name>)")
            t = self._condition(key, cond, f"{where}.{key}")
            self.tests.append(t)
            if key != "source_type" or self.source_types is None:
                rest.append(t)
        # ``test``: the whole conjunction.  ``test_rest``: without the top-level source_type
        # condition, for callers that already know the event's source type is one of
        # ``source_types`` (the correlator indexes rules by source type).
        self.test: Callable[[Event], bool] = _all_of(tuple(self.tests))
        self.test_rest: Callable[[Event], bool] = _all_of(tuple(rest))

    def __call__(self, ev: Event) -> bool:
        return self.test(ev)

    @staticmethod
    def _condition(name: str, cond: Any, where: str) -> Callable[[Event], bool]:
        get = _getter(name)
        if name == "severity":
            cond = {k: _sev(v) for k, v in cond.items()} if isinstance(cond, dict) else \
                [_sev(v) for v in cond] if isinstance(cond, list) else _sev(cond)
        if isinstance(cond, dict):
            unknown = set(cond) - _COND_KEYS
            if unknown or not cond:
                raise RuleError(f"{where}: unknown condition {sorted(unknown)[0] if unknown else '(empty)'} "
                                f"(conditions: {', '.join(sorted(_COND_KEYS))})")
            parts: list[Callable[[Any], bool]] = []
            if "regex" in cond:
                try:
                    rx = re.compile(str(cond["regex"]))
                except re.error as exc:
                    raise RuleError(f"{where}.regex: not a valid regular expression: {exc}") from None
                parts.append(_regex_test(rx))
            if "any" in cond:
                if not isinstance(cond["any"], list):
                    raise RuleError(f"{where}.any: must be a list")
                vals = {_norm(v) for v in cond["any"]}
                parts.append(lambda v, vals=vals: _norm(v) in vals)
            if "not" in cond:
                bad = cond["not"] if isinstance(cond["not"], list) else [cond["not"]]
                vals_not = {_norm(v) for v in bad}
                parts.append(lambda v, vals=vals_not: _norm(v) not in vals)
            for key, op in (("min", lambda a, b: a >= b), ("max", lambda a, b: a <= b)):
                if key in cond:
                    lim = cond[key]
                    if isinstance(lim, bool) or not isinstance(lim, (int, float)):
                        raise RuleError(f"{where}.{key}: must be a number")
                    parts.append(lambda v, lim=lim, op=op: isinstance(v, (int, float)) and op(v, lim))
            if "exists" in cond:
                want = cond["exists"]
                if not isinstance(want, bool):
                    raise RuleError(f"{where}.exists: must be true or false")
                parts.append(lambda v, want=want: (v is not None) == want)
            if len(parts) == 1:
                p0 = parts[0]
                return lambda ev: p0(get(ev))
            parts_t = tuple(parts)

            def test_parts(ev: Event) -> bool:
                v = get(ev)
                for p in parts_t:
                    if not p(v):
                        return False
                return True
            return test_parts
        if isinstance(cond, list):
            vals = {_norm(v) for v in cond}

            def test_in(ev: Event) -> bool:
                v = get(ev)
                return (v.lower() if isinstance(v, str) else v) in vals
            return test_in
        if isinstance(cond, (str, int, float, bool)):
            want = _norm(cond)

            def test_eq(ev: Event) -> bool:
                v = get(ev)
                return (v.lower() if isinstance(v, str) else v) == want
            return test_eq
        raise RuleError(f"{where}: a condition is a value, a list of values or a mapping")


def _norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _getter(name: str) -> Callable[[Event], Any]:
    """The value of a match/group field of an event (``extra.<name>`` from the extra mapping)."""
    if name.startswith("extra."):
        key = name[6:]
        return lambda ev: ev.extra.get(key)
    return attrgetter(name)


_REGEX_CACHE_MAX = 4096      # remembered results per regex condition (values repeat: categories, names)
_REGEX_CACHE_LEN = 256       # longer values are searched every time, not remembered


def _regex_test(rx: re.Pattern) -> Callable[[Any], bool]:
    """``rx.search(str(v))`` for a value; results for short string values are remembered (bounded),
    since the fields rules search (category, signature name) take few distinct values."""
    cache: dict[str, bool] = {}
    search = rx.search

    def test(v: Any) -> bool:
        if v is None:
            return False
        if v.__class__ is str and len(v) <= _REGEX_CACHE_LEN:
            r = cache.get(v)
            if r is None:
                r = search(v) is not None
                if len(cache) >= _REGEX_CACHE_MAX:
                    cache.clear()
                cache[v] = r
            return r
        return search(str(v)) is not None
    return test


def _all_of(tests: tuple) -> Callable[[Event], bool]:
    if not tests:
        return lambda ev: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda ev: a(ev) and b(ev)

    def test(ev: Event) -> bool:
        for t in tests:
            if not t(ev):
                return False
        return True
    return test


def _any_of(tests: tuple) -> Callable[[Event], bool]:
    def test(ev: Event) -> bool:
        for t in tests:
            if t(ev):
                return True
        return False
    return test


# -- rules ----------------------------------------------------------------------------------
@dataclass
class Rule:
    name: str
    type: str
    window: float
    group_by: str = "src"
    count: int = 1
    match: Matcher | None = None
    distinct: str | None = None
    steps: list[Matcher] = field(default_factory=list)
    duration: float | None = None
    reason: str = ""
    cooldown: float = 0.0
    source: str = ""
    events: str = "alerts"       # alerts: only alert-class events (event.is_alert) count; all: any


def _num(v: Any, where: str, minimum: float, integer: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise RuleError(f"{where}: must be {'an integer' if integer else 'a number'}, got {v!r}")
    if v < minimum:
        raise RuleError(f"{where}: must be at least {minimum:g}, got {v!r}")
    return v


def parse_rules(data: Any, source: str) -> list[Rule]:
    if not isinstance(data, dict) or set(data) != {"rules"} or not isinstance(data["rules"], list):
        raise RuleError(f"{source}: (top level): must be a mapping with one key, rules: [list of rules]")
    out: list[Rule] = []
    names = set()
    for i, spec in enumerate(data["rules"]):
        where = f"{source}: rules[{i}]"
        if not isinstance(spec, dict):
            raise RuleError(f"{where}: must be a mapping")
        unknown = set(spec) - _RULE_KEYS
        if unknown:
            raise RuleError(f"{where}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
        name = spec.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", name):
            raise RuleError(f"{where}.name: required; lower-case letters, digits, '-', '_', '.' (max 64)")
        where = f"{source}: rules[{i}] ({name})"
        if name in names:
            raise RuleError(f"{where}.name: duplicate rule name")
        names.add(name)
        if spec.get("enabled", True) is False:
            continue
        if not isinstance(spec.get("enabled", True), bool):
            raise RuleError(f"{where}.enabled: must be true or false")
        rtype = spec.get("type")
        if rtype not in RULE_TYPES:
            raise RuleError(f"{where}.type: must be one of {', '.join(RULE_TYPES)}, got {rtype!r}")
        if "window" not in spec:
            raise RuleError(f"{where}.window: required (seconds)")
        rule = Rule(name, rtype, _num(spec["window"], f"{where}.window", 1), source=source)
        rule.group_by = spec.get("group_by", "src")
        if not isinstance(rule.group_by, str) or not _field_ok(rule.group_by):
            raise RuleError(f"{where}.group_by: unknown field {rule.group_by!r}")
        if "duration" in spec and spec["duration"] is not None:
            rule.duration = _num(spec["duration"], f"{where}.duration", 1)
        rule.reason = str(spec.get("reason") or spec.get("description") or name)
        rule.cooldown = _num(spec.get("cooldown", rule.window), f"{where}.cooldown", 0)
        rule.events = spec.get("events", "alerts")
        if rule.events not in EVENT_CLASSES:
            raise RuleError(f"{where}.events: must be one of {', '.join(EVENT_CLASSES)}, got {rule.events!r}")
        if rtype == "sequence":
            for k in ("match", "count", "distinct"):
                if k in spec:
                    raise RuleError(f"{where}.{k}: not used by a sequence rule (use steps)")
            steps = spec.get("steps")
            if not isinstance(steps, list) or len(steps) < 2:
                raise RuleError(f"{where}.steps: a sequence needs a list of at least two steps")
            for j, st in enumerate(steps):
                if not isinstance(st, dict) or set(st) != {"match"}:
                    raise RuleError(f"{where}.steps[{j}]: each step is a mapping with one key, match")
                rule.steps.append(Matcher(st["match"], f"{where}.steps[{j}].match"))
        else:
            if "steps" in spec:
                raise RuleError(f"{where}.steps: only a sequence rule has steps")
            if "match" not in spec:
                raise RuleError(f"{where}.match: required")
            rule.match = Matcher(spec["match"], f"{where}.match")
            if "count" not in spec:
                raise RuleError(f"{where}.count: required")
            rule.count = int(_num(spec["count"], f"{where}.count", 1, integer=True))
            if rtype == "distinct":
                d = spec.get("distinct")
                if not isinstance(d, str) or not _field_ok(d):
                    raise RuleError(f"{where}.distinct: required; the field whose different values are counted")
                rule.distinct = d
            elif "distinct" in spec:
                raise RuleError(f"{where}.distinct: only a distinct rule counts distinct values")
        out.append(rule)
    return out


def load_rules(paths: list[Path]) -> list[Rule]:
    """Load rule files (a directory means every *.yaml in it, sorted). Names must be unique overall."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")))
        else:
            files.append(p)
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(f"{f}: cannot read: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f"line {mark.line + 1}: " if mark else ""
            raise RuleError(f"{f}: not valid YAML: {at}{getattr(exc, 'problem', exc)}") from None
        for r in parse_rules(data, str(f)):
            if r.name in seen:
                raise RuleError(f"{f}: rule {r.name!r} is also defined in {seen[r.name]}")
            seen[r.name] = str(f)
            rules.append(r)
    return rules


# -- engine ---------------------------------------------------------------------------------
@dataclass
class Firing:
    rule: Rule
    group: str
    count: int
    events: list[dict]


# What a firing reports of each event (its evidence).  Correlation state keeps these fields as one
# tuple of plain values per event, never the Event itself: tuples of strings and numbers are
# untracked by the cyclic GC, whereas every retained Event (with its extra dict) was traversed by
# each full collection (the GC was ~25-50 % of the worker's time with ~100k groups of state).
_BRIEF_FIELDS = ("time", "source_type", "device", "src", "dst", "dport", "sig_id", "sig_name", "category",
                 "action")
_brief_tuple = attrgetter(*_BRIEF_FIELDS)


def _brief(b: tuple) -> dict:
    """The evidence dict of one event from its brief tuple (fields that are None left out)."""
    return {k: v for k, v in zip(_BRIEF_FIELDS, b) if v is not None}


class Correlator:
    def __init__(self, rules: list[Rule], on_fire: Callable[[Firing], None], max_groups: int = 100_000,
                 counters=None):
        self.rules = rules
        self.on_fire = on_fire
        self.max_groups = max_groups
        self.counters = counters
        self.state: dict[str, OrderedDict] = {r.name: OrderedDict() for r in rules}
        # distinct rules: group -> (value, *brief) of its five most recently seen values, kept
        # beside the state so that the state itself ({value: time}) is never tracked by the GC
        self.evidence: dict[str, dict[str, tuple]] = {r.name: {} for r in rules if r.type == "distinct"}
        self.cooldown: dict[str, dict[str, float]] = {r.name: {} for r in rules}
        self.fired: dict[str, int] = {r.name: 0 for r in rules}
        self._by_type: dict[str, tuple[list[tuple], list[tuple]]] = {}
        # per rule, a closure over its own state and parameters: handler(group, event, brief, now)
        self._handlers = {r.name: getattr(self, "_" + r.type)(r) for r in rules}

    def _rules_for(self, source_type: str) -> tuple[list[tuple], list[tuple]]:
        """The rules that can match events of a source type, for telemetry ([0]) and for alerts
        ([1]), each with what process() needs: (rule, match test or None for a sequence, group
        getter, handler, state, cooldowns)."""
        pair = self._by_type.get(source_type)
        if pair is None:
            pair = ([], [])
            for r in self.rules:
                ms = r.steps if r.type == "sequence" else [r.match]
                if any(m.source_types is None or source_type in m.source_types for m in ms):
                    # the source_type condition holds for every event given to this entry
                    test = None if r.type == "sequence" else r.match.test_rest
                    entry = (r, test, _getter(r.group_by), self._handlers[r.name],
                             self.state[r.name], self.cooldown[r.name])
                    pair[1].append(entry)
                    if r.events == "all":
                        pair[0].append(entry)
            self._by_type[source_type] = pair
        return pair

    def _inc(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            self.counters.inc(name, n)

    def _evict(self, rule: Rule, state: OrderedDict) -> None:
        """Make room for a new group: the least recently used one goes."""
        gone, _ = state.popitem(last=False)
        evidence = self.evidence.get(rule.name)
        if evidence is not None:
            evidence.pop(gone, None)
        self._inc("correlation_groups_evicted")

    def process(self, ev: Event, now: float) -> list[Firing]:
        fired: list[Firing] = []
        brief = None
        telemetry, alerts = self._rules_for(ev.source_type)
        a = ev.action                   # event.is_alert, inlined: this runs for every event
        if a == "alert" or a == "block" or (a is None and ev.source_type == "cef" and ev.sig_id is not None):
            entries = alerts
        else:
            entries = telemetry
        for rule, test, get, handler, state, cooldown in entries:
            if test is not None and not test(ev):
                continue
            g = get(ev)
            if g is None or g == "":
                continue
            if g.__class__ is not str:
                g = str(g)
            if cooldown:
                until = cooldown.get(g)
                if until is not None:
                    if now < until:
                        continue
                    del cooldown[g]
            if brief is None:
                brief = _brief_tuple(ev)
            f = handler(g, ev, brief, now)
            if f is not None:
                self.fired[rule.name] += 1
                if rule.cooldown:
                    cooldown[g] = now + rule.cooldown
                state.pop(g, None)
                if rule.type == "distinct":
                    self.evidence[rule.name].pop(g, None)
                fired.append(f)
                try:
                    self.on_fire(f)
                except Exception:
                    self._inc("correlation_fire_errors")
                    log.exception("correlation: acting on rule %s failed", rule.name)
        return fired

    # Group state is tuples (replaced per event; the GC untracks tuples of plain values) and, for
    # distinct rules, dicts of plain values (never tracked): ~100k groups of deques, OrderedDicts and
    # lists made every full collection walk them all, and their promotion made full collections
    # frequent.

    # The handlers: one closure per rule, made once (its state, window and count bound to locals).
    # A new group may evict the least recently used one; an existing group moves to the end.

    def _threshold(self, rule: Rule) -> Callable[[str, Event, tuple, float], Firing | None]:
        # state: ((time, *brief), ...) of the last ``count`` events, oldest first.  Records are
        # flat: the GC untracks a tuple only once what it holds is untracked, one level per
        # collection, so nested (time, brief) records reached the oldest generation
        state, count, window, max_groups, evict = self.state[rule.name], rule.count, rule.window, \
            self.max_groups, self._evict
        keep = count - 1

        def handle(g: str, ev: Event, brief: tuple, now: float) -> Firing | None:
            q = state.get(g)
            if q is None:
                if len(state) >= max_groups:
                    evict(rule, state)
                q = state[g] = ((now,) + brief,)
            else:
                n = len(q)
                start = n - keep if n > keep else 0
                while start < n and now - q[start][0] > window:
                    start += 1
                q = q[start:] + ((now,) + brief,)
                state.move_to_end(g)
                state[g] = q
            if len(q) >= count:
                return Firing(rule, g, len(q), [_brief(r[1:]) for r in q[-5:]])
            return None
        return handle

    def _distinct(self, rule: Rule) -> Callable[[str, Event, tuple, float], Firing | None]:
        # state: {value: time last seen}, least recently seen first (strings and floats: untracked);
        # evidence: (value, *brief) of the group's five most recently seen values (flat records)
        state, evidence, count, window, max_groups, evict = self.state[rule.name], self.evidence[rule.name], \
            rule.count, rule.window, self.max_groups, self._evict
        bound = count * 4                       # values kept per group at most
        value_of = _getter(rule.distinct)

        def handle(g: str, ev: Event, brief: tuple, now: float) -> Firing | None:
            val = value_of(ev)
            if val is None or val == "":
                return None
            seen = state.get(g)
            if seen is None:
                if len(state) >= max_groups:
                    evict(rule, state)
                seen = state[g] = {val: now}
                last = evidence[g] = ((val,) + brief,)
            else:
                seen.pop(val, None)
                seen[val] = now
                while True:                     # forget the oldest values that fell out of the window
                    first = next(iter(seen))
                    if now - seen[first] <= window:
                        break
                    del seen[first]
                if len(seen) > bound:
                    del seen[next(iter(seen))]
                state.move_to_end(g)
                last = evidence.get(g, ())
                for i, x in enumerate(last):    # a value seen again moves to the end
                    if x[0] == val:
                        last = last[:i] + last[i + 1:]
                        break
                last = evidence[g] = last[-4:] + ((val,) + brief,)
            if len(seen) >= count:
                # seen is a suffix of the recency order, so its last five values are those of the
                # five most recent that it still holds
                return Firing(rule, g, len(seen), [_brief(r[1:]) for r in last if r[0] in seen])
            return None
        return handle

    def _sequence(self, rule: Rule) -> Callable[[str, Event, tuple, float], Firing | None]:
        # state: per step, None or (start time, briefs) of the chain that has completed that step
        # (the latest live one).  A group is made only when the event starts a chain.
        state, window, max_groups, evict = self.state[rule.name], rule.window, self.max_groups, self._evict
        tests = tuple(m.test for m in rule.steps)
        nsteps = len(tests)

        def handle(g: str, ev: Event, brief: tuple, now: float) -> Firing | None:
            matched = [i for i, t in enumerate(tests) if t(ev)]
            if not matched:
                return None
            old = state.get(g)
            if old is None:
                if matched[0] != 0:
                    return None
                st = [None] * nsteps
            else:
                st = list(old)
            for i in reversed(matched):
                if i == 0:
                    st[0] = (now, (brief,))
                elif st[i - 1] is not None and now - st[i - 1][0] <= window:
                    st[i] = (st[i - 1][0], st[i - 1][1] + (brief,))
            if old is None:
                if len(state) >= max_groups:
                    evict(rule, state)
            else:
                state.move_to_end(g)
            state[g] = tuple(st)
            last = st[-1]
            if last is not None:
                return Firing(rule, g, nsteps, [_brief(b) for b in last[1]])
            return None
        return handle

    def expire(self, now: float) -> None:
        for rule in self.rules:
            st = self.state[rule.name]
            stale = []
            for g, s in st.items():
                if rule.type == "threshold":
                    newest = s[-1][0] if s else None
                elif rule.type == "distinct":
                    newest = max(s.values(), default=None)
                else:
                    newest = max((x[0] for x in s if x is not None), default=None)
                if newest is None or now - newest > rule.window:
                    stale.append(g)
            evidence = self.evidence.get(rule.name)
            for g in stale:
                del st[g]
                if evidence is not None:
                    evidence.pop(g, None)
            cd = self.cooldown[rule.name]
            for g in [g for g, until in cd.items() if until <= now]:
                del cd[g]

    def groups(self) -> int:
        return sum(len(s) for s in self.state.values())


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False
