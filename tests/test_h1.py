"""The pure HTTP/1.1 response parser (llmbatch/http/h1.py), fed split reads."""

from __future__ import annotations

import pytest

from llmbatch.http.h1 import (
    ChunkedReader,
    CloseDelimitedReader,
    HeadParser,
    LengthReader,
    ProtocolError,
    ResponseHead,
    body_reader,
)

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"X-Request-Id: abc\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHUNKED = (
    b"5\r\nhello\r\n"
    b"1A;name=value;x\r\n" + b"a" * 26 + b"\r\n"
    b"0000c \r\n world again\r\n"
    b"0\r\nX-Trailer: 1\r\nOther: two\r\n\r\n"
)
PAYLOAD = b"hello" + b"a" * 26 + b" world again"


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def parse(data: bytes, size: int) -> tuple[ResponseHead, bytes, bytes]:
    """(head, payload, bytes after the body) of ``data`` fed ``size`` bytes at a time."""
    parser = HeadParser()
    head = None
    reader = None
    out = []
    for piece in split(data, size):
        if reader is None:
            head = parser.feed(piece)
            if head is None:
                continue
            reader = body_reader(head)
            piece = parser.extra
        out.append(reader.feed(piece))
    assert head is not None and reader is not None and reader.done
    return head, b"".join(out), reader.extra


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_chunked_response_split_anywhere(size: int) -> None:
    head, payload, extra = parse(HEAD + CHUNKED, size)
    assert head.status == 200 and head.reason == "OK" and head.http_version == "HTTP/1.1"
    assert head.headers["content-type"] == "text/event-stream"
    assert head.headers["x-request-id"] == "abc"
    assert head.keep_alive
    assert payload == PAYLOAD
    assert extra == b""


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_content_length_body_and_what_follows(size: int) -> None:
    data = b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nnothingEXTRA"
    head, payload, extra = parse(data, size)
    assert head.status == 404 and payload == b"nothing" and extra == b"EXTRA"


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_informational_responses_are_skipped(size: int) -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )
    head, payload, _ = parse(data, size)
    assert head.status == 201 and "link" not in head.headers and payload == b"ok"


def test_switching_protocols_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="101"):
        HeadParser().feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")


def test_one_whole_chunk_per_read_fast_path() -> None:
    reader = ChunkedReader()
    assert reader.feed(b"1f\r\n" + b"x" * 31 + b"\r\n") == b"x" * 31
    assert reader.feed(b"3\r\nabc\r\n") == b"abc"
    assert not reader.done
    assert reader.feed(b"0\r\n\r\n") == b""
    assert reader.done


@pytest.mark.parametrize("hex_size", [b"1A", b"1a", b"001A"])
def test_upper_and_lower_case_hex(hex_size: bytes) -> None:
    reader = ChunkedReader()
    assert reader.feed(hex_size + b"\r\n" + b"z" * 26 + b"\r\n0\r\n\r\n") == b"z" * 26
    assert reader.done


@pytest.mark.parametrize(
    "bad",
    [b"zz\r\n", b"0x1a\r\n", b"-1\r\n", b"+5\r\n", b"\r\n", b"1_0\r\n", b"1" * 17 + b"\r\n"],
)
def test_bad_chunk_size_is_a_protocol_error(bad: bytes) -> None:
    with pytest.raises(ProtocolError, match="chunk size"):
        ChunkedReader().feed(bad + b"abc\r\n")


def test_chunk_data_without_crlf_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="CRLF"):
        ChunkedReader().feed(b"3\r\nabcX\r\n")


def test_bare_lf_line_ends_are_accepted() -> None:
    parser = HeadParser()
    head = parser.feed(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n")
    assert head is not None
    reader = body_reader(head)
    assert reader.feed(parser.extra) == b"abc" and reader.done


def test_chunked_body_cut_short_is_an_error_at_eof() -> None:
    reader = ChunkedReader()
    reader.feed(b"5\r\nhel")
    with pytest.raises(ProtocolError, match="closed before the end"):
        reader.eof()


def test_close_delimited_body_ends_at_eof() -> None:
    parser = HeadParser()
    head = parser.feed(b"HTTP/1.0 200 OK\r\n\r\nall of it")
    assert head is not None and not head.keep_alive
    reader = body_reader(head)
    assert isinstance(reader, CloseDelimitedReader) and reader.until_close
    assert reader.feed(parser.extra) == b"all of it"
    reader.eof()
    assert reader.done


def test_framing_rules() -> None:
    def reader_for(*headers: bytes, status: bytes = b"200 OK") -> object:
        head = HeadParser().feed(b"HTTP/1.1 " + status + b"\r\n" + b"".join(headers) + b"\r\n")
        assert head is not None
        return body_reader(head)

    chunked = b"Transfer-Encoding: chunked\r\n"
    length = b"Content-Length: 3\r\n"
    # Transfer-Encoding wins over Content-Length (RFC 9112 section 6.3).
    assert isinstance(reader_for(chunked, length), ChunkedReader)
    assert isinstance(reader_for(b"Transfer-Encoding: gzip\r\n"), CloseDelimitedReader)
    assert isinstance(reader_for(length), LengthReader)
    assert isinstance(reader_for(length, length), LengthReader)  # the same value twice
    assert reader_for(b"Content-Length: 9\r\n", status=b"204 No Content").done  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="conflicting"):
        reader_for(length, b"Content-Length: 4\r\n")
    with pytest.raises(ProtocolError, match="Content-Length"):
        reader_for(b"Content-Length: -1\r\n")
    with pytest.raises(ProtocolError, match="transfer coding"):
        reader_for(b"Transfer-Encoding: gzip, chunked\r\n")


def test_connection_close_and_http_1_0_keep_alive() -> None:
    close = HeadParser().feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    kept = HeadParser().feed(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n\r\n")
    assert close is not None and not close.keep_alive
    assert kept is not None and kept.keep_alive


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP"),
        (b"HTTP/2 200\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status code"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "folded"),
        (b"HTTP/1.1 200 OK\r\nX-Id: a\x00b\r\n\r\n", "invalid character"),
        (b"HTTP/1.1 200 OK\r\nX-Id : ab\r\n\r\n", "header line"),
    ],
)
def test_malformed_heads(raw: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        HeadParser().feed(raw)


def test_folded_header_value_is_joined_with_a_space() -> None:
    head = HeadParser().feed(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\n\tc\r\nY: 1\r\n\r\n")
    assert head is not None
    assert head.headers == {"x-folded": "a b c", "y": "1"}


def test_endless_head_is_refused() -> None:
    parser = HeadParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolError, match="longer than"):
        for _ in range(2000):
            parser.feed(b"X-Filler: " + b"y" * 60 + b"\r\n")
