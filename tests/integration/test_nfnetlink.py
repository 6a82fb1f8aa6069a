"""The raw nfnetlink bulk load (engine/nfnetlink.py) against the real kernel, in a private network
namespace: sets written by one batch list exactly as nft lists the same contents written by an nft
script (keys, networks, flows, timeouts, open and adjacent intervals), a refill replaces them whole,
and a refused batch leaves the old contents in place."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.netns import run_probe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent('''
    import json, re, subprocess, sys
    from vigil.engine import nftables as nft, nfnetlink

    contents = {
        "block4": [("10.0.0.1", 500000), ("10.0.0.2", None), ("255.255.255.255", 7000), ("0.0.0.0", 9000)],
        "block6": [("2001:db8::1", 600000), ("::1", None), ("::", 1)],
        "flow4": [("10.0.0.1 . 10.0.0.2 . tcp . 22", 900000), ("1.2.3.4 . 5.6.7.8 . udp . 65535", None),
                  ("1.2.3.4 . 5.6.7.8 . sctp . 1", 5000)],
        "flow6": [("2001:db8::1 . 2001:db8::2 . tcp . 443", 900000)],
        "blocknet4": [("0.0.0.0/8", 100000), ("10.0.0.0/8", None), ("11.0.0.0/8", 300000),
                      ("12.1.2.3/32", 400000), ("255.255.255.0/24", 5000)],
        "blocknet4_1": [("10.1.0.0/16", 100000)],
        "blocknet6": [("2001:db8::/32", 100000), ("ffff::/16", None)],
        "allownet4": [("0.0.0.0/0", 60000)],
        "allownet6": [("::/0", None)],
        "allownet6_1": [("fd00::/8", 70000), ("fe80::/10", None)],
        "allow4": [("192.0.2.1", 3000)],
        "allow6": [],
        "local4": [("9.9.9.9", 10000)],
    }

    def listing(names):
        out = []
        for name in names:
            t = subprocess.run(["nft", "list", "set", "bridge", "vigil", name], capture_output=True,
                               text=True, check=True).stdout
            out.append(re.sub(r" expires [0-9hmsd]+", "", t))
        return "\\n".join(out)

    w = nft.NftWriter(nft.make_backend("cli"))
    w.delete_table()
    w.ensure_table()
    w.bulk = False
    w.replace(contents)
    by_nft = listing(contents)
    w.replace({n: [] for n in contents})
    w.bulk = True
    w.replace(contents)
    assert listing(contents) == by_nft, (listing(contents), by_nft)
    w.replace(contents)                                   # refill over full sets
    assert listing(contents) == by_nft

    many = [(f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 600000 + i) for i in range(30000)]
    w.replace({"block4": many})
    doc = json.loads(subprocess.run(["nft", "-j", "list", "set", "bridge", "vigil", "block4"],
                                    capture_output=True, text=True, check=True).stdout)
    n = len([x for x in doc["nftables"] if "set" in x][0]["set"]["elem"])
    assert n == 30000, n
    w.replace(contents)

    for bad in ({"blocknet4": [("10.0.0.0/8", None), ("10.1.0.0/16", None)], "block4": []},
                {"block4": [], "flow4": [("1.2.3.4 . 5.6.7.8 . icmp . 1", None)]},
                {"block4": [("10.0.0.300", None)]}):
        try:
            w.replace(bad)
        except nft.NftError as exc:
            print("refused:", exc)
        else:
            raise AssertionError(f"accepted {bad}")
        assert listing(contents) == by_nft
    b = nfnetlink.Batch(nft.TABLE)               # a kernel refusal (no such set) aborts the batch
    b.flush("block4")
    b.flush("nosuchset")
    try:
        b.send()
    except nfnetlink.NetlinkError as exc:
        assert "ENOENT" in str(exc), exc
    else:
        raise AssertionError("kernel accepted a flush of a missing set")
    assert listing(contents) == by_nft
    w.delete_table()
    print("ok")
''')


def test_bulk_batch_lists_like_nft_and_refusals_keep_old_contents():
    out = run_probe("vnl", PROBE, [str(ROOT / "agents"), str(ROOT)])
    assert out.strip().endswith("ok"), out
