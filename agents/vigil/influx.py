"""InfluxDB line-protocol writer and InfluxQL reader (stdlib HTTP only).

The writer keeps a bounded buffer of lines and flushes batches from one background thread.
A batch that fails for a reason that may pass (connection refused, timeout, 5xx, 429) stays at the
head of the buffer and is retried with exponential backoff; a batch the server rejects as bad
(400) is counted as rejected and dropped so that it cannot wedge the pipeline.  When the buffer is
full the *oldest* lines are dropped and counted (``influx_points_dropped``): fresh data matters more
to an operator than stale data, and nothing is dropped silently.

``write(lines, on_done=cb)`` runs ``cb`` (in the writer's thread, or at once when nothing is
pending) once every line queued up to and
including these is done with — written, rejected as bad, or dropped for room — so a caller can
acknowledge its source only when the data has left the process (the manager acknowledges an MQTT
message then, so a crash before the write leaves the message with the broker).  ``write([],
on_done=cb)`` is a barrier: ``cb`` runs when everything queued before it is done.  Lines still
buffered at ``close`` never run their callbacks.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from typing import Any, Callable, Iterable, Mapping

from .common import InfluxConfig
from .counters import Counters

log = logging.getLogger(__name__)


# -- line protocol ---------------------------------------------------------------------------
_MEAS_ESC = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_TAG_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def _field_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:     # InfluxDB refuses the whole batch (400)
            raise ValueError(f"integer field out of int64 range: {v}")
        return f"{v}i"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"float field not finite: {v}")
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def line(measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], ts_ns: int | None = None) -> str:
    """One line of line protocol; tags with empty values and None fields are left out."""
    parts = [measurement.translate(_MEAS_ESC)]
    for k in sorted(tags):
        v = tags[k]
        if v is None or v == "":
            continue
        parts.append(f"{k.translate(_TAG_ESC)}={str(v).translate(_TAG_ESC)}")
    fs = ",".join(f"{k.translate(_TAG_ESC)}={_field_value(v)}" for k, v in fields.items() if v is not None)
    if not fs:
        raise ValueError(f"a point needs at least one field ({measurement})")
    out = ",".join(parts) + " " + fs
    if ts_ns is not None:
        out += f" {int(ts_ns)}"
    return out


# -- HTTP ------------------------------------------------------------------------------------
class InfluxHTTP:
    def __init__(self, cfg: InfluxConfig):
        self.cfg = cfg
        self._auth: dict[str, str] = {}
        token = cfg.secret()
        if token:
            self._auth["Authorization"] = f"Token {token}"
        elif cfg.username:
            raw = f"{cfg.username}:{cfg.password or ''}".encode()
            self._auth["Authorization"] = "Basic " + base64.b64encode(raw).decode()

    def _request(self, path: str, params: dict[str, str], body: bytes | None = None,
                 timeout: float | None = None) -> tuple[int, bytes]:
        url = self.cfg.url.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, data=body, method="POST", headers=dict(self._auth))
        if body is not None:
            req.add_header("Content-Type", "text/plain; charset=utf-8")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.cfg.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def write(self, body: bytes) -> tuple[int, bytes]:
        if self.cfg.api == "v2":
            params = {"bucket": self.cfg.bucket or "", "org": self.cfg.org or "", "precision": "ns"}
            return self._request("/api/v2/write", params, body)
        params = {"db": self.cfg.database, "precision": "n"}
        if self.cfg.retention_policy:
            params["rp"] = self.cfg.retention_policy
        return self._request("/write", params, body)

    def query(self, q: str, db: str | None = None, epoch: str = "ms") -> list[dict[str, Any]]:
        """Run InfluxQL; returns the ``results`` list. Raises ``InfluxError`` on any error."""
        params = {"q": q, "db": db or self.cfg.database, "epoch": epoch}
        try:
            status, raw = self._request("/query", params, b"")
        except OSError as exc:
            raise InfluxError(f"query failed: {exc}") from None
        if status != 200:
            raise InfluxError(f"query failed with HTTP {status}: {raw[:300]!r}")
        data = json.loads(raw)
        for res in data.get("results", []):
            if "error" in res:
                raise InfluxError(f"query error: {res['error']}")
        return data.get("results", [])

    def create_database(self) -> None:
        if self.cfg.api == "v1":
            self.query(f'CREATE DATABASE "{self.cfg.database}"')


class InfluxError(RuntimeError):
    pass


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten InfluxQL results into dicts (one per row, tags merged in)."""
    out = []
    for res in results:
        for series in res.get("series", []) or []:
            tags = series.get("tags", {}) or {}
            for values in series.get("values", []):
                row = dict(zip(series["columns"], values))
                row.update(tags)
                row["_measurement"] = series.get("name")
                out.append(row)
    return out


# -- buffered writer -------------------------------------------------------------------------
class InfluxWriter:
    def __init__(self, cfg: InfluxConfig, counters: Counters | None = None):
        self.cfg = cfg
        self.http = InfluxHTTP(cfg)
        self.counters = counters or Counters()
        self._buf: deque[str] = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._inflight = 0
        self._db_ready = not cfg.create_database
        # cumulative line counts: queued, and done with (written, rejected or dropped); a callback
        # runs when ``_done`` reaches the mark it was queued with
        self._queued = 0
        self._done = 0
        self._callbacks: deque[tuple[int, Callable[[], None]]] = deque()
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)

    def start(self) -> "InfluxWriter":
        self._thread.start()
        return self

    def write(self, lines: Iterable[str], on_done: Callable[[], None] | None = None) -> None:
        ready: list[Callable[[], None]] = []
        with self._cv:
            n = 0
            for ln in lines:
                self._buf.append(ln)
                n += 1
            self._queued += n
            if on_done is not None:
                if self._queued == self._done:
                    ready.append(on_done)             # nothing ahead of it: done already
                else:
                    self._callbacks.append((self._queued, on_done))
            over = len(self._buf) - self.cfg.buffer_points
            if over > 0:
                for _ in range(over):
                    self._buf.popleft()
                self.counters.inc("influx_points_dropped", over)
                log.warning("influx: buffer full (%d points); dropped the %d oldest", self.cfg.buffer_points, over)
                ready += self._mark_done(over)
            self.counters.inc("influx_points_queued", n)
            if len(self._buf) >= self.cfg.batch_size:
                self._cv.notify()
        self._run_callbacks(ready)

    def _mark_done(self, n: int) -> list[Callable[[], None]]:
        """Under the lock: ``n`` more lines are done with; return the callbacks now due."""
        self._done += n
        due = []
        while self._callbacks and self._callbacks[0][0] <= self._done:
            due.append(self._callbacks.popleft()[1])
        return due

    def _run_callbacks(self, due: list[Callable[[], None]]) -> None:
        for cb in due:
            try:
                cb()
            except Exception:
                self.counters.inc("influx_callback_errors")
                log.exception("influx: a write callback failed")

    def pending(self) -> int:
        with self._cv:
            return len(self._buf) + self._inflight

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far was written (or given up). True when empty."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify()
            while self._buf or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
                self._cv.notify()
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join(timeout)
        left = len(self._buf)
        if left:
            self.counters.inc("influx_points_dropped", left)
            log.warning("influx: %d points not written at shutdown", left)

    def _run(self) -> None:
        backoff = self.cfg.retry_min
        while True:
            with self._cv:
                if not self._buf and not self._stop:
                    self._cv.wait(self.cfg.flush_interval)
                if self._stop and (not self._buf or backoff > self.cfg.retry_min):
                    return
                if not self._buf:
                    continue
                batch = [self._buf.popleft() for _ in range(min(self.cfg.batch_size, len(self._buf)))]
                self._inflight = len(batch)
            ok = self._send(batch)
            due = []
            with self._cv:
                self._inflight = 0
                if ok:
                    backoff = self.cfg.retry_min
                    due = self._mark_done(len(batch))
                else:
                    self._buf.extendleft(reversed(batch))  # keep order: retry this batch first
                self._cv.notify_all()
            self._run_callbacks(due)
            if not ok:
                with self._cv:
                    if self._stop:
                        return
                    self._cv.wait(backoff)
                backoff = min(backoff * 2, self.cfg.retry_max)

    def _send(self, batch: list[str]) -> bool:
        """True when the batch is done with (written or rejected as bad); False to retry."""
        body = ("\n".join(batch) + "\n").encode("utf-8")
        try:
            if not self._db_ready:
                self.http.create_database()
                self._db_ready = True
            status, raw = self.http.write(body)
        except (OSError, InfluxError) as exc:
            self.counters.inc("influx_write_retries")
            log.warning("influx: write failed (%s); will retry", exc)
            return False
        if status in (200, 204):
            self.counters.inc("influx_points_written", len(batch))
            return True
        if status == 400 or status == 422:
            # InfluxDB 1.x writes the good points of a partial write and names the bad ones.
            self.counters.inc("influx_batches_rejected")
            log.error("influx: server rejected a batch of %d points: %s", len(batch), raw[:300])
            return True
        if status == 404 and b"database not found" in raw:
            self._db_ready = not self.cfg.create_database
        self.counters.inc("influx_write_retries")
        log.warning("influx: write answered HTTP %d: %s; will retry", status, raw[:200])
        return False
