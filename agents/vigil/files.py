"""Files written whole or not at all.

``atomic_write(path, data, mode=None)`` writes ``<path>.tmp``, fsyncs it, renames it over ``path``
and fsyncs the directory, so after a crash or power loss ``path`` holds either the old or the new
content, never a torn mix.  Every state file of every program goes through it (learning clock,
event sequence, spooled batches, baselines, rule-set state, signing keys).  A leftover
``<name>.tmp`` from a crash is the writer's to ignore or remove.
"""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path | str, data: bytes | str, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8); ``mode`` sets the new file's
    permissions (default: 0o666 less the umask).  Raises OSError; the old file is then intact."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if mode is not None:
        os.chmod(tmp, mode)          # O_CREAT's mode is reduced by the umask; and tmp may have existed
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)                # the rename itself survives a power loss
    except OSError:
        pass
    finally:
        os.close(dfd)
