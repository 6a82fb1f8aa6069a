"""Shared by the benchmarks that run their measuring half inside a network namespace of their own:
the script re-executes itself there with ``--inner`` and the namespace goes when it ends, even on
failure, so no nftables table or set of a benchmark ever lands in the host's namespace."""
from __future__ import annotations

import os
import subprocess
import sys


def reexec_inner(prefix: str, script: str, args: list[str]) -> int:
    """Run ``python script --inner *args`` in a fresh namespace ``<prefix><pid>``; its exit code."""
    ns = f"{prefix}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, script, "--inner", *args]).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
