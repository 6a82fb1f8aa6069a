"""A fleet of simulated engines against one real manager: ingest rate, a decision's spread, CPU, RSS.

For FLEET (1,000) simulated engines and, in the same run, a BASE fleet (10) as the baseline, this
starts a fresh lab broker, InfluxDB and vigil-manager (ingest + policy), connects the engines
(``vigil.lab.simfleet``: real MQTT clients in this process, publishing flow batches of RECORDS
records every FLOW_INTERVAL seconds and retained statuses, applying the manager's signed rule sets
in memory) and measures:

- flow-batch ingest: batches/s the manager ingested over WINDOW seconds of steady traffic (what
  the fleet offers: one batch per engine per FLOW_INTERVAL, the engine's default 10 s), and its
  ceiling: the manager is stopped (SIGSTOP) for STALL seconds while the fleet publishes, and the
  rate at which it catches up on the queued batches after SIGCONT is the most it can ingest here;
- a global decision's spread: TRIALS operator decisions (``decisions.add`` on the control socket),
  for each the seconds until every engine applied a rule set holding it; p50/p95/max over all
  engines and trials (goal: p95 <= 2 s);
- the manager's CPU (share of one core, from /proc/<pid>/stat over the window; also per ingested
  batch, which depends less on what else runs on the machine) and RSS at the end.

Each figure is printed with its ratio to the BASE fleet's.  Run as root:
``.venv/bin/python bench/fleet_scale.py`` (FLEET, BASE, FLOW_INTERVAL, RECORDS, WINDOW, TRIALS in the
environment).  The simulated fleet runs on the same 2 cores as the manager and the broker.
"""
from __future__ import annotations

import os
import signal
import time

from vigil.control import call
from vigil.lab.lab import Lab
from vigil.lab.simfleet import SimFleet, percentile

