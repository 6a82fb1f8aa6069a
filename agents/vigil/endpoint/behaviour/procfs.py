"""/proc, read only for the process an event names (never a walk over all processes).

Every reader returns None (or an empty value) when the process is gone or unreadable: a process can
exit between the event and the read, and that is not an error.  Only ``cmdline`` takes a lock of
the target's memory map; the others (exe, stat, status, cgroup, fd links) do not, so only they are
read before the gate answers.  Kernel names are decoded with
``surrogateescape`` so a hostile file name cannot break JSON encoding later (it is re-encoded with
``backslashreplace`` in ``describe``).
"""
from __future__ import annotations

import ctypes
import os
import pwd
import socket

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_PIDFD_GETFD = 438        # the same number on every architecture (the unified syscall table)
CMDLINE_MAX = 4096
MEMFD = "/memfd:"
DELETED = " (deleted)"
_users: dict[int, str] = {}


def exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def stat(pid: int) -> tuple[str, int] | None:
    """(comm, ppid) from /proc/PID/stat, which takes no lock of the process's memory map."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(1024)
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'
        end = data.rindex(b")")
        comm = data[data.index(b"(") + 1:end].decode("utf-8", "backslashreplace")
        return comm, int(data[end + 2:].split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def ppid(pid: int) -> int | None:
    st = stat(pid)
    return st[1] if st else None


def cmdline(pid: int) -> str:
    """The process's arguments.  Reading them takes the process's mmap lock, which a process stuck
    in a page fault (a hung FUSE or NFS file) can hold for long: never read before an answer."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read(CMDLINE_MAX)
    except OSError:
        return ""
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace")


def uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def user(uid_: int | None) -> str:
    if uid_ is None:
        return "?"
    name = _users.get(uid_)
    if name is None:
        try:
            name = pwd.getpwuid(uid_).pw_name
        except KeyError:
            name = str(uid_)
        if len(_users) < 1024:
            _users[uid_] = name
    return name


def unit(pid: int) -> str | None:
    """The systemd unit (service or scope) the process's cgroup names, if any."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            data = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    for line in data.splitlines():
        path = line.rsplit(":", 1)[-1]
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return None


def fd_target(pid: int, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A duplicate, in this process, of another process's fd (pidfd_getfd(2), Linux 5.6)."""
    r = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


def network_stdio(pid: int, pidfd: int | None = None, fds=(0, 1)) -> list[int]:
    """Which of the process's ``fds`` are AF_INET/AF_INET6 sockets (a Unix socket, a pipe or a
    tty is not).  The link says only "socket:[inode]"; the family is asked of a duplicate."""
    found = []
    own = None
    try:
        for fd in fds:
            t = fd_target(pid, fd)
            if t is None or not t.startswith("socket:"):
                continue
            if pidfd is None:
                own = pidfd = os.pidfd_open(pid)
            dup = pidfd_getfd(pidfd, fd)
            s = socket.socket(fileno=dup)
            try:
                if s.family in (socket.AF_INET, socket.AF_INET6):
                    found.append(fd)
            finally:
                s.close()
    except OSError:
        pass
    finally:
        if own is not None:
            os.close(own)
    return found


def network_sockets(pid: int, limit_fds: int = 1024, limit_sockets: int = 16) -> bool:
    """Whether the process holds an AF_INET/AF_INET6 socket (its fd links, bounded; each socket's
    family asked of a pidfd_getfd duplicate)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")[:limit_fds]
    except OSError:
        return False
    socks = []
    for n in names:
        t = fd_target(pid, int(n)) if n.isdigit() else None
        if t is not None and t.startswith("socket:"):
            socks.append(int(n))
            if len(socks) >= limit_sockets:
                break
    return bool(socks) and bool(network_stdio(pid, fds=socks))


def grab_sockets(pidfd: int, fds) -> list[socket.socket]:
    """Duplicates, in this process, of another process's sockets on ``fds`` (taken before a kill,
    shut down after it: the dead process cannot race the shutdown with a write and a SIGPIPE)."""
    out = []
    for fd in fds:
        try:
            out.append(socket.socket(fileno=pidfd_getfd(pidfd, fd)))
        except OSError:
            continue
    return out


def shutdown_sockets(socks: list[socket.socket]) -> int:
    """shutdown(SHUT_RDWR) each socket: the connection ends for every holder of it (a kill alone
    would leave it open if another process shares the socket); then close our duplicates."""
    done = 0
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
            done += 1
        except OSError:
            pass
        finally:
            s.close()
    return done


def is_memfd(path: str) -> bool:
    return path.startswith(MEMFD)


def is_deleted(path: str) -> bool:
    return path.endswith(DELETED) and not path.startswith(MEMFD)


def base(path: str) -> str:
    if path.endswith(DELETED):
        path = path[: -len(DELETED)]
    return path.rsplit("/", 1)[-1]
