"""The decision process: owns the fanotify group and answers every permission event.

It runs as its own single-threaded process (``python -m vigil.endpoint.decider``), started by the
agent with one end of a SOCK_SEQPACKET socketpair.  A thread would not do: when a process that
holds a fanotify group also spawns a child, the child's exec waits for a verdict while the parent,
blocked in vfork, holds the interpreter lock — a deadlock.  This process never spawns anything,
never logs in the decision path and never blocks on its peer: a verdict it must ask for is awaited
with a deadline while other events keep being answered.

Messages (JSON, one per datagram).  To the agent: ``ready``/``fatal``, ``ask`` (sha256, size, path),
``ev`` (one decision), ``evs`` (allowed execs answered from the cache, summed per file over the
report interval, each with a ``count``), ``bev`` (one behaviour rule match), ``stats``.  From the agent: ``verdict`` (answer or ``error`` when the manager
is unreachable), ``push`` (verdict changes), ``mode``, ``exc`` (the manager's behaviour exceptions), ``stats?``.
"""
from __future__ import annotations

import errno
import gc
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

from ..contracts import decider as proto
from ..contracts.endpoint import DEFAULT_TTL, ExecEvent
from ..contracts.envelope import PayloadError
from ..contracts.vocab import VERDICTS
from . import fanotify as fan
from .behaviour.hooks import DeciderBehaviour
from .decide import IdentityCache, VerdictCache, decide

LOADERS = ("ld-linux", "ld-musl", "ld.so", "ld64.so")
KERNEL_IDS_MAX = 8192


class Pending:
    __slots__ = ("fd", "pid", "path", "sha", "size", "t0", "deadline", "via")

    def __init__(self, fd, pid, path, sha, size, t0, deadline, via):
        self.fd, self.pid, self.path, self.sha, self.size = fd, pid, path, sha, size
        self.t0, self.deadline, self.via = t0, deadline, via


