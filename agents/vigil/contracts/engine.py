"""What an engine publishes: status, flow batches, events, rule-set state; and the metadata of the
rule sets it receives (their entries and signatures are encoded by ``vigil.ruleset``)."""
from __future__ import annotations

from dataclasses import dataclass
from .base import (Contract, envelope_field, extra, is_dict, is_int, is_ip, is_list, is_mac, is_num, is_str, is_str_list,
                   items, one_of, opt, req)
from .ids import valid_id
from .vocab import ENGINE_STATES, EVENT_ACTIONS, MODES, SEVERITIES

# One flow record (``FlowBatch.flows`` items), as the engine's flow table writes it.  Records stay
# plain dicts: a batch holds thousands and the ingest path reads a few keys of each (typing each
# one would cost more than the whole aggregation).  Readers convert what they use, and count a
# record whose field does not convert as ``flow_records_malformed``.
FLOW_FIELDS: dict[str, str] = {
    "id": "int conntrack id", "family": "int 4|6", "proto": "str tcp|udp|icmp|<number>",
    "src": "str address", "sport": "int", "dst": "str address", "dport": "int",
    "in_port": "str bridge port name", "vlan": "int|None", "start": "int epoch ms",
    "end": "int epoch ms|None (None: still open)", "duration": "float s", "new": "bool",
    "state": "str TCP state", "conn_state": "str Zeek-style", "replied": "bool", "assured": "bool",
    "orig_pkts": "int (interval delta)", "orig_bytes": "int", "resp_pkts": "int", "resp_bytes": "int",
    "orig_pkts_total": "int", "orig_bytes_total": "int", "resp_pkts_total": "int", "resp_bytes_total": "int",
    "spoofed": "bool: first frame's source address is owned by another MAC (engine/senders.py)",
    "src_mac": "str|None: owner's MAC, or for a spoofed flow the sampled sender's",
}


@dataclass(frozen=True, kw_only=True)
class Interval(Contract):
    start: int = req(is_int)
    end: int = req(is_int)


@dataclass(frozen=True, kw_only=True)
class FlowBatch(Contract):
    """``vigil/v1/engine/{id}/flows``: the flow records of one interval (or a chunk of one)."""
    KIND = "flows"
    engine: str = req(valid_id)
    seq: int = req(is_int)
    interval: dict | None = opt(is_dict)        # {"start": ms, "end": ms}; see Interval
    source: str | None = opt(is_str)            # the kernel's flow source (KernelFeatures.flow_source)
    mode: str | None = opt(one_of(MODES))
    flows_tracked: int = opt(is_int, 0)
    evicted_total: int = opt(is_int, 0)
    dropped_batches_total: int = opt(is_int, 0)
    poll_ms: float = opt(is_num, 0.0)
    flows: list = opt(is_list, factory=list)    # FLOW_FIELDS records
    ts: int = envelope_field(0)
    sender: str = envelope_field("")

    def interval_bounds(self) -> tuple[int, int] | None:
        iv = self.interval
        if iv and is_int(iv.get("start")) and is_int(iv.get("end")):
            return iv["start"], iv["end"]
        return None


@dataclass(frozen=True, kw_only=True)
class Learning(Contract):
    progress: float = opt(is_num, 0.0)          # 0..1 of the learning period, in traffic time
    elapsed: float = opt(is_num, 0.0)           # traffic seconds learned
    period: float = opt(is_num, 0.0)


