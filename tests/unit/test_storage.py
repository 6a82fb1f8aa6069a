"""The storage interface: migrations, managers sharing one PostgreSQL database, the publishing lease.

PostgreSQL here is a real server (tests/support/postgres.py); "two managers" are two stores with
connections of their own on one schema, driven from threads at once.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tests.support.postgres import Backend
from vigil.config import ConfigError, loads
from vigil.counters import Counters
from vigil.manager.config import ManagerConfig
from vigil.manager.policy.baselines import BaselineStore
from vigil.manager.policy.decisions import DecisionStore
from vigil.manager.verdicts.store import VerdictStore
from vigil.manager.storage import StorageConfig, StorageError, open_lease
from vigil.manager.storage.lease import AdvisoryLease, FileLease

pytestmark = pytest.mark.unit


def decisions(db) -> DecisionStore:
    return DecisionStore(db, Counters(), ladder=[600, 3600], offence_memory=86400, unblock_suppress=60)


@pytest.fixture
def pg(postgres_server, tmp_path):
    """Several managers share state only on PostgreSQL: these tests run there alone."""
    name, dsn = postgres_server.create_schema()
    try:
        yield Backend("postgresql", tmp_path, StorageConfig(backend="postgresql", dsn=dsn))
    finally:
        postgres_server.drop_schema(name)


def test_two_managers_seeing_one_scan_make_one_decision(pg):
    a, b = decisions(pg.db()), decisions(pg.db())
    barrier = threading.Barrier(2)
    results: dict[str, list] = {"a": [], "b": []}

    def run(name, store):
        barrier.wait()
        for _ in range(15):
            results[name].append(store.propose("ip", "10.66.0.9", "flow-anomaly:scan", "scan").id)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ids = set(results["a"]) | set(results["b"])
    assert len(ids) == 1, ids                       # merged, never duplicated
    rows = pg.db().query("SELECT id, offences FROM decisions WHERE value='10.66.0.9' AND state='active'")
    assert rows == [(ids.pop(), 1)]                 # one offence, not one per manager
    a.close()
    b.close()


def test_a_manager_reads_what_the_other_changed(pg):
    a, b = decisions(pg.db()), decisions(pg.db())
    d = a.propose("ip", "10.66.0.1", "operator", "by hand", duration=300)
    v = b.version
    assert b.refresh() == 1 and d.id in b.active and b.version > v
    assert b.refresh() == 0                         # nothing new: no rule-set change either
    a.extend(d.id, 600)
    assert b.refresh() == 1 and b.active[d.id].expires == pytest.approx(a.active[d.id].expires)
    b.allow_add("10.66.5.0/24", "gateways")
    a.refresh()
    assert "10.66.5.0/24" in [str(n) for n in a.allow_networks()]
    a.unblock("10.66.0.1")
    b.refresh()
    assert d.id not in b.active
    # the suppression written by one manager holds for detections arriving at the other
    with pytest.raises(Exception, match="unblocked by an operator"):
        b.propose("ip", "10.66.0.1", "flow-anomaly:scan", "again")
    a.close()
    b.close()


def test_generations_never_repeat_or_go_back_across_managers(pg):
    a, b = decisions(pg.db()), decisions(pg.db())
    got: list[int] = []
    lock = threading.Lock()

    def run(store):
        for _ in range(40):
            g = store.raise_meta_int("generation:e1", 1, above=True)
            with lock:
                got.append(g)

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == list(range(1, 81))
    assert a.raise_meta_int("generation:e1", 5) == 80          # "at least 5": the stored 80 stays
    a.close()
    b.close()


HOLDER = """
import sys, time
from vigil.manager.storage import StorageConfig
from vigil.manager.storage.lease import AdvisoryLease
lease = AdvisoryLease("publisher-0-of-1", StorageConfig(backend="postgresql", dsn=sys.argv[1]))
assert lease.check()
print("held", flush=True)
time.sleep(120)
"""


def test_lease_is_exclusive_and_passes_on_within_a_second_when_the_holder_is_killed(pg, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg.config.dsn], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        other = AdvisoryLease("publisher-0-of-1", pg.config)
        assert not other.check()
        assert AdvisoryLease("publisher-1-of-2", pg.config).check()   # another partition's lease
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        while not other.check():
            assert time.monotonic() - killed < 5, "the lease of a killed holder was not freed"
            time.sleep(0.02)
        took = time.monotonic() - killed
        with capsys.disabled():
            print(f"\nlease taken over {took * 1000:.0f} ms after SIGKILL of its holder")
        assert other.check()          # still held on the next tick
        other.release()
    finally:
        holder.kill()
        holder.wait()


def test_lease_lost_with_the_database_is_reported_not_raised(pg, postgres_server):
    lease = AdvisoryLease("publisher-0-of-1", pg.config)
    assert lease.check()
    # the server ends the session (as a restart or a failover would)
    pid = lease._conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    pg.db().execute("SELECT pg_terminate_backend(?)", (pid,))
    assert lease.check() is False and lease.holding is False
    # a later tick: a new session takes it again once the ended one is gone (nobody else holds it)
    deadline = time.monotonic() + 5
    while not lease.check():
        assert time.monotonic() < deadline, lease.last_error
        time.sleep(0.05)
    lease.release()
    bad = AdvisoryLease("x", StorageConfig(backend="postgresql", dsn=f"host={postgres_server.dir} port=1"))
    assert bad.check() is False and bad.last_error


def test_file_lease_on_sqlite(tmp_path):
    a, b = open_lease(None, "publisher-0-of-1", tmp_path), open_lease(None, "publisher-0-of-1", tmp_path)
    assert isinstance(a, FileLease)
    assert a.check() and not b.check()
    a.release()
    assert b.check()
    b.release()


OLD_SCHEMA = """
CREATE TABLE decisions (id TEXT PRIMARY KEY, scope TEXT, value TEXT, action TEXT, origin TEXT, reason TEXT,
  created REAL, expires REAL, offences INTEGER, engines TEXT, state TEXT, would_block_on TEXT, evidence TEXT,
  updated REAL);
CREATE TABLE offences (scope TEXT, value TEXT, count INTEGER, last REAL, PRIMARY KEY (scope, value));
CREATE TABLE allowlist (id TEXT PRIMARY KEY, value TEXT UNIQUE, note TEXT, created REAL);
CREATE TABLE suppress (scope TEXT, value TEXT, until REAL, PRIMARY KEY (scope, value));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""


def test_a_sqlite_file_from_before_migrations_is_adopted(tmp_path):
    path = tmp_path / "decisions.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    far = time.time() + 3600
    old.execute("INSERT INTO decisions VALUES ('d-1','ip','10.1.1.1','drop','operator','r',1,?,1,'[]','active',"
                "'[]','{}',1)", (far,))
    old.execute("INSERT INTO meta VALUES ('generation:e1','41')")
    old.commit()
    old.close()
    s = decisions(path)
    assert "d-1" in s.active and s.get_meta("generation:e1") == "41"
    assert s._db.query("SELECT version FROM schema_versions WHERE component='decisions'") == [(2,)]
    s.close()


@pytest.mark.parametrize("component", ["decisions", "verdicts", "baselines"])
def test_a_schema_newer_than_the_code_is_refused(storage, component):
    make = {"decisions": decisions, "verdicts": VerdictStore, "baselines": BaselineStore}[component]
    make(storage.db(component)).close()
    db = storage.db(component)
    db.execute("UPDATE schema_versions SET version=7 WHERE component=?", (component,))
    with pytest.raises(StorageError, match=f"the {component} tables are at schema version 7"):
        make(db)
    db.close()


def test_storage_configuration(tmp_path):
    with pytest.raises(ConfigError, match="dsn"):
        loads("storage: {backend: postgresql}\n", ManagerConfig)
    with pytest.raises(ConfigError, match="backend"):
        loads("storage: {backend: mysql}\n", ManagerConfig)
    with pytest.raises(ConfigError, match="signing_key_file"):
        loads("storage: {backend: postgresql, dsn: 'dbname=vigil'}\npolicy: {}\n", ManagerConfig)
    c = loads(f"storage: {{backend: postgresql, dsn: 'dbname=vigil'}}\npolicy: {{signing_key_file: {tmp_path}/k}}\n",
              ManagerConfig)
    assert c.storage.shared and c.policy.signing_key_file == tmp_path / "k"
    assert not loads("{}\n", ManagerConfig).storage.shared


@pytest.fixture
def own_server():
    """A PostgreSQL of this test's own, so that it can be stopped (an outage) without disturbing others."""
    from tests.support.postgres import PostgresServer
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_database_outage_is_counted_and_survived(own_server, tmp_path):
    from tests.unit.test_policy import component, status
    from vigil.manager.api import DecisionRequest
    cfg = StorageConfig(backend="postgresql", dsn=own_server.dsn())
    comp, ctx, mqtt = component(Backend("postgresql", tmp_path, cfg))
    comp.on_status("e1", status("e1"))
    comp.tick()
    assert comp.leading
    req = lambda v: DecisionRequest("ip", v, "parser:x", "r")   # noqa: E731
    assert comp.propose(req("10.5.0.1"))["status"] == "created"
    # the server ends every session (a restart, a failover): the next write reconnects by itself
    with own_server_conn(own_server) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE pid <> pg_backend_pid() AND datname = current_database()")
    assert comp.propose(req("10.5.0.2"))["status"] == "created"
    own_server.pause()
    try:
        res = comp.propose(req("10.5.0.3"))
        assert res["status"] == "rejected" and res["reason"] == "storage"
        assert ctx.counters.get("decisions_storage_errors") == 1
        comp.tick()                                   # does not raise; stops publishing
        assert not comp.leading and ctx.counters.get("policy_storage_errors") == 1
        with pytest.raises(Exception, match="storage failed"):
            comp.add_decision("ip", "10.5.0.4")
    finally:
        own_server.resume()
    comp.tick()
    assert comp.leading and comp.propose(req("10.5.0.3"))["status"] == "created"
    assert {d.value for d in comp.store.list()} >= {"10.5.0.1", "10.5.0.2", "10.5.0.3"}
    comp.close()


def own_server_conn(server):
    import psycopg
    return psycopg.connect(server.dsn(), autocommit=True)


def test_two_policy_components_one_publishes_both_take_commands(pg, tmp_path):
    """Two managers' policy components on one database: only the lease holder publishes; the
    operator's decision and mode switch made through the other reach its rule sets; when the
    holder closes, the other takes over and continues the generations with the fleet's one key."""
    from tests.unit.test_policy import component, status
    from vigil import ruleset, topics
    key = tmp_path / "fleet.key"
    ruleset.save_private_key(ruleset.generate_keypair(tmp_path / "k")[0], key)
    cfg = StorageConfig(backend="postgresql", dsn=pg.config.dsn, poll_interval=0.05)
    a, _, mqtt_a = component(Backend("postgresql", tmp_path / "a", cfg), signing_key_file=key)
    b, _, mqtt_b = component(Backend("postgresql", tmp_path / "b", cfg), signing_key_file=key)
    pub = ruleset.load_public_key(tmp_path / "k" / "signing.pub")
    for comp in (a, b):
        comp.on_status("e1", status("e1", mode="learning"))
    a.tick()
    b.tick()
    assert a.leading and not b.leading
    from vigil.manager.api import DecisionRequest
    scan = DecisionRequest("ip", "10.7.0.9", "flow-anomaly:scan", "scan")
    assert a.propose(scan)["status"] == "created" and b.propose(scan)["status"] == "merged"
    b.add_decision("ip", "10.7.0.1", duration=300)
    b.set_mode("e1", "enforcing")
    assert not [s for s in mqtt_b.sent if "ruleset" in s.topic]   # b never publishes
    time.sleep(0.06)
    a.tick()
    snap = ruleset.decode_snapshot(mqtt_a.last(topics.engine("e1", "ruleset")), pub, "e1")
    # (the scan came while e1 was learning: a would-block, reported, never sent)
    assert [e.value for e in snap.entries if e.action == "drop"] == ["10.7.0.1"] and snap.mode == "enforcing"
    gen_b = {e["engine"]: e["published_generation"] for e in b.list_engines()}
    assert gen_b == {"e1": snap.generation}       # the non-publisher shows what the publisher sent
    a.close()
    b.tick()
    assert b.leading
    snap2 = ruleset.decode_snapshot(mqtt_b.last(topics.engine("e1", "ruleset")), pub, "e1")
    assert snap2.generation > snap.generation
    assert [e.value for e in snap2.entries if e.action == "drop"] == ["10.7.0.1"]
    b.close()


def test_an_extension_by_one_manager_is_not_undone_by_the_other_expiring_its_old_copy(pg):
    clock = [1_000_000.0]
    mk = lambda: DecisionStore(pg.db(), Counters(), ladder=[600], offence_memory=86400,   # noqa: E731
                               unblock_suppress=60, clock=lambda: clock[0])
    a, b = mk(), mk()
    d = a.propose("ip", "10.6.0.1", "operator", "r", duration=60)
    b.refresh()
    clock[0] += 30
    a.extend(d.id, 600)            # b has not polled since: its copy still ends at +60
    clock[0] += 40
    assert b.expire() == 0 and b.active[d.id].expires == a.active[d.id].expires   # re-read, not ended
    assert pg.db().one("SELECT state FROM decisions WHERE id=?", (d.id,)) == ("active",)
    clock[0] += 700
    assert b.expire() == 1 and a.refresh() == 1 and d.id not in a.active
    a.close()
    b.close()


def test_a_single_managers_sqlite_state_is_copied_to_postgresql(pg, tmp_path):
    from vigil.manager.policy.baselines import Baseline
    from vigil.manager.storage.copy import main as copy_main
    state = tmp_path / "state"
    s = decisions(state / "decisions.sqlite")
    d = s.propose("ip", "10.4.0.1", "operator", "r", duration=300)
    s.allow_add("10.4.9.0/24")
    s.set_meta("generation:e1", "17")
    s.unblock("10.4.0.1")
    s.close()
    bs = BaselineStore(state / "baselines")
    bs.baselines["e1"] = Baseline("e1")
    bs.baselines["e1"].dirty = True
    bs.save()
    v = VerdictStore(state / "verdicts.sqlite")
    v.seen("2" * 64, 10, "ep1", "/x", 300)
    v.set_verdict("2" * 64, "malicious", "operator", 3600)
    v.close()
    cfg = tmp_path / "manager.yaml"
    cfg.write_text(f"state_dir: {state}\nstorage: {{backend: postgresql, dsn: \"{pg.config.dsn}\"}}\n")
    assert copy_main(["-c", str(cfg)]) == 0
    assert copy_main(["-c", str(cfg)]) == 0              # twice: nothing doubled
    t = decisions(pg.db())
    assert t.get_meta("generation:e1") == "17" and "10.4.9.0/24" in [str(n) for n in t.allow_networks()]
    assert [x.state for x in t.list(state="all")] == ["removed"] and t.list(state="all")[0].id == d.id
    with pytest.raises(Exception, match="unblocked by an operator"):   # the suppression came along
        t.propose("ip", "10.4.0.1", "flow-anomaly:scan", "again")
    tv = VerdictStore(pg.db())
    assert tv.get("2" * 64).verdict == "malicious" and [h["kind"] for h in tv.history("2" * 64)] == ["seen", "verdict"]
    assert "e1" in BaselineStore(pg.db()).baselines
    for x in (t, tv):
        x.close()