FLEET = int(os.environ.get("FLEET", "1000"))
BASE = int(os.environ.get("BASE", "10"))
FLOW_INTERVAL = float(os.environ.get("FLOW_INTERVAL", "10"))
STALL = float(os.environ.get("STALL", "15"))
RECORDS = int(os.environ.get("RECORDS", "5"))
WINDOW = float(os.environ.get("WINDOW", "20"))
TRIALS = int(os.environ.get("TRIALS", "3"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for ln in open(f"/proc/{pid}/status"):
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return float("nan")


def measure(n: int, name: str) -> dict:
    lab = Lab(name)
    fleet = None
    try:
        lab.up()
        pub = lab.run_dir / "signing.pub"
        sock = lab.run_dir / "manager.sock"
        mgr = lab.start_manager(policy={"public_key_file": str(pub)}, log={"level": "WARNING"})
        deadline = time.monotonic() + 20
        while not (pub.exists() and sock.exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        fleet = SimFleet("127.0.0.1", lab.mosquitto.port, n, public_key_file=pub, prefix="f",
                         flow_interval=FLOW_INTERVAL, records=RECORDS, status_interval=30)
        t = time.monotonic()
        fleet.start(connect_timeout=120)
        connect_s = time.monotonic() - t
        fleet.publishing.set()
        got = fleet.wait_all(lambda e: e.generation is not None, 120)
        if got < n:
            raise RuntimeError(f"only {got} of {n} engines got a rule set")
        time.sleep(min(5.0, 2 * FLOW_INTERVAL))          # steady state

        def ingested() -> int:
            return call(sock, "manager.status")["counters"].get("flow_batches_ingested", 0)
        c0, i0, p0, t0 = cpu_seconds(mgr.pid), ingested(), fleet.tally["flow_batches_published"], time.monotonic()
        time.sleep(WINDOW)
        c1, i1, p1, t1 = cpu_seconds(mgr.pid), ingested(), fleet.tally["flow_batches_published"], time.monotonic()
        window = t1 - t0

        # the ceiling: stop the manager, let the broker queue, and time the catching up
        os.kill(mgr.pid, signal.SIGSTOP)
        time.sleep(STALL)
        target = fleet.tally["flow_batches_published"]
        os.kill(mgr.pid, signal.SIGCONT)
        s0, ts = ingested(), time.monotonic()
        s1 = s0
        while time.monotonic() - ts < 120:
            s1 = ingested()
            if s1 >= target:
                break
            time.sleep(0.1)
        # meaningful only with a backlog worth the name (a 10-engine fleet queues a handful)
        drain = (s1 - s0) / max(1e-3, time.monotonic() - ts) if target - s0 >= 200 else float("nan")
        time.sleep(2.0)

        spreads: list[float] = []
        incomplete = 0
        for k in range(TRIALS):
            value = f"192.0.2.{10 + k}"
            sp = fleet.decision_spread(lambda v=value: call(sock, "decisions.add", scope="ip", value=v,
                                                             duration=600, reason="bench"), value, timeout=60)
            incomplete += n - len(sp)
            spreads += sp
            time.sleep(1.0)
        return {"n": n, "connect_s": connect_s, "offered": (p1 - p0) / window, "ingested": (i1 - i0) / window,
                "cpu": (c1 - c0) / window * 100, "rss": rss_mb(mgr.pid), "drain": drain,
                "cpu_ms": (c1 - c0) * 1000 / max(1, i1 - i0), "load": os.getloadavg()[0],
                "p50": percentile(spreads, 0.5), "p95": percentile(spreads, 0.95),
                "max": max(spreads) if spreads else float("nan"), "incomplete": incomplete}
    finally:
        if fleet is not None:
            fleet.stop()
        lab.down()


def main() -> None:
    print(f"fleet {FLEET} vs baseline {BASE} simulated engines; a batch of {RECORDS} records every "
          f"{FLOW_INTERVAL:g} s per engine; {WINDOW:g} s window; {TRIALS} decisions")
    base = measure(BASE, "bfleet-b")
    big = measure(FLEET, "bfleet-f")
    rows = [
        ("flow batches ingested /s", "ingested", "{:,.1f}"),
        ("  (offered by the fleet /s)", "offered", "{:,.1f}"),
        ("ingest ceiling, batches/s", "drain", "{:,.1f}"),
        ("decision spread p50 (s)", "p50", "{:.3f}"),
        ("decision spread p95 (s)", "p95", "{:.3f}"),
        ("decision spread max (s)", "max", "{:.3f}"),
        ("manager CPU (% of a core)", "cpu", "{:.1f}"),
        ("manager CPU per batch (ms)", "cpu_ms", "{:.2f}"),
        ("manager RSS (MB)", "rss", "{:.1f}"),
        ("fleet connect time (s)", "connect_s", "{:.2f}"),
        ("machine load average (1 min)", "load", "{:.1f}"),
    ]
    print(f"{'figure':30} {'baseline ' + str(BASE):>14} {'fleet ' + str(FLEET):>14} {'ratio':>8}")
    for label, key, fmt in rows:
        b, f = base[key], big[key]
        ratio = f / b if b else float("nan")
        print(f"{label:30} {fmt.format(b):>14} {fmt.format(f):>14} {ratio:>8.2f}")
    if big["incomplete"] or base["incomplete"]:
        print(f"decisions that did not reach every engine within 60 s: baseline {base['incomplete']}, "
              f"fleet {big['incomplete']} engine-trials")
    print(f"ingest ceiling of the {FLEET}-engine run: {big['drain']:,.1f} batches/s = "
          f"{big['drain'] / big['offered']:.2f}x what the fleet offers ({big['offered']:,.1f}/s)")
    goal = "met" if big["p95"] <= 2.0 else "NOT met"
    print(f"goal p95 <= 2 s for {FLEET} engines: {goal} ({big['p95']:.2f} s)")


if __name__ == "__main__":
    main()
