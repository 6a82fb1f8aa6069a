"""RFC 6587 framing and file record splitting."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from vigil.collector.framing import StreamFramer, records

pytestmark = pytest.mark.unit


def test_octet_counting_and_lf_in_one_stream():
    f = StreamFramer(1024)
    out = f.feed(b"11 <13>hello A<13>lf frame\n5 <1>xy")
    assert out == [b"<13>hello A", b"<13>lf frame", b"<1>xy"]


def test_frames_split_across_reads():
    f = StreamFramer(1024)
    data = b"17 <34>1 - h a - - x<14>b\r\n"
    got = []
    for i in range(len(data)):
        got += f.feed(data[i:i + 1])
    assert got == [b"<34>1 - h a - - x", b"<14>b"]


def test_message_containing_newline_survives_octet_counting():
    f = StreamFramer(1024)
    assert f.feed(b"12 <1>line1\nl2\nnext\n") == [b"<1>line1\nl2\n", b"next"]


def test_lf_lines_starting_with_digits_are_not_lengths():
    f = StreamFramer(1024)
    lines = [b"1 2019-05-15T16:25:50Z HOSTNAME CheckPoint 19710 - [action:\"Drop\"]",
             b"12/30-14:09:21.116402  [**] [1:1917:6] SCAN [**] {TCP} 10.0.0.1:1 -> 10.0.0.2:2",
             b"05/30-19:09:10.917356  [**] [1:527:8] x [**]", b"0|Ubiquiti|UniFi|1|2|n|3|src=1.2.3.4"]
    assert f.feed(b"\n".join(lines) + b"\n") == lines
    assert f.malformed == 0


def test_oversized_octet_frame_is_skipped_without_buffering():
    f = StreamFramer(512)
    out = f.feed(b"100000 <13>" + b"x" * 996)
    assert out == [] and f.oversized == 1 and len(f.buf) == 0
    out = f.feed(b"x" * 99000 + b"<13>after\n")
    assert out == [b"<13>after"]


def test_oversized_lf_frame_is_discarded_up_to_its_newline():
    f = StreamFramer(512)
    assert f.feed(b"<13>" + b"y" * 600) == []
    assert f.oversized == 1
    assert f.feed(b"yyy\n<13>next\n") == [b"<13>next"]


def test_bad_length_counts_as_malformed_and_resyncs():
    f = StreamFramer(512)
    assert f.feed(b"12x34 nonsense\n12 <x>bad pri\n<13>ok\n") == [b"12x34 nonsense", b"12 <x>bad pri", b"<13>ok"]
    assert f.malformed == 1


def test_tail_returns_unterminated_last_frame():
    f = StreamFramer(512)
    assert f.feed(b"<13>no newline") == []
    assert f.tail() == b"<13>no newline"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), max_size=20), st.integers(1, 64))
def test_framer_never_raises_and_never_exceeds_cap(chunks, step):
    f = StreamFramer(512)
    data = b"".join(chunks)
    for i in range(0, len(data), step):
        for m in f.feed(data[i:i + step]):
            assert len(m) <= 512
    assert len(f.buf) <= 512 + 16


_pri = st.integers(0, 191).map(lambda p: b"<%d>" % p)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_pri, st.binary(min_size=0, max_size=200)).map(b"".join), min_size=1, max_size=10))
def test_octet_counted_roundtrip(msgs):
    f = StreamFramer(4096)
    stream = b"".join(b"%d %s" % (len(m), m) for m in msgs)
    assert f.feed(stream) == msgs


_OCTET_LIKE = re.compile(rb"[1-9][0-9]{0,8} <[0-9]{1,3}>")
# LF lines, many starting with digits: year-first and Snort times, RFC 5424 without PRI, Cisco
# sequence numbers, a count with a space but no PRI
_lf_line = st.one_of(
    st.sampled_from([b"2015 Nov 13 10:00:01 host app: x", b"1 2019-05-15T16:25:50Z h CheckPoint 1 - [a:\"b\"]",
                     b"12/30-14:09:21.116402  [**] [1:1917:6] SCAN [**]", b"681: Aug 17 17:41:24.776 AEST: %SYS-5",
                     b"20 bytes here is not a count", b"300 <notapri> x", b"7 <", b"<13>Nov 13 10:00:01 h a: m"]),
    st.binary(min_size=1, max_size=120).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")),
).filter(lambda b: b.strip(b" ") != b"" and not _OCTET_LIKE.match(b))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("octet"), st.tuples(_pri, st.binary(max_size=200)).map(b"".join)),
                          st.tuples(st.just("lf"), _lf_line)), min_size=1, max_size=15),
       st.integers(1, 97))
def test_mixed_framing_never_loses_a_boundary(frames, step):
    f = StreamFramer(4096)
    stream = b"".join(b"%d %s" % (len(m), m) if kind == "octet" else m + b"\n" for kind, m in frames)
    got = []
    for i in range(0, len(stream), step):
        got += f.feed(stream[i:i + step])
    assert got == [m for _kind, m in frames]


def test_a_slowly_arriving_line_is_searched_once():
    f = StreamFramer(1 << 20)
    f.feed(b"<13>" + b"x" * 1000)
    assert f.noeol == 1004
    for _ in range(1000):
        assert f.feed(b"y") == []
    assert f.noeol == 2004
    assert f.feed(b"\n2015 Nov 13 10:00:01 h a: m\n") == [b"<13>" + b"x" * 1000 + b"y" * 1000,
                                                            b"2015 Nov 13 10:00:01 h a: m"]


def test_records_groups_multiline_forms():
    text = "a\n{\n  \"x\": 1\n}\n[**] [1:2:3] m [**]\n[Priority: 1]\n\nlast"
    assert [(a, n) for a, n, _ in records(text)] == [(1, 1), (2, 3), (5, 2), (7, 1), (8, 1)]
