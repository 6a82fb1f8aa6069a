"""A real clamd for tests, with a signature database of our own.

ClamAV's official databases come from database.clamav.net, which the test machines cannot reach;
clamd starts just as well on custom signature files.  ``start_clamd(run_dir, markers)`` writes one
``.ndb`` body signature per marker (``Vigil.Test.<n>``: the marker's bytes anywhere in any file),
starts ``clamd`` in the foreground with its socket under ``run_dir`` and waits for its PING.
Stop it with ``.stop()`` (SIGTERM) like any ``ManagedProcess``.
"""
from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from vigil.lab.services import ManagedProcess


def _clamd_path() -> str | None:
    return shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)


def clamd_installed() -> bool:
    return _clamd_path() is not None


def start_clamd(run_dir: Path, markers: dict[str, bytes], timeout: float = 60.0) -> tuple[ManagedProcess, Path]:
    clamd = _clamd_path()
    if clamd is None:
        pytest.skip("clamd is not installed (scripts/setup installs clamav-daemon)")
    d = run_dir / "clamd"
    (d / "db").mkdir(parents=True, exist_ok=True)
    (d / "db" / "vigil-test.ndb").write_text(
        "".join(f"Vigil.Test.{name}:0:*:{sig.hex()}\n" for name, sig in markers.items()))
    sock = d / "clamd.sock"
    conf = d / "clamd.conf"
    conf.write_text("\n".join([
        "Foreground yes", f"LocalSocket {sock}", f"DatabaseDirectory {d / 'db'}", f"LogFile {d / 'clamd.log'}",
        f"PidFile {d / 'clamd.pid'}", f"TemporaryDirectory {d}", "User root", "StreamMaxLength 25M",
        "SelfCheck 3600", ""]))
    proc = ManagedProcess("clamd", [clamd, "-c", str(conf)], run_dir).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"clamd exited: {proc.log_text()[-2000:]}{_log(d)}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(sock))
                s.sendall(b"zPING\0")
                if s.recv(16).startswith(b"PONG"):
                    return proc, sock
        except OSError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise AssertionError(f"clamd did not answer within {timeout}s: {proc.log_text()[-2000:]}{_log(d)}")


def _log(d: Path) -> str:
    try:
        return "\n" + (d / "clamd.log").read_text(errors="replace")[-2000:]
    except OSError:
        return ""
