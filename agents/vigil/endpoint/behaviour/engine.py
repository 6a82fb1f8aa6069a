"""The behaviour evaluator and its enforcement, run inside the decider process.

Two entry points, both called by the decider's single thread:

* ``gate(pid, path, prev)`` — in the fanotify exec gate, for files classified as rule targets
  (``is_target``, decided once per path): True to allow, False to deny.  ``pid`` still runs its old
  image, so it is the process *asking* to run ``path``; ``prev`` is the (pid, path) of the exec
  event before this one, which tells a script's ``#!`` interpreter from a direct exec.
* ``on_connector()`` — exec and ptrace events from the process connector; kills what matches.

Reports (with the process tree and hashes) are built after the answer or the kill, by ``drain``,
so hashing never delays an enforcement.  In the decider, every call is wrapped: an exception here
is counted (``behaviour_errors``) and the exec gate goes on.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import signal
import stat
import time
from dataclasses import dataclass

from ...contracts import decider as proto
from ...contracts.envelope import PayloadError
from . import procfs
from .rules import Rule, load_rules

readlink = os.readlink

TREE_DEPTH = 6


@dataclass
class Exception_:
    rule: str
    path: str | None
    unit: str | None
    user: str | None

    def matches(self, rule: str, path: str, unit: str | None, user: str) -> bool:
        if self.rule not in ("*", rule):
            return False
        if self.path is not None and not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.unit is not None and not (unit and fnmatch.fnmatchcase(unit, self.unit)):
            return False
        return self.user is None or self.user == user


class Behaviour:
    def __init__(self, cfg: dict, send, counters, own_pids: set[int], mode: str, connector=None):
        self.cfg = cfg
        self.send = send                   # the decider's non-blocking send to the agent
        self.c = counters
        self.own_pids = own_pids
        rules = load_rules(cfg.get("rules_file"))
        self.gate_rules = [r for r in rules if r.event == "gate"]
        self.exec_rules = [r for r in rules if r.event == "exec"]
        self.ptrace_rules = [r for r in rules if r.event == "ptrace"]
        # the configuration's exceptions, then the manager's (set_exceptions replaces those)
        self.local_exceptions = [Exception_(e.get("rule", "*"), e.get("path"), e.get("unit"), e.get("user"))
                                 for e in cfg.get("exceptions") or ()]
        self.exceptions = list(self.local_exceptions)
        self.hash_max = int(cfg.get("hash_max_bytes", 32 << 20))
        self.behaviour_mode = cfg.get("mode", "inherit")
        self.strict_always = bool(cfg.get("strict", False))
        # (st_dev, st_ino) -> (monotonic, writer pid, writer exe) of files written by a process with a
        # network socket, while a download-and-run rule is active (the decider checks membership)
        self.net_written: dict[tuple[int, int], tuple[float, int, str | None]] = {}
        self.set_mode(mode)
        self._targets: dict[str, bool] = {}
        self._hashes: dict[tuple, str] = {}
        self._exec_paths: dict[str, tuple[Rule, ...]] = {}
        self.todo: list[tuple] = []
        self.connector = connector
        if connector is None and cfg.get("connector", True) and (self.exec_rules or self.ptrace_rules):
            from .connector import Connector
            try:
                self.connector = Connector()
            except OSError:
                # not root, not in the initial network namespace (a container), or no connector in
                # the kernel: the exec-gate rules still work; the exec/ptrace rules cannot
                self.c["behaviour_connector_errors"] += 1
        self.fd = self.connector.fd if self.connector is not None else -1

    def set_mode(self, mode: str) -> None:
        self.endpoint_mode = mode
        if self.behaviour_mode == "inherit":
            self.block = mode != "monitor"
        else:
            self.block = self.behaviour_mode == "block"
        self.strict = self.strict_always or mode == "lockdown"
        self.write_rules = [r for r in self.gate_rules if r.from_network_within and (self.strict or not r.strict)]
        self.write_window = max((r.from_network_within for r in self.write_rules), default=0.0)
        if not self.write_rules:
            self.net_written.clear()

    def set_exceptions(self, pushed) -> int:
        """The manager's exceptions (contracts ``BehaviourException``, already validated and meant
        for this endpoint), replacing the last set pushed; the configuration's own stay.  One for
        a rule this endpoint does not have is left out and counted.  Returns how many apply."""
        ids = {r.id for r in (*self.gate_rules, *self.exec_rules, *self.ptrace_rules)}
        keep = []
        for e in pushed:
            if e.rule != "*" and e.rule not in ids:
                self.c["behaviour_exceptions_unknown_rule"] += 1
                continue
            keep.append(Exception_(e.rule, e.path, e.unit, e.user))
        self.exceptions = self.local_exceptions + keep
        self.c["behaviour_exceptions_pushed"] = len(keep)      # a gauge: the set now applied
        self.c["behaviour_exceptions_updates"] += 1
        return len(keep)

    def close(self) -> None:
        if self.connector is not None:
            self.connector.close()

    # -- the exec gate -------------------------------------------------------------------------
    def is_target(self, path: str) -> bool:
        """Whether an exec of ``path`` must go through ``gate`` (cached per path: called once per
        file identity by the decider, which keeps a set of the targets for its fast path)."""
        hit = self._targets.get(path)
        if hit is None:
            name = procfs.base(path)
            # a download-and-run rule alone does not make every file a target: the decider sends
            # the execs of recently downloaded files through the gate by their identity instead
            hit = any(r.target(name) if r.target is not None else not r.from_network_within
                      for r in self.gate_rules)
            if len(self._targets) < 8192:
                self._targets[path] = hit
        return hit

    def gate(self, pid: int, path: str, prev: tuple[int, str] | None, t0: float, fd: int = -1) -> bool:
        name = procfs.base(path)
        for r in self.gate_rules:
            if r.strict and not self.strict:
                continue
            if not self._target_ok(r, name, path):
                continue
            subject = self._subject_ok(r, pid)
            if subject is None:
                continue
            if r.not_script and prev and prev[0] == pid and prev[1] != path and _is_script(prev[1]):
                self.c["behaviour_scripts_allowed"] += 1
                continue
            extra = None
            if r.from_network_within:
                written = self._downloaded(fd, r.from_network_within)
                if written is None:
                    continue
                extra = {"writer": {"pid": written[1], "exe": written[2],
                                    "age_ms": int((time.monotonic() - written[0]) * 1000)}}
            if self._excepted(r, path, pid):
                continue
            return self._enforce(r, pid, path, t0, service=subject[0], socks=subject[1], gate_fd=fd, extra=extra)
        return True

    # -- files written by a process with a network connection (download and run) ------------------
    def on_write(self, fd: int, pid: int) -> None:
        """A FAN_CLOSE_WRITE event: remember the file if its writer holds a network socket."""
        if not self.write_rules or pid in self.own_pids:
            return
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        self.c["behaviour_writes_seen"] += 1
        if not procfs.network_sockets(pid):
            return
        now = time.monotonic()
        if len(self.net_written) >= 4096:
            for k in [k for k, v in self.net_written.items() if now - v[0] > self.write_window]:
                del self.net_written[k]
            while len(self.net_written) >= 4096:
                del self.net_written[next(iter(self.net_written))]
        self.net_written[(st.st_dev, st.st_ino)] = (now, pid, procfs.exe(pid))
        self.c["behaviour_network_writes"] += 1

    def _downloaded(self, fd: int, window: float):
        if fd < 0 or not self.net_written:
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            return None
        w = self.net_written.get((st.st_dev, st.st_ino))
        if w is None:
            return None
        if time.monotonic() - w[0] > window:
            del self.net_written[(st.st_dev, st.st_ino)]
            return None
        return w

    # -- the process connector -----------------------------------------------------------------
    def on_connector(self) -> None:
        events = self.connector.read()
        own = self.own_pids
        execs = 0
        for kind, pid, tracer in events:
            if kind == "exec":
                execs += 1
                if pid not in own:
                    self._on_exec(pid)
            elif kind == "ptrace":
                self.c["behaviour_ptrace_events"] += 1
                if tracer not in own:
                    self._on_ptrace(pid, tracer)
            else:                     # the kernel dropped events: we were too slow (counted)
                self.c["behaviour_connector_overruns"] += 1
        if execs:
            self.c["behaviour_exec_events"] += execs

    def _exec_candidates(self, path: str) -> tuple[Rule, ...]:
        """The exec rules whose conditions on the executable's path alone hold (cached per path:
        for an ordinary program the whole evaluation is a readlink and this look-up)."""
        name = procfs.base(path)
        out = tuple(r for r in self.exec_rules
                    if (r.target_memfd is None or procfs.is_memfd(path) == r.target_memfd)
                    and (r.target_deleted is None or procfs.is_deleted(path) == r.target_deleted)
                    and self._target_ok(r, name, path))
        if len(self._exec_paths) >= 8192:
            self._exec_paths.clear()
        self._exec_paths[path] = out
        return out

    def _on_exec(self, pid: int) -> None:
        t0 = time.monotonic()
        try:
            path = readlink(f"/proc/{pid}/exe")
        except OSError:
            return
        rules = self._exec_paths.get(path)
        if rules is None:
            rules = self._exec_candidates(path)
        for r in rules:
            if r.strict and not self.strict:
                continue
            subject = self._subject_ok(r, pid)
            if subject is None or self._excepted(r, path, pid):
                continue
            self._enforce(r, pid, path, t0, service=subject[0], socks=subject[1])
            return

    def _on_ptrace(self, tracee: int, tracer: int) -> None:
        t0 = time.monotonic()
        path = procfs.exe(tracer)
        if path is None:
            return
        name = procfs.base(path)
        for r in self.ptrace_rules:
            if r.strict and not self.strict:
                continue
            if r.tracer_not is not None and (r.tracer_not(name) or r.tracer_not(path)):
                continue
            if not self._target_ok(r, name, path):
                continue
            if self._excepted(r, path, tracer):
                continue
            self._enforce(r, tracer, path, t0, extra={"tracee": self._proc(tracee)})
            return

    # -- matching helpers ----------------------------------------------------------------------
    @staticmethod
    def _target_ok(r: Rule, name: str, path: str) -> bool:
        if r.target is not None and not r.target(name):
            return False
        if r.target_not is not None and (r.target_not(name) or r.target_not(path.lstrip("/"))
                                         or r.target_not(path)):
            return False
        return True

    def _subject_ok(self, r: Rule, pid: int) -> tuple[dict | None, list[int] | None] | None:
        """The rule's conditions on the subject process: (the service it belongs to, its network
        stdio fds) when they hold (None for a condition the rule does not have), else None."""
        service = socks = None
        if r.service_exe is not None or r.service_unit is not None:
            service = self._service(r, pid)
            if service is None:
                return None
        if r.stdio_socket:
            socks = procfs.network_stdio(pid)
            if not socks:
                return None
        return service, socks

    def _service(self, r: Rule, pid: int) -> dict | None:
        """The service the subject belongs to: itself or an ancestor up to r.depth by executable,
        or its systemd unit (a service's children stay in its cgroup)."""
        if r.service_unit is not None:
            unit = procfs.unit(pid)
            if unit and r.service_unit(unit):
                return {"pid": pid, "unit": unit, "by": "unit"}
        if r.service_exe is None:
            return None
        p = pid
        for _ in range(r.depth + 1):
            if p is None or p <= 1:
                return None
            exe = procfs.exe(p)
            if exe and r.service_exe(procfs.base(exe)):
                return {"pid": p, "exe": exe, "by": "exe"}
            p = procfs.ppid(p)
        return None

    def _excepted(self, r: Rule, path: str, pid: int) -> bool:
        if not self.exceptions:
            return False
        unit = procfs.unit(pid)
        user = procfs.user(procfs.uid(pid))
        for e in self.exceptions:
            if e.matches(r.id, path, unit, user):
                self.c[f"behaviour_excepted_{r.id}"] += 1
                return True
        return False

    # -- enforcement and reports ------------------------------------------------------------------
    def _enforce(self, r: Rule, pid: int, path: str, t0: float, service=None, socks=None, gate_fd=None,
                 extra=None) -> bool:
        """Act on a match; returns whether an exec at the gate may go on.  The process tree is read
        before a kill (a dead process has no /proc), hashed after it (``drain``)."""
        enforce = self.block and r.action != "report"
        # the subject's arguments are read now only when it is about to be killed (they go with it);
        # everything else waits until after the answer (drain): see procfs.cmdline
        tree = self._tree(pid, subject_cmdline=enforce and r.action == "kill" and gate_fd is None)
        if gate_fd is not None:   # the gate's event fd: the very file asked for (not reopened by path)
            target_fd = _dup(gate_fd)
        else:
            target_fd = _open(f"/proc/{pid}/exe")
        closed = 0
        action = "reported"
        if enforce:
            action = "blocked" if r.action == "deny" else "killed"
            if r.action == "kill" or r.close_connections:
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    pidfd = None       # already gone
                if pidfd is not None:
                    grabbed = []
                    try:
                        if r.close_connections:
                            grabbed = procfs.grab_sockets(pidfd, socks or procfs.network_stdio(pid, pidfd, (0, 1, 2)))
                        if r.action == "kill":
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    except OSError:
                        self.c["behaviour_enforce_errors"] += 1
                    finally:
                        os.close(pidfd)
                        closed = procfs.shutdown_sockets(grabbed)
        elif r.action != "report":
            action = "would-block"
        self.c[f"behaviour_{action.replace('-', '_')}"] += 1
        self.c[f"behaviour_rule_{r.id}"] += 1
        ev = {"ts": int(time.time() * 1000), "rule": r.id, "technique": r.technique,
              "description": r.description, "event": r.event, "action": action, "mode": self.endpoint_mode,
              "path": path, "pid": pid, "service": service, "closed": closed,
              "latency_us": int((time.monotonic() - t0) * 1e6)}
        if extra:
            ev.update(extra)
        self.todo.append((ev, tree, target_fd))
        return not enforce or r.action == "report"     # at the gate a kill also denies the exec

    def _proc(self, pid: int, cmdline: bool = False) -> dict:
        st = procfs.stat(pid)
        return {"pid": pid, "ppid": st[1] if st else None, "comm": st[0] if st else None, "exe": procfs.exe(pid),
                "cmdline": procfs.cmdline(pid) if cmdline else None, "user": procfs.user(procfs.uid(pid))}

    def _tree(self, pid: int, subject_cmdline: bool = False) -> list[tuple[dict, int | None]]:
        out = []
        p = pid
        for _ in range(TREE_DEPTH):
            if p is None or p < 1:
                break
            info = self._proc(p, cmdline=subject_cmdline and p == pid)
            if info["exe"] is None and info["comm"] is None:
                break
            out.append((info, _open(f"/proc/{p}/exe")))
            if p == 1:
                break
            p = info["ppid"]
        return out

    def drain(self) -> None:
        """Hash and send the reports waiting (after the gate's answer or the kill)."""
        todo, self.todo = self.todo, []
        for ev, tree, _ in todo:          # arguments first, while the processes still live
            for info, _fd in tree:
                if info["cmdline"] is None:
                    info["cmdline"] = procfs.cmdline(info["pid"])
            tracee = ev.get("tracee")
            if tracee and tracee.get("cmdline") is None:
                tracee["cmdline"] = procfs.cmdline(tracee["pid"])
        for ev, tree, target_fd in todo:  # then the hashes (milliseconds for a large interpreter)
            ev["sha256"] = self._hash(target_fd)
            ev["tree"] = []
            for info, fd in tree:
                info["sha256"] = self._hash(fd)
                ev["tree"].append(info)
            ev["parent"] = ev["tree"][1]["exe"] if len(ev["tree"]) > 1 else None
            if ev["event"] == "gate" and ev["tree"]:
                ev["parent"] = ev["tree"][0]["exe"]     # the process asking to run the file
            try:
                msg = proto.Behaviour.from_body(ev)
            except PayloadError:
                self.c["behaviour_bad_reports"] += 1     # a rule id or field the contract refuses
                continue
            self.send(msg)

    def _hash(self, fd: int | None) -> str | None:
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            sha = self._hashes.get(key)
            if sha is None:
                if st.st_size > self.hash_max:
                    return None
                h = hashlib.sha256()
                off = 0
                while True:
                    b = os.pread(fd, 1 << 20, off)
                    if not b:
                        break
                    h.update(b)
                    off += len(b)
                sha = h.hexdigest()
                if len(self._hashes) >= 512:
                    self._hashes.clear()
                self._hashes[key] = sha
            return sha
        except OSError:
            return None
        finally:
            os.close(fd)


def _open(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _dup(fd: int) -> int | None:
    try:
        return os.dup(fd) if fd >= 0 else None
    except OSError:
        return None


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False
