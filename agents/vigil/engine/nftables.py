"""The one kernel writer of the enforcement table ``bridge vigil`` (and its dry-run twin).

Layout (per family, ``4`` shown; ``6`` is the same with ``ip6``)::

    table bridge vigil
      chain forward   hook forward priority -200, policy accept      (fail-open)
        meta protocol ip jump v4 ; meta protocol ip6 jump v6    (not ether type: see below)
      chain v4        no drop set holds saddr or daddr, no flow matches: return  (the common case)
                      guard4 / allow4 / allownet4* accept   (saddr or daddr: checked first)
                      block4 / blocknet4* / local4 counter drop (saddr or daddr)
                      saddr . daddr . l4proto . dport @flow4 counter drop
      sets  guard4     interval          management networks and gateways (from config; static)
            allow4     hash, timeout     allow entries, addresses
            allownet4  interval, timeout allow entries, networks (layer 0); allownet4_1 (layer 1)
            block4     hash, timeout     drop entries, addresses
            blocknet4  interval, timeout drop entries, networks (layer 0); blocknet4_1 (layer 1)
            flow4      hash, timeout     drop entries, src . dst . proto . dport
            local4     hash, timeout     the engine's own fast reactions (never touched by a rule set)

Why addresses and networks live in separate sets (a departure from "block4 holds both"): the kernel
refuses overlapping elements in an interval set (``10.0.0.0/8`` and ``10.1.2.3``), an
``add element`` to an interval set makes nft read the whole set first (measured: 1M intervals
take 30 s to load and minutes per added element), while a hash set loads 1M in seconds and takes
one element in ~1 ms.  Networks nested in a network that expires earlier go to layer 1 (see
enforce_plan.py).

Transactions: ``replace()`` flushes and refills every managed set in one ``nft`` transaction (the
kernel swaps old for new at commit; no packet sees an empty set in between).  ``update()`` is one
transaction too: for hash sets each changed element is made to exist, deleted and re-added with its
new timeout (``add`` alone keeps an old timeout: that is how other bouncers drift); interval sets
touched by a delta are flushed and refilled whole (nft cannot delete and add overlapping intervals
in one transaction).  Nothing here ever lists a set's elements.

A kernel change is a ``Change`` (replace or update): the planner (enforce_plan.Policy.change)
returns one and applies nothing; ``NftWriter.commit`` hands it to the backend.  Backends (one
interface, ``Backend``): ``lib`` (libnftables through Debian's python3-nftables, one long-lived
context: no fork per transaction), ``cli`` (``nft -f -``), ``dry-run`` (records the scripts and the
exact nfnetlink batch bytes production would send; for tests and ``--dry-run``).  A replace goes
as one raw nfnetlink batch from every backend while ``NftWriter.bulk``.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from . import nfnetlink

log = logging.getLogger(__name__)

TABLE = "vigil"
FAMILY = "bridge"
PRIORITY = -200
LAYERS = 2              # interval-set layers for nested networks

_ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}
_ETHER = {4: "ip", 6: "ip6"}


class NftError(RuntimeError):
    """nft, libnftables or the kernel refused a change or a query (the one such error of the engine:
    the flow-accounting tables in datapath.py raise it too)."""


def net_sets(kind: str, family: int) -> list[str]:
    """``kind`` allownet or blocknet -> its layer set names, layer 0 first."""
    base = f"{kind}{family}"
    return [base] + [f"{base}_{i}" for i in range(1, LAYERS)]


@dataclass(frozen=True)
class SetSpec:
    name: str
    family: int
    kind: str          # guard, allow, allownet, block, blocknet, flow, local
    interval: bool
    timeout: bool

    @property
    def type(self) -> str:
        a = _ADDR[self.family]
        if self.kind == "blockmac":
            return "ether_addr . ifname"
        return f"{a} . {a} . inet_proto . inet_service" if self.kind == "flow" else a

    def declaration(self) -> str:
        flags = [f for f, on in (("interval", self.interval), ("timeout", self.timeout)) if on]
        f = f" flags {', '.join(flags)};" if flags else ""
        return f"set {self.name} {{ type {self.type};{f} }}"


def layout() -> dict[str, SetSpec]:
    specs: list[SetSpec] = []
    for fam in (4, 6):
        specs.append(SetSpec(f"guard{fam}", fam, "guard", True, False))
        specs.append(SetSpec(f"allow{fam}", fam, "allow", False, True))
        specs += [SetSpec(n, fam, "allownet", True, True) for n in net_sets("allownet", fam)]
        specs.append(SetSpec(f"block{fam}", fam, "block", False, True))
        specs += [SetSpec(n, fam, "blocknet", True, True) for n in net_sets("blocknet", fam)]
        specs.append(SetSpec(f"flow{fam}", fam, "flow", False, True))
        specs.append(SetSpec(f"local{fam}", fam, "local", False, True))
    specs.append(SetSpec("blockmac", 4, "blockmac", False, True))   # both families: mac|port entries
    return {s.name: s for s in specs}


SETS = layout()
MANAGED = [n for n, s in SETS.items() if s.kind not in ("guard", "local")]   # what a rule set owns
LOCAL = {4: "local4", 6: "local6"}
# The engine's own blocks of a sender attributed by MAC and bridge port (forged source addresses,
# engine/senders.py): one set for both families, the first drop rule in v4 and v6.
LOCAL_MAC = "localmac"
BLOCK_MAC = "blockmac"       # rule-set entries of scope mac (mac . port), both families
LOCAL_MAC_DECL = f"set {LOCAL_MAC} {{ type ether_addr . ifname; flags timeout; }}"


def chain_rules(family: int, allow: str = "accept") -> list[str]:
    """The lookups of one family.  ``allow``: the verdict of an allowlisted or guarded packet --
    ``accept`` in the forward hook; ``return`` when ``v4``/``v6`` are called from the flow-set
    datapath's ``pre`` chain, which must still count the flow (datapath.flowset_script)."""
    ip = _IP[family]
    f = family
    accept = [f"guard{f}", f"allow{f}", *net_sets("allownet", f)]
    drop = [f"block{f}", *net_sets("blocknet", f), f"local{f}"]
    # The common case first: a packet that no drop set matches leaves after these lookups (one
    # rule, each ``!=`` lookup ends it at the first set that holds the address), without the
    # guard and allow lookups, which only matter for a packet some drop set matches -- 9 lookups
    # instead of 17 per forwarded packet.  A packet that matches goes through every rule below.
    # The MAC sets are in it too: a forged source is attributed to its sender's MAC and port, so
    # the sender's own address is in no drop set and the return would let it pass.
    miss = " ".join(f"{ip} saddr != @{s} {ip} daddr != @{s}" for s in drop)
    macs = " ".join(f"ether saddr . iifname != @{s}" for s in (BLOCK_MAC, LOCAL_MAC))
    rules = [f"{miss} {macs} {ip} saddr . {ip} daddr . meta l4proto . th dport != @flow{f} return"]
    for s in accept:
        rules += [f"{ip} saddr @{s} {allow}", f"{ip} daddr @{s} {allow}"]
    # after the accepts: allowlisted and guarded addresses pass even from a blocked MAC
    for s in (BLOCK_MAC, LOCAL_MAC):
        rules.append(f"ether saddr . iifname @{s} counter drop comment \"{s}\"")
    for s in drop:
        rules += [f"{ip} saddr @{s} counter drop comment \"{s} src\"",
                  f"{ip} daddr @{s} counter drop comment \"{s} dst\""]
    rules.append(f"{ip} saddr . {ip} daddr . meta l4proto . th dport @flow{f} counter drop comment \"flow{f}\"")
    return rules