@dataclass(frozen=True, kw_only=True)
class EngineStatus(Contract):
    """``vigil/v1/engine/{id}/status`` (retained; the last-will says ``state: offline``)."""
    KIND = "status"
    state: str = req(one_of(ENGINE_STATES))
    engine: str | None = opt(valid_id)
    mode: str | None = opt(one_of(MODES))
    learning: dict | None = opt(is_dict)        # Learning's fields
    ruleset_generation: int | None = opt(is_int, null=True)
    kernel: dict | None = opt(is_dict)          # KernelFeatures.as_dict()
    flows_tracked: int = opt(is_int, 0)
    flow_interval: float | None = opt(is_num)
    tags: list = opt(is_str_list, factory=list)
    version: str | None = opt(is_str)
    counters: dict = opt(is_dict, factory=dict)     # name -> cumulative count
    enforcement: dict | None = opt(is_dict)     # the enforcement part's status (RulesetState and more)
    telemetry: dict | None = opt(is_dict)       # flow source, spool backlog, seq
    detector: dict | None = opt(is_dict)        # the local scan detector's status
    parts: dict = extra()                       # further parts' statuses, by part name, as they came
    ts: int = envelope_field(0)
    sender: str = envelope_field("")

    def learning_progress(self) -> float:
        v = (self.learning or {}).get("progress", 0.0)
        return float(v) if is_num(v) else 0.0


@dataclass(frozen=True, kw_only=True)
class EngineEvent(Contract):
    """One engine-local detection (protocol check or scan detector).  ``src`` is always an IP
    address (or absent): a layer-2 finding names its MACs in ``details`` (e.g. ARP rebind:
    ``ip``, ``known_mac``, ``new_mac``), so no reader mistakes a MAC for an address to block."""
    type: str = req(is_str)
    severity: str = opt(one_of(SEVERITIES), "warning")
    ts: int | None = opt(is_int)
    src: str | None = opt(is_ip)
    dst: str | None = opt(is_ip)
    detail: str = opt(is_str, "")
    action: str | None = opt(one_of(EVENT_ACTIONS))
    mode: str | None = opt(one_of(MODES))
    count: int = opt(is_int, 1)
    ttl: float | None = opt(is_num)             # the engine's own block's lifetime (scan detector)
    origin: str | None = opt(is_str)
    # a sender attributed by where its frames came from (type ``spoofing``, engine/senders.py): the
    # MAC and bridge port that sent traffic with ``forged_src``, an address another MAC owns
    mac: str | None = opt(is_mac)
    in_port: str | None = opt(is_str)
    forged_src: str | None = opt(is_ip)
    details: dict = extra()                     # the check's own evidence, stored as it came


@dataclass(frozen=True, kw_only=True)
class EventBatch(Contract):
    """``vigil/v1/engine/{id}/events``: local events in small batches, ``seq`` growing across
    restarts.  Events that do not check out are dropped and counted (``invalid``)."""
    KIND = "events"
    engine: str = req(valid_id)
    seq: int = opt(is_int, 0)
    events: list[EngineEvent] = items(EngineEvent)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class RulesetState(Contract):
    """``vigil/v1/engine/{id}/ruleset/state`` (retained): what the engine's kernel holds."""
    KIND = "ruleset-state"
    engine: str | None = opt(valid_id)
    generation: int | None = opt(is_int, null=True)     # null: no rule set applied yet
    applied_at: int | None = opt(is_int)        # epoch ms
    issued_at: int | None = opt(is_int)
    counts: dict = opt(is_dict, factory=dict)   # kernel set -> elements
    error: str | None = opt(is_str, null=True)          # null: the last rule set applied cleanly
    rejected: dict = opt(is_dict, factory=dict)  # reason -> rule sets rejected
    key_id: str | None = opt(is_str)
    backend: str | None = opt(is_str)
    ts: int = envelope_field(0)
    sender: str = envelope_field("")


@dataclass(frozen=True, kw_only=True)
class RulesetMeta(Contract):
    """The head of a signed rule set (``ruleset``) or delta (``ruleset-delta``), next to its
    entries (``entries``; deltas ``add`` / ``remove``); ``vigil.ruleset`` encodes, signs and checks
    the whole, with this head."""
    engine: str = req(is_str)
    generation: int = req(is_int)
    issued_at: int = req(is_int)                # epoch ms
    base_generation: int | None = opt(is_int)   # deltas: the generation they apply to
    mode: str | None = opt(one_of(MODES))       # an operator's mode switch for this engine
