"""The on-disk batch spool: order, PUBACK before delete, bound with a drop counter, restart."""
from __future__ import annotations

import threading

import pytest

from vigil.counters import Counters
from vigil.engine.spool import Spool, SpoolPublisher

pytestmark = pytest.mark.unit


class Info:
    def __init__(self):
        self.rc = 0
        self.acked = False

    def is_published(self):
        return self.acked


class FakeMqtt:
    def __init__(self):
        self.connected = threading.Event()
        self.sent: list[tuple[str, bytes, Info]] = []

    def publish(self, topic, data, qos=1):
        info = Info()
        self.sent.append((topic, data, info))
        return info


def test_batches_wait_on_disk_while_offline_and_replay_in_order(tmp_path):
    c = Counters()
    mq = FakeMqtt()
    pub = SpoolPublisher(mq, "t/flows", Spool(tmp_path, 1 << 20, c), c, max_inflight=3)
    for seq in range(1, 8):
        pub.submit(seq, f"batch {seq}".encode())
    assert mq.sent == [] and len(list(tmp_path.glob("*.json"))) == 7
    mq.connected.set()
    pub.pump()
    assert [d for _, d, _ in mq.sent] == [b"batch 1", b"batch 2", b"batch 3"]  # at most 3 in flight
    pub.pump()
    assert len(mq.sent) == 3  # nothing acknowledged yet: nothing deleted, nothing more sent
    mq.sent[1][2].acked = True  # PUBACK for 2 only
    pub.pump()
    assert sorted(pub.spool.entries) == [1, 3, 4, 5, 6, 7] and mq.sent[-1][1] == b"batch 4"
    for _, _, info in mq.sent:
        info.acked = True
    while pub.backlog:
        pub.pump()
        for _, _, info in mq.sent:
            info.acked = True
    assert [d for _, d, _ in mq.sent] == [f"batch {i}".encode() for i in range(1, 8)]
    assert list(tmp_path.glob("*.json")) == [] and c.get("flow_batches_acked") == 7


def test_full_spool_counts_dropped_batches(tmp_path):
    c = Counters()
    sp = Spool(tmp_path, 100, c)
    assert sp.put(1, b"x" * 60)
    assert not sp.put(2, b"y" * 60)
    assert c.get("flow_batches_dropped") == 1 and list(sp.entries) == [1]


def test_spool_survives_a_restart(tmp_path):
    c = Counters()
    sp = Spool(tmp_path, 1 << 20, c)
    for seq in (12, 10, 11):
        sp.put(seq, b"{}")
    (tmp_path / "junk.json").write_text("{}")
    again = Spool(tmp_path, 1 << 20, c)
    assert list(again.entries) == [10, 11, 12] and again.bytes == 6
    assert c.get("spool_files_ignored") == 1
