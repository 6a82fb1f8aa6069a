"""Publishing a decision to many engines at once (issue 18): every delta before any snapshot, the
generations stored in a few transactions, unchanged engines skipped, every message signed per engine."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.fake_mqtt import FakeMqtt
from tests.support.postgres import Backend
from vigil import rulewire, ruleset
from vigil.counters import Counters
from vigil.manager.policy.decisions import DecisionStore
from vigil.manager.policy.fleet import Fleet, Publisher

pytestmark = pytest.mark.unit

ENGINES = [f"e{i:02d}" for i in range(12)]


class Clock:
    def __init__(self, t: float = 1_000_000.25):
        self.t = t

    def __call__(self) -> float:
        return self.t


def setup(storage: Backend):
    clk = Clock()
    c = Counters()
    st = DecisionStore(storage.db("decisions"), c, clock=clk, ladder=[600], offence_memory=86400,
                       unblock_suppress=3600, static_allow=["10.77.0.1/32"])
    fleet = Fleet(st, c)
    key = Ed25519PrivateKey.generate()
    mq = FakeMqtt()
    pub = Publisher("m1", fleet, st, key, mq, c, clock=clk)
    for i, e in enumerate(ENGINES):
        v = fleet.view(e)
        v.state = "running"
        v.tags = ["odd"] if i % 2 else ["even"]
        if i % 3 == 0:
            v.formats = (rulewire.FORMAT,)   # a third reads binary sets, the rest JSON
    return st, fleet, pub, mq, key, c


def read(raw: bytes, kind: str, engine: str, key) -> tuple[int, int | None, set[str]]:
    """(generation, base generation, blocked values) of a message, its signature checked."""
    if rulewire.is_binary(raw):
        m = rulewire.decode(raw, key.public_key(), engine_id=engine, kind=kind)
        values = set()
        for b in m.blocks:
            w = rulewire.key_width(b.scope, b.family)
            if b.action == "drop" and b.op == rulewire.OP_ADD:
                values |= {rulewire.unpack_value(b.scope, b.family, b.keys[i:i + w])
                           for i in range(0, len(b.keys), w)}
        return m.generation, m.base_generation, values
    msg = ruleset.open_signed(raw, kind, key.public_key())
    assert msg["engine"] == engine
    values = {e["value"] for e in msg["entries" if kind == "ruleset" else "add"] if e["action"] == "drop"}
    return msg["generation"], msg.get("base_generation"), values


def test_a_global_decision_sends_every_delta_before_any_snapshot(storage):
    st, fleet, pub, mq, key, c = setup(storage)
    assert pub.sync_all() == len(ENGINES)          # first sets: snapshots only
    assert all(s.topic.endswith("/ruleset") and s.retain for s in mq.sent)
    first = {e: fleet.view(e).published_generation for e in ENGINES}
    mq.sent.clear()

    st.propose("ip", "192.0.2.10", "operator", "global")
    assert pub.sync_all() == len(ENGINES)
    kinds = ["delta" if s.topic.endswith("/ruleset/delta") else "snapshot" for s in mq.sent]
    assert kinds == ["delta"] * len(ENGINES) + ["snapshot"] * len(ENGINES)
    for s in mq.sent:
        engine = s.topic.split("/")[-3] if s.topic.endswith("/delta") else s.topic.split("/")[-2]
        assert engine in ENGINES
        kind = "ruleset-delta" if s.topic.endswith("/delta") else "ruleset"
        gen, base, values = read(s.data, kind, engine, key)
        assert gen == first[engine] + 1
        assert "192.0.2.10" in values
        if kind == "ruleset-delta":
            assert base == first[engine] and not s.retain
        else:
            assert s.retain
        # stored before it was published: a manager taking over continues above it
        assert int(st.get_meta(f"generation:{engine}")) == gen
    assert c.get("ruleset_deltas_published") == len(ENGINES)
    assert c.get("ruleset_binary_published") == 2 * len([e for e in ENGINES if fleet.view(e).formats])


def test_engines_whose_set_did_not_change_get_nothing(storage):
    st, fleet, pub, mq, key, c = setup(storage)
    pub.sync_all()
    mq.sent.clear()
    st.propose("ip", "192.0.2.20", "operator", "odd ones", engines=["tag:odd"])
    before = {e: fleet.view(e).published_generation for e in ENGINES}
    n = pub.sync_all()
    odd = [e for i, e in enumerate(ENGINES) if i % 2]
    assert n == len(odd)
    assert {s.topic.split("/")[-2 if s.retain else -3] for s in mq.sent} == set(odd)
    for e in ENGINES:
        assert fleet.view(e).published_generation == before[e] + (e in odd)
    mq.sent.clear()
    assert pub.sync_all() == 0 and not mq.sent


def test_generations_of_a_sync_are_stored_in_few_transactions(storage):
    st, fleet, pub, mq, key, c = setup(storage)
    pub.sync_all()
    db = st._db
    commits = []
    end = db._end

    def counting_end(ok):
        commits.append(ok)
        return end(ok)
    db._end = counting_end
    st.propose("ip", "192.0.2.30", "operator", "global")   # its own commit(s)
    commits.clear()
    pub.sync_all()
    assert 1 <= len(commits) <= 2, commits     # not one per engine (12 here)


def test_raise_meta_ints_never_goes_back(storage):
    st, *_ = setup(storage)
    st.set_meta("generation:a", "7")
    got = st.raise_meta_ints({"generation:a": 3, "generation:b": 4, "generation:c": 1}, above=True, chunk=2)
    assert got == {"generation:a": 8, "generation:b": 4, "generation:c": 1}
    assert st.raise_meta_ints({"generation:b": 2}) == {"generation:b": 4}
    assert {k: st.get_meta(k) for k in got} == {"generation:a": "8", "generation:b": "4", "generation:c": "1"}


def test_one_engine_failing_to_publish_does_not_hold_the_others(storage):
    st, fleet, pub, mq, key, c = setup(storage)
    pub.sync_all()
    real = mq.publish
    broken = {"e03"}

    def publish(topic, data, *a, **kw):
        if topic.split("/")[3] in broken:
            raise OSError("broker connection reset")
        return real(topic, data, *a, **kw)
    mq.publish = publish
    mq.sent.clear()
    st.propose("ip", "192.0.2.40", "operator", "global")
    assert pub.sync_all() == len(ENGINES) - 1
    assert c.get("ruleset_publish_errors") == 1
    assert len(mq.sent) == 2 * (len(ENGINES) - 1)
    broken.clear()          # it recovers: the failed engine is retried at the next sync, and only it
    mq.sent.clear()
    assert pub.sync_all() == 1
    assert {s.topic.split("/")[3] for s in mq.sent} == {"e03"}
    gen, _, values = read(mq.sent[-1].data, "ruleset", "e03", key)
    assert "192.0.2.40" in values and int(st.get_meta("generation:e03")) == gen
