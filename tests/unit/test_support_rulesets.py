"""tests/support/rulesets.py's kernel reader: a failed listing must fail the test reading it."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.rulesets import KernelSetError, kernel_elements

pytestmark = pytest.mark.unit


def nft(returncode: int, doc: dict | None = None, stderr: str = ""):
    def run(argv):
        assert argv[:4] == ["nft", "-j", "list", "set"]
        return subprocess.CompletedProcess(argv, returncode, json.dumps(doc or {}), stderr)
    return run


def test_elements_of_a_listed_set():
    doc = {"nftables": [{"metainfo": {}}, {"set": {"name": "block4", "elem": [
        "10.0.0.1", {"elem": {"val": "10.0.0.2", "timeout": 60, "expires": 59}}]}}]}
    assert kernel_elements(nft(0, doc), "block4") == {"10.0.0.1", "10.0.0.2"}


def test_a_failed_listing_raises_with_nfts_message():
    with pytest.raises(KernelSetError, match="No such file or directory"):
        kernel_elements(nft(1, stderr="Error: No such file or directory"), "block4")

    def raising(argv):
        raise subprocess.CalledProcessError(1, argv, "", "Error: table missing")
    with pytest.raises(KernelSetError, match="table missing"):
        kernel_elements(raising, "block4")


def test_missing_ok_is_explicit():
    assert kernel_elements(nft(1), "block4", missing_ok=True) is None
