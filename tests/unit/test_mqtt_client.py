"""The MQTT client's own network loop (used by the endpoint agent): reconnect backoff."""
from __future__ import annotations

import socket
import threading

import pytest

from vigil.common import MqttConfig
from vigil.mqtt import MqttClient

pytestmark = pytest.mark.unit


class RecordingStop(threading.Event):
    """The loop's stop event: records each backoff wait and returns at once; stops after ``n``."""

    def __init__(self, n: int):
        super().__init__()
        self.waits: list[float] = []
        self.n = n

    def wait(self, timeout=None):
        self.waits.append(timeout)
        if len(self.waits) >= self.n:
            self.set()
        return self.is_set()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                       # nothing listens: every connect is refused at once
    return port


def test_reconnect_backoff_doubles_up_to_the_maximum():
    cfg = MqttConfig(host="127.0.0.1", port=closed_port(), reconnect_min=1, reconnect_max=8)
    c = MqttClient(cfg, "backoff-test", loop_timeout=0.1)
    stop = RecordingStop(6)
    c._stopping = stop
    c._network_loop()
    assert stop.waits == [1, 2, 4, 8, 8, 8]


def test_a_successful_connack_resets_the_backoff():
    cfg = MqttConfig(host="127.0.0.1", port=closed_port(), reconnect_min=1, reconnect_max=30)
    c = MqttClient(cfg, "backoff-reset", loop_timeout=0.1)
    c._backoff = 16

    class Ok:
        is_failure = False
    c._handle_connect(c.paho, None, None, Ok(), None)
    assert c._backoff == 1
    c.paho.disconnect()
