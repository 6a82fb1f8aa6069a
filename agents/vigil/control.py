"""A daemon's local control socket: JSON requests and responses over a unix socket.

``vigilctl`` on the manager host talks to ``vigil-manager`` through it (and the endpoint console
to ``vigil-endpoint``).  One request per line: ``{"method": "decisions.list", "params": {...}}``;
one response per line: ``{"status": "ok", "result": ...}`` or
``{"status": "error", "error": "...", "code": "bad-request"}``.  The socket is root-only (0600).

Components register methods with ``ControlServer.register(name, fn)``; ``fn(**params)`` returns
JSON-able data or raises ``ControlError(code, message)`` for a clear error to the caller.
"""
from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20


class ControlError(Exception):
    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


class ControlServer:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.methods: dict[str, Callable[..., Any]] = {}
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self.register("help", lambda: sorted(self.methods))

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        self.methods[name] = fn

    def handle(self, raw: bytes) -> dict:
        try:
            req = json.loads(raw)
            if not isinstance(req, dict) or not isinstance(req.get("method"), str):
                raise ControlError("bad-request", "a request is an object with a string 'method'")
            params = req.get("params") or {}
            if not isinstance(params, dict):
                raise ControlError("bad-request", "'params' must be an object")
            fn = self.methods.get(req["method"])
            if fn is None:
                raise ControlError("unknown-method", f"unknown method {req['method']!r}")
            try:
                result = fn(**params)
            except TypeError as exc:
                raise ControlError("bad-request", f"{req['method']}: {exc}") from None
            return {"status": "ok", "result": result}
        except ControlError as exc:
            return {"status": "error", "code": exc.code, "error": str(exc)}
        except json.JSONDecodeError as exc:
            return {"status": "error", "code": "bad-request", "error": f"not JSON: {exc}"}
        except Exception as exc:  # a bug in a method: report it, keep serving
            log.exception("control method failed")
            return {"status": "error", "code": "internal", "error": f"{type(exc).__name__}: {exc}"}

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                for raw in self.rfile:
                    if len(raw) > MAX_REQUEST:
                        resp = {"status": "error", "code": "bad-request", "error": "request too large"}
                    else:
                        resp = outer.handle(raw)
                    self.wfile.write(json.dumps(resp, default=str).encode() + b"\n")
                    self.wfile.flush()

        old = os.umask(0o177)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        finally:
            os.umask(old)
        self._server.daemon_threads = True
        self._server.timeout = 0          # handle_request() only ever accepts what is already waiting
        self._stopping.clear()
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, args=(self._server, self._wake[0]),
                                        name="control", daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def _serve(self, server: socketserver.BaseServer, wake: socket.socket) -> None:
        """Accept connections until ``stop``.  The thread sleeps in select() with no timeout — no
        periodic wake-up (socketserver's serve_forever polls every 0.5 s for its shutdown flag,
        a measurable share of an idle endpoint agent's CPU budget); ``stop`` wakes it through a
        socket pair."""
        with selectors.DefaultSelector() as sel:
            sel.register(server.fileno(), selectors.EVENT_READ, "listen")
            sel.register(wake, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                ready = sel.select()
                if self._stopping.is_set():
                    return
                if any(key.data == "listen" for key, _ in ready):
                    server.handle_request()       # accept and hand to a handler thread

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is None:
            return
        self._stopping.set()
        if self._wake is not None:
            try:
                self._wake[1].send(b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the control socket thread did not stop within %.0f s", timeout)
        self._server.server_close()
        if self._wake is not None:
            for s in self._wake:
                s.close()
            self._wake = None
        self.path.unlink(missing_ok=True)


def recv_until(s: socket.socket, end: bytes, bufsize: int = 65536) -> bytes:
    """Read from a stream socket until the data ends with ``end`` or the peer closes."""
    buf = b""
    while not buf.endswith(end):
        chunk = s.recv(bufsize)
        if not chunk:
            break
        buf += chunk
    return buf


def call(path: Path | str, method: str, timeout: float = 30.0, **params: Any) -> Any:
    """Call a method; returns its result or raises ControlError (also when the daemon is down)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"method": method, "params": params}).encode() + b"\n")
            buf = recv_until(s, b"\n")
    except FileNotFoundError:
        raise ControlError("unreachable", f"no control socket at {path}: is the daemon running?") from None
    except (ConnectionRefusedError, socket.timeout, OSError) as exc:
        raise ControlError("unreachable", f"cannot talk to the daemon at {path}: {exc}") from None
    try:
        resp = json.loads(buf)
    except json.JSONDecodeError:
        raise ControlError("internal", f"the daemon sent an unreadable answer: {buf[:200]!r}") from None
    if resp.get("status") != "ok":
        raise ControlError(resp.get("code", "error"), resp.get("error", "unknown error"))
    return resp.get("result")
