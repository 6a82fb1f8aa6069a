"""Syslog listeners: UDP, TCP and TLS (RFC 5425) on one asyncio loop in its own thread.

Each received message is handed, with the sender's address, to ``sink(batch)`` through a bounded
queue that a separate worker drains.  Nothing a sender does can stop the listener or starve other
senders:

- per-sender token bucket (``rate_per_source``/``burst_per_source``): excess is dropped, counted;
- size cap: an oversized datagram or frame is skipped (never buffered whole), counted;
- malformed framing is counted and the stream resynchronises on the next LF;
- when the queue is full, UDP datagrams are dropped (counted) and TCP/TLS connections stop being
  read until there is room (TCP flow control pushes back on the sender);
- connection limit and idle timeout; a TLS handshake failure is counted and closes that
  connection only.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import queue
import socket
import ssl
import threading
import time
from collections import OrderedDict
from typing import Callable

from ..counters import Counters
from .config import CollectorConfig, SourceConfig, split_hostport
from .framing import StreamFramer

log = logging.getLogger(__name__)

Batch = tuple[str, list[bytes]]   # (sender address, messages)


class TokenBuckets:
    """Per-sender rate limits; at most ``max_senders`` buckets (least recently used go first)."""

    def __init__(self, rate: float, burst: int, rate_for: Callable[[str], float | None], max_senders: int = 50000):
        self.rate, self.burst, self.rate_for, self.max = rate, burst, rate_for, max_senders
        self.buckets: OrderedDict[str, list[float]] = OrderedDict()

    def take(self, sender: str, n: int, now: float) -> int:
        """How many of n messages may pass now."""
        b = self.buckets.get(sender)
        if b is None:
            rate = self.rate_for(sender) or self.rate
            b = [float(max(self.burst, rate)), now, rate]
            self.buckets[sender] = b
            if len(self.buckets) > self.max:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(sender)
        tokens, last, rate = b
        tokens = min(max(self.burst, rate), tokens + (now - last) * rate)
        ok = min(n, int(tokens))
        b[0], b[1] = tokens - ok, now
        return ok


class SourceMap:
    def __init__(self, sources: list[SourceConfig]):
        # most specific network first
        self.sources = sorted(sources, key=lambda s: -s.address.prefixlen)
        self._cache: dict[str, SourceConfig | None] = {}

    def lookup(self, addr: str) -> SourceConfig | None:
        if addr in self._cache:
            return self._cache[addr]
        found = None
        try:
            ip = ipaddress.ip_address(addr)
            if ip.version == 6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            found = next((s for s in self.sources if ip.version == s.address.version and ip in s.address), None)
        except ValueError:
            pass
        if len(self._cache) > 100000:
            self._cache.clear()
        self._cache[addr] = found
        return found


class SyslogServer:
    def __init__(self, cfg: CollectorConfig, counters: Counters, sources: SourceMap):
        self.cfg = cfg
        self.counters = counters
        self.sources = sources
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=max(1, cfg.queue_size // 64))
        self.limits = TokenBuckets(cfg.rate_per_source, cfg.burst_per_source,
                                   lambda a: (s.rate if (s := sources.lookup(a)) else None))
        self.per_source_dropped: dict[str, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.bound: dict[str, tuple[str, int]] = {}
        self.connections = 0
        self._servers: list = []
        self._transports: set = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- life cycle ----------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        self.thread = threading.Thread(target=self._run, name="collector-syslog", daemon=True)
        self.thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("syslog listeners did not start in time")
        if self._error:
            raise self._error

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        if self.thread:
            self.thread.join(timeout)

    async def _shutdown(self) -> None:
        for s in self._servers:
            s.close()                  # stop accepting; open connections are closed below
        for t in list(self._transports):
            t.close()
        await asyncio.sleep(0.1)       # let connection_lost hand over what was read
        asyncio.get_running_loop().stop()

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._listen())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            for s in self._servers:
                s.close()
            self.loop.close()

    async def _listen(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        if cfg.udp:
            host, port = split_hostport(cfg.udp, "udp")
            tr, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
            self._servers.append(tr)
            sock = tr.get_extra_info("socket")
            if sock is not None:       # room for bursts; what the kernel still drops it counts itself
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                except OSError:
                    pass
            self.bound["udp"] = tr.get_extra_info("sockname")[:2]
        if cfg.tcp:
            host, port = split_hostport(cfg.tcp, "tcp")
            srv = await loop.create_server(lambda: _Stream(self, "tcp"), host, port, backlog=256)
            self._servers.append(srv)
            self.bound["tcp"] = srv.sockets[0].getsockname()[:2]
        if cfg.tls:
            host, port = split_hostport(cfg.tls, "tls")
            srv = await loop.create_server(self._tls_protocol, host, port, ssl=self._ssl(),
                                           backlog=256, ssl_handshake_timeout=10)
            self._servers.append(srv)
            self.bound["tls"] = srv.sockets[0].getsockname()[:2]
        for proto, (h, p) in self.bound.items():
            log.info("collector: listening %s on %s:%d", proto, h, p)

    def _tls_protocol(self) -> "_Stream":
        # called when a TLS connection is accepted, before its handshake; a connection whose
        # handshake fails never reaches connection_made, so accepted - established = failures
        self.counters.inc("syslog_tls_accepted")
        return _Stream(self, "tls")

    def tls_handshake_failures(self) -> int:
        return max(0, self.counters.get("syslog_tls_accepted") - self.counters.get("syslog_tls_connections"))

    def _ssl(self) -> ssl.SSLContext:
        t = self.cfg.tls_files
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(t.cert), str(t.key))
        # No TLS 1.3 session tickets: a sender that writes and closes without reading would have
        # unread tickets in its receive buffer, its kernel would answer the close with a RST, and
        # ours would discard the messages it had not yet handed to us.
        ctx.num_tickets = 0
        if t.ca:
            ctx.load_verify_locations(str(t.ca))
            ctx.verify_mode = ssl.CERT_REQUIRED if t.require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    # -- shared by the protocols ------------------------------------------------------------
    def admit(self, sender: str, msgs: list[bytes]) -> list[bytes]:
        ok = self.limits.take(sender, len(msgs), time.monotonic())
        if ok < len(msgs):
            dropped = len(msgs) - ok
            self.counters.inc("syslog_rate_limited", dropped)
            self.per_source_dropped[sender] = self.per_source_dropped.get(sender, 0) + dropped
            if len(self.per_source_dropped) > 1000:
                self.per_source_dropped.pop(next(iter(self.per_source_dropped)))
            msgs = msgs[:ok]
        return msgs

    def offer(self, sender: str, msgs: list[bytes]) -> bool:
        try:
            self.queue.put_nowait((sender, msgs))
            return True
        except queue.Full:
            return False


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, srv: SyslogServer):
        self.srv = srv

    def datagram_received(self, data: bytes, addr) -> None:
        srv = self.srv
        srv.counters.inc("syslog_udp_datagrams")
        if len(data) > srv.cfg.max_message_size:
            srv.counters.inc("syslog_oversized")
            return
        data = data.rstrip(b"\r\n\x00")
        if not data:
            srv.counters.inc("syslog_empty")
            return
        msgs = srv.admit(addr[0], [data])
        if msgs and not srv.offer(addr[0], msgs):
            srv.counters.inc("syslog_queue_full_dropped")

    def error_received(self, exc) -> None:
        self.srv.counters.inc("syslog_udp_errors")


class _Stream(asyncio.Protocol):
    def __init__(self, srv: SyslogServer, kind: str):
        self.srv, self.kind = srv, kind
        self.framer = StreamFramer(srv.cfg.max_message_size)
        self.pending: list[bytes] = []
        self.transport = None
        self.sender = "?"
        self.paused = False
        self.last = time.monotonic()
        self.idle_handle = None
        self.counted = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.sender = peer[0] if peer else "?"
        srv = self.srv
        if srv.connections >= srv.cfg.max_connections:
            srv.counters.inc("syslog_connections_refused")
            transport.abort()
            return
        self.counted = True
        srv.connections += 1
        srv._transports.add(transport)
        srv.counters.inc(f"syslog_{self.kind}_connections")
        self.idle_handle = asyncio.get_running_loop().call_later(srv.cfg.idle_timeout, self._idle)

    def connection_lost(self, exc) -> None:
        if self.counted:
            self.srv.connections -= 1
            self.counted = False
            self.srv._transports.discard(self.transport)
        tail = self.framer.tail()
        if tail:
            self._deliver([tail])
        self._flush_pending()         # keeps retrying until the queue takes what was read
        if self.idle_handle:
            self.idle_handle.cancel()
        if exc is not None and self.kind == "tls" and isinstance(exc, ssl.SSLError):
            self.srv.counters.inc("syslog_tls_errors")

    def _idle(self) -> None:
        if time.monotonic() - self.last >= self.srv.cfg.idle_timeout:
            self.srv.counters.inc("syslog_idle_closed")
            self.transport.close()
        else:
            self.idle_handle = asyncio.get_running_loop().call_later(self.srv.cfg.idle_timeout, self._idle)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        fr = self.framer
        before = (fr.oversized, fr.malformed)
        msgs = fr.feed(data)
        if (fr.oversized, fr.malformed) != before:
            self.srv.counters.inc("syslog_oversized", fr.oversized - before[0])
            self.srv.counters.inc("syslog_malformed_frames", fr.malformed - before[1])
        if msgs:
            self._deliver(msgs)

    def _deliver(self, msgs: list[bytes]) -> None:
        msgs = self.srv.admit(self.sender, msgs)
        if not msgs:
            return
        if self.pending or not self.srv.offer(self.sender, msgs):
            self.pending.extend(msgs)
            if not self.paused and self.transport is not None and not self.transport.is_closing():
                self.paused = True
                self.transport.pause_reading()
                self.srv.counters.inc("syslog_backpressure_pauses")
            asyncio.get_running_loop().call_later(0.005, self._flush_pending)

    def _flush_pending(self, final: bool = False) -> None:
        if self.pending:
            if self.srv.offer(self.sender, self.pending):
                self.pending = []
            elif final:
                self.srv.counters.inc("syslog_queue_full_dropped", len(self.pending))
                self.pending = []
            else:
                asyncio.get_running_loop().call_later(0.005, self._flush_pending)
                return
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()
