"""vigil.mqtt.MqttClient with ``loop_timeout`` (its own network thread running paho's ``loop``)
against a real Mosquitto: a publish from another thread goes out at once, keepalive pings keep an
idle link up, the link comes back after a broker restart, and ``stop`` is prompt.  About 15 s."""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from vigil.common import MqttConfig
from vigil.config import from_dict
from vigil.lab.services import Mosquitto
from vigil.mqtt import MqttClient

pytestmark = pytest.mark.integration


def test_own_network_loop_publishes_at_once_keeps_alive_and_reconnects():
    run = Path("/run/vigil-endpoint-tests") / f"mq{uuid.uuid4().hex[:6]}"
    run.mkdir(parents=True)
    run.chmod(0o755)
    brokers = [Mosquitto(run).start()]
    a = b = None
    try:
        cfg = from_dict({"host": "127.0.0.1", "port": brokers[0].port, "keepalive": 5,
                         "reconnect_max": 2}, MqttConfig)
        a = MqttClient(cfg, f"own-loop-{run.name}", loop_timeout=1.25)
        b = MqttClient(cfg, f"paho-loop-{run.name}")
        got = []
        b.subscribe("vigil-test/x", lambda m: got.append(time.monotonic()))
        a.start()
        b.start()
        assert a.wait_connected(5) and b.wait_connected(5)
        time.sleep(1.5)                          # the loop is asleep in select() now
        lat = []
        for i in range(10):
            t = time.monotonic()
            a.publish("vigil-test/x", b"x")
            deadline = t + 1.0
            while len(got) <= i and time.monotonic() < deadline:
                time.sleep(0.001)
            assert len(got) > i, "a publish waited for the loop timeout"
            lat.append(got[i] - t)
            time.sleep(0.3)
        assert max(lat) < 0.5                    # woken by paho's socket pair, not after 1.25 s
        time.sleep(8)                            # > 1.5 x keepalive idle: only pings keep the link
        assert a.connected.is_set() and a.counters.get("mqtt_disconnects") == 0
        assert a.publish_wait("vigil-test/x", b"y", timeout=2)
        brokers[0].proc.stop()
        deadline = time.monotonic() + 5
        while a.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not a.connected.is_set()
        brokers.append(Mosquitto(run, port=brokers[0].port).start())
        assert a.wait_connected(10) and a.counters.get("mqtt_connects") == 2
        thread = a._thread
        t = time.monotonic()
        a.stop()
        assert time.monotonic() - t < 1 and not thread.is_alive()
    finally:
        for c in (a, b):
            if c is not None:
                c.stop()
        for m in brokers:
            m.proc.stop()
        shutil.rmtree(run, ignore_errors=True)
