"""A private network namespace for a root test, always removed (tests that talk to the kernel's
nftables without the whole lab)."""
from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Iterator

import pytest


@contextlib.contextmanager
def private_netns(prefix: str) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"{prefix}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name])


def run_probe(prefix: str, code: str, pythonpath: list[str], timeout: float = 120) -> str:
    """Run Python ``code`` in a private namespace; its stdout (the test asserts on it) or a failure
    with everything it printed."""
    import sys
    with private_netns(prefix) as name:
        env = {**os.environ, "PYTHONPATH": ":".join(pythonpath)}
        r = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", code], capture_output=True,
                           text=True, env=env, timeout=timeout, cwd=pythonpath[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout
