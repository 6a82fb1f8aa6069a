"""A thousand simulated engines against the real broker and the real manager.

``vigil.lab.simfleet`` runs 1,000 real MQTT clients in this process (one selector loop): each
publishes retained statuses and flow batches through the engine's spool publisher and applies the
manager's signed rule sets in memory.  The manager must hand every engine its rule set, ingest
every batch into InfluxDB, and spread one operator decision to every engine; the spread is printed
(bench/fleet_scale.py measures it with ratios; the goal is p95 <= 2 s, see docs/DESIGN-NOTES.md).
"""
from __future__ import annotations

import os
import time

import pytest

from vigil.control import call
from vigil.lab.simfleet import SimFleet, percentile

pytestmark = pytest.mark.integration

ENGINES = int(os.environ.get("VIGIL_FLEET", "1000"))


def test_a_thousand_engines_get_rule_sets_and_every_batch_is_stored(lab):
    pub = lab.run_dir / "signing.pub"
    sock = lab.run_dir / "manager.sock"
    lab.start_manager(policy={"public_key_file": str(pub)}, log={"level": "WARNING"})
    deadline = time.monotonic() + 20
    while not pub.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    fleet = SimFleet("127.0.0.1", lab.mosquitto.port, ENGINES, public_key_file=pub,
                     flow_interval=5.0, records=5, status_interval=30)
    t_start = time.monotonic()
    try:
        fleet.start(connect_timeout=60)
        t_connected = time.monotonic() - t_start
        fleet.publishing.set()
        with_rules = fleet.wait_all(lambda e: e.generation is not None, 90)
        t_rules = time.monotonic() - t_start
        assert with_rules == ENGINES, f"only {with_rules} of {ENGINES} engines got a rule set"

        spread = fleet.decision_spread(
            lambda: call(sock, "decisions.add", scope="ip", value="192.0.2.77", duration=600,
                         reason="fleet test"), "192.0.2.77", timeout=90)
        assert len(spread) == ENGINES, f"the decision reached {len(spread)} of {ENGINES} engines"

        time.sleep(6)                      # one more flow interval of traffic
        totals = fleet.drain(60)
        assert totals["backlog"] == 0, totals
        published = totals["flow_batches_published"]
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline:
            rows = lab.influx.query("SELECT count(seq) FROM flow_batches")
            stored = rows[0]["count"] if rows else 0
            if stored >= published:
                break
            time.sleep(1)
        counters = call(sock, "manager.status")["counters"]
        print(f"{ENGINES} engines: connected in {t_connected:.1f} s, all with a rule set after "
              f"{t_rules:.1f} s; decision spread p50 {percentile(spread, 0.5):.2f} s, "
              f"p95 {percentile(spread, 0.95):.2f} s, max {spread[-1]:.2f} s; flow batches published "
              f"{published}, stored {stored}; fleet {totals}; manager {counters}")
        assert stored == published
        assert counters.get("flow_batches_ingested", 0) == published
        assert not any(k.startswith("ruleset_rejected") for k in totals), totals
        assert counters.get("influx_points_dropped", 0) == 0 and counters.get("handler_errors", 0) == 0
    finally:
        fleet.stop()
