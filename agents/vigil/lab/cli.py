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


def demo(args) -> int:
    lab = Lab(args.name)
    print(f"== building the lab '{args.name}' (namespaces {', '.join(lab.topo.namespaces())})")
    lab.up()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        print(f"== Mosquitto on 127.0.0.1:{lab.mosquitto.port}, InfluxDB at {lab.influx.url}")
        lab.start_manager()
        lab.start_engine()
        lab.wait_log("engine", "mqtt: connected")
        lab.wait_log("manager", "mqtt: connected")
        print("== vigil-manager and vigil-engine are running (engine in its namespace, on br0)")
        www = lab.run_dir / "www"
        www.mkdir(exist_ok=True)
        (www / "index.bin").write_bytes(os.urandom(4 * 1024 * 1024))
        lab.popen("server", ["python3", "-m", "http.server", "80", "--bind", lab.ip("server"),
                             "--directory", str(www)], name="http")
        srv = lab.popen("server", ["iperf3", "-s", "-1", "-B", lab.ip("server")], name="iperf3-server")
        time.sleep(0.5)
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
        print("\n== engines (vigilctl engines)")
        subprocess.run([sys.executable, "-m", "vigil.cli.vigilctl", "--socket", str(lab.run_dir / "manager.sock"),
                        "engines"], check=False)
        ok = abs(http_rec / curl_bytes - 1) < 0.05 and abs(iperf_rec / iperf["bytes"] - 1) < 0.05
        print("\n== result:", "OK — traffic through the bridge was measured in the kernel and recorded"
              if ok else "MISMATCH — see the logs under " + str(lab.run_dir / "logs"))
        if args.keep:
            print(f"\nThe lab stays up. Try:\n  ip netns exec {lab.ns('client')} curl http://{lab.ip('server')}/\n"
                  f"  vigilctl --socket {lab.run_dir / 'manager.sock'} engines\n"
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
