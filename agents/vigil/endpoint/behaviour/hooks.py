"""The decider's hooks into the behaviour rules (engine.py), kept out of decider.py.

``Decider`` inherits these methods; they use its counters (``c``), fanotify group (``fan``),
``send``, ``mode``, ``own_pids``, ``mounts``, ``_answer`` and ``_close``.  Every call into the
engine is guarded: an exception is counted (``behaviour_errors``) and the exec gate answers as it
would without rules.
"""
from __future__ import annotations

from .. import fanotify as fan


class DeciderBehaviour:
    def _start_behaviour(self, cfg: dict) -> None:
        try:
            from .engine import Behaviour
            self.bh = Behaviour(cfg, self.send, self.c, self.own_pids, self.mode)
            self.bh_recent = self.bh.net_written
        except Exception:                   # noqa: BLE001 - any failure: no behaviour, gate intact
            self.c["behaviour_start_errors"] += 1
            self.bh = None
            return
        self._behaviour_marks()

    def _behaviour_marks(self) -> None:
        """FAN_CLOSE_WRITE on the watched mounts exactly while a download-and-run rule is active
        (it wakes the decider for every file written there, so only in the stricter mode)."""
        want = bool(self.bh.write_rules)
        if want == self.bh_writes:
            return
        try:
            for m in self.mounts:
                if want:
                    self.fan.mark_mount(m, fan.FAN_CLOSE_WRITE)
                else:
                    self.fan.unmark_mount(m, fan.FAN_CLOSE_WRITE)
            self.bh_writes = want
        except (OSError, AttributeError):
            self.c["behaviour_mark_errors"] += 1

    def _behaviour_write(self, fd: int, pid: int) -> None:
        try:
            if self.bh is not None:
                self.bh.on_write(fd, pid)
        except Exception:                   # noqa: BLE001
            self.c["behaviour_errors"] += 1
        finally:
            self._close(fd)

    def _behaviour_target(self, path: str) -> bool:
        try:
            return self.bh.is_target(path)
        except Exception:                   # noqa: BLE001
            self.c["behaviour_errors"] += 1
            return False

    def _behaviour_gate(self, fd: int, pid: int, path: str, t0: float) -> bool:
        """False when a rule denied the exec (the event is then answered here)."""
        prev = self.last_exec
        self.last_exec = (pid, path)
        try:
            allow = self.bh.gate(pid, path, prev, t0, fd)
        except Exception:                   # noqa: BLE001
            self.c["behaviour_errors"] += 1
            return True
        if not allow:
            self._answer(fd, False)
            self.c["decisions_blocked_behaviour"] += 1
            self._behaviour_drain()
        elif self.bh.todo:
            self.due = True                 # a report (monitor): hashed after this exec is answered
        return allow

    def _behaviour_events(self) -> None:
        try:
            self.bh.on_connector()
            self.bh_failures = 0
        except Exception:                   # noqa: BLE001
            self.c["behaviour_errors"] += 1
            self.bh_failures = getattr(self, "bh_failures", 0) + 1
            if self.bh_failures >= 100:     # failing on every event: stop listening (the fd leaves
                self.c["behaviour_connector_disabled"] += 1   # the epoll set when closed), keep the gate
                self.bh.close()
        self._behaviour_drain()

    def _behaviour_drain(self) -> None:
        if self.bh.todo:
            try:
                self.bh.drain()
            except Exception:               # noqa: BLE001
                self.c["behaviour_errors"] += 1
                self.bh.todo.clear()
