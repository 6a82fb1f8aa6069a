"""InfluxWriter.write(..., on_done=cb): a callback runs only when every line queued up to it is done
with (written, rejected or dropped), never earlier — the manager acknowledges MQTT messages with it."""
from __future__ import annotations

import threading
import time

import pytest

from vigil.common import InfluxConfig
from vigil.counters import Counters
from vigil.influx import InfluxWriter

pytestmark = pytest.mark.unit


class Server:
    """Stands in for the HTTP write: answers with ``status`` and records what it got."""

    def __init__(self):
        self.status = 204
        self.bodies: list[bytes] = []
        self.gate = threading.Event()
        self.gate.set()

    def write(self, body: bytes):
        self.gate.wait(10)
        self.bodies.append(body)
        return self.status, b"" if self.status == 204 else b'{"error":"down"}'


def writer(**kw) -> tuple[InfluxWriter, Server]:
    cfg = InfluxConfig(create_database=False, flush_interval=0.05, retry_min=0.05, retry_max=0.1,
                       **kw)
    w = InfluxWriter(cfg, Counters())
    srv = Server()
    w.http.write = srv.write
    return w, srv


def wait(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_callbacks_run_after_their_lines_are_written_in_order():
    w, srv = writer()
    srv.gate.clear()                      # the first write hangs until we let it go
    done: list[str] = []
    w.start()
    try:
        w.write(["m f=1i 1"], on_done=lambda: done.append("a"))
        w.write(["m f=2i 2", "m f=3i 3"], on_done=lambda: done.append("b"))
        time.sleep(0.2)
        assert done == []                 # nothing written yet: nothing acknowledged
        srv.gate.set()
        assert wait(lambda: done == ["a", "b"]), done
        assert b"f=3i" in b"".join(srv.bodies)
    finally:
        w.close(1)


def test_a_failing_server_holds_callbacks_until_the_retry_succeeds():
    w, srv = writer()
    srv.status = 503
    done: list[int] = []
    w.start()
    try:
        w.write(["m f=1i 1"], on_done=lambda: done.append(1))
        assert wait(lambda: w.counters.get("influx_write_retries") >= 2)
        assert done == []
        srv.status = 204
        assert wait(lambda: done == [1])
    finally:
        w.close(1)


def test_an_empty_write_is_a_barrier_behind_pending_lines():
    w, srv = writer()
    srv.gate.clear()
    done: list[str] = []
    w.start()
    try:
        w.write(["m f=1i 1"], on_done=lambda: done.append("line"))
        w.write([], on_done=lambda: done.append("barrier"))
        time.sleep(0.1)
        assert done == []
        srv.gate.set()
        assert wait(lambda: done == ["line", "barrier"])
        w.write([], on_done=lambda: done.append("now"))   # nothing pending: runs at once
        assert done[-1] == "now"
    finally:
        w.close(1)


def test_lines_dropped_for_room_are_counted_and_release_their_callbacks():
    w, _srv = writer(batch_size=2, buffer_points=2)      # not started: nothing is written
    done: list[int] = []
    w.write(["m f=1i 1", "m f=2i 2"], on_done=lambda: done.append(1))
    assert done == []
    w.write(["m f=3i 3", "m f=4i 4"], on_done=lambda: done.append(2))
    assert done == [1]                                   # its lines were dropped (and counted)
    assert w.counters.get("influx_points_dropped") == 2


def test_a_raising_callback_is_counted_and_does_not_stop_the_writer():
    w, _srv = writer()
    done: list[int] = []
    w.start()
    try:
        w.write(["m f=1i 1"], on_done=lambda: 1 / 0)
        w.write(["m f=2i 2"], on_done=lambda: done.append(2))
        assert wait(lambda: done == [2])
        assert w.counters.get("influx_callback_errors") == 1
    finally:
        w.close(1)
