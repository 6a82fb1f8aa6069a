"""One stand-in for ``vigil.mqtt.MqttClient`` in unit tests (no broker, no network).

``FakeMqtt`` records every publish as a ``Sent`` (topic, bytes, qos, retain, properties and the
``Info`` a caller may wait on), keeps every subscriber per topic filter as the real client does
(``subscribe`` and the typed ``subscribe_kind``), and ``deliver(topic, data)`` hands a message to
each subscriber whose filter matches (MQTT wildcards; a ``$share/<group>/`` prefix is matched
without it), decoding it for typed subscribers and counting what does not decode as the real
client does (``counters``).

``Info.acked`` is True at once unless ``FakeMqtt(auto_ack=False)``: then a test acknowledges a
publish itself (``sent[i].info.acked = True``) to play a broker's PUBACK.  ``connected`` is an
Event, set unless ``FakeMqtt(connected=False)``.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import paho.mqtt.client as paho

from vigil.contracts.envelope import PayloadError
from vigil.counters import Counters


class Info:
    """What paho's ``publish`` returns, as far as Vigil uses it."""

    def __init__(self, acked: bool):
        self.rc = paho.MQTT_ERR_SUCCESS
        self.acked = acked

    def is_published(self) -> bool:
        return self.acked

    def wait_for_publish(self, timeout: float | None = None) -> None:
        return None


@dataclass
class Sent:
    topic: str
    data: bytes
    qos: int = 1
    retain: bool = False
    properties: Any = None
    info: Info = field(default_factory=lambda: Info(True))

    def json(self) -> Any:
        return json.loads(self.data)


def message(topic: str, data: bytes, properties: Any = None) -> paho.MQTTMessage:
    m = paho.MQTTMessage(topic=topic.encode())
    m.payload = data
    if properties is not None:
        m.properties = properties
    return m


class FakeMqtt:
    def __init__(self, connected: bool = True, auto_ack: bool = True):
        self.sent: list[Sent] = []
        self.subscriptions: list[tuple[str, Callable[[paho.MQTTMessage], None], int]] = []
        self.connected = threading.Event()
        if connected:
            self.connected.set()
        self.auto_ack = auto_ack
        self.counters = Counters()

    # -- the MqttClient surface ----------------------------------------------------------------
    def subscribe(self, topic_filter: str, handler: Callable[[paho.MQTTMessage], None], qos: int = 1) -> None:
        self.subscriptions.append((topic_filter, handler, qos))

    def subscribe_kind(self, topic_filter: str, kind: type, handler: Callable[[paho.MQTTMessage, Any], None],
                       qos: int = 1) -> None:
        def typed(msg: paho.MQTTMessage) -> None:
            if not msg.payload:
                return
            try:
                obj = kind.decode(msg.payload)
            except PayloadError as exc:
                self.counters.inc("payload_rejected")
                self.counters.inc(f"payload_rejected_{exc.reason}")
                return
            handler(msg, obj)
        self.subscriptions.append((topic_filter, typed, qos))

    def publish(self, topic: str, data: bytes, qos: int = 1, retain: bool = False, properties: Any = None) -> Info:
        s = Sent(topic, bytes(data), qos, retain, properties, Info(self.auto_ack))
        self.sent.append(s)
        return s.info

    def publish_wait(self, topic: str, data: bytes, qos: int = 1, retain: bool = False, timeout: float = 5.0,
                     properties: Any = None) -> bool:
        if not self.connected.is_set():
            return False
        return self.publish(topic, data, qos, retain, properties).is_published()

    def defer_ack(self) -> Callable[[], None]:
        """Like MqttClient.defer_ack: the test sees how many acks were deferred and released."""
        self.acks_deferred = getattr(self, "acks_deferred", 0) + 1

        def release() -> None:
            self.acks_released = getattr(self, "acks_released", 0) + 1
        return release

    # -- for the test --------------------------------------------------------------------------
    @property
    def filters(self) -> list[str]:
        return [f for f, _, _ in self.subscriptions]

    def deliver(self, topic: str, data: bytes, properties: Any = None, retain: bool = False) -> int:
        """Hand one message to every matching subscriber; returns how many received it."""
        n = 0
        for topic_filter, handler, _ in list(self.subscriptions):
            if topic_filter.startswith("$share/"):
                topic_filter = topic_filter.split("/", 2)[2]
            if paho.topic_matches_sub(topic_filter, topic):
                msg = message(topic, data, properties)
                msg.retain = retain
                handler(msg)
                n += 1
        return n

    def on(self, topic_prefix: str) -> list[Sent]:
        """What was published on topics starting with ``topic_prefix``, oldest first."""
        return [s for s in self.sent if s.topic.startswith(topic_prefix)]

    def last(self, topic: str) -> bytes | None:
        for s in reversed(self.sent):
            if s.topic == topic:
                return s.data
        return None
