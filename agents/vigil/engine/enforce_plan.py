"""From rule-set entries to kernel set elements: guards, layers, lifetimes and the element cap.

``Policy`` holds the entries of the last good rule set with their absolute expiry (epoch seconds)
and knows where each sits in the kernel.  ``plan_snapshot`` / ``plan_delta`` compute the next
state and the nft work without changing anything; ``commit`` adopts a plan once the kernel took it.

- Guards (management networks, gateways) are filtered here, before the kernel: a drop entry whose
  address, network or flow end lies inside a guard is not written (counted as ``guarded``); a
  network that merely *contains* a guard is written, and the guard's accept rule (first in the
  chain) keeps the guard reachable.
- Allow entries are written to the allow sets, which the chain checks before every drop set; the
  kernel therefore makes the allowlist win, with the right timing when an allow expires first.
- Networks of one kind and family go to interval sets in layers: a network inside another that
  expires no later is redundant (not written, ``covered``); one that outlives its container goes
  one layer up.  Deeper nesting than the layers offer is dropped and counted (``overlap``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..ruleset import Entry, remaining_ttl
from . import nftables as nft

INF = float("inf")


class PlanError(ValueError):
    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


@dataclass
class Held:
    entry: Entry
    expires: float | None        # epoch seconds; None: no expiry

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry.to_dict(), "expires": self.expires}


def flow_key(value: str) -> str:
    src, dst, proto, dport = value.split("|")
    return f"{src} . {dst} . {proto} . {dport}"


def placement(e: Entry) -> tuple[str, str] | None:
    """(set or net group, element key).  Net groups are ``allownet4`` etc. (layer chosen later)."""
    fam = e.family
    if e.scope == "ip":
        return (f"{'allow' if e.action == 'allow' else 'block'}{fam}", e.value)
    if e.scope == "cidr":
        return (f"{'allownet' if e.action == 'allow' else 'blocknet'}{fam}", e.value)
    return (f"flow{fam}", flow_key(e.value))


def _is_group(name: str) -> bool:
    return name.startswith(("allownet", "blocknet"))


@dataclass
class Plan:
    entries: dict[tuple[str, str, str], Held]
    placed: dict[tuple[str, str, str], tuple[str, str]]        # key -> (hash set, element key)
    groups: dict[str, list[tuple[str, float | None]]]          # group -> [(network, expires)]
    put: dict[str, list[tuple[str, float | None]]] = field(default_factory=dict)   # hash sets
    remove: dict[str, list[str]] = field(default_factory=dict)
    refill_groups: set[str] = field(default_factory=set)
    skipped: dict[str, int] = field(default_factory=dict)
    full: bool = False           # a snapshot: every managed set is flushed and refilled

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n


class Policy:
    def __init__(self, guards: Iterable[str] = (), max_elements: int = 2_000_000):
        self.guards = [ipaddress.ip_network(g, strict=False) for g in guards]
        self.max_elements = max_elements
        self.entries: dict[tuple[str, str, str], Held] = {}
        self.placed: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.groups: dict[str, list[tuple[str, float | None]]] = {}
        self.layer_skips: dict[str, int] = {}

    # -- checks -----------------------------------------------------------------------------
    def guarded(self, e: Entry) -> bool:
        if e.action != "drop" or not self.guards:
            return False
        if e.scope == "flow":
            src, dst = e.value.split("|")[:2]
            addrs = [ipaddress.ip_address(src), ipaddress.ip_address(dst)]
            return any(a in g for a in addrs for g in self.guards)
        net = ipaddress.ip_network(e.value, strict=False)
        return any(net.version == g.version and net.subnet_of(g) for g in self.guards)

    def guarded_address(self, address: str) -> bool:
        a = ipaddress.ip_address(address)
        return any(a in g for g in self.guards)

    # -- planning ---------------------------------------------------------------------------
    def _hold(self, e: Entry, issued_at: int, now: float) -> Held | None:
        rem = remaining_ttl(e, issued_at, int(now * 1000))
        if rem is not None and rem < 0.001:
            return None
        return Held(e, None if rem is None else now + rem)

    def plan_snapshot(self, entries: Iterable[Entry], issued_at: int, now: float) -> Plan:
        plan = Plan(entries={}, placed={}, groups={}, full=True)
        for e in entries:
            self._add(plan, e, issued_at, now)
        self._check_cap(plan)
        return plan

    def plan_restore(self, held: Iterable[Held], now: float) -> Plan:
        plan = Plan(entries={}, placed={}, groups={}, full=True)
        for h in held:
            if h.expires is not None and h.expires - now < 0.001:
                plan.skip("expired")
                continue
            self._place(plan, h)
        self._check_cap(plan)
        return plan

    def plan_delta(self, add: Iterable[Entry], remove: Iterable[tuple[str, str, str]], issued_at: int,
                   now: float) -> Plan:
        plan = Plan(entries=dict(self.entries), placed=dict(self.placed),
                    groups={g: list(v) for g, v in self.groups.items()})
        for key in remove:
            if key not in plan.entries:
                plan.skip("remove-unknown")
                continue
            self._unplace(plan, key)
            del plan.entries[key]
        for e in add:
            if e.key in plan.entries:
                self._unplace(plan, e.key)
                del plan.entries[e.key]
            self._add(plan, e, issued_at, now)
        # a key removed and re-added is a put, not a removal
        for name, keys in list(plan.remove.items()):
            putk = {k for k, _ in plan.put.get(name, [])}
            plan.remove[name] = [k for k in keys if k not in putk]
        self._check_cap(plan)
        return plan

    def _add(self, plan: Plan, e: Entry, issued_at: int, now: float) -> None:
        h = self._hold(e, issued_at, now)
        if h is None:
            plan.skip("expired")
            return
        self._place(plan, h)

    def _place(self, plan: Plan, h: Held) -> None:
        plan.entries[h.entry.key] = h
        if self.guarded(h.entry):
            plan.skip("guarded")
            return
        where, key = placement(h.entry)
        if _is_group(where):
            plan.groups.setdefault(where, []).append((key, h.expires))
            plan.refill_groups.add(where)
        else:
            plan.placed[h.entry.key] = (where, key)
            plan.put.setdefault(where, []).append((key, h.expires))

    def _unplace(self, plan: Plan, key: tuple[str, str, str]) -> None:
        h = plan.entries[key]
        where, k = placement(h.entry)
        if _is_group(where):
            items = plan.groups.get(where, [])
            plan.groups[where] = [it for it in items if it[0] != k]
            plan.refill_groups.add(where)
        elif key in plan.placed:
            del plan.placed[key]
            plan.remove.setdefault(where, []).append(k)
            plan.put[where] = [it for it in plan.put.get(where, []) if it[0] != k]

    def _check_cap(self, plan: Plan) -> None:
        n = len(plan.placed) + sum(len(v) for v in plan.groups.values())
        if n > self.max_elements:
            raise PlanError("over-cap", f"{n} kernel elements exceed the cap of {self.max_elements}")

    # -- kernel work ------------------------------------------------------------------------
    def layers(self, group: str, items: list[tuple[str, float | None]], now: float,
               skipped: dict[str, int] | None = None) -> dict[str, list[tuple[str, int | None]]]:
        """Assign a group's networks to its layer sets; returns set -> [(network, timeout_ms)]."""
        kind, fam = group[:-1], int(group[-1])
        names = nft.net_sets(kind, fam)
        out: dict[str, list[tuple[str, int | None]]] = {n: [] for n in names}
        placed: list[dict[ipaddress._BaseNetwork, float]] = [{} for _ in names]
        nets = []
        for text, exp in items:
            if exp is not None and exp - now < 0.001:
                continue
            nets.append((ipaddress.ip_network(text), INF if exp is None else exp))
        nets.sort(key=lambda it: (it[0].prefixlen, -it[1]))
        for net, exp in nets:
            supers = [net.supernet(new_prefix=p) for p in range(net.prefixlen)] + [net]
            if any(placed[i].get(s, -1) >= exp for i in range(len(names)) for s in supers):
                _bump(skipped, "covered")
                continue
            for i, name in enumerate(names):
                if not any(s in placed[i] for s in supers):
                    placed[i][net] = exp
                    out[name].append((str(net), None if exp == INF else _ms(exp, now)))
                    break
            else:
                _bump(skipped, "overlap")
        return out

    def apply(self, writer: nft.NftWriter, plan: Plan, now: float, extra: dict | None = None) -> None:
        """Write ``plan`` to the kernel in one transaction (``extra``: set -> elements to refill
        in the same transaction, e.g. the local sets at restore)."""
        refill: dict[str, list[tuple[str, int | None]]] = {}
        groups = _all_groups() if plan.full else sorted(plan.refill_groups)
        for g in groups:
            refill.update(self.layers(g, plan.groups.get(g, []), now, plan.skipped))
        if plan.full:
            contents: dict[str, list[tuple[str, int | None]]] = {n: [] for n in nft.MANAGED}
            for key, (where, k) in plan.placed.items():
                exp = plan.entries[key].expires
                contents[where].append((k, _ms(exp, now)))
            contents.update(refill)
            if extra:
                contents.update(extra)
            writer.replace(contents)
        else:
            put = {s: [(k, _ms(e, now)) for k, e in items] for s, items in plan.put.items()}
            writer.update(put, plan.remove, refill)

    def commit(self, plan: Plan) -> None:
        self.entries, self.placed, self.groups = plan.entries, plan.placed, plan.groups

    # -- bookkeeping ------------------------------------------------------------------------
    def purge(self, now: float) -> int:
        """Forget entries the kernel has expired by itself; returns how many."""
        gone = [k for k, h in self.entries.items() if h.expires is not None and h.expires <= now]
        for k in gone:
            h = self.entries.pop(k)
            self.placed.pop(k, None)
            where, key = placement(h.entry)
            if _is_group(where):
                self.groups[where] = [it for it in self.groups.get(where, []) if it[0] != key]
        return len(gone)

    def counts(self, now: float) -> dict[str, int]:
        """Elements per kernel set as written, without the ones the kernel has expired since
        (computed from our own record: listing a 1M-element set to count it would cost seconds)."""
        out = {n: 0 for n in nft.MANAGED}
        for key, (where, _) in self.placed.items():
            exp = self.entries[key].expires
            if exp is None or exp > now:
                out[where] += 1
        for g, items in self.groups.items():
            for name, elems in self.layers(g, items, now).items():
                out[name] = len(elems)
        return out


def _all_groups() -> list[str]:
    return [f"{k}{f}" for k in ("allownet", "blocknet") for f in (4, 6)]


def _ms(expires: float | None, now: float) -> int | None:
    if expires is None:
        return None
    return max(1, int(round((expires - now) * 1000)))


def _bump(d: dict[str, int] | None, reason: str) -> None:
    if d is not None:
        d[reason] = d.get(reason, 0) + 1
