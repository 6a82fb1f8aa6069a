"""Splitting byte streams and files into messages.

``StreamFramer`` implements RFC 6587 for syslog over TCP/TLS: each frame is either octet-counted
(``LEN SP MSG``) or terminated by LF; the choice is made per frame from its first bytes: octet
counting only for a length without leading zero (at most 9 digits), a space and a valid ``<PRI>``
(RFC 6587 3.4.1 frames a syslog message, which starts with its PRI).  Anything else is an LF line,
so one connection may mix them, and LF lines that start with digits (a year-first time ``2015 Nov
13 ...``, Snort times, RFC 5424 without PRI, Cisco sequence numbers) stay whole.  Oversized frames
are skipped (counted), never buffered whole; an octet-counted one is skipped by its length, so the
next frame's boundary is kept.  Each byte is searched for LF once, however slowly a line arrives.

``records(text)`` splits a log *file* into records: one per line, except the multi-line forms some
tools write to files (Snort alert_full, pretty-printed JSON, ModSecurity's native serial audit
log).  It yields ``(first_line_number, line_count, text)``.
"""
from __future__ import annotations

import re
from typing import Iterator

_MAX_LEN_DIGITS = 9


class StreamFramer:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self.buf = bytearray()
        self.skip = 0            # bytes still to discard from an oversized octet-counted frame
        self.discard_line = False  # discarding an oversized LF frame up to its LF
        self.noeol = 0           # leading bytes of buf known to hold no LF (a line still arriving)
        self.oversized = 0
        self.malformed = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        max_size = self.max_size
        while pos < n:
            if self.skip:
                take = min(self.skip, n - pos)
                self.skip -= take
                pos += take
                continue
            if self.discard_line:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    pos = n
                    break
                pos = nl + 1
                self.discard_line = False
                continue
            c = buf[pos]
            if 49 <= c <= 57 and not (pos == 0 and self.noeol):
                # octet counting only for "LEN <PRI>": a length without leading zero (at most 9
                # digits), a space, then "<", 1-3 digits (at most 191) and ">"; anything else is
                # an LF line (a year-first "2015 Nov 13 ...", RFC 5424 without PRI "1 2019-...")
                sp = buf.find(b" ", pos, pos + _MAX_LEN_DIGITS + 1)
                if sp < 0:
                    if n - pos <= _MAX_LEN_DIGITS and buf[pos:n].isdigit():
                        break                      # need more bytes to decide
                elif sp + 1 >= n:
                    break
                elif buf[sp + 1] == 60:            # "<"
                    gt = buf.find(b">", sp + 2, sp + 6)
                    if gt < 0 and n < sp + 6 and (sp + 2 >= n or buf[sp + 2:n].isdigit()):
                        break                      # the PRI may still be arriving
                    digits = buf[pos:sp]
                    if digits.isdigit():
                        pri = buf[sp + 2:gt] if gt > 0 else b""
                        if pri.isdigit() and int(pri) <= 191:
                            length, start = int(digits), sp + 1
                            if length > max_size:
                                # a sender's octet-counted frame that is too big: skipped by its
                                # count, so the next frame's boundary is kept (as an LF line it
                                # would run into the next frames, which have no LF between them)
                                self.oversized += 1
                                self.skip = length
                                pos = start
                                continue
                            if n - start < length:
                                break              # incomplete frame
                            out.append(bytes(buf[start:start + length]))
                            pos = start + length
                            self.noeol = 0
                            continue
                        self.malformed += 1        # "LEN <" without a valid PRI: read as a line
            # LF framing; the bytes of a line still arriving are not searched again
            nl = buf.find(b"\n", pos + (self.noeol if pos == 0 else 0))
            if nl < 0:
                if n - pos > max_size:
                    self.oversized += 1
                    self.discard_line = True
                    self.noeol = 0
                    pos = n
                else:
                    self.noeol = n - pos
                break
            self.noeol = 0
            if nl - pos > max_size:
                self.oversized += 1
            else:
                frame = buf[pos:nl]
                if frame.endswith(b"\r"):
                    frame = frame[:-1]
                if frame:
                    out.append(bytes(frame))
            pos = nl + 1
        if pos:
            del buf[:pos]
        return out

    def tail(self) -> bytes | None:
        """What is left at end of stream (an unterminated last LF frame)."""
        if self.buf and not self.skip and not self.discard_line and len(self.buf) <= self.max_size:
            data = bytes(self.buf).rstrip(b"\r")
            self.buf.clear()
            self.noeol = 0
            return data or None
        return None


_AUDIT_A = re.compile(r"^--([0-9a-zA-Z]{8,})-A--$")
_AUDIT_Z = re.compile(r"^--([0-9a-zA-Z]{8,})-Z--$")


def records(text: str) -> Iterator[tuple[int, int, str]]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i, n = 0, len(lines)
    while i < n:
        ln = lines[i]
        end = i + 1
        if ln == "{":                                          # pretty-printed JSON object
            j = i + 1
            while j < n and lines[j].rstrip() != "}":
                j += 1
            end = min(j + 1, n)
        elif ln.startswith("[**] ["):                          # Snort alert_full
            j = i + 1
            while j < n and lines[j].strip() != "":
                j += 1
            end = j
        elif _AUDIT_A.match(ln.strip()):                       # ModSecurity serial audit log
            j = i + 1
            while j < n and not _AUDIT_Z.match(lines[j].strip()):
                j += 1
            end = min(j + 1, n)
        yield i + 1, end - i, "\n".join(lines[i:end])
        i = end
