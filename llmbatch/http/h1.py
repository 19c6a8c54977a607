"""A pure, incremental HTTP/1.1 response parser: bytes in, a head and body bytes out.

No I/O and no asyncio here (the native adapter, native.py, does the I/O), so every
framing rule is unit-tested with reads split anywhere, down to single bytes.

- ``HeadParser.feed(data)`` returns the response head once complete (RFC 9112
  section 4), skipping 1xx informational responses (100 Continue, 103 Early Hints)
  but not 101 (we never ask to switch protocols, so it is an error here).
- ``body_reader(head)`` picks the body's framing (RFC 9112 section 6.3) for a response
  to a POST: ``Transfer-Encoding`` with ``chunked`` last is chunked (extensions ignored,
  trailers read and dropped); another transfer coding, or neither header, means the
  body runs to the close of the connection; otherwise ``Content-Length``. 204 and 304
  have no body.
- Each reader's ``feed(data)`` returns the payload bytes in ``data`` (b"" for none)
  and sets ``done`` at the end of the body; bytes after it are kept in ``extra``.

Malformed input raises ProtocolError. As RFC 9112 section 2.2 allows, a bare LF is
accepted where a line ends (CRLF is what servers send).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MAX_HEAD_BYTES",
    "BodyReader",
    "ChunkedReader",
    "CloseDelimitedReader",
    "HeadParser",
    "LengthReader",
    "ProtocolError",
    "ResponseHead",
    "body_reader",
]

# The largest response head (status line and headers) accepted; aiohttp's limits are
# 8 KiB per line and 32 KiB per field, servers send a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
# The longest chunk-size line (size, extensions); the size itself at most 16 hex digits.
_MAX_CHUNK_LINE = 4096
_MAX_CHUNK_HEX = 16
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ProtocolError(Exception):
    """The server's bytes are not a valid HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A final (non-1xx) response's status line and headers (lower-case names; a
    repeated header keeps its last value, as the other adapters give it)."""

    status: int
    reason: str
    http_version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: dict[str, str]
    # Every value of the framing headers, in order (a repeat must not hide a conflict).
    content_lengths: tuple[str, ...] = ()
    transfer_encodings: tuple[str, ...] = ()
    connection: str = ""

    @property
    def keep_alive(self) -> bool:
        """The server lets the connection carry another request after this one."""
        tokens = {t.strip().lower() for t in self.connection.split(",")}
        if self.http_version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class HeadParser:
    """Collects bytes until a final response head is complete."""

    __slots__ = ("_buf", "extra")

    def __init__(self) -> None:
        self._buf = b""
        self.extra = b""  # what followed the head (the start of the body)

    def feed(self, data: bytes) -> ResponseHead | None:
        """The final head once ``data`` completes it (then ``extra`` holds the rest)."""
        buf = self._buf + data if self._buf else data
        while True:
            end, sep = _head_end(buf)
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
                if not b"HTTP/1.".startswith(buf[:7]):
                    raise ProtocolError(f"not an HTTP response: {buf[:40]!r}")
                self._buf = buf
                return None
            if end > MAX_HEAD_BYTES:
                raise ProtocolError(f"response head longer than {MAX_HEAD_BYTES} bytes")
            head = _parse_head(buf[:end])
            buf = buf[end + sep :]
            if 100 <= head.status < 200:
                if head.status == 101:
                    raise ProtocolError("101 Switching Protocols, which was not asked for")
                continue  # informational: the final answer follows
            self._buf = b""
            self.extra = buf
            return head


def _head_end(buf: bytes) -> tuple[int, int]:
    """Where the blank line that ends a head starts (the LF before it) and the length
    of the separator; (-1, 0) when it has not arrived yet."""
    crlf = buf.find(b"\n\r\n")
    lf = buf.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, 2
    return (crlf, 3) if crlf >= 0 else (-1, 0)


def _parse_head(raw: bytes) -> ResponseHead:
    lines = raw.split(b"\n")
    status_line = lines[0].rstrip(b"\r")
    version, _, rest = status_line.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    code, _, reason = rest.partition(b" ")
    if len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"bad status code in {status_line[:80]!r}")
    headers: dict[str, str] = {}
    lengths: list[str] = []
    codings: list[str] = []
    connection: list[str] = []
    fields: list[bytes] = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            raise ProtocolError("empty line inside the response head")
        if line[0] in b" \t":
            # obs-fold (RFC 9112 section 5.2): a user agent replaces it with a space.
            if not fields:
                raise ProtocolError(f"folded line before any header {line[:80]!r}")
            fields[-1] = fields[-1].rstrip(b" \t") + b" " + line.lstrip(b" \t")
        else:
            fields.append(line)
    for line in fields:
        name, colon, value = line.partition(b":")
        if not colon or not name or not _TOKEN.issuperset(name):
            raise ProtocolError(f"bad header line {line[:80]!r}")
        if b"\x00" in value or b"\r" in value:
            # RFC 9110 section 5.5: NUL and CR are never part of a field value.
            raise ProtocolError(f"invalid character in header {name[:40]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("utf-8", "replace")
        headers[key] = text
        if key == "content-length":
            lengths.append(text)
        elif key == "transfer-encoding":
            codings.append(text)
        elif key == "connection":
            connection.append(text)
    return ResponseHead(
        status=int(code),
        reason=reason.decode("latin-1"),
        http_version=version.decode("ascii"),
        headers=headers,
        content_lengths=tuple(lengths),
        transfer_encodings=tuple(codings),
        connection=", ".join(connection),
    )


class BodyReader:
    """A response body's framing: ``feed`` gives the payload, ``done`` marks its end."""

    __slots__ = ("done", "extra")

    # True when the body's end is the close of the connection (so it is never reused).
    until_close = False

    def __init__(self) -> None:
        self.done = False
        self.extra = b""  # bytes after the end of the body (a server error: not reused)

    def feed(self, data: bytes) -> bytes:
        """The payload bytes in ``data``."""
        raise NotImplementedError

    def eof(self) -> None:
        """The connection closed: fine if the body is complete, else ProtocolError."""
        if not self.done:
            raise ProtocolError("connection closed before the end of the body")


