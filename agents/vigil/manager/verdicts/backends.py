"""Analysis backends: hash-intelligence lists, YARA rules, ClamAV (clamd).

A backend returns a ``Finding`` (verdict + source + detail) or None when it has nothing to say.
``HashLists`` needs only the hash and answers at once; ``Yara`` and ``Clamd`` need the sample file
and run on the analysis thread with a timeout, so a hung scanner can never wedge the service.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...control import recv_until
from .store import is_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    verdict: str          # malicious / grayware / benign
    source: str           # e.g. yara:Vigil_Test_Marker, list:bad.txt, clamav:Eicar-Signature
    detail: str = ""


class HashLists:
    """Plain files of SHA-256 hashes, re-read when a file changes (checked at most once a second)."""

    def __init__(self, bad: list[Path], good: list[Path]):
        self.files = [(Path(p), "malicious") for p in bad] + [(Path(p), "benign") for p in good]
        self._mtimes: dict[Path, float] = {}
        self._index: dict[str, Finding] = {}
        self.errors: list[str] = []
        self.invalid_lines = 0
        self.reload()

    def reload(self) -> bool:
        mtimes = {}
        for path, _ in self.files:
            try:
                mtimes[path] = path.stat().st_mtime
            except OSError:
                mtimes[path] = -1.0
        if mtimes == self._mtimes:
            return False
        index: dict[str, Finding] = {}
        errors, invalid = [], 0
        for path, verdict in self.files:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                errors.append(f"{path}: {exc}")
                continue
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                sha, _, name = line.partition(" ")
                sha = sha.lower()
                if not is_sha256(sha):
                    invalid += 1
                    continue
                # known-bad wins over known-good when a hash is on both
                if verdict == "benign" and sha in index:
                    continue
                index[sha] = Finding(verdict, f"list:{path.name}", name.strip() or f"{path}:{n}")
        for e in errors:
            log.warning("verdicts: hash list unreadable: %s", e)
        if invalid:
            log.warning("verdicts: %d lines in hash lists are not SHA-256 hashes; ignored", invalid)
        self._index, self._mtimes, self.errors, self.invalid_lines = index, mtimes, errors, invalid
        return True

    def lookup(self, sha: str) -> Finding | None:
        return self._index.get(sha)

    def __len__(self) -> int:
        return len(self._index)


class Yara:
    """The ``yara`` command line (Debian's package) over the configured rule files.

    yara-python would avoid a process per sample, but analysis runs at most a few times a minute
    and the CLI keeps a crashing rule engine out of the manager's process.
    """

    name = "yara"

    def __init__(self, rule_paths: list[Path], binary: str = "yara", timeout: float = 20.0):
        self.binary = shutil.which(binary) or binary
        self.timeout = timeout
        self.rule_files: list[Path] = []
        for p in rule_paths:
            p = Path(p)
            if p.is_dir():
                self.rule_files += sorted(x for x in p.iterdir() if x.suffix in (".yar", ".yara"))
            elif p.exists():
                self.rule_files.append(p)
            else:
                log.warning("verdicts: YARA rule path %s does not exist", p)

    def available(self) -> bool:
        return bool(self.rule_files) and os.access(self.binary, os.X_OK)

    def scan(self, sample: Path) -> Finding | None:
        for rules in self.rule_files:
            try:
                r = subprocess.run([self.binary, "-w", "-m", str(rules), str(sample)], capture_output=True,
                                   text=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise BackendError(f"yara timed out after {self.timeout:.0f}s on {rules.name}") from None
            if r.returncode != 0:
                raise BackendError(f"yara failed on {rules.name}: {r.stderr.strip()[:300]}")
            for line in r.stdout.splitlines():
                # "RuleName [meta=...] /path" — the first word is the rule
                rule = line.split(" ", 1)[0]
                if not rule:
                    continue
                verdict = "grayware" if "verdict=\"grayware\"" in line else "malicious"
                return Finding(verdict, f"yara:{rule}", f"{rules.name}: {line[:300]}")
        return None


class Clamd:
    """clamd's INSTREAM command over its unix socket; used only when the socket exists."""

    name = "clamav"
    CHUNK = 64 * 1024

    def __init__(self, socket_path: Path | None, timeout: float = 30.0):
        self.socket_path = socket_path
        self.timeout = timeout

    def available(self) -> bool:
        return self.socket_path is not None and Path(self.socket_path).exists()

    def scan(self, sample: Path) -> Finding | None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, open(sample, "rb") as f:
                s.settimeout(self.timeout)
                s.connect(str(self.socket_path))
                try:
                    s.sendall(b"zINSTREAM\0")
                    while chunk := f.read(self.CHUNK):
                        s.sendall(struct.pack(">I", len(chunk)) + chunk)
                    s.sendall(struct.pack(">I", 0))
                except (BrokenPipeError, ConnectionResetError) as exc:
                    # clamd answers "INSTREAM size limit exceeded. ERROR" and hangs up while we
                    # are still sending (StreamMaxLength): report its words, not the broken pipe
                    try:
                        said = recv_until(s, b"\0").rstrip(b"\0").decode(errors="replace")
                    except OSError:
                        said = ""
                    raise BackendError(f"clamd at {self.socket_path} stopped reading the sample: "
                                       f"{said or exc}") from None
                buf = recv_until(s, b"\0", 4096)
        except OSError as exc:
            raise BackendError(f"clamd at {self.socket_path}: {exc}") from None
        answer = buf.rstrip(b"\0").decode(errors="replace")
        # "stream: OK" / "stream: Eicar-Signature FOUND" / "INSTREAM size limit exceeded. ERROR"
        if answer.endswith(" FOUND"):
            name = answer.split(": ", 1)[-1][: -len(" FOUND")]
            return Finding("malicious", f"clamav:{name}", answer[:300])
        if answer.endswith(": OK"):
            return None
        raise BackendError(f"clamd answered {answer[:200]!r}")


class BackendError(RuntimeError):
    pass
