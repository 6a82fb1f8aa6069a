"""Attack tools against the engine: nmap from ``attacker`` is blocked in enforcing mode and only
reported in learning mode while ``client`` keeps working; crafted XMAS/NULL probes and an ARP
spoof (scapy in the attacker's namespace) produce events."""
from __future__ import annotations

import sys
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from vigil import payload

pytestmark = pytest.mark.lab


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


@pytest.fixture
def events(lab):
    ev = Events(lab.mosquitto.port)
    try:
        yield ev
    finally:
        ev.close()


def _engine(lab, mode: str):
    period = 0 if mode == "enforcing" else 3600
    lab.start_engine(learning={"period": period})
    lab.wait_log("engine", "mqtt: connected")


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


def _nmap(lab):
    return lab.run("attacker", ["nmap", "-sS", "-n", "-Pn", "-p", "1-1000", lab.ip("server")],
                   check=False, timeout=120)


def _http(lab):
    lab.popen("server", ["python3", "-m", "http.server", "8080", "--bind", lab.ip("server")], name="http")
    deadline = time.monotonic() + 10
    while not _reaches(lab, "client"):
        assert time.monotonic() < deadline, "http server did not come up"
        time.sleep(0.1)


def test_nmap_is_blocked_in_enforcing_mode_and_client_keeps_working(lab, events):
    _engine(lab, "enforcing")
    _http(lab)
    assert _reaches(lab, "attacker")
    client = ClientLoop(lab)
    client.start()
    try:
        time.sleep(1.0)
        # once blocked, nmap waits out its retransmissions for every dropped port (minutes):
        # run it in the background and stop it after the decision
        lab.popen("attacker", ["nmap", "-sS", "-n", "-Pn", "-p", "1-1000", lab.ip("server")], name="nmap")
        (ev,) = events.wait(type="scan")
        lab.stop("nmap")
        assert ev["action"] == "block" and ev["src"] == lab.ip("attacker") and ev["mode"] == "enforcing"
        assert ev["distinct_ports"] >= 25 and ev["success_ratio"] <= 0.2
        # the kernel now drops the attacker, both for new scans and for ordinary requests
        assert not _reaches(lab, "attacker")
        time.sleep(1.0)
    finally:
        client.stop.set()
        client.join(5)
    assert client.ok >= 10 and client.failed == [], (client.ok, client.failed)
    assert not events.find(src=lab.ip("client"))
    assert _reaches(lab, "client")


def test_nmap_is_only_reported_in_learning_mode(lab, events):
    _engine(lab, "learning")
    _http(lab)
    _nmap(lab)
    (ev,) = events.wait(type="scan")
    assert ev["action"] == "would-block" and ev["src"] == lab.ip("attacker") and ev["mode"] == "learning"
    time.sleep(0.5)
    assert _reaches(lab, "attacker"), "learning mode must not enforce"
    assert not events.find(action="block")


SCAPY = [sys.executable, "-c"]


def _scapy(lab, code: str):
    lab.run("attacker", [*SCAPY, "import logging; logging.getLogger('scapy').setLevel(40)\n"
                         "from scapy.all import *\nconf.verb = 0\n" + code], timeout=60)


def test_crafted_xmas_and_null_probes_produce_events(lab, events):
    _engine(lab, "learning")
    srv = lab.ip("server")
    _scapy(lab, f"send([IP(dst='{srv}')/TCP(dport=p, flags='FPU') for p in range(20, 30)])\n"
                f"send([IP(dst='{srv}')/TCP(dport=p, flags='') for p in range(20, 30)])\n"
                f"send(IP(dst='{srv}')/TCP(dport=80, flags='SF'))")
    xmas = events.wait(type="tcp-flags", detail="XMAS")[0]
    null = events.wait(type="tcp-flags", detail="NULL")[0]
    synfin = events.wait(type="tcp-flags", detail="SYN+FIN")[0]
    for e in (xmas, null, synfin):
        assert e["src"] == lab.ip("attacker") and e["dst"] == srv and e["in_port"] == "eth0"


def test_arp_spoof_produces_an_event(lab, events):
    _engine(lab, "learning")
    # the client resolves the server: the server's genuine reply crosses the bridge and is learned
    lab.run("client", ["ping", "-c", "1", "-W", "1", lab.ip("server")])
    time.sleep(0.3)
    attacker_mac = lab.topo.hosts["attacker"].mac
    _scapy(lab, f"sendp(Ether(dst='ff:ff:ff:ff:ff:ff', src='{attacker_mac}')/"
                f"ARP(op=2, psrc='{lab.ip('server')}', hwsrc='{attacker_mac}', pdst='{lab.ip('client')}'),"
                f" iface='eth0')")
    (ev,) = events.wait(type="arp-rebind")
    assert ev["ip"] == lab.ip("server") and ev["new_mac"] == attacker_mac
    assert ev["known_mac"] == lab.topo.hosts["server"].mac
