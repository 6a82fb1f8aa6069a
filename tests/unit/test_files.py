"""vigil.files.atomic_write: whole or nothing, with the mode asked for."""
from __future__ import annotations

import os
import stat

import pytest

from vigil.files import atomic_write

pytestmark = pytest.mark.unit


def test_writes_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "state.json"
    atomic_write(p, "one")
    atomic_write(p, b"two\x00")
    assert p.read_bytes() == b"two\x00"
    assert [x.name for x in tmp_path.iterdir()] == ["state.json"]


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "pub.pem", b"k", 0o644)
        atomic_write(tmp_path / "key.pem", b"k", 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pub.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "state.json"
    atomic_write(p, "old")
    (tmp_path / "state.json.tmp").mkdir()          # the temporary cannot be opened
    with pytest.raises(OSError):
        atomic_write(p, "new")
    assert p.read_text() == "old"
