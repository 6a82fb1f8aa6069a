"""Splitting byte streams and files into messages.

``StreamFramer`` implements RFC 6587 for syslog over TCP/TLS: each frame is either octet-counted
(``LEN SP MSG``) or terminated by LF; the choice is made per frame from its first bytes (a length
without leading zero, a space, then ``<`` or a length of at least 10), so one connection may even
mix them and LF lines that start with digits (Snort times, RFC 5424 without PRI) stay LF lines.
Oversized frames are skipped (counted), never buffered whole.

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
            if 49 <= c <= 57:                      # octet counting: "123 <msg>" (no leading zero)
                sp = buf.find(b" ", pos, pos + _MAX_LEN_DIGITS + 1)
                if sp < 0:
                    if n - pos <= _MAX_LEN_DIGITS and bytes(buf[pos:n]).isdigit():
                        break                      # need more bytes
                    # not a length (e.g. "12/30-14:09:21 ..." Snort time): an LF frame
                elif sp + 1 >= n:
                    break                          # need the byte after the space to decide
                else:
                    digits = bytes(buf[pos:sp])
                    length = int(digits) if digits.isdigit() else -1
                    # A real octet-counted frame holds a syslog message: "<PRI>..." or at least
                    # 10 bytes.  This keeps LF lines such as "1 2019-05-15T..." (RFC 5424 without
                    # PRI) from being read as a 1-byte frame.
                    if length >= 0 and (buf[sp + 1] == 60 or length >= 10):
                        start = sp + 1
                        if length > max_size:
                            self.oversized += 1
                            self.skip = length
                            pos = start
                            continue
                        if n - start < length:
                            break                  # incomplete frame
                        out.append(bytes(buf[start:start + length]))
                        pos = start + length
                        continue
                    if length < 0:
                        self.malformed += 1
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if n - pos > max_size:
                    self.oversized += 1
                    self.discard_line = True
                    pos = n
                break
            if nl - pos > max_size:
                self.oversized += 1
            else:
                frame = buf[pos:nl]
                if frame.endswith(b"\r"):
                    frame = frame[:-1]
                if frame:
                    out.append(bytes(frame))
            pos = nl + 1
        del buf[:pos]
        return out

    def tail(self) -> bytes | None:
        """What is left at end of stream (an unterminated last LF frame)."""
        if self.buf and not self.skip and not self.discard_line and len(self.buf) <= self.max_size:
            data = bytes(self.buf).rstrip(b"\r")
            self.buf.clear()
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
