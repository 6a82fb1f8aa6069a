"""The on-disk batch spool: order, PUBACK before delete, bound with a drop counter, restart."""
from __future__ import annotations


import pytest

from tests.support.fake_mqtt import FakeMqtt
from vigil.counters import Counters
from vigil.spool import Spool, SpoolPublisher

pytestmark = pytest.mark.unit


def test_batches_wait_on_disk_while_offline_and_replay_in_order(tmp_path):
    c = Counters()
    mq = FakeMqtt(connected=False, auto_ack=False)
    pub = SpoolPublisher(mq, "t/flows", Spool(tmp_path, 1 << 20, c), c, max_inflight=3)
    for seq in range(1, 8):
        pub.submit(seq, f"batch {seq}".encode())
    assert mq.sent == [] and len(list(tmp_path.glob("*.json"))) == 7
    mq.connected.set()
    pub.pump()
    assert [d for d in (x.data for x in mq.sent)] == [b"batch 1", b"batch 2", b"batch 3"]  # at most 3 in flight
    pub.pump()
    assert len(mq.sent) == 3  # nothing acknowledged yet: nothing deleted, nothing more sent
    mq.sent[1].info.acked = True  # PUBACK for 2 only
    pub.pump()
    assert sorted(pub.spool.entries) == [1, 3, 4, 5, 6, 7] and mq.sent[-1].data == b"batch 4"
    for info in (x.info for x in mq.sent):
        info.acked = True
    while pub.backlog:
        pub.pump()
        for info in (x.info for x in mq.sent):
            info.acked = True
    assert [d for d in (x.data for x in mq.sent)] == [f"batch {i}".encode() for i in range(1, 8)]
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


def test_events_are_spooled_through_an_outage_and_an_engine_restart(tmp_path):
    from vigil import payload
    from vigil.engine.main import EventOutbox

    def outbox(mq, c):
        pub = SpoolPublisher(mq, "t/events", Spool(tmp_path, 1 << 20, c, what="event_batches"), c)
        return EventOutbox(pub, "e1", c, limit=100)

    c, mq = Counters(), FakeMqtt(connected=False, auto_ack=False)
    box = outbox(mq, c)
    box.emit({"type": "tcp-flags", "src": "10.77.0.66", "detail": "XMAS"})
    box.flush("enforcing")
    box.emit({"type": "arp-rebind", "ip": "10.77.0.10", "new_mac": "02:00:00:00:00:66"})
    box.flush("enforcing")
    assert mq.sent == [] and box.backlog == 2
    first_seq = box.seq
    # the engine restarts while the broker is still away: the new outbox finds both batches
    c2, mq2 = Counters(), FakeMqtt(connected=False, auto_ack=False)
    box2 = outbox(mq2, c2)
    assert box2.backlog == 2 and box2.seq == first_seq
    mq2.connected.set()
    box2.emit({"type": "dhcp-offer", "src": "10.77.0.99"})
    box2.flush("enforcing")
    bodies = [payload.decode(d, "events") for d in (x.data for x in mq2.sent)]
    assert [[e["type"] for e in b["events"]] for b in bodies] == [["tcp-flags"], ["arp-rebind"], ["dhcp-offer"]]
    seqs = [b["seq"] for b in bodies]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and bodies[0]["events"][0]["mode"] == "enforcing"
    for info in (x.info for x in mq2.sent):
        info.acked = True
    box2.flush("enforcing")
    assert box2.backlog == 0 and list(tmp_path.glob("*.json")) == [] and c2.get("event_batches_acked") == 3


def test_full_event_spool_counts_the_events_dropped(tmp_path):
    from vigil.engine.main import EventOutbox
    c, mq = Counters(), FakeMqtt(connected=False, auto_ack=False)
    box = EventOutbox(SpoolPublisher(mq, "t/events", Spool(tmp_path, 300, c, what="event_batches"), c), "e1", c, 100)
    for i in range(5):
        box.emit({"type": "tcp-flags", "src": f"10.77.0.{i}", "detail": "NULL"})
        box.flush("learning")
    assert box.backlog >= 1 and c.get("event_batches_dropped") >= 1
    assert c.get("events_dropped") == c.get("event_batches_dropped")   # one event per batch here


def test_a_batch_nobody_subscribed_to_stays_and_goes_out_again(tmp_path):
    """PUBACK with reason 16 ("no matching subscribers"): the broker dropped it; keep it, retry."""
    class Broker(FakeMqtt):
        def __init__(self):
            super().__init__(auto_ack=True)
            self.subscribed = False
            self.unrouted: set[int] = set()

        def publish(self, topic, data, qos=1, retain=False, properties=None):
            info = super().publish(topic, data, qos, retain, properties)
            info.mid = len(self.sent)
            if not self.subscribed:
                self.unrouted.add(info.mid)
            return info

        def take_unrouted(self, mid):
            if mid in self.unrouted:
                self.unrouted.discard(mid)
                return True
            return False

    now = [100.0]
    c = Counters()
    mq = Broker()
    pub = SpoolPublisher(mq, "t/flows", Spool(tmp_path, 1 << 20, c), c, unrouted_retry=5.0, clock=lambda: now[0])
    pub.submit(1, b"batch 1")
    pub.pump()                                     # acknowledged, but to nobody
    assert list(pub.spool.entries) == [1] and c.get("flow_batches_unrouted") == 1
    pub.pump()
    assert len(mq.sent) == 1                       # not before the retry time
    mq.subscribed = True                           # the manager subscribes
    now[0] += 5.0
    pub.pump()                                     # published again ...
    assert [s.data for s in mq.sent] == [b"batch 1", b"batch 1"]
    pub.pump()                                     # ... and this time delivered: deleted
    assert pub.backlog == 0 and c.get("flow_batches_acked") == 1
