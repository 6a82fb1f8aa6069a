"""The lab topology of DESIGN.md, built with pyroute2 in network namespaces.

::

    client 10.77.0.2 ──┐
                       ├── sw0 (ns <p>-sw, the outside segment) ── eth0 ─ br0 ─ eth1 ── server 10.77.0.10
    attacker 10.77.0.66┘                                     (ns <p>-engine, no address)

With ``engines=2`` a second engine bridges the same outside segment to ``server2`` (10.77.0.11).
Every namespace name starts with the lab's prefix, so several labs (parallel test runs) can
coexist, and teardown finds everything a crashed run left by that prefix alone.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

log = logging.getLogger(__name__)

SUBNET4 = ipaddress.ip_network("10.77.0.0/24")
SUBNET6 = ipaddress.ip_network("fd00:77::/64")


@dataclass(frozen=True)
class Host:
    name: str
    ip4: str
    ip6: str
    mac: str


@dataclass
class Topology:
    prefix: str = "vl"
    engines: int = 1
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self):
        if not self.hosts:
            self.hosts = {
                "client": Host("client", "10.77.0.2", "fd00:77::2", "02:77:00:00:00:02"),
                "attacker": Host("attacker", "10.77.0.66", "fd00:77::66", "02:77:00:00:00:66"),
                "server": Host("server", "10.77.0.10", "fd00:77::10", "02:77:00:00:00:10"),
            }
            if self.engines >= 2:
                self.hosts["server2"] = Host("server2", "10.77.0.11", "fd00:77::11", "02:77:00:00:00:11")
        if not 1 <= self.engines <= 2:
            raise ValueError("engines must be 1 or 2")

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    @property
    def engine_nodes(self) -> list[str]:
        return ["engine"] if self.engines == 1 else ["engine", "engine2"]

    def server_of(self, engine_node: str) -> str:
        return "server" if engine_node == "engine" else "server2"

    def namespaces(self) -> list[str]:
        return [self.ns(n) for n in ["sw", *self.engine_nodes, *self.hosts]]

    # -- build / destroy --------------------------------------------------------------------
    def up(self) -> None:
        self.down()
        for name in self.namespaces():
            netns.create(name)
        for name in self.namespaces():
            _sysctl(name, "net.ipv4.ip_forward", "0")
            _link_up_lo(name)
        with IPRoute(netns=self.ns("sw")) as ip:
            ip.link("add", ifname="sw0", kind="bridge", br_stp_state=0, br_forward_delay=0)
            ip.link("set", index=ip.link_lookup(ifname="sw0")[0], state="up")
        _sysctl(self.ns("sw"), "net.ipv6.conf.sw0.disable_ipv6", "1")
        # hosts on the outside segment
        for h in ("client", "attacker"):
            self._veth(self.ns(h), "eth0", self.ns("sw"), f"to-{h}", master="sw0")
            self._address(h)
        for eng in self.engine_nodes:
            ens = self.ns(eng)
            with IPRoute(netns=ens) as ip:
                ip.link("add", ifname="br0", kind="bridge", br_stp_state=0, br_forward_delay=0)
            _sysctl(ens, "net.ipv6.conf.br0.disable_ipv6", "1")
            self._veth(ens, "eth0", self.ns("sw"), f"to-{eng}", master_a="br0", master="sw0")
            srv = self.server_of(eng)
            self._veth(ens, "eth1", self.ns(srv), "eth0", master_a="br0")
            self._address(srv)
            with IPRoute(netns=ens) as ip:
                ip.link("set", index=ip.link_lookup(ifname="br0")[0], state="up")
        self._wait_dad()

    def down(self) -> None:
        existing = set(netns.listnetns())
        for name in existing:
            if name == self.ns("sw") or name.startswith(self.prefix + "-"):
                _kill_netns_pids(name)
                try:
                    netns.remove(name)
                except OSError as exc:
                    log.warning("lab: cannot remove netns %s: %s", name, exc)

    def exists(self) -> bool:
        return self.ns("sw") in netns.listnetns()

    # -- helpers ----------------------------------------------------------------------------
    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str,
              master_a: str | None = None, master: str | None = None) -> None:
        tmp_a, tmp_b = f"vt{os.getpid() % 10000}a{_seq()}", f"vt{os.getpid() % 10000}b{_seq()}"
        with IPRoute() as ip:
            ip.link("add", ifname=tmp_a, kind="veth", peer={"ifname": tmp_b})
            ip.link("set", index=ip.link_lookup(ifname=tmp_a)[0], net_ns_fd=ns_a)
            ip.link("set", index=ip.link_lookup(ifname=tmp_b)[0], net_ns_fd=ns_b)
        for ns, tmp, final, br in ((ns_a, tmp_a, name_a, master_a), (ns_b, tmp_b, name_b, master)):
            with IPRoute(netns=ns) as ip:
                idx = ip.link_lookup(ifname=tmp)[0]
                ip.link("set", index=idx, ifname=final)
                if br:
                    ip.link("set", index=idx, master=ip.link_lookup(ifname=br)[0])
                ip.link("set", index=idx, state="up")

    def _address(self, host: str) -> None:
        h = self.hosts[host]
        ns = self.ns(host)
        with IPRoute(netns=ns) as ip:
            idx = ip.link_lookup(ifname="eth0")[0]
            ip.link("set", index=idx, state="down")
            ip.link("set", index=idx, address=h.mac)
            ip.link("set", index=idx, state="up")
            ip.addr("add", index=idx, address=h.ip4, prefixlen=SUBNET4.prefixlen)
            ip.addr("add", index=idx, address=h.ip6, prefixlen=SUBNET6.prefixlen)
        # no duplicate-address detection delay on a lab segment
        _sysctl(ns, "net.ipv6.conf.eth0.accept_dad", "0")

    def _wait_dad(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for h in self.hosts:
            while time.monotonic() < deadline:
                out = subprocess.run(["ip", "-n", self.ns(h), "-6", "addr", "show", "tentative"],
                                     capture_output=True, text=True).stdout
                if "tentative" not in out:
                    break
                time.sleep(0.05)


_counter = 0


def _seq() -> int:
    global _counter
    _counter += 1
    return _counter


def _link_up_lo(ns: str) -> None:
    with IPRoute(netns=ns) as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")


def _sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"],
                   check=True, capture_output=True)


def _kill_netns_pids(name: str) -> None:
    """Kill every process inside a namespace (left by a crashed run), TERM then KILL."""
    import signal
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 1.0)):
        pids = _netns_pids(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _netns_pids(name):
            time.sleep(0.05)


def _netns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]