def table_script(guards: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
                 datapath: str | None = None) -> str:
    """Idempotent creation: sets are declared (existing ones keep their elements), the chains are
    flushed and refilled, the guard sets are refilled.  One transaction; foreign tables untouched.
    ``datapath``: the flow-set datapath's script (datapath.flowset_script), which then calls the
    lookups from its ``pre`` chain instead of a ``forward`` hook (one is removed if present)."""
    lines = [f"table {FAMILY} {TABLE} {{"]
    lines += [f"  {s.declaration()}" for s in SETS.values()]
    lines.append(f"  {LOCAL_MAC_DECL}")
    lines.append(f"  chain forward {{ type filter hook forward priority {PRIORITY}; policy accept; }}")
    lines += ["  chain v4 { }", "  chain v6 { }", "}"]
    for chain in ("forward", "v4", "v6"):
        lines.append(f"flush chain {FAMILY} {TABLE} {chain}")
    if datapath:
        lines.append(f"delete chain {FAMILY} {TABLE} forward")
        lines.append(datapath.rstrip("\n"))
    else:
        # ``meta protocol``, not ``ether type``: the kernel hands the bridge an 802.1Q frame's tag
        # apart from the frame, and nft then reads the tag's 0x8100 as the ether type -- a blocked
        # source passed by tagging its frames.  The lookups' own dependency is ``meta protocol``.
        for fam in (4, 6):
            lines.append(f"add rule {FAMILY} {TABLE} forward meta protocol {_ETHER[fam]} jump v{fam}")
    allow = "return" if datapath else "accept"
    for fam in (4, 6):
        lines += [f"add rule {FAMILY} {TABLE} v{fam} {r}" for r in chain_rules(fam, allow)]
    by_fam: dict[int, list[str]] = {4: [], 6: []}
    for net in ipaddress.collapse_addresses(n for n in guards if n.version == 4):
        by_fam[4].append(str(net))
    for net in ipaddress.collapse_addresses(n for n in guards if n.version == 6):
        by_fam[6].append(str(net))
    for fam, nets in by_fam.items():
        lines.append(f"flush set {FAMILY} {TABLE} guard{fam}")
        if nets:
            lines.append(f"add element {FAMILY} {TABLE} guard{fam} {{ {', '.join(nets)} }}")
    return "\n".join(lines) + "\n"


