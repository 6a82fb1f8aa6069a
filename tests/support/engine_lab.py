"""The engine lab tests' common parts: the engine's events as a subscriber sees them, the
client's request loop and bursts beside every attack, the server's HTTP service."""
from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from vigil import payload

# the same attack against both flow datapaths (the ``datapath`` fixture of tests/lab/conftest.py)
BOTH_DATAPATHS = pytest.mark.parametrize("datapath", ["conntrack", "flowset"], indirect=True)


class Events:
    def __init__(self, port: int, engine: str = "e1"):
        self.items: list[dict] = []
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{time.monotonic_ns()}",
                             protocol=paho.MQTTv5)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"vigil/v1/engine/{engine}/events", qos=1)
        self.c.loop_start()

    def _on(self, client, userdata, msg):
        doc = payload.decode(msg.payload, "events")
        with self.lock:
            self.items.extend(doc["events"])

    def find(self, **match) -> list[dict]:
        with self.lock:
            return [e for e in self.items if all(e.get(k) == v for k, v in match.items())]

    def wait(self, timeout: float = 10.0, **match) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.find(**match)
            if got:
                return got
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"no event {match}; got {self.items}")

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _reaches(lab, host: str, port: int = 8080) -> bool:
    r = lab.run(host, ["curl", "-sS", "-o", "/dev/null", "--max-time", "1", f"http://{lab.ip('server')}:{port}/"],
                check=False)
    return r.returncode == 0


class ClientLoop(threading.Thread):
    """The client fetches from the server every 50 ms; every failure is kept."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab, self.ok, self.failed, self.stop = lab, 0, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            if _reaches(self.lab, "client"):
                self.ok += 1
            else:
                self.failed.append(time.time())
            time.sleep(0.05)


def _http(lab):
    lab.popen("server", ["python3", "-m", "http.server", "8080", "--bind", lab.ip("server")], name="http")
    deadline = time.monotonic() + 10
    while not _reaches(lab, "client"):
        assert time.monotonic() < deadline, "http server did not come up"
        time.sleep(0.1)


class Bursts(threading.Thread):
    """Every 5 s, ten parallel downloads from the client; once (``iperf``), a 20 s iperf3 run."""

    def __init__(self, lab, iperf: bool = True):
        super().__init__(daemon=True)
        self.lab, self.stop, self.failed, self.rounds = lab, threading.Event(), [], 0
        self.iperf = iperf

    def run(self):
        url = f"http://{self.lab.ip('server')}:8080/"
        iperf_done = not self.iperf
        while not self.stop.is_set():
            r = self.lab.run("client", ["curl", "-sS", "--parallel", "--parallel-max", "10", "--max-time", "5",
                                        *[x for i in range(10) for x in ("-o", "/dev/null", f"{url}?p={i}")]],
                             check=False, timeout=20)
            if r.returncode != 0:
                self.failed.append((time.time(), r.stderr[-300:]))
            self.rounds += 1
            if not iperf_done and self.rounds == 3:
                iperf_done = True
                r = self.lab.run("client", ["iperf3", "-c", self.lab.ip("server"), "-t", "20", "-b", "200M"],
                                 check=False, timeout=40)
                if r.returncode != 0:
                    self.failed.append((time.time(), "iperf3: " + r.stderr[-300:]))
            self.stop.wait(5.0)
