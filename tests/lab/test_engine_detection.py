"""Attack tools against the engine: nmap from ``attacker`` is blocked in enforcing mode and only
reported in learning mode while ``client`` keeps working; crafted XMAS/NULL probes and an ARP
spoof (scapy in the attacker's namespace) produce events."""
from __future__ import annotations

import sys
import time

import pytest

from tests.support.engine_lab import BOTH_DATAPATHS, ClientLoop, _http, _reaches

pytestmark = pytest.mark.lab



def _engine(lab, mode: str):
    period = 0 if mode == "enforcing" else 3600
    lab.start_engine(learning={"period": period})
    lab.wait_log("engine", "mqtt: connected")


def _nmap(lab):
    return lab.run("attacker", ["nmap", "-sS", "-n", "-Pn", "-p", "1-1000", lab.ip("server")],
                   check=False, timeout=120)


@BOTH_DATAPATHS
def test_nmap_is_blocked_in_enforcing_mode_and_client_keeps_working(lab, events, datapath):
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


@BOTH_DATAPATHS
def test_nmap_is_only_reported_in_learning_mode(lab, events, datapath):
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


@BOTH_DATAPATHS
def test_crafted_xmas_and_null_probes_produce_events(lab, events, datapath):
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
