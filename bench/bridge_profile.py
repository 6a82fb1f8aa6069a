"""Benchmark companion: where the forwarding CPU goes, from kernel stacks rather than throughput.

On a shared 2-core machine iperf3's Gbit/s moves by +-20 % with other jobs; the share of CPU spent
in the bridge's forwarding path moves much less.  For each configuration of the ladder in
bridge_throughput.py this runs iperf3 through br0, records ``perf record -a -g -e cpu-clock`` in the
middle of the run, and counts samples of the iperf3 processes and ksoftirqd (forwarding over veth
runs in their softirq context):

- ``path`` = samples whose stack holds ``br_handle_frame`` (the bridge: br_netfilter, conntrack,
  every nftables chain, forwarding), per GB moved, and beneath it ``nft_do_chain_bridge``
  (bridge chains), ``nf_conntrack_in`` and ``nft_do_chain_inet``;
- ``total`` = all samples of those processes per GB; ``predicted`` = plain total / (plain total +
  this path - plain path): the throughput ratio on idle cores if only the path differs.

    sudo flock /tmp/vigil-bench.lock .venv/bin/python bench/bridge_profile.py [--seconds 12] [--ruleset N]
        [--rounds R] [--variants today,T,V1,V2,V3,V4,V5]

``--variants``: the datapaths without br_netfilter and conntrack that bridge_throughput.py writes out
(flow-set counters, a new-flow signal on a set miss, the sampling and block lookups), against the
engine's kernel state of today built the same way.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bridge_throughput as bt  # noqa: E402

COMMS = ("iperf3", "ksoftirqd")
MARKS = ("br_handle_frame", "nft_do_chain_bridge", "nf_conntrack_in", "nft_do_chain_inet", "br_nf_pre_routing")


def profile(lab, seconds: float, data: Path) -> tuple[float, dict]:
    cli = subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "iperf3", "-c", lab.ip("server"),
                            "-t", str(seconds), "-J"], stdout=subprocess.PIPE, text=True)
    time.sleep(seconds / 4)
    subprocess.run(["perf", "record", "-a", "-g", "-e", "cpu-clock", "-F", "999", "-o", str(data), "--",
                    "sleep", str(seconds / 2)], capture_output=True, check=True)
    doc = json.loads(cli.communicate()[0])
    gbps = doc["end"]["sum_received"]["bits_per_second"] / 1e9
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym"], capture_output=True,
                         text=True, check=True).stdout
    counts: collections.Counter = collections.Counter()
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].strip().startswith(COMMS):
            continue
        counts["total"] += 1
        syms = {ln.split()[-1] for ln in lines[1:] if ln.split()}
        for m in MARKS:
            if m in syms:
                counts[m] += 1
    gb = gbps / 8 * (seconds / 2)      # GB moved while perf recorded
    return gbps, {k: v / gb for k, v in counts.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--ruleset", type=int, default=0)
    ap.add_argument("--only", action="append", default=[],
                    help="keep the ladder steps whose label contains this text (repeatable; plain always)")
    ap.add_argument("--rounds", type=int, default=1, help="run the ladder this many times, alternating")
    ap.add_argument("--variants", default="",
                    help="instead of the ladder: datapath variants of bridge_throughput.py (today,T,V1,V2,V3,V4,V5), "
                         "with --ruleset N entries written straight into bridge vigil block4 (no agent)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    lab = bt.make_lab("bp")
    tmp = Path(tempfile.mkdtemp(prefix="vigil-bridge-profile-"))
    try:
        state: dict = {}
        if args.variants:
            steps = bt.variant_steps(lab, args.ruleset, args.variants.split(","))
        else:
            if args.ruleset:
                bt.load_ruleset(lab, args.ruleset)
            steps = [(label, f) for label, f in bt.ladder_steps(lab, state)
                     if not args.only or any(o in label for o in args.only)]
        steps = [("plain bridge", lambda: None)] + steps
        print(f"perf cpu-clock 999 Hz, iperf3 {args.seconds:.0f}s, rule set {args.ruleset}, "
              f"load {os.getloadavg()[0]:.2f}; samples per GB of iperf3 + ksoftirqd")
        print(f"{'configuration':46s} {'Gbit/s':>6s} {'total':>6s} {'path':>6s} {'bridge':>6s} {'brnf':>6s} "
              f"{'ct_in':>6s} {'inet':>6s} {'predicted':>9s}")
        base = None
        for label, setup in [st for _ in range(args.rounds) for st in steps]:
            state.clear()
            bt.make_plain(lab)
            setup()
            gbps, c = profile(lab, args.seconds, tmp / "perf.data")
            if "pid" in state and state["stopped"]:
                os.kill(state["pid"], signal.SIGCONT)
            if label == "plain bridge":
                base = c
            pred = base["total"] / (base["total"] + c.get("br_handle_frame", 0) - base.get("br_handle_frame", 0))
            print(f"{label:46s} {gbps:6.2f} {c['total']:6.0f} {c.get('br_handle_frame', 0):6.0f} "
                  f"{c.get('nft_do_chain_bridge', 0):6.0f} {c.get('br_nf_pre_routing', 0):6.0f} "
                  f"{c.get('nf_conntrack_in', 0):6.0f} {c.get('nft_do_chain_inet', 0):6.0f} {pred:9.3f}"
                  f"   (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        if bt.RULESET.get("pub") is not None:
            bt.RULESET["pub"].close()
        lab.down()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