def element(key: str, timeout_ms: int | None) -> str:
    return key if timeout_ms is None else f"{key} timeout {max(1, int(timeout_ms))}ms"


def _chunks(items: list[str], n: int = 20000):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _add(lines: list[str], verb: str, set_name: str, elems: list[str]) -> None:
    for chunk in _chunks(elems):
        lines.append(f"{verb} element {FAMILY} {TABLE} {set_name} {{ {', '.join(chunk)} }}")


def replace_script(contents: dict[str, list[tuple[str, int | None]]]) -> str:
    """Flush and refill each set in ``contents`` (set -> [(key, timeout_ms)]): one transaction."""
    lines: list[str] = []
    for name, elems in contents.items():
        _check_managed(name, local_ok=True)
        lines.append(f"flush set {FAMILY} {TABLE} {name}")
        _add(lines, "add", name, [element(k, t) for k, t in elems])
    return "\n".join(lines) + "\n"


def replace_batch(contents: dict[str, list[tuple[str, int | None]]]) -> nfnetlink.Batch:
    """``replace_script`` as one nfnetlink batch (same sets, same order, same transaction)."""
    batch = nfnetlink.Batch(TABLE)
    for name, elems in contents.items():
        _check_managed(name, local_ok=True)
        spec = SETS[name]
        batch.flush(name)
        if not elems:
            continue
        try:
            if spec.interval:
                width = 4 if spec.family == 4 else 16
                encoded = nfnetlink.interval_elements(nfnetlink.network_ranges(elems, spec.family), width)
            else:
                keys = [k for k, _ in elems]
                if spec.kind == "flow":
                    kb, width = nfnetlink.flow_keys(keys, spec.family), 16 if spec.family == 4 else 40
                elif spec.kind == "blockmac":
                    kb, width = nfnetlink.mac_port_keys(keys), 24
                else:
                    kb, width = nfnetlink.address_keys(keys, spec.family), 4 if spec.family == 4 else 16
                encoded = nfnetlink.hash_elements(kb, [None if t is None else max(1, int(t)) for _, t in elems], width)
        except nfnetlink.NetlinkError as exc:
            raise NftError(f"set {name}: {exc}") from None
        batch.add(name, encoded)
    return batch


