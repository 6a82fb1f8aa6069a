"""Pieces for testing the endpoint's behaviour rules against a real agent, from outside.

``Netns``: a network namespace of the test's own joined to the host by a veth pair (host side
``.1``, namespace side ``.2`` of a /30); removed (with its processes) by ``close``.
``Events``: a paho subscriber on every endpoint's events topic that keeps the behaviour events.
``Listener``: a TCP listener inside a namespace (a Python subprocess) reporting, one line each,
``accepted``, what it received and ``closed`` with a monotonic timestamp; it can send a line.
``memfd_payload_cmd``: a Python program that copies a binary into a memfd and executes it,
printing the CLOCK_MONOTONIC time just before its execve; ``deleted_payload_cmd`` the same from a
file it deleted first.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from vigil import payload

_NET_INDEX = iter(range(1 << 30))


class Netns:
    def __init__(self, prefix: str = "vbh"):
        tag = uuid.uuid4().hex[:5]
        self.name = f"{prefix}{tag}"
        self.host_if, self.ns_if = f"{prefix}h{tag}"[:15], f"{prefix}n{tag}"[:15]
        n = (os.getpid() * 7 + next(_NET_INDEX)) % 60 + 1
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)   # noqa: E731
        run("ip", "netns", "add", self.name)
        try:
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            run("ip", "link", "set", self.ns_if, "netns", self.name)
            run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            run("ip", "link", "set", self.host_if, "up")
            run("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            run("ip", "-n", self.name, "link", "set", self.ns_if, "up")
            run("ip", "-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (OSError, ValueError):
                pass
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class Events:
    """Behaviour events published by any endpoint on the broker."""

    def __init__(self, port: int):
        self.q: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("vigil/v1/endpoint/+/events", qos=1)
        self.client.loop_start()

    def _on(self, c, u, msg) -> None:
        try:
            body = payload.decode(msg.payload, "endpoint-events")
        except payload.PayloadError:
            return
        for ev in body.get("events", []):
            if ev.get("kind") == "behaviour":
                ev["_endpoint"] = msg.topic.split("/")[3]
                self.q.put(ev)

    def collect(self) -> list[dict]:
        while True:
            try:
                self.seen.append(self.q.get_nowait())
            except queue.Empty:
                return self.seen

    def wait(self, pred, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.collect():
                if pred(ev):
                    return ev
            time.sleep(0.05)
        raise AssertionError(f"no matching behaviour event within {timeout}s; seen: {json.dumps(self.seen)[:3000]}")

    def clear(self) -> None:
        self.collect()
        self.seen.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


LISTENER = r"""
import socket, sys, time, select
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); print("accepted", time.monotonic(), flush=True)
send = sys.argv[3].encode() if len(sys.argv) > 3 else b""
if send:
    time.sleep(0.3); c.sendall(send)
while True:
    try:
        d = c.recv(4096)
    except ConnectionResetError:
        d = b""
    if not d:
        print("closed", time.monotonic(), flush=True); break
    print("data", repr(d), flush=True)
"""


class Listener:
    def __init__(self, ns: Netns, port: int, send: str = ""):
        argv = ["ip", "netns", "exec", ns.name, sys.executable, "-c", LISTENER, ns.ns_ip, str(port)]
        if send:
            argv.append(send)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect("listening", 10)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, word: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"listener: no {word!r} within {timeout}s; got {self.out}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.out.append(line)
            if line.startswith(word):
                return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


MEMFD_PAYLOAD = r"""
import os, sys, time
data = open(sys.argv[1], "rb").read()
fd = os.memfd_create("payload", 0)
os.write(fd, data)
print(time.clock_gettime(time.CLOCK_MONOTONIC), flush=True)
os.execv(f"/proc/self/fd/{fd}", ["payload", *sys.argv[2:]])
"""


def memfd_payload_cmd(binary: str, *args: str) -> list[str]:
    return [sys.executable, "-c", MEMFD_PAYLOAD, binary, *args]


DELETED_PAYLOAD = r"""
import os, shutil, sys, tempfile, time
d = tempfile.mkdtemp()
path = os.path.join(d, "dropper")
shutil.copy(sys.argv[1], path)
fd = os.open(path, os.O_RDONLY)
os.unlink(path); os.rmdir(d)
print(time.clock_gettime(time.CLOCK_MONOTONIC), flush=True)
os.execv(f"/proc/self/fd/{fd}", ["dropper", *sys.argv[2:]])
"""


def deleted_payload_cmd(binary: str, *args: str) -> list[str]:
    """A program that copies ``binary`` to a file, deletes the file and executes it from its fd."""
    return [sys.executable, "-c", DELETED_PAYLOAD, binary, *args]
