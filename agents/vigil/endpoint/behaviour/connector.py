"""The kernel's process connector (netlink ``NETLINK_CONNECTOR``, ``CN_IDX_PROC``): exec and
ptrace events of every process, with no kernel toolchain.

The kernel multicasts fork, exec, uid/gid, comm, exit... events; waking a Python process for each
would cost more than the whole endpoint CPU budget on a busy host.  A classic BPF socket filter
(assembled here, attached with ``SO_ATTACH_FILTER``) keeps only ``PROC_EVENT_EXEC`` and
``PROC_EVENT_PTRACE`` in the kernel, so forks and exits never wake the reader.  Needs
CAP_NET_ADMIN and the initial network namespace (the connector is not namespaced), and is refused in
a nested PID namespace, where its pids would name other processes.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_PTRACE = 0x00000100
SO_ATTACH_FILTER = 26

NLMSGHDR = struct.Struct("=IHHII")           # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")            # id.idx, id.val, seq, ack, len, flags
EVENT_HEAD = struct.Struct("=IIQ")           # what, cpu, timestamp_ns
HEAD = NLMSGHDR.size + CN_MSG.size           # 36: where struct proc_event starts
EXEC = struct.Struct("=II")                  # process_pid, process_tgid
PTRACE = struct.Struct("=IIII")              # process_pid, process_tgid, tracer_pid, tracer_tgid
DATA = HEAD + EVENT_HEAD.size                # 52: the event's union
PTRACE_ATTACH = 16                           # proc_ptrace_connector reports attach (16) / detach (17)


def _bpf_word(what: int) -> int:
    """BPF_LD|BPF_W|BPF_ABS loads big-endian; ``what`` is in host order in the message."""
    return struct.unpack(">I", struct.pack("=I", what))[0]


def _filter_program() -> bytes:
    ins = struct.Struct("=HBBI")             # struct sock_filter: code, jt, jf, k
    return b"".join([
        ins.pack(0x20, 0, 0, HEAD),                          # A = word at proc_event.what
        ins.pack(0x15, 2, 0, _bpf_word(PROC_EVENT_EXEC)),    # exec   -> accept
        ins.pack(0x15, 1, 0, _bpf_word(PROC_EVENT_PTRACE)),  # ptrace -> accept
        ins.pack(0x06, 0, 0, 0),                             # anything else: drop
        ins.pack(0x06, 0, 0, 0xFFFFFFFF),                    # accept the whole message
    ])


PROC_PID_INIT_INO = 0xEFFFFFFC             # the initial PID namespace's fixed inode number


def nested_pid_namespace() -> bool:
    """True inside a PID namespace other than the initial one (a container): the connector reports
    pids of the initial namespace, which /proc here would resolve to other processes."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino != PROC_PID_INIT_INO
    except OSError:
        return True


class Connector:
    def __init__(self, rcvbuf: int = 1 << 20):
        if nested_pid_namespace():
            raise OSError(errno.EOPNOTSUPP, "not in the initial PID namespace: connector pids would be misread")
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            prog = _filter_program()
            self._prog = ctypes.create_string_buffer(prog)   # must outlive the setsockopt call
            fprog = struct.pack("=HxxxxxxQ", len(prog) // 8, ctypes.addressof(self._prog))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self.sock.bind((0, CN_IDX_PROC))
            self._control(PROC_CN_MCAST_LISTEN)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.fd = self.sock.fileno()

    def _control(self, op: int) -> None:
        body = struct.pack("=I", op)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(body), 0) + body
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn)

    def read(self, limit: int = 1):
        """Events waiting now (at most ``limit`` messages), as ("exec", tgid, 0) or ("ptrace",
        tracee_tgid, tracer_tgid), and ("overrun", 0, 0) where the kernel dropped events because the
        socket buffer was full.  One message per call by default: the decider's epoll is
        level-triggered, so anything else waiting wakes it again at once, and in the usual case (one
        event per wake) the recv that would only fail with EAGAIN is saved (~8 % of the per-event
        cost measured here)."""
        out = []
        recv = self.sock.recv
        for _ in range(limit):
            try:
                buf = recv(256)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                out.append(("overrun", 0, 0))
                continue
            if len(buf) < DATA + 8:
                continue
            what = EVENT_HEAD.unpack_from(buf, HEAD)[0]
            if what == PROC_EVENT_EXEC:
                out.append(("exec", EXEC.unpack_from(buf, DATA)[1], 0))
            elif what == PROC_EVENT_PTRACE and len(buf) >= DATA + PTRACE.size:
                _, tgid, _, tracer_tgid = PTRACE.unpack_from(buf, DATA)
                if tracer_tgid:                  # a detach reports tracer 0
                    out.append(("ptrace", tgid, tracer_tgid))
        return out

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            try:
                self._control(PROC_CN_MCAST_IGNORE)
            except OSError:
                pass
            self.sock.close()


def available() -> bool:
    return os.geteuid() == 0
