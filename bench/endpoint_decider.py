"""The decider's own cost per exec of a cached binary (issue 7 CPU budget), without MQTT.

Starts ``python -m vigil.endpoint.decider`` on a tmpfs mounted for the run, answers its first
``ask`` with ``benign`` (so further execs are cache hits), then execs the binary --n times at
--rate per second and reads the decider's on-CPU time from /proc/<pid>/task/*/schedstat.
Baseline measured in the same run: a bare Python fanotify responder (blocking read, answer, close)
on the same mount and rate — the floor any Python decider pays per event.
Run as root:  flock /tmp/vigil-bench.lock .venv/bin/python bench/endpoint_decider.py
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

BARE = r"""
import os, struct, sys
sys.path.insert(0, %r)
from vigil.endpoint import fanotify as fan
g = fan.Fanotify()
os.set_blocking(g.fd, True)
g.mark_mount(sys.argv[1], fan.FAN_OPEN_EXEC_PERM)
print("ready", flush=True)
R = struct.Struct("=iI")
M = struct.Struct("=IBBHQii")
while True:
    buf = os.read(g.fd, 4096)
    for _l, _v, _r, _m, mask, fd, pid in M.iter_unpack(buf):
        os.write(g.fd, R.pack(fd, 1))
        os.close(fd)
"""


def cpu_seconds(pid: int) -> float:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e9


def run_execs(path: str, n: int, rate: float) -> None:
    nxt = time.monotonic()
    for _ in range(n):
        pid = os.posix_spawn(path, [path], {})
        os.waitpid(pid, 0)
        nxt += 1.0 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=50.0)
    args = ap.parse_args()
    run = Path("/run/vigil-endpoint-tests") / f"epd{uuid.uuid4().hex[:6]}"
    mnt = run / "m"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "vigil-bench-epd", str(mnt)], check=True)
    procs = []
    try:
        binp = mnt / "cached"
        shutil.copy("/bin/true", binp)
        binp.chmod(0o755)
        # baseline: the bare responder
        src = str(Path(__file__).resolve().parent.parent / "agents")
        bare = subprocess.Popen([sys.executable, "-c", BARE % src, str(mnt)], stdout=subprocess.PIPE)
        procs.append(bare)
        bare.stdout.readline()
        run_execs(str(binp), 20, 1000)
        c0 = cpu_seconds(bare.pid)
        run_execs(str(binp), args.n, args.rate)
        bare_us = (cpu_seconds(bare.pid) - c0) / args.n * 1e6
        bare.kill()
        bare.wait()
        # the decider
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conf = {"mode": "block-malicious", "decision_deadline": 0.5, "max_hash_bytes": 1 << 26,
                "cache_entries": 4096, "excluded": [], "mounts": [str(mnt)], "cover_loader": False,
                "report_interval": 5.0, "kernel_cache": False, "sock_fd": theirs.fileno(), "parent_pid": os.getpid()}
        dec = subprocess.Popen([sys.executable, "-m", "vigil.endpoint.decider", json.dumps(conf)],
                               pass_fds=[theirs.fileno()])
        procs.append(dec)
        theirs.close()
        ours.settimeout(10)
        assert json.loads(ours.recv(65536))["t"] == "ready"
        p = os.posix_spawn(str(binp), [str(binp)], {})
        while True:
            m = json.loads(ours.recv(1 << 20))
            if m["t"] == "ask":
                ours.send(json.dumps({"t": "verdict", "sha256": m["sha256"], "verdict": "benign",
                                      "source": "bench", "ttl": 3600}).encode())
                break
        os.waitpid(p, 0)
        run_execs(str(binp), 20, 1000)
        c0 = cpu_seconds(dec.pid)
        run_execs(str(binp), args.n, args.rate)
        dec_us = (cpu_seconds(dec.pid) - c0) / args.n * 1e6
        ours.send(b'{"t":"flush"}')
        reported = 0
        ours.settimeout(2)
        try:
            while True:
                m = json.loads(ours.recv(1 << 20))
                if m["t"] == "evs":
                    reported += sum(e["count"] for e in m["events"])
                elif m["t"] == "ev":
                    reported += m["count"]
        except socket.timeout:
            pass
        print(f"decider CPU per cached exec ({args.n} execs at {args.rate:g}/s, shared noisy 2-core machine): "
              f"{dec_us:.1f} us; bare responder baseline {bare_us:.1f} us (ratio {dec_us / bare_us:.2f}x); "
              f"at 5 exec/s = {dec_us * 5 / 1e4:.4f} % of one core; execs reported {reported}")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
