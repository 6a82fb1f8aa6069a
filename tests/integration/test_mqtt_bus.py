"""The MQTT client's bus against a real Mosquitto: in each of two manager-like processes, an
ingest-like subscriber on the shared flow subscription and a policy-like one on its own plain
subscription of the same topics.  Every policy subscriber sees every batch exactly once; the
shared subscribers split the batches between them, none lost, none twice (MQTT v5 subscription
identifiers tell the two copies apart).  A few seconds."""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from vigil import topics
from vigil.common import MqttConfig
from vigil.config import from_dict
from vigil.contracts.engine import FlowBatch
from vigil.lab.services import Mosquitto
from vigil.mqtt import MqttClient

pytestmark = pytest.mark.integration

N = 200


def test_shared_and_plain_subscribers_of_one_topic_in_one_client():
    run = Path("/run/vigil-endpoint-tests") / f"bus{uuid.uuid4().hex[:6]}"
    run.mkdir(parents=True)
    run.chmod(0o755)
    broker = Mosquitto(run).start()
    clients: list[MqttClient] = []
    try:
        cfg = from_dict({"host": "127.0.0.1", "port": broker.port}, MqttConfig)
        lock = threading.Lock()
        shared: list[Counter] = []
        plain: list[Counter] = []
        for i in range(2):
            c = MqttClient(cfg, f"manager{i}-{run.name}")
            s, p = Counter(), Counter()
            shared.append(s)
            plain.append(p)

            def on_shared(msg, batch: FlowBatch, s=s):
                with lock:
                    s[batch.seq] += 1

            def on_plain(msg, batch: FlowBatch, p=p):
                with lock:
                    p[batch.seq] += 1
            c.subscribe_kind(topics.shared(topics.engine("+", "flows")), FlowBatch, on_shared)
            c.subscribe_kind(topics.engine("+", "flows"), FlowBatch, on_plain)
            c.start()
            clients.append(c)
        pub = MqttClient(cfg, f"engine-{run.name}")
        pub.start()
        clients.append(pub)
        assert all(c.wait_connected(5) for c in clients)
        time.sleep(0.5)                                   # SUBACKs
        for seq in range(1, N + 1):
            pub.publish(topics.engine("e1", "flows"), FlowBatch(engine="e1", seq=seq).encode("e1"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if sum(sum(x.values()) for x in shared) >= N and all(sum(x.values()) >= N for x in plain):
                    break
            time.sleep(0.05)
        time.sleep(0.3)                                   # anything extra would have come by now
        with lock:
            for p in plain:                              # every policy: every batch, once
                assert sorted(p) == list(range(1, N + 1)) and set(p.values()) == {1}
            both = shared[0] + shared[1]                 # the ingest share: all, once, split
            assert sorted(both) == list(range(1, N + 1)) and set(both.values()) == {1}
            assert shared[0] and shared[1], "one share got nothing: the subscription was not shared"
        assert all(c.counters.get("mqtt_unmatched_messages") == 0 for c in clients)
    finally:
        for c in clients:
            c.stop()
        broker.stop()
        import shutil
        shutil.rmtree(run, ignore_errors=True)
