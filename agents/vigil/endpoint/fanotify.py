"""A small ctypes binding of fanotify(7): init, mark a mount, read events, answer permission events.

Only what the agent needs: a ``FAN_CLASS_CONTENT`` group, ``FAN_MARK_MOUNT`` marks for
``FAN_OPEN_EXEC_PERM`` (and optionally ``FAN_OPEN_PERM``), and ``FAN_ALLOW``/``FAN_DENY`` answers.
When the group's fd is closed (or its process dies) the kernel drops the marks and allows any event
still waiting, so a crashed agent never leaves the host unable to run programs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

FAN_CLOEXEC = 0x01
FAN_NONBLOCK = 0x02
FAN_CLASS_NOTIF = 0x00
FAN_CLASS_CONTENT = 0x04
FAN_UNLIMITED_QUEUE = 0x10

FAN_MARK_ADD = 0x01
FAN_MARK_REMOVE = 0x02
FAN_MARK_MOUNT = 0x10
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_FLUSH = 0x80

FAN_CLOSE_WRITE = 0x00000008
FAN_OPEN_EXEC = 0x00001000
FAN_OPEN_PERM = 0x00010000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_Q_OVERFLOW = 0x00004000

FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1
FANOTIFY_METADATA_VERSION = 3

AT_FDCWD = -100
META = struct.Struct("=IBBHQii")      # event_len, vers, reserved, metadata_len, mask, fd, pid
_META = META
_RESPONSE = struct.Struct("=iI")      # fd, response
_pack_response = _RESPONSE.pack

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_libc.fanotify_mark.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


@dataclass(slots=True)
class Event:
    mask: int
    fd: int
    pid: int


class Fanotify:
    def __init__(self, queue_unlimited: bool = False, notify: bool = False):
        """``notify``: a notification group (FAN_CLASS_NOTIF: events are reported, never awaited)."""
        flags = (FAN_CLASS_NOTIF if notify else FAN_CLASS_CONTENT) | FAN_CLOEXEC | FAN_NONBLOCK
        if queue_unlimited:
            flags |= FAN_UNLIMITED_QUEUE
        fd = _libc.fanotify_init(flags, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        self.fd = fd
        self.marks: list[tuple[str, int]] = []

    def mark_mount(self, path: str, mask: int) -> None:
        if _libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_MOUNT, mask, AT_FDCWD, path.encode()) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark {path}: {os.strerror(err)}")
        self.marks.append((path, mask))

    def unmark_mount(self, path: str, mask: int) -> None:
        """Remove ``mask`` from the mount mark on ``path`` (the rest of its mask stays)."""
        if _libc.fanotify_mark(self.fd, FAN_MARK_REMOVE | FAN_MARK_MOUNT, mask, AT_FDCWD, path.encode()) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark remove {path}: {os.strerror(err)}")

    def ignore(self, fd: int, mask: int) -> None:
        """An ignore mark on the file behind ``fd``: the kernel stops raising ``mask`` events for it
        until the file is modified (the mark is dropped on the first write) or ``flush_ignores``."""
        if _libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK, mask, fd, None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark ignore: {os.strerror(err)}")

    def flush_ignores(self) -> None:
        """Drop every inode mark (the ignore marks); the mount marks stay."""
        if _libc.fanotify_mark(self.fd, FAN_MARK_FLUSH, 0, AT_FDCWD, None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_mark flush: {os.strerror(err)}")

    def read(self, bufsize: int = 64 * 1024) -> list[Event]:
        """Events waiting now (an empty list when none: the fd is non-blocking)."""
        try:
            buf = os.read(self.fd, bufsize)
        except BlockingIOError:
            return []
        return parse(buf)

    def respond(self, fd: int, allow: bool) -> None:
        os.write(self.fd, _pack_response(fd, FAN_ALLOW if allow else FAN_DENY))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the kernel removes the marks and allows anything still pending
            self.fd = -1


def parse(buf: bytes) -> list[Event]:
    out, off = [], 0
    while off + _META.size <= len(buf):
        event_len, vers, _, _meta_len, mask, fd, pid = _META.unpack_from(buf, off)
        if vers != FANOTIFY_METADATA_VERSION or event_len < _META.size:
            raise ValueError(f"fanotify: unexpected metadata version {vers} or length {event_len}")
        out.append(Event(mask, fd, pid))
        off += event_len
    return out


def set_parent_death_signal(sig: int) -> None:
    """PR_SET_PDEATHSIG: the decider dies with the agent, taking its fanotify group with it."""
    _libc.prctl(1, sig, 0, 0, 0)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_create.restype = ctypes.c_int
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
_libc.timerfd_settime.restype = ctypes.c_int
CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1


class Timer:
    """A one-shot CLOCK_MONOTONIC timerfd (Python 3.11 has no os.timerfd_*): armed once per report
    interval, so the event loop can wait without a timeout — a poll() timeout re-arms a kernel
    timer on every call, which measurably costs per exec at low rates."""

    def __init__(self):
        fd = _libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self.at: float | None = None

    def arm(self, at: float | None) -> None:
        """Fire at ``at`` (time.monotonic() seconds; None disarms)."""
        spec = _Itimerspec()
        if at is not None:
            at = max(at, 1e-6)
            spec.it_value.tv_sec = int(at)
            spec.it_value.tv_nsec = int((at - int(at)) * 1e9)
        if _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
        self.at = at

    def clear(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
