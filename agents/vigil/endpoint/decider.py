"""The decision process: owns the fanotify group and answers every permission event.

It runs as its own single-threaded process (``python -m vigil.endpoint.decider``), started by the
agent with one end of a SOCK_SEQPACKET socketpair.  A thread would not do: when a process that
holds a fanotify group also spawns a child, the child's exec waits for a verdict while the parent,
blocked in vfork, holds the interpreter lock — a deadlock.  This process never spawns anything,
never logs in the decision path and never blocks on its peer: a verdict it must ask for is awaited
with a deadline while other events keep being answered.

Messages (JSON, one per datagram).  To the agent: ``ready``/``fatal``, ``ask`` (sha256, size, path),
``ev`` (one decision), ``stats``.  From the agent: ``verdict`` (answer or ``error`` when the manager
is unreachable), ``push`` (verdict changes), ``mode``, ``stats?``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import signal
import socket
import stat
import sys
import time
from collections import defaultdict

from . import fanotify as fan
from .decide import IdentityCache, VerdictCache, decide

LOADERS = ("ld-linux", "ld-musl", "ld.so", "ld64.so")


class Pending:
    __slots__ = ("fd", "pid", "path", "sha", "size", "t0", "deadline", "via")

    def __init__(self, fd, pid, path, sha, size, t0, deadline, via):
        self.fd, self.pid, self.path, self.sha, self.size = fd, pid, path, sha, size
        self.t0, self.deadline, self.via = t0, deadline, via


class Decider:
    def __init__(self, cfg: dict, sock: socket.socket, group: fan.Fanotify):
        self.mode = cfg["mode"]
        self.deadline = float(cfg["decision_deadline"])
        self.max_hash = int(cfg["max_hash_bytes"])
        self.excluded = tuple(p.rstrip("/") + "/" for p in cfg["excluded"])
        self.own_pids = {os.getpid(), os.getppid()}
        self.sock = sock
        self.fan = group
        self.ids = IdentityCache(int(cfg["cache_entries"]))
        self.verdicts = VerdictCache(int(cfg["cache_entries"]))
        self.pending: dict[str, list[Pending]] = defaultdict(list)
        self.c: dict[str, int] = defaultdict(int)

    # -- plumbing to the agent (never blocks: a full socket drops the message and counts it) --
    def send(self, msg: dict) -> bool:
        try:
            self.sock.send(json.dumps(msg, separators=(",", ":")).encode())
            return True
        except (BlockingIOError, InterruptedError):
            self.c[f"dropped_{msg['t']}"] += 1
            return False

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.fan.fd, select.POLLIN)
        poller.register(self.sock.fileno(), select.POLLIN)
        while True:
            timeout = None
            if self.pending:
                nearest = min(p.deadline for ps in self.pending.values() for p in ps)
                timeout = max(0, int((nearest - time.monotonic()) * 1000) + 1)
            for fd, events in poller.poll(timeout):
                if fd == self.fan.fd:
                    for ev in self.fan.read():
                        self.on_event(ev)
                elif events & (select.POLLHUP | select.POLLERR):
                    return  # the agent is gone: closing the group allows everything pending
                else:
                    self.on_messages()
            if self.pending:
                self.expire(time.monotonic())

    # -- permission events ----------------------------------------------------------------
    def on_event(self, ev: fan.Event) -> None:
        t0 = time.monotonic()
        if ev.fd < 0:
            self.c["queue_overflows"] += 1
            return
        keep_fd = False
        try:
            if ev.pid in self.own_pids:
                self.c["own"] += 1
                self.fan.respond(ev.fd, True)
                return
            if ev.mask & fan.FAN_OPEN_EXEC_PERM:
                via = "exec"
            elif self._is_loader(ev.pid):
                via = "loader"
            else:
                self.fan.respond(ev.fd, True)   # an ordinary open: not an execution
                return
            st = os.fstat(ev.fd)
            if not stat.S_ISREG(st.st_mode):
                self.fan.respond(ev.fd, True)
                return
            try:
                path = os.readlink(f"/proc/self/fd/{ev.fd}")
            except OSError:
                path = "?"
            if path.startswith(self.excluded):
                self.c["excluded"] += 1
                self.fan.respond(ev.fd, True)
                return
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            sha = self.ids.get(key)
            if sha is None:
                if st.st_size > self.max_hash:
                    self.c["too_large"] += 1
                    self.finish(Pending(ev.fd, ev.pid, path, "", st.st_size, t0, 0, via), "unknown",
                                "too-large")
                    return
                sha = self._hash(ev.fd)
                self.ids.put(key, sha)
                self.c["hashed"] += 1
            p = Pending(ev.fd, ev.pid, path, sha, st.st_size, t0, t0 + self.deadline, via)
            cached = self.verdicts.get(sha)
            if cached is not None:
                self.finish(p, cached[0], cached[1])
                return
            first = sha not in self.pending
            self.pending[sha].append(p)
            keep_fd = True
            if first:
                self.c["asked"] += 1
                if not self.send({"t": "ask", "sha256": sha, "size": st.st_size, "path": path}):
                    self.resolve(sha, "unknown", "agent-busy")
        except OSError:
            self.c["event_errors"] += 1
            if not keep_fd:
                self._answer(ev.fd, True)
        finally:
            if not keep_fd:
                self._close(ev.fd)

    def _is_loader(self, pid: int) -> bool:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False
        return os.path.basename(exe).startswith(LOADERS)

    @staticmethod
    def _hash(fd: int) -> str:
        h = hashlib.sha256()
        off = 0
        while True:
            b = os.pread(fd, 1 << 20, off)
            if not b:
                return h.hexdigest()
            h.update(b)
            off += len(b)

    def finish(self, p: Pending, verdict: str, source: str) -> None:
        out = decide(self.mode, verdict)
        self._answer(p.fd, out.allow)
        self.c[f"decisions_{out.action}"] += 1
        self.send({"t": "ev", "ts": int(time.time() * 1000), "action": out.action, "verdict": verdict,
                   "source": source, "sha256": p.sha, "path": p.path, "pid": p.pid, "size": p.size,
                   "via": p.via, "mode": self.mode, "latency_us": int((time.monotonic() - p.t0) * 1e6)})

    def _answer(self, fd: int, allow: bool) -> None:
        try:
            self.fan.respond(fd, allow)
        except OSError as exc:  # ENOENT: the kernel gave up on the event (e.g. the process died)
            self.c[f"respond_errors_{errno.errorcode.get(exc.errno, exc.errno)}"] += 1

    @staticmethod
    def _close(fd: int) -> None:
        try:
            os.close(fd)
        except OSError:
            pass

    def resolve(self, sha: str, verdict: str, source: str) -> None:
        for p in self.pending.pop(sha, ()):
            self.finish(p, verdict, source)
            self._close(p.fd)

    def expire(self, now: float) -> None:
        for sha in [s for s, ps in self.pending.items() if ps[0].deadline <= now]:
            self.c["timeouts"] += len(self.pending[sha])
            self.resolve(sha, "unknown", "timeout")

    # -- messages from the agent ------------------------------------------------------------
    def on_messages(self) -> None:
        while True:
            try:
                raw = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            if not raw:
                raise SystemExit(0)
            try:
                msg = json.loads(raw)
                self.on_message(msg)
            except (ValueError, KeyError, TypeError):
                self.c["bad_messages"] += 1

    def on_message(self, msg: dict) -> None:
        t = msg["t"]
        if t == "verdict":
            sha = msg["sha256"]
            if msg.get("error"):
                self.c["offline_answers"] += len(self.pending.get(sha, ()))
                self.resolve(sha, "unknown", str(msg["error"]))
                return
            self.verdicts.put(sha, msg["verdict"], msg.get("source", ""), float(msg.get("ttl", 60)))
            self.resolve(sha, msg["verdict"], msg.get("source", ""))
        elif t == "push":
            for v in msg["verdicts"]:
                self.verdicts.put(v["sha256"], v["verdict"], v.get("source", ""), float(v.get("ttl", 60)))
                self.c["pushed"] += 1
        elif t == "mode":
            if msg["mode"] in ("monitor", "block-malicious", "lockdown"):
                self.mode = msg["mode"]
        elif t == "stats?":
            self.send({"t": "stats", "mode": self.mode, "counters": dict(self.c),
                       "identity_cache": len(self.ids), "verdict_cache": len(self.verdicts),
                       "verdict_cache_by_verdict": self.verdicts.counts(), "cache_hits": self.verdicts.hits,
                       "cache_misses": self.verdicts.misses, "pending": sum(map(len, self.pending.values())),
                       "rss_kb": _rss_kb()})


def _rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    fan.set_parent_death_signal(signal.SIGKILL)
    cfg = json.loads(sys.argv[1])
    sock = socket.socket(fileno=int(cfg["sock_fd"]))
    sock.setblocking(False)
    if os.getppid() != cfg["parent_pid"]:
        return 1  # the agent died before we set the death signal
    try:
        group = fan.Fanotify()
        mask = fan.FAN_OPEN_EXEC_PERM | (fan.FAN_OPEN_PERM if cfg["cover_loader"] else 0)
        for m in cfg["mounts"]:
            group.mark_mount(m, mask)
    except OSError as exc:
        sock.setblocking(True)
        sock.send(json.dumps({"t": "fatal", "error": str(exc)}).encode())
        return 1
    d = Decider(cfg, sock, group)
    d.send({"t": "ready", "pid": os.getpid(), "mounts": cfg["mounts"]})
    try:
        d.run()
    finally:
        group.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
