"""The verdict service's ClamAV backend against a real clamd (signature database of our own)."""
from __future__ import annotations

import pytest

from tests.support.clamd import start_clamd
from vigil.manager.verdicts.backends import BackendError, Clamd

pytestmark = pytest.mark.integration

MARKER = b"VIGIL-CLAMAV-TEST-7d1e4a"


@pytest.fixture
def clamd(tmp_path):
    proc, sock = start_clamd(tmp_path, {"Marker": MARKER})
    try:
        yield sock
    finally:
        proc.stop()


def test_clamd_finds_our_signature_and_passes_clean_files(clamd, tmp_path):
    c = Clamd(clamd, timeout=30)
    assert c.available()
    hit = tmp_path / "hit.bin"
    hit.write_bytes(b"\x7fELF" + bytes(5000) + MARKER + bytes(100))
    f = c.scan(hit)
    assert (f.verdict, f.source) == ("malicious", "clamav:Vigil.Test.Marker.UNOFFICIAL"), f
    clean = tmp_path / "clean.bin"
    clean.write_bytes(b"\x7fELF" + bytes(200_000))
    assert c.scan(clean) is None
    # a sample bigger than clamd's stream limit (25 MB here) is an error, never "clean"
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(26 * 1024 * 1024))
    with pytest.raises(BackendError, match="size limit"):
        c.scan(big)


def test_a_dead_clamd_is_a_backend_error(tmp_path):
    proc, sock = start_clamd(tmp_path, {"Marker": MARKER})
    proc.stop()
    sample = tmp_path / "s"
    sample.write_bytes(MARKER)
    with pytest.raises(BackendError):
        Clamd(sock, timeout=5).scan(sample)
