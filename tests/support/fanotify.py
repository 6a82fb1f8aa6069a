"""A tmpfs of a test's own for a real vigil-endpoint to mark, and the kernel's view of fanotify marks.

``mount_tmpfs(prefix, size)`` creates ``RUN_ROOT/<prefix><random>`` and mounts a fresh tmpfs on its
``mnt`` (nothing but this mount is ever given to an agent, so nothing else is marked); it returns
``(run, mnt)``.  ``remove_tmpfs(run)`` unmounts it (lazily) and removes the directory.
``mount_id(path)`` is the mount's id in /proc/self/mountinfo; ``fanotify_marks_on(mnt_id)`` lists
the fanotify groups (any process's) that still hold a mark on it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

# Not under /run/vigil-lab: `vigil-lab clean` removes lab directories without an owner.pid there.
RUN_ROOT = Path("/run/vigil-endpoint-tests")


def mount_tmpfs(prefix: str, size: str = "16m") -> tuple[Path, Path]:
    run = RUN_ROOT / f"{prefix}{uuid.uuid4().hex[:6]}"
    mnt = run / "mnt"
    mnt.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", f"vigil-test-{run.name}", str(mnt)],
                       check=True)
    except BaseException:
        shutil.rmtree(run, ignore_errors=True)
        raise
    return run, mnt


def remove_tmpfs(run: Path) -> None:
    subprocess.run(["umount", "-l", str(run / "mnt")], check=False)
    shutil.rmtree(run, ignore_errors=True)


def mount_id(path: Path) -> int | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == str(path):
            return int(f[0])
    return None


def fanotify_marks_on(mnt_id: int) -> list[str]:
    """Processes holding a fanotify group with a mark on the given mount (from /proc/*/fdinfo)."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) != "anon_inode:[fanotify]":
                continue
            info = (fd.parent.parent / "fdinfo" / fd.name).read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("fanotify mnt_id:") and int(line.split()[1].split(":")[1], 16) == mnt_id:
                found.append(f"{fd}: {line}")
    return found