def update_script(put: dict[str, list[tuple[str, int | None]]], remove: dict[str, list[str]],
                  refill: dict[str, list[tuple[str, int | None]]] | None = None) -> str:
    """One transaction: ``remove`` keys from hash sets, ``put`` (add or replace, re-asserting the
    timeout) keys into hash sets, flush and refill the interval sets in ``refill``."""
    lines: list[str] = []
    for name, keys in remove.items():
        if not keys:
            continue
        _check_managed(name, local_ok=True)
        _add(lines, "add", name, keys)         # make it exist (it may have expired) so delete cannot fail
        _add(lines, "delete", name, keys)
    for name, elems in put.items():
        if not elems:
            continue
        _check_managed(name, local_ok=True)
        keys = [k for k, _ in elems]
        _add(lines, "add", name, keys)
        _add(lines, "delete", name, keys)
        _add(lines, "add", name, [element(k, t) for k, t in elems])
    for name, elems in (refill or {}).items():
        _check_managed(name)
        lines.append(f"flush set {FAMILY} {TABLE} {name}")
        _add(lines, "add", name, [element(k, t) for k, t in elems])
    return "\n".join(lines) + ("\n" if lines else "")


def packed_batch(batch: nfnetlink.Batch, changes: list) -> nfnetlink.Batch:
    """The hash-set changes of a binary snapshot (enforce_packed.ColChange) appended to ``batch``."""
    for cc in changes:
        _check_managed(cc.set_name)
        w = cc.width
        if cc.refill:
            batch.flush(cc.set_name)
        elif cc.delete:
            plain = nfnetlink.packed_hash_elements(cc.delete, w, None)
            size = len(plain) // (len(cc.delete) // w)
            batch.add_packed(cc.set_name, plain, size)                  # make each exist (it may have expired)
            batch.add_packed(cc.set_name, plain, size, delete=True)
        for keys, tos in ((cc.put_timed, cc.put_timeouts), (cc.put_untimed, None)):
            if keys:
                recs = nfnetlink.packed_hash_elements(keys, w, tos)
                batch.add_packed(cc.set_name, recs, len(recs) // (len(keys) // w), exclusive=cc.refill)
    return batch


def packed_script(changes: list) -> list[str]:
    lines: list[str] = []
    for cc in changes:
        _check_managed(cc.set_name)
        if cc.refill:
            lines.append(f"flush set {FAMILY} {TABLE} {cc.set_name}")
        elif cc.delete:
            keys = cc.deleted_texts()
            _add(lines, "add", cc.set_name, keys)
            _add(lines, "delete", cc.set_name, keys)
        _add(lines, "add", cc.set_name, [element(k, t) for k, t in cc.texts()])
    return lines


@dataclass
class Change:
    """One transaction on ``bridge vigil``, whatever carries it: what the planner returns and every
    backend commits.  ``replace``: flush and refill each set of ``contents``; ``update``: remove,
    put (re-asserting timeouts) and refill (interval sets), see ``update_script``."""
    kind: str                                                   # "replace" or "update"
    contents: dict[str, list[tuple[str, int | None]]] = field(default_factory=dict)   # replace
    put: dict[str, list[tuple[str, int | None]]] = field(default_factory=dict)        # update
    remove: dict[str, list[str]] = field(default_factory=dict)
    refill: dict[str, list[tuple[str, int | None]]] = field(default_factory=dict)
    packed: list = field(default_factory=list)                  # packed: enforce_packed.ColChange
    # sets flushed at the end of the same transaction whatever the kind: the flow-set datapath's
    # verdict caches, so that the change also applies to flows already running (NftWriter.flush_sets)
    flush: list[str] = field(default_factory=list)

    @classmethod
    def packing(cls, contents, packed) -> "Change":
        """A binary snapshot: ``contents`` refilled as by a replace, the hash sets of ``packed``
        refilled or changed in place -- one transaction."""
        return cls("packed", contents=contents, packed=packed)

    @classmethod
    def replacing(cls, contents: dict[str, list[tuple[str, int | None]]]) -> "Change":
        return cls("replace", contents=contents)

    @classmethod
    def updating(cls, put, remove, refill=None) -> "Change":
        return cls("update", put=put, remove=remove, refill=refill or {})

    def script(self) -> str:
        """As an nft script (the nft CLI and libnftables backends)."""
        if self.kind == "replace":
            text = replace_script(self.contents)
        elif self.kind == "packed":
            text = replace_script(self.contents) + "\n".join(packed_script(self.packed)) + "\n"
        else:
            text = update_script(self.put, self.remove, self.refill)
        if self.flush and text.strip():
            text += "".join(f"flush set {FAMILY} {TABLE} {n}\n" for n in self.flush)
        return text

    def batch(self) -> nfnetlink.Batch | None:
        """As one raw nfnetlink batch; None for a kind that goes as a script only (deltas)."""
        if self.kind == "packed":
            batch = packed_batch(replace_batch(self.contents), self.packed)
        elif self.kind == "replace":
            batch = replace_batch(self.contents)
        else:
            return None
        for n in self.flush:
            batch.flush(n)
        return batch

    def __bool__(self) -> bool:
        return bool(self.packed or self.contents or any(self.put.values()) or any(self.remove.values()) or self.refill)


def _check_managed(name: str, local_ok: bool = False) -> None:
    spec = SETS.get(name)
    if spec is None or spec.kind == "guard" or (spec.kind == "local" and not local_ok):
        raise NftError(f"set {name!r} is not writable by a rule set")
    if spec.interval and not name.startswith(("allownet", "blocknet")):
        raise NftError(f"set {name!r}: unexpected interval set")


# -- backends ---------------------------------------------------------------------------------
#
# One interface: ``run(script)`` (table layout, deltas), ``query(command)`` (nft -j listings),
# ``send_batch(batch)`` (a raw nfnetlink batch: bulk replaces), ``commit(change, bulk)`` (a Change
# as a batch when bulk and it has one, else as a script) and ``drop_counters(query)``.  The dry-run
# twin differs only where the kernel would be touched: it records the script or the exact batch
# bytes production would send (``scripts``, ``batches``), so tests exercise the same encoders.

class Backend:
    name = "base"

    def run(self, script: str, timeout: float = 120.0) -> None:
        raise NotImplementedError

    def query(self, command: str) -> str:
        raise NotImplementedError

    def send_batch(self, batch: nfnetlink.Batch) -> None:
        try:
            batch.send()
        except nfnetlink.NetlinkError as exc:
            raise NftError(str(exc)) from None

    def commit(self, change: Change, bulk: bool = True) -> None:
        batch = change.batch() if bulk else None
        if batch is not None:
            self.send_batch(batch)
        else:
            script = change.script()
            if script.strip():
                self.run(script)

    def drop_counters(self) -> dict[str, int] | None:
        """comment -> packets per drop rule by a netlink rule dump; None: use ``query``."""
        try:
            return _netlink_drop_counters()
        except Exception as exc:      # no pyroute2 / netlink refused: the slow path still works
            log.debug("netlink rule dump failed (%s); listing the chains with nft", exc)
            return None


def nft_cli(script: str, check_only: bool = False, timeout: float = 120.0) -> None:
    """Run an nft script as one transaction (``nft -f -``; ``-c``: only check it)."""
    argv = ["nft", "-c", "-f", "-"] if check_only else ["nft", "-f", "-"]
    try:
        r = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NftError("the nft command is not installed") from None
    except subprocess.TimeoutExpired:
        raise NftError(f"nft did not finish within {timeout}s") from None
    if r.returncode != 0:
        raise NftError(_first_lines(r.stderr) or f"nft exited {r.returncode}")


class CliBackend(Backend):
    name = "cli"

    def run(self, script: str, timeout: float = 120.0) -> None:
        nft_cli(script, timeout=timeout)

    def query(self, command: str) -> str:
        r = subprocess.run(["nft", "-j", *command.split()], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise NftError(_first_lines(r.stderr) or f"nft exited {r.returncode}")
        return r.stdout


class LibBackend(Backend):
    """libnftables in-process; one context for writing (never asked to list sets), one for queries."""
    name = "lib"

    def __init__(self):
        try:
            import nftables  # Debian python3-nftables; not on PyPI under this name
        except ImportError as exc:
            raise NftError(f"libnftables Python binding not importable ({exc}); "
                           "install python3-nftables or use backend: cli") from None
        self._writer = nftables.Nftables()
        self._reader = nftables.Nftables()
        self._reader.set_json_output(True)

    def run(self, script: str, timeout: float = 120.0) -> None:
        rc, _out, err = self._writer.cmd(script)
        if rc != 0:
            raise NftError(_first_lines(err) or f"libnftables returned {rc}")

    def query(self, command: str) -> str:
        rc, out, err = self._reader.cmd(command)
        if rc != 0:
            raise NftError(_first_lines(err) or f"libnftables returned {rc}")
        return out


class DryRunBackend(Backend):
    """The twin: records every kernel change instead of making it — a script as its text, a batch
    as the very bytes production sends (and, for people and tests, the equivalent script too)."""
    name = "dry-run"

    def __init__(self):
        self.scripts: list[str] = []
        self.batches: list[bytes] = []

    def run(self, script: str, timeout: float = 120.0) -> None:
        self.scripts.append(script)

    def query(self, command: str) -> str:
        return json.dumps({"nftables": []})

    def send_batch(self, batch: nfnetlink.Batch) -> None:
        self.batches.append(batch.finish())

    def commit(self, change: Change, bulk: bool = True) -> None:
        super().commit(change, bulk)
        if bulk and change.kind in ("replace", "packed"):
            self.scripts.append(change.script())    # the same change, readable

    def drop_counters(self) -> dict[str, int] | None:
        return None


def _first_lines(text: str, n: int = 6) -> str:
    lines = [ln if len(ln) <= 300 else ln[:300] + "..." for ln in text.strip().splitlines()]
    return "\n".join(lines[:n])


def make_backend(kind: str):
    if kind == "dry-run":
        return DryRunBackend()
    if kind == "cli":
        return CliBackend()
    if kind == "lib":
        return LibBackend()
    try:                      # auto
        return LibBackend()
    except NftError as exc:
        log.warning("%s; falling back to nft -f", exc)
        return CliBackend()


class NftWriter:
    """Serialises every write to ``bridge vigil`` (MQTT thread, supervisor tick, local detector)."""

    def __init__(self, backend, guards: Iterable = ()):
        self.backend = backend
        self.guards = [ipaddress.ip_network(g, strict=False) for g in guards]
        self.lock = threading.Lock()
        self.transactions = 0
        self.bulk = True            # replace() through one nfnetlink batch (False: nft script)
        # the flow-set datapath (datapath.flowset_script): its script joins every table_script, and
        # its verdict caches are flushed by every change (a block also stops running flows)
        self.datapath: Callable[[], str] | None = None
        self.flush_sets: list[str] = []

    def use_flowset(self, script: Callable[[], str], flush_sets: list[str]) -> None:
        self.datapath = script
        self.flush_sets = list(flush_sets)

    def _flush_lines(self) -> str:
        return "".join(f"flush set {FAMILY} {TABLE} {n}\n" for n in self.flush_sets)

    def _run(self, script: str) -> None:
        if not script.strip():
            return
        with self.lock:
            self.backend.run(script)
            self.transactions += 1

    def ensure_table(self) -> None:
        """Create the table (or bring an existing one to this layout) without touching set
        contents.  If an older layout is in the way (a set of another type), the table is
        recreated: the caller then restores its rule set."""
        dp = self.datapath() if self.datapath else None
        try:
            self._run(table_script(self.guards, dp) + self._flush_lines())
        except NftError as exc:
            log.warning("table %s %s has an incompatible layout (%s); recreating it", FAMILY, TABLE, exc)
            self._run(f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n")
            self._run(table_script(self.guards, dp))

    def commit(self, change: Change) -> None:
        """One transaction.  A replace goes as one raw nfnetlink batch while ``bulk`` (nft's parser
        cost more than the kernel's work: engine/nfnetlink.py), everything else as an nft script;
        the backend decides how, the dry run included (it records the same bytes)."""
        if not change:
            return
        change.flush = self.flush_sets
        with self.lock:
            self.backend.commit(change, self.bulk)
            self.transactions += 1

    def replace(self, contents: dict[str, list[tuple[str, int | None]]]) -> None:
        """Flush and refill each set in ``contents``: one transaction."""
        self.commit(Change.replacing(contents))

    def update(self, put, remove, refill=None) -> None:
        self.commit(Change.updating(put, remove, refill))

    def block_mac(self, mac: str, port: str, timeout_ms: int) -> None:
        """(Re)assert one engine-local MAC/port block with its timeout: one transaction."""
        key = f'{mac} . "{port}"'
        self._run(f"add element {FAMILY} {TABLE} {LOCAL_MAC} {{ {key} }}\n"
                  f"delete element {FAMILY} {TABLE} {LOCAL_MAC} {{ {key} }}\n"
                  f"add element {FAMILY} {TABLE} {LOCAL_MAC} {{ {element(key, timeout_ms)} }}\n"
                  + self._flush_lines())

    def delete_table(self) -> None:
        self._run(f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n")

    def drop_counters(self) -> dict[str, int]:
        """Packets dropped per drop rule (comment -> packets), read from the chains only.

        Read with a netlink rule dump: nft 1.0.6 fetches every set element to list a chain
        (measured: 2.4 s of CPU per read with 100k elements, while holding the writer lock)."""
        fast = self.backend.drop_counters()
        if fast is not None:
            return fast
        out: dict[str, int] = {}
        for chain in ("v4", "v6"):
            with self.lock:
                text = self.backend.query(f"list chain {FAMILY} {TABLE} {chain}")
            try:
                doc = json.loads(text) if text else {"nftables": []}
            except ValueError:
                continue
            for item in doc.get("nftables", []):
                rule = item.get("rule")
                if not rule or "comment" not in rule:
                    continue
                for expr in rule.get("expr", []):
                    if "counter" in expr:
                        out[rule["comment"]] = out.get(rule["comment"], 0) + int(expr["counter"].get("packets", 0))
        return out


def _bridge_rules() -> list:
    """Every rule of the bridge family (NFT_MSG_GETRULE dump: rules only, no set elements)."""
    from pyroute2.nftables.main import NFTables
    from pyroute2.netlink.nfnetlink.nftsocket import NFPROTO_BRIDGE
    sock = NFTables(nfgen_family=NFPROTO_BRIDGE)
    try:
        return sock.get_rules()
    finally:
        sock.close()


def _packets(rule) -> int | None:
    for expr in rule.get_attr("NFTA_RULE_EXPRESSIONS") or []:
        if expr.get_attr("NFTA_EXPR_NAME") == "counter":
            return int(expr.get_attr("NFTA_EXPR_DATA").get_attr("NFTA_COUNTER_PACKETS") or 0)
    return None


def _netlink_drop_counters() -> dict[str, int]:
    """comment -> packets of every counted rule in ``bridge vigil`` (NFT_MSG_GETRULE dump: rules
    only, no set elements)."""
    out: dict[str, int] = {}
    for r in _bridge_rules():
        if r.get_attr("NFTA_RULE_TABLE") != TABLE or r.get_attr("NFTA_RULE_CHAIN") not in ("v4", "v6"):
            continue
        comment = r.get_attr("NFTA_RULE_USERDATA")
        packets = _packets(r)
        if not isinstance(comment, str) or not comment or packets is None:
            continue
        out[comment] = out.get(comment, 0) + packets
    return out


def log_rule_counters() -> dict[str, int]:
    """log prefix -> packets that reached each counted log rule of ``bridge vigil`` (the counter
    stands before the rule's rate limit: the candidates, sampled or not).  The flow-set datapath's
    flow signals compare it with the samples that arrived (flowsignals.SignalLoss)."""
    out: dict[str, int] = {}
    for r in _bridge_rules():
        if r.get_attr("NFTA_RULE_TABLE") != TABLE:
            continue
        prefix = None
        for expr in r.get_attr("NFTA_RULE_EXPRESSIONS") or []:
            if expr.get_attr("NFTA_EXPR_NAME") == "log":
                prefix = expr.get_attr("NFTA_EXPR_DATA").get_attr("NFTA_LOG_PREFIX")
        packets = _packets(r)
        if prefix and packets is not None:
            out[prefix] = out.get(prefix, 0) + packets
    return out