class LengthReader(BodyReader):
    """A body of exactly ``Content-Length`` bytes."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        super().__init__()
        self.remaining = length
        self.done = length == 0

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.extra += data
            return b""
        n = self.remaining
        if len(data) < n:
            self.remaining = n - len(data)
            return data
        self.remaining = 0
        self.done = True
        if len(data) > n:
            self.extra = data[n:]
            return data[:n]
        return data


class CloseDelimitedReader(BodyReader):
    """A body that ends when the server closes the connection."""

    __slots__ = ()
    until_close = True

    def feed(self, data: bytes) -> bytes:
        return data

    def eof(self) -> None:
        self.done = True


# ChunkedReader states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


class ChunkedReader(BodyReader):
    """``Transfer-Encoding: chunked`` (RFC 9112 section 7.1): chunk extensions are
    ignored, trailer fields read and dropped."""

    __slots__ = ("_state", "_remaining", "_line")

    def __init__(self) -> None:
        super().__init__()
        self._state = _SIZE
        self._remaining = 0
        self._line = b""  # an incomplete size or trailer line

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.extra += data
            return b""
        # The common case, one whole chunk per read: "<hex>\r\n<data>\r\n".
        if self._state == _SIZE and not self._line:
            nl = data.find(b"\n", 0, 24)
            if nl > 0:
                size = _plain_hex(data[: nl - 1] if data[nl - 1] == 0x0D else data[:nl])
                end = nl + 1 + size
                if size > 0 and len(data) == end + 2 and data.endswith(b"\r\n"):
                    return data[nl + 1 : end]
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_END
            elif state == _DATA_END:
                # The CRLF after the chunk's data (a lone LF accepted).
                b = data[pos]
                if b == 0x0D and not self._line:
                    self._line = b"\r"
                    pos += 1
                elif b == 0x0A:
                    self._line = b""
                    self._state = _SIZE
                    pos += 1
                else:
                    raise ProtocolError("chunk data not followed by CRLF")
            else:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    self._line += data[pos:]
                    if len(self._line) > _MAX_CHUNK_LINE:
                        raise ProtocolError("chunk size line too long")
                    break
                line = self._line + data[pos:nl]
                self._line = b""
                pos = nl + 1
                if len(line) > _MAX_CHUNK_LINE:
                    raise ProtocolError("chunk size line too long")
                if state == _SIZE:
                    size = _chunk_size(line)
                    if size:
                        self._remaining = size
                        self._state = _DATA
                    else:
                        self._state = _TRAILER
                elif not line.rstrip(b"\r"):
                    self.done = True  # the blank line after the trailers
                elif b":" not in line:
                    raise ProtocolError(f"bad trailer line {line[:80]!r}")
        if self.done and pos < n:
            self.extra = data[pos:]
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)


def _plain_hex(digits: bytes) -> int:
    """The value of ``digits`` when they are 1-16 hex digits and nothing else, else -1.

    ``int(x, 16)`` alone would also take a sign, spaces, underscores and a 0x prefix;
    ``isalnum`` (ASCII only for bytes) leaves letters, which int refuses beyond f, and
    the prefix, refused here.
    """
    if not digits.isalnum() or len(digits) > _MAX_CHUNK_HEX or digits[1:2] in (b"x", b"X"):
        return -1
    try:
        return int(digits, 16)
    except ValueError:
        return -1


def _chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (``1a;name=value\\r``), extensions ignored."""
    hex_part = line.split(b";", 1)[0].rstrip(b"\r").rstrip(b" \t")
    size = _plain_hex(hex_part)
    if size < 0:
        raise ProtocolError(f"bad chunk size {line[:40]!r}")
    return size


def body_reader(head: ResponseHead) -> BodyReader:
    """The framing of ``head``'s body (a response to a POST)."""
    if head.status in (204, 304):
        return LengthReader(0)
    if head.transfer_encodings:
        codings = [c.strip().lower() for value in head.transfer_encodings for c in value.split(",")]
        if codings[-1] == "chunked":
            if codings.count("chunked") > 1:
                raise ProtocolError("chunked applied more than once")
            if len(codings) > 1:
                raise ProtocolError(f"unsupported transfer coding {', '.join(codings)!r}")
            return ChunkedReader()
        return CloseDelimitedReader()
    if head.content_lengths:
        values = {v.strip() for value in head.content_lengths for v in value.split(",")}
        if len(values) != 1:
            raise ProtocolError(f"conflicting Content-Length values {sorted(values)}")
        value = values.pop()
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            raise ProtocolError(f"bad Content-Length {value!r}")
        return LengthReader(int(value))
    return CloseDelimitedReader()
