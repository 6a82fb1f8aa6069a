"""vigil-lab: bring the lab up, run the demo, tear it down.

    vigil-lab demo [--keep]   build the lab, run Vigil, make traffic, show what was recorded
    vigil-lab down [--name N] remove a lab (also one a killed run left behind)
    vigil-lab clean           remove every lab under the run root
    vigil-lab status          list labs present on this machine
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from ..daemon import setup_logging
from .lab import DEFAULT_RUN_ROOT, Lab


def _wait(lab: Lab, q: str, want: float, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    got = 0.0
    while time.monotonic() < deadline:
        rows = lab.influx.query(q)
        got = float(rows[0]["sum"]) if rows and rows[0].get("sum") is not None else 0.0
        if got >= want * 0.95:
            break
        time.sleep(0.5)
    return got


def _vigilctl(lab: Lab, *args: str, as_json: bool = False):
    argv = [sys.executable, "-m", "vigil.cli.vigilctl", "--socket", str(lab.run_dir / "manager.sock")]
    if as_json:
        r = subprocess.run([*argv, "--json", *args], capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else None
    subprocess.run([*argv, *args], check=False, timeout=30)
    return None


def _reaches(lab: Lab, host: str) -> bool:
    r = lab.run(host, ["curl", "-s", "-o", "/dev/null", "-m", "1", f"http://{lab.ip('server')}/"], check=False)
    return r.returncode == 0


def _kernel_set(lab: Lab, name: str) -> list[str]:
    r = lab.run("engine", ["nft", "-j", "list", "set", "bridge", "vigil", name], check=False)
    out = []
    for item in json.loads(r.stdout or "{}").get("nftables", []) if r.returncode == 0 else []:
        for el in (item.get("set") or {}).get("elem", []) or []:
            v = el.get("elem", {}).get("val") if isinstance(el, dict) else el
            out.append(str(v))
    return out


def _until(pred, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return None


def demo(args) -> int:
    lab = Lab(args.name)
    print(f"== building the lab '{args.name}' (namespaces {', '.join(lab.topo.namespaces())})")
    lab.up()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        print(f"== Mosquitto on 127.0.0.1:{lab.mosquitto.port}, InfluxDB at {lab.influx.url}")
        lab.start_manager(policy={"ladder": [60, 600, 3600]})
        lab.wait_log("manager", "mqtt: connected")
        key = lab.run_dir / "state" / "manager" / "signing.pub"
        lab.start_engine(learning={"period": args.learning},
                         enforcement={"manager_public_key": str(key)})
        lab.wait_log("engine", "mqtt: connected")
        print(f"== vigil-manager and vigil-engine are running (engine in its namespace on br0, learning "
              f"for {args.learning:.0f} s of traffic time, then enforcing)")
        www = lab.run_dir / "www"
        www.mkdir(exist_ok=True)
        (www / "index.bin").write_bytes(os.urandom(4 * 1024 * 1024))
        lab.popen("server", ["python3", "-m", "http.server", "80", "--bind", lab.ip("server"),
                             "--directory", str(www)], name="http")
        srv = lab.popen("server", ["iperf3", "-s", "-1", "-B", lab.ip("server")], name="iperf3-server")
        time.sleep(0.5)
        # normal background traffic: the client browses the server all the time
        lab.popen("client", ["sh", "-c", f"while true; do curl -s -o /dev/null http://{lab.ip('server')}/; "
                                         "sleep 0.5; done"], name="browsing")
        r = lab.run("client", ["curl", "-sS", "--retry", "5", "--retry-connrefused", "-o", "/dev/null",
                               "-w", "%{size_download}", f"http://{lab.ip('server')}/index.bin"])
        curl_bytes = int(r.stdout)
        print(f"== client curl http://{lab.ip('server')}/index.bin through br0: {curl_bytes} bytes")
        r = lab.run("client", ["iperf3", "-c", lab.ip("server"), "-t", str(args.seconds), "-J"],
                    timeout=args.seconds + 30)
        iperf = json.loads(r.stdout)["end"]["sum_sent"]
        srv.proc.wait(10)
        print(f"== client iperf3 -t {args.seconds} through br0: {iperf['bytes']} bytes, "
              f"{iperf['bits_per_second'] / 1e9:.2f} Gbit/s")
        http_rec = _wait(lab, "SELECT sum(resp_bytes) FROM service_traffic WHERE port='80'", curl_bytes)
        iperf_rec = _wait(lab, "SELECT sum(orig_bytes) FROM service_traffic WHERE port='5201'", iperf["bytes"])
        print("\n== what the manager stored in InfluxDB (measurement service_traffic, engine e1)")
        print(f"{'service':<12}{'tool reported':>16}{'InfluxDB':>16}{'ratio':>9}")
        for name, tool, rec in (("tcp/80 down", curl_bytes, http_rec), ("tcp/5201 up", iperf["bytes"], iperf_rec)):
            print(f"{name:<12}{tool:>16,}{rec:>16,.0f}{rec / tool if tool else 0:>9.4f}")
        recorded = abs(http_rec / curl_bytes - 1) < 0.05 and abs(iperf_rec / iperf["bytes"] - 1) < 0.05

        print("\n== waiting for the engine to finish learning")
        enforcing = _until(lambda: any(e.get("mode") == "enforcing" for e in _vigilctl(lab, "engines", as_json=True) or []),
                           args.learning * 4 + 30)
        _vigilctl(lab, "engines")
        print(f"\n== attacker: nmap -sS -p 1-1000 {lab.ip('server')}")
        t0 = time.monotonic()
        lab.run("attacker", ["nmap", "-sS", "-n", "-Pn", "-T4", "-p", "1-1000", lab.ip("server")], timeout=120,
                check=False)
        attacker = lab.ip("attacker")
        blocked = _until(lambda: attacker in _kernel_set(lab, "local4") + _kernel_set(lab, "block4"), 15, 0.2)
        print(f"== attacker {attacker} in the engine's kernel drop sets after "
              f"{time.monotonic() - t0:.1f} s: local4={_kernel_set(lab, 'local4')} block4={_kernel_set(lab, 'block4')}")
        _until(lambda: any(d.get("value") == attacker for d in _vigilctl(lab, "decisions", "list", as_json=True) or []), 15)
        print("\n== the manager's decisions (vigilctl decisions list)")
        _vigilctl(lab, "decisions", "list")
        attacker_cut = not _reaches(lab, "attacker")
        client_ok = _reaches(lab, "client")
        print(f"\n== attacker reaches the server: {not attacker_cut}; client reaches the server: {client_ok}")
        ok = recorded and bool(enforcing) and bool(blocked) and attacker_cut and client_ok
        print("\n== result:", "OK — traffic measured in the kernel and recorded; the scanner was blocked at "
              "the bridge while the client kept working" if ok else
              "PROBLEM — see the logs under " + str(lab.run_dir / "logs"))
        if args.keep:
            print(f"\nThe lab stays up. Try:\n  ip netns exec {lab.ns('client')} curl -sI http://{lab.ip('server')}/\n"
                  f"  vigilctl --socket {lab.run_dir / 'manager.sock'} decisions list\n"
                  f"  ip netns exec {lab.ns('engine')} nft list table bridge vigil\n"
                  f"  curl -sG {lab.influx.url}/query --data-urlencode db=vigil "
                  f"--data-urlencode \"q=SELECT * FROM engine_traffic\"\n"
                  "Ctrl-C (or SIGTERM) tears it down.")
            signal.signal(signal.SIGINT, lambda *a: stop.set())
            stop.wait()
        return 0 if ok else 1
    finally:
        print("== tearing the lab down")
        lab.down()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vigil-lab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="build the lab, run Vigil and traffic, show the recorded figures")
    d.add_argument("--name", default="vigil")
    d.add_argument("--seconds", type=int, default=5, help="iperf3 duration")
    d.add_argument("--learning", type=float, default=15.0, help="learning period, seconds of traffic time")
    d.add_argument("--keep", action="store_true", help="leave the lab up until Ctrl-C")
    dn = sub.add_parser("down", help="remove a lab and everything it started")
    dn.add_argument("--name", default="vigil")
    cl = sub.add_parser("clean", help="remove labs whose owner process is gone (a killed run's leftovers)")
    cl.add_argument("--all", action="store_true", help="also labs whose owner still runs")
    sub.add_parser("status", help="list labs on this machine")
    args = p.parse_args(argv)
    setup_logging("WARNING")
    if os.geteuid() != 0:
        print("vigil-lab: must run as root (network namespaces)", file=sys.stderr)
        return 1
    if args.cmd == "demo":
        return demo(args)
    if args.cmd == "down":
        Lab(args.name).down()
        return 0
    if args.cmd == "clean":
        for name in _labs():
            lab = Lab(name)
            if args.all or not lab.owner_alive():
                print(f"vigil-lab: removing lab {name}")
                lab.down()
        return 0
    if args.cmd == "status":
        for name in _labs():
            print(name, "(running)" if Lab(name).owner_alive() else "(stale: its owner is gone)")
        return 0
    return 2


def _labs() -> list[str]:
    from pyroute2 import netns
    names = {n.rsplit("-", 1)[0] for n in netns.listnetns() if n.endswith("-sw")}
    if DEFAULT_RUN_ROOT.is_dir():
        names |= {p.name for p in DEFAULT_RUN_ROOT.iterdir() if p.is_dir()}
    return sorted(names)


if __name__ == "__main__":
    logging.basicConfig()
    raise SystemExit(main())