class Decider(DeciderBehaviour):
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
        # Allowed execs answered from the cache are summed per (file, verdict) and sent once per
        # report interval: waking the agent for each would cost more than the decision itself.
        self.report_interval = float(cfg.get("report_interval", 2.0))
        self.summary: dict[tuple, dict] = {}
        self.next_report = 0.0
        # Optional kernel-side cache: an ignore mark on each file allowed as benign, so its next
        # execs raise no event at all (no CPU, no latency, and no report) until the file is written,
        # a verdict changes, the mode changes or the refresh interval flushes the marks.
        self.kernel_cache = bool(cfg.get("kernel_cache", False))
        self.kernel_refresh = float(cfg.get("kernel_cache_refresh", 600.0))
        self.ignore_mask = fan.FAN_OPEN_EXEC_PERM | (fan.FAN_OPEN_PERM if cfg.get("cover_loader") else 0)
        self.ignored = 0
        self.ignored_shas: set[str] = set()
        self.next_flush = time.monotonic() + self.kernel_refresh
        self.due = False   # housekeeping wanted: the timer fired, or a summary / ignore mark began
        # Behavioural protection (behaviour/engine.py): rules on the exec gate and on the process
        # connector.  Its failure is counted and leaves the gate as it was (bh stays None).
        self.bh = None
        self.bh_paths: set[str] = set()     # paths of files whose exec goes through the behaviour gate
        self.bh_recent: dict = {}           # (dev, ino) of files just written from the network: same
        self.bh_writes = False              # FAN_CLOSE_WRITE marked (a download-and-run rule is active)
        self.mounts = list(cfg.get("mounts", ()))
        self.last_exec: tuple[int, str] | None = None
        # identity -> (sha, path, verdict, source, pid of the exec that set the mark) of each file with
        # an ignore mark: its execs are reported from the notification group (``notes``, below)
        self.kernel_ids: dict[tuple, tuple] = {}
        self.notes: fan.Fanotify | None = None
        self.notes_rearm: float | None = None    # when the notification group is listened to again
        self.ep = None
        if cfg.get("behaviour"):
            self._start_behaviour(cfg["behaviour"])
            # With the process connector running, every exec on the host wakes this process once
            # anyway; a second wake for the exec gate is the larger part of the rest.  So a benign
            # file gets the kernel's ignore mark (kernel_cache) and its execs are reported from a
            # notification group instead, read in batches (see run).
            if self.bh is not None and self.bh.connector is not None and cfg["behaviour"].get("kernel_cache", True):
                self.kernel_cache = True
        if self.kernel_cache:
            self._open_notes()

    def _open_notes(self) -> None:
        """A FAN_OPEN_EXEC notification group on the watched mounts: the kernel queues one event per
        exec (an exec is never held for it), read once per report interval at most, so the execs of
        files with an ignore mark are still reported (summed like cached ones).  If it cannot be
        made, those execs go unreported (as with kernel_cache before), counted."""
        try:
            self.notes = fan.Fanotify(notify=True)
            for m in self.mounts:
                self.notes.mark_mount(m, fan.FAN_OPEN_EXEC)
        except OSError:
            self.c["report_group_errors"] += 1
            if self.notes is not None:
                self.notes.close()
            self.notes = None

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._mode = mode
        self.table = {v: decide(mode, v) for v in VERDICTS}   # the fast path's answers for this mode
        if getattr(self, "bh", None) is not None:
            self.bh.set_mode(mode)
            self._behaviour_marks()

    # -- plumbing to the agent (never blocks: a full socket drops the message and counts it) --
    def send(self, msg: proto.Message) -> bool:
        try:
            self.sock.send(msg.wire())
            return True
        except (BlockingIOError, InterruptedError):
            self.c[f"dropped_{msg.T}"] += 1
            return False

    def run(self) -> None:
        # epoll, and no wait timeout unless an event waits for the manager: the report and refresh
        # deadlines are a timerfd armed once per interval.  (Measured: a poll() with a timeout
        # costs ~45 us more per exec than one without, a third of a bare responder's cost.)
        # Housekeeping runs only when something is due (the timer fired, a report summary or an
        # ignore mark was started, an event waits): not after every answered exec.
        timer = fan.Timer()
        ep = select.epoll()
        fan_fd, sock_fd, timer_fd = self.fan.fd, self.sock.fileno(), timer.fd
        ep.register(fan_fd, select.EPOLLIN)
        ep.register(sock_fd, select.EPOLLIN)
        ep.register(timer_fd, select.EPOLLIN)
        bh_fd = self.bh.fd if self.bh is not None else -1
        if bh_fd >= 0:
            ep.register(bh_fd, select.EPOLLIN)
        # The notification group wakes this process once (EPOLLONESHOT), then is read only at the
        # next report time until the queue is found empty there: at most about one wake per report
        # interval for all the execs that the kernel no longer asks about, none when idle.
        notes_fd = self.notes.fd if self.notes is not None else -2
        if notes_fd >= 0:
            ep.register(notes_fd, select.EPOLLIN | select.EPOLLONESHOT)
        self.ep = ep
        wait, read, monotonic = ep.poll, os.read, time.monotonic
        unpack, one, version = fan.META.unpack, fan.META.size, fan.FANOTIFY_METADATA_VERSION
        on = self._on
        hangup = select.EPOLLHUP | select.EPOLLERR
        # Everything allocated so far (modules, caches' containers) lives as long as the process:
        # moved out of the collector's reach, so a collection walks only what the loop creates.
        gc.freeze()
        try:
            while True:
                timeout = -1
                if self.pending:
                    nearest = min(p.deadline for ps in self.pending.values() for p in ps)
                    timeout = max(0.0, nearest - monotonic()) + 0.001
                for fd, events in wait(timeout, 4):
                    if fd == fan_fd:
                        try:
                            buf = read(fan_fd, 65536)    # every waiting event in one read()
                        except BlockingIOError:
                            continue
                        if len(buf) == one:      # the usual case at an ordinary rate: one event
                            size, vers, _, _, mask, efd, pid = unpack(buf)
                            if vers == version and size == one:
                                on(mask, efd, pid)
                                continue
                        for ev in fan.parse(buf):   # several (or a malformed one: parse raises)
                            on(ev.mask, ev.fd, ev.pid)
                    elif fd == bh_fd:
                        self._behaviour_events()
                    elif fd == notes_fd:
                        self._drain_notes()
                        self.notes_rearm = monotonic() + self.report_interval
                        self.due = True
                    elif fd == timer_fd:
                        timer.clear()
                        timer.at = None
                        self.due = True
                    elif events & hangup and not events & select.EPOLLIN:
                        return  # the agent is gone: closing the group allows everything pending
                    else:
                        self.on_messages()
                if self.due or self.pending:
                    self.due = False
                    self._housekeeping(timer, monotonic())

        finally:
            ep.close()
            timer.close()

    def _housekeeping(self, timer, now: float) -> None:
        if self.ignored and now >= self.next_flush:
            self.flush_ignores("refresh")
            self.next_flush = time.monotonic() + self.kernel_refresh
        if self.pending:
            self.expire(now)
        if self.bh is not None and self.bh.todo:
            self._behaviour_drain()
        if self.notes_rearm is not None and now >= self.notes_rearm:
            self._drain_notes()
            try:
                self.ep.modify(self.notes.fd, select.EPOLLIN | select.EPOLLONESHOT)
            except OSError:
                self.c["report_group_errors"] += 1
            self.notes_rearm = None
        if self.summary and now >= self.next_report:
            self.flush_summary()
        due = None
        if self.summary:
            due = self.next_report
        if self.notes_rearm is not None:
            due = self.notes_rearm if due is None else min(due, self.notes_rearm)
        if self.ignored:
            due = self.next_flush if due is None else min(due, self.next_flush)
        if due is not None and timer.at != due:
            timer.arm(due)

    # -- permission events ----------------------------------------------------------------
    def on_event(self, ev: fan.Event) -> None:
        self._on(ev.mask, ev.fd, ev.pid)

    def _on(self, mask: int, fd: int, pid: int) -> None:
        """One permission event.  The common case — an exec of a file whose identity and verdict
        are cached and allowed — is kept to fstat, two dict look-ups, the answer and a count."""
        t0 = time.monotonic()
        c = self.c
        c["events"] += 1
        if mask & fan.FAN_OPEN_EXEC_PERM and fd >= 0 and pid not in self.own_pids and self._hit(fd, pid, t0):
            return
        if fd < 0:
            c["queue_overflows"] += 1
            return
        if mask & fan.FAN_CLOSE_WRITE:      # a notification (no answer): download-and-run rules
            self._behaviour_write(fd, pid)
            return
        keep_fd = False
        try:
            if pid in self.own_pids:
                c["own"] += 1
                self.fan.respond(fd, True)
                return
            if mask & fan.FAN_OPEN_EXEC_PERM:
                via = "exec"
            elif self._is_loader(pid):
                via = "loader"
            else:
                self.fan.respond(fd, True)   # an ordinary open: not an execution
                return
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            known = self.ids.get(key)        # (sha256 or "" when excluded, path)
            if known is None:
                known = self._identify(fd, st, key, t0, pid, via)
                if known is None:
                    return
            sha, path = known
            if (path in self.bh_paths or (self.bh_recent and key[:2] in self.bh_recent)) and \
                    not self._behaviour_gate(fd, pid, path, t0):
                return                       # denied by a behaviour rule (answered there)
            self.last_exec = (pid, path)
            if not sha:
                c["excluded"] += 1
                self.fan.respond(fd, True)
                return
            cached = self.verdicts.get(sha)
            if cached is not None:
                allow, action = self.table[cached[0]]
                if action == "allowed":      # the common case, kept short: answer, then sum it up
                    if self.kernel_cache and cached[0] == "benign" and path not in self.bh_paths:
                        self._ignore(fd, sha, key, path, cached, pid)
                    self.fan.respond(fd, True)
                    c["decisions_allowed"] += 1
                    self._summarise(sha, path, cached, pid, st.st_size, via, t0)
                    return
                self.finish(Pending(fd, pid, path, sha, st.st_size, t0, 0, via), cached[0], cached[1], True)
                return
            first = sha not in self.pending
            self.pending[sha].append(Pending(fd, pid, path, sha, st.st_size, t0, t0 + self.deadline, via))
            keep_fd = True
            if first:
                c["asked"] += 1
                if not self.send(proto.Ask(sha256=sha, size=st.st_size, path=path)):
                    self.resolve(sha, "unknown", "agent-busy")
        except OSError:
            c["event_errors"] += 1
            if not keep_fd:
                self._answer(fd, True)
        finally:
            if not keep_fd:
                self._close(fd)

    def _hit(self, fd: int, pid: int, t0: float) -> bool:
        """An exec whose identity and verdict are cached and allowed without a kernel mark: answered
        and counted here in as few steps as possible (True).  Anything else is left untouched for
        the full path (False): no cache statistic or LRU position changes on a False.

        Order matters for CPU: the answer wakes the exec'ing process, which usually preempts this
        one on the same core, and whatever runs after the write runs again on cold caches.  So all
        bookkeeping (LRU, counters, the report summary) is done first, the event's fd is closed
        (the kernel matches the answer by fd number, not by the open file), and the write is the
        last step before waiting again."""
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        ids = self.ids._d
        known = ids.get(key)
        if known is None or not known[0] or self.kernel_cache or known[1] in self.bh_paths or \
                (self.bh_recent and key[:2] in self.bh_recent):
            return False
        self.last_exec = (pid, known[1])
        sha = known[0]
        verdicts = self.verdicts
        v = verdicts._d.get(sha)
        if v is None or v[2] < verdicts.clock() or self.table[v[0]][1] != "allowed":
            return False
        ids.move_to_end(key)
        verdicts._d.move_to_end(sha)
        verdicts.hits += 1
        self.c["decisions_allowed"] += 1
        self._summarise(sha, known[1], v, pid, st.st_size, "exec", t0)
        try:
            os.close(fd)
        except OSError:
            pass
        try:
            self.fan.respond(fd, True)
        except OSError as exc:   # ENOENT: the kernel gave up on the event (e.g. the process died)
            self.c[f"respond_errors_{errno.errorcode.get(exc.errno, exc.errno)}"] += 1
        return True

    def _ignore(self, fd: int, sha: str, key: tuple | None, path: str, cached: tuple, pid: int) -> None:
        if self.bh is not None:
            try:
                # A script stays on the gate: its exec tells the service rule that the interpreter
                # exec which follows runs a script file (not_script); ignored, it would not be seen.
                if os.pread(fd, 2, 0) == b"#!":
                    self.c["ignore_skipped_scripts"] += 1
                    return
            except OSError:
                return
        if self.notes is not None:
            if len(self.kernel_ids) >= KERNEL_IDS_MAX:
                self.flush_ignores("full")       # bounded: start over (each file is marked again on its next exec)
            if key is None:
                try:
                    st = os.fstat(fd)
                except OSError:
                    return
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        try:
            self.fan.ignore(fd, self.ignore_mask)
            if self.notes is not None:
                self.kernel_ids[key] = (sha, path, cached[0], cached[1], pid)
            if not self.ignored:
                self.due = True          # arm the refresh timer
            self.ignored += 1
            self.ignored_shas.add(sha)
        except OSError:
            self.c["ignore_mark_errors"] += 1

    def flush_ignores(self, why: str) -> None:
        if not self.ignored:
            return
        try:
            self.fan.flush_ignores()
            self.c[f"ignore_flushes_{why}"] += 1
        except OSError:
            self.c["ignore_mark_errors"] += 1
        if self.notes is not None:
            self._drain_notes()               # report what ran under the marks before forgetting them
        self.ignored = 0
        self.ignored_shas.clear()
        self.kernel_ids.clear()

    def _drain_notes(self) -> None:
        """The notification group's queue: each exec of a file with an ignore mark is summed into
        the report like a cached exec (every other exec there was decided, and reported, at the gate)."""
        ids, c, close = self.kernel_ids, self.c, os.close
        now = time.monotonic()
        while True:
            try:
                buf = os.read(self.notes.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                c["report_group_errors"] += 1
                return
            try:
                events = fan.parse(buf)
            except ValueError:
                c["report_group_errors"] += 1     # a metadata version we do not speak: stop listening
                self.notes_rearm = None
                return
            for ev in events:
                if ev.fd < 0:
                    c["report_overflows"] += 1     # the kernel's queue was full: execs not reported
                    continue
                try:
                    st = os.fstat(ev.fd)
                except OSError:
                    continue
                finally:
                    close(ev.fd)
                if not ids:
                    continue
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                known = ids.get(key)
                if known is None:
                    continue                  # decided and reported at the gate (or changed since its mark)
                sha, path, verdict, source, marked_by = known
                if marked_by == ev.pid:       # the exec that set the mark: answered and reported at the gate
                    ids[key] = (sha, path, verdict, source, 0)
                    continue
                c["decisions_allowed_kernel"] += 1
                self._summarise(sha, path, (verdict, source), ev.pid, st.st_size, "exec", now)

    def _identify(self, fd: int, st: os.stat_result, key, t0: float, pid: int, via: str):
        """A file not seen before (or changed): its path, exclusion and hash, cached by identity."""
        if not stat.S_ISREG(st.st_mode):
            self.fan.respond(fd, True)
            return None
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = "?"
        if self.bh is not None and self._behaviour_target(path):
            self.bh_paths.add(path)
        if path.startswith(self.excluded):
            self.ids.put(key, ("", path))
            return ("", path)
        if st.st_size > self.max_hash:
            self.c["too_large"] += 1
            self.finish(Pending(fd, pid, path, "", st.st_size, t0, 0, via), "unknown", "too-large")
            return None
        sha = self._hash(fd)
        self.c["hashed"] += 1
        self.ids.put(key, (sha, path))
        return (sha, path)

    def _summarise(self, sha: str, path: str, cached, pid: int, size: int, via: str, t0: float) -> None:
        latency = int((time.monotonic() - t0) * 1e6)
        key = (sha, path, cached[0], cached[1], via)
        agg = self.summary.get(key)
        if agg is None:
            if not self.summary:
                self.next_report = time.monotonic() + self.report_interval
                self.due = True          # arm the report timer
            self.summary[key] = {"ts": int(time.time() * 1000), "action": "allowed",
                                 "verdict": cached[0], "source": cached[1], "sha256": sha, "path": path,
                                 "pid": pid, "size": size, "via": via, "mode": self.mode, "latency_us": latency,
                                 "count": 1, "cached": True}
        else:
            agg["count"] += 1
            agg["pid"] = pid
            if latency > agg["latency_us"]:
                agg["latency_us"] = latency

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

    def finish(self, p: Pending, verdict: str, source: str, cached: bool = False) -> None:
        out = decide(self.mode, verdict)
        if self.kernel_cache and verdict == "benign" and p.sha and p.path not in self.bh_paths:
            self._ignore(p.fd, p.sha, None, p.path, (verdict, source), p.pid)
        self._answer(p.fd, out.allow)
        self.c[f"decisions_{out.action}"] += 1
        latency = int((time.monotonic() - p.t0) * 1e6)
        ts = int(time.time() * 1000)
        self.send(proto.Exec(ts=ts, action=out.action, verdict=verdict, source=source, sha256=p.sha, path=p.path,
                             pid=p.pid, size=p.size, via=p.via, mode=self.mode, latency_us=latency, count=1,
                             cached=cached))

    def flush_summary(self) -> None:
        events = list(self.summary.values())
        self.summary.clear()
        for i in range(0, len(events), 200):
            self.send(proto.ExecBatch(events=[ExecEvent.from_body(e) for e in events[i:i + 200]]))

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
                msg = proto.from_wire(raw)
            except PayloadError:
                self.c["bad_messages"] += 1
                continue
            self.on_message(msg)

    def on_message(self, msg: proto.Message) -> None:
        if isinstance(msg, proto.Verdict):
            sha = msg.sha256
            if msg.error or msg.verdict is None:
                self.c["offline_answers"] += len(self.pending.get(sha, ()))
                self.resolve(sha, "unknown", str(msg.error or "no verdict"))
                return
            if msg.verdict != "benign" and sha in self.ignored_shas:
                self.flush_ignores("verdict")
            self.verdicts.put(sha, msg.verdict, msg.source, float(msg.ttl))
            self.resolve(sha, msg.verdict, msg.source)
        elif isinstance(msg, proto.Push):
            if any(v.verdict != "benign" and v.sha256 in self.ignored_shas for v in msg.verdicts):
                self.flush_ignores("verdict")
            for v in msg.verdicts:
                self.verdicts.put(v.sha256, v.verdict, v.source, float(v.ttl if v.ttl is not None else DEFAULT_TTL))
                self.c["pushed"] += 1
        elif isinstance(msg, proto.SetMode):
            self.mode = msg.mode
            self.flush_ignores("mode")
        elif isinstance(msg, proto.Exceptions):
            if self.bh is None:
                self.c["behaviour_exceptions_without_rules"] += 1
                return
            try:
                self.bh.set_exceptions(msg.exceptions)
            except Exception:               # noqa: BLE001 - the last set stays; the gate goes on
                self.c["behaviour_errors"] += 1
        elif isinstance(msg, proto.Flush):
            self.flush_summary()
        elif isinstance(msg, proto.StatsQuery):
            self.send(proto.Stats(mode=self.mode, counters=dict(self.c), identity_cache=len(self.ids),
                                  verdict_cache=len(self.verdicts), verdict_cache_by_verdict=self.verdicts.counts(),
                                  cache_hits=self.verdicts.hits, cache_misses=self.verdicts.misses,
                                  pending=sum(map(len, self.pending.values())), kernel_cache=self.kernel_cache,
                                  ignore_marks=self.ignored, behaviour=self.bh is not None,
                                  rss_kb=_rss_kb()))
        else:
            self.c["bad_messages"] += 1          # a message the agent never sends to us


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
        sock.send(proto.Fatal(error=str(exc)).wire())
        return 1
    d = Decider(cfg, sock, group)
    d.send(proto.Ready(pid=os.getpid(), mounts=cfg["mounts"], behaviour=d.bh is not None))
    try:
        d.run()
    finally:
        group.close()
        if d.notes is not None:
            d.notes.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
