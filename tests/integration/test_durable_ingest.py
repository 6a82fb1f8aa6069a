"""No flow batch and no engine event is lost when the manager dies, or when the broker restarts.

Real Mosquitto (persistence on), a real vigil-manager (ingest and policy) and a real InfluxDB;
two simulated engines (``vigil.lab.simfleet``: real MQTT clients publishing through the engine's
on-disk spool) publish a flow batch every 0.5 s and an event every second.  The manager is killed
with SIGKILL and stays dead for ``VIGIL_OUTAGE`` seconds (60 by default, the issue's figure) under
that traffic; then it comes back on its persistent session.  Every ``seq`` each engine published
must be in InfluxDB once, and every event.

The same with two ingest processes sharing the batches (a shared subscription), one of them
killed and restarted.

The broker is stopped and started again under traffic only with ingest on a plain subscription
(``ingest.shared_subscription: false``): Mosquitto 2.0.11 saves a persistent session's plain
subscriptions and queued messages but not its shared subscriptions, so after a broker restart the
batches published before the manager subscribes again match no shared subscriber (the engine gets
a PUBACK with reason 16, "no matching subscribers") — docs/DESIGN-NOTES.md, "Durable ingest".
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from vigil.control import call
from vigil.lab.simfleet import SimFleet

pytestmark = pytest.mark.integration

OUTAGE = float(os.environ.get("VIGIL_OUTAGE", "60"))
ENGINES = 2


def publish_events_for(fleet: SimFleet, seconds: float) -> None:
    """One event per engine per second for ``seconds`` (flows run on the fleet's own timer)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fleet.call(lambda: [e.publish_event("10.77.0.66", f"event {e.event_seq + 1}") for e in fleet.engines])
        time.sleep(1.0)


def stored_seqs(lab, engine: str) -> list[int]:
    return sorted(int(r["seq"]) for r in lab.influx.query(f"SELECT seq FROM flow_batches WHERE engine = '{engine}'"))


def stored_events(lab, engine: str) -> list[str]:
    return sorted(r["detail"] for r in lab.influx.query(
        f"SELECT detail FROM engine_events WHERE engine = '{engine}'"))


@pytest.mark.parametrize("shared,managers", [(True, 1), (False, 1), (True, 2)],
                         ids=["shared-sigkill", "plain-broker-restart", "two-managers-sigkill"])
def test_no_batch_and_no_event_lost(lab, shared, managers):
    pub = lab.run_dir / "signing.pub"
    policy = {"public_key_file": str(pub)}
    ingest = {"shared_subscription": shared}
    mgr = lab.start_manager(policy=policy, ingest=ingest)
    lab.wait_log("manager", "(session new)")
    if managers == 2:
        # a second ingest process (no policy) takes half of the flow batches; the first one dies.
        # Mosquitto keeps dealing the dead one's share to its session, which it gets on return.
        lab.start_manager(name="ingest-b", manager_id="ingest-b", control_socket=str(lab.run_dir / "b.sock"),
                          state_dir=str(lab.run_dir / "state" / "ingest-b"), ingest=ingest)
        lab.wait_log("ingest-b", "(session new)")
    fleet = SimFleet("127.0.0.1", lab.mosquitto.port, ENGINES, public_key_file=pub, prefix="dur",
                     flow_interval=0.5, records=3, status_interval=5, spool_root=lab.run_dir / "engines")
    try:
        fleet.start(connect_timeout=15)
        fleet.publishing.set()
        publish_events_for(fleet, 5)

        seq_at_kill = {e.id: e.flow_seq for e in fleet.engines}
        outage = 0.0
        if shared:
            seq_at_kill, outage = kill_manager_for(lab, mgr, fleet, policy, ingest)
        else:
            # -- the broker stops (saving its store) and starts again under traffic -------------------
            lab.mosquitto.stop()
            publish_events_for(fleet, 3)           # the engines spool meanwhile
            lab.mosquitto.start()
            publish_events_for(fleet, 5)

        # everything the engines published leaves their spools (broker PUBACKs) ...
        totals = fleet.drain(30)
        assert totals["backlog"] == 0, totals
        last = {e.id: (e.flow_seq, e.event_seq) for e in fleet.engines}
        # ... and reaches InfluxDB, every seq once
        deadline = time.monotonic() + 60
        missing: dict[str, object] = {}
        while time.monotonic() < deadline:
            missing = {}
            for eng, (nflows, nevents) in last.items():
                seqs = stored_seqs(lab, eng)
                if seqs != list(range(1, nflows + 1)):
                    missing[eng] = sorted(set(range(1, nflows + 1)) - set(seqs))[:20]
                events = stored_events(lab, eng)
                if events != sorted(f"event {i}" for i in range(1, nevents + 1)):
                    missing[f"{eng} events"] = (len(events), nevents)
            if not missing:
                break
            time.sleep(1.0)
        counters = call(lab.run_dir / "manager.sock", "manager.status")["counters"]
        print(f"outage {outage:.1f} s; published per engine (flows, events): {last}; seq at kill "
              f"{seq_at_kill}; manager after restart: {counters}")
        assert not missing, f"lost after the outage: {missing}; manager counters {counters}"
        if shared:
            assert all(n > seq_at_kill[e] + OUTAGE for e, (n, _) in last.items())   # traffic ran on
            assert counters.get("mqtt_sessions_new", 0) == 0     # the restart resumed the session
        assert counters.get("influx_points_dropped", 0) == 0
    finally:
        fleet.stop()


def kill_manager_for(lab, mgr, fleet: SimFleet, policy: dict, ingest: dict) -> tuple[dict[str, int], float]:
    """SIGKILL the manager under traffic, keep it dead for OUTAGE seconds, start it again."""
    before = call(lab.run_dir / "manager.sock", "manager.status")["counters"].get("flow_batches_ingested", 0)
    assert before > 0, "nothing was ingested before the kill"
    mgr.signal(signal.SIGKILL)
    mgr.proc.wait(10)
    seq_at_kill = {e.id: e.flow_seq for e in fleet.engines}
    t_kill = time.monotonic()
    publish_events_for(fleet, OUTAGE)
    lab.start_manager(policy=policy, ingest=ingest)
    lab.wait_log("manager", "(session resumed)", timeout=20)
    outage = time.monotonic() - t_kill
    publish_events_for(fleet, 5)
    return seq_at_kill, outage


def test_a_batch_published_before_any_manager_subscribed_is_kept_until_one_does(lab, tmp_path):
    """The broker answers "no matching subscribers" (reason 16) and drops the message; the engine's
    spool keeps the batch and publishes it again, so the first manager to subscribe gets it."""
    import queue

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from vigil.common import MqttConfig
    from vigil.counters import Counters
    from vigil.mqtt import MqttClient
    from vigil.spool import Spool, SpoolPublisher

    counters = Counters()
    engine = MqttClient(MqttConfig(host="127.0.0.1", port=lab.mosquitto.port), "engine-first", counters)
    engine.start()
    assert engine.wait_connected(10)
    pub = SpoolPublisher(engine, "vigil/v1/engine/first/flows", Spool(tmp_path / "spool", 1 << 20, counters),
                         counters, unrouted_retry=0.5)
    got: "queue.Queue[bytes]" = queue.Queue()
    manager = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    manager.on_message = lambda c, u, m: got.put(m.payload)
    try:
        pub.submit(1, b'{"batch": 1}')
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not counters.get("flow_batches_unrouted"):
            pub.pump()
            time.sleep(0.05)
        assert counters.get("flow_batches_unrouted") >= 1 and pub.backlog == 1   # kept, not deleted
        manager.connect("127.0.0.1", lab.mosquitto.port)
        manager.loop_start()
        manager.subscribe("vigil/v1/engine/+/flows", qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pub.backlog:
            pub.pump()
            time.sleep(0.05)
        assert pub.backlog == 0 and counters.get("flow_batches_acked") == 1
        assert got.get(timeout=5) == b'{"batch": 1}'
    finally:
        manager.loop_stop()
        manager.disconnect()
        engine.stop()
