"""SSE decoder: WHATWG event-stream rules, fed in chunks split anywhere."""

from __future__ import annotations

import pytest

from llmbatch.providers.sse import Event, SSEDecoder

SAMPLE = (
    b": keep-alive\n"
    b'data: {"a": 1}\n\n'
    b"event: custom\r\n"
    b"id: 42\r\n"
    b"data: line one\r\n"
    b"data: line two\r\n\r\n"
    b"retry: 1500\r"
    b"data:no-space\r\r"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    Event(data=b'{"a": 1}'),
    Event(data=b"line one\nline two", event="custom", id="42"),
    Event(data=b"no-space", id="42", retry_ms=1500),
    Event(data=b"[DONE]", id="42", retry_ms=1500),
]


def decode_all(chunks: list[bytes]) -> list[Event]:
    dec = SSEDecoder()
    out: list[Event] = []
    for c in chunks:
        out.extend(dec.feed(c))
    out.extend(dec.close())
    return out


def test_whole_stream() -> None:
    assert decode_all([SAMPLE]) == EXPECTED


def test_every_single_split_point() -> None:
    for i in range(len(SAMPLE) + 1):
        assert decode_all([SAMPLE[:i], SAMPLE[i:]]) == EXPECTED, f"split at {i}"


def test_every_pair_of_split_points() -> None:
    n = len(SAMPLE)
    for i in range(0, n + 1, 3):
        for j in range(i, n + 1, 5):
            assert decode_all([SAMPLE[:i], SAMPLE[i:j], SAMPLE[j:]]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode_all([SAMPLE[i : i + 1] for i in range(len(SAMPLE))]) == EXPECTED


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_line_endings(eol: bytes) -> None:
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert [e.data for e in decode_all([stream])] == [b"a\nb", b"c"]


def test_cr_at_chunk_end_then_lf_is_one_line_ending() -> None:
    # A CR ending one chunk and a LF opening the next is a single CRLF, not a blank line.
    assert [e.data for e in decode_all([b"data: x\r", b"\ndata: y\r\n\r\n"])] == [b"x\ny"]


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": ping\nfoo: bar\ndata: x\n:another\n\n"
    assert [e.data for e in decode_all([stream])] == [b"x"]


def test_only_one_leading_space_is_stripped() -> None:
    assert decode_all([b"data:  two spaces\n\n"])[0].data == b" two spaces"


def test_field_without_colon_has_empty_value() -> None:
    # "data" alone appends an empty line: two of them give "\n".
    assert decode_all([b"data\ndata\n\n"])[0].data == b"\n"


def test_empty_data_dispatches_nothing_and_event_type_resets() -> None:
    events = decode_all([b"event: x\n\n", b"data: y\n\n"])
    assert events == [Event(data=b"y")]


def test_unterminated_event_at_end_is_discarded() -> None:
    assert decode_all([b"data: complete\n\ndata: torn"]) == [Event(data=b"complete")]


def test_id_with_nul_is_ignored_and_id_persists() -> None:
    events = decode_all([b"id: 1\ndata: a\n\nid: x\x00y\ndata: b\n\n"])
    assert [e.id for e in events] == ["1", "1"]


def test_retry_needs_ascii_digits() -> None:
    events = decode_all([b"retry: 12a\ndata: a\n\nretry: 7\ndata: b\n\n"])
    assert [e.retry_ms for e in events] == [None, 7]


def test_leading_bom_stripped_once_even_when_split() -> None:
    bom = b"\xef\xbb\xbf"
    stream = bom + b"data: a\n\n"
    for i in range(len(stream) + 1):
        assert decode_all([stream[:i], stream[i:]]) == [Event(data=b"a")]
    # A second BOM is data, not stripped.
    assert decode_all([bom + bom + b"data: a\n\n"]) == []


def test_invalid_utf8_is_replaced_in_text() -> None:
    ev = decode_all([b"data: \xff\xfe ok\n\n"])[0]
    assert ev.text == "\ufffd\ufffd ok"


def test_unicode_line_separators_do_not_split() -> None:
    text = "a\u2028b\u0085c"
    ev = decode_all([b"data: " + text.encode() + b"\n\n"])[0]
    assert ev.text == text


def test_one_mebibyte_line_in_small_chunks() -> None:
    payload = b"x" * (1 << 20)
    stream = b"data: " + payload + b"\n\n"
    chunks = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    events = decode_all(chunks)
    assert len(events) == 1 and events[0].data == payload


def test_whatwg_example_streams() -> None:
    # Examples from the HTML standard's event-stream section.
    s1 = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert decode_all([s1])[0].data == b"YHOO\n+2\n10"
    s2 = (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n"
    )
    events = decode_all([s2])
    assert [(e.data, e.id) for e in events] == [
        (b"first event", "1"),
        (b"second event", ""),
        (b" third event", ""),
    ]
    s3 = b"data\n\ndata\ndata\n\ndata:"
    assert [e.data for e in decode_all([s3])] == [b"", b"\n"]


def decode_data_all(chunks: list[bytes]) -> list[bytes]:
    dec = SSEDecoder()
    out: list[bytes] = []
    for c in chunks:
        out.extend(dec.feed_data(c))
    return out


def test_feed_data_is_the_data_of_feed_at_every_split() -> None:
    openai_like = b"".join(b'data: {"n": %d}\n\n' % i for i in range(5)) + b"data: [DONE]\n\n"
    for stream in (SAMPLE, openai_like, b"data: a\n\n\n\ndata: b\n\n\ndata: c\r\n\r\n"):
        expected = [e.data for e in decode_all([stream])]
        assert decode_data_all([stream]) == expected
        for i in range(len(stream) + 1):
            assert decode_data_all([stream[:i], stream[i:]]) == expected, f"split at {i}"
        assert decode_data_all([stream[i : i + 1] for i in range(len(stream))]) == expected


def test_event_begun_in_one_chunk_continues_in_the_next() -> None:
    # The next chunk opens with a lone "data: " line: it belongs to the event in progress.
    events = decode_all([b"event: delta\ndata: a\n", b"data: b\n\ndata: c\n\n"])
    assert events == [Event(data=b"a\nb", event="delta"), Event(data=b"c")]
    assert decode_data_all([b"event: delta\ndata: a\n", b"data: b\n\ndata: c\n\n"]) == [
        b"a\nb",
        b"c",
    ]


def test_one_event_per_chunk_with_odd_chunks_between() -> None:
    # Each token in its own read (the fast path), with pieces that must leave it:
    # a partial line, a CR-ended chunk, an event type, a comment.
    chunks = [
        b"data: a\n\n",
        b"data: b\n\n",
        b"data: c",
        b"\n\n",
        b"data: d\n\n",
        b"data: e\r",
        b"\n\r\n",
        b"data: f\n\n",
        b"event: t\n",
        b"data: g\n\n",
        b": ping\n\n",
        b"data: h\n\n",
    ]
    want = [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"]
    assert [e.data for e in decode_all(chunks)] == want
    assert decode_all(chunks)[6] == Event(data=b"g", event="t")
    assert decode_all(chunks)[7] == Event(data=b"h")
    assert decode_data_all(chunks) == want
