"""One request's response on a connection: llhttp's callbacks, and the body's delivery.

The connection (connection.py) owns the socket and its place in the pool; an Exchange
is the state of one request on it, as uvicorn's httptools_impl keeps its protocol apart
from each request-response cycle. The response is parsed by llhttp (``httptools``, the
parser of Node.js, aiohttp and uvicorn) in the mode aiohttp uses for responses: strict,
except that a bare LF may end a line (RFC 9112 2.2) and an obs-fold is unfolded (RFC
9112 5.2; the control bytes that mode lets through are refused in base.py, for every
adapter). llhttp has no limit on a response head, so its bytes are counted here
(MAX_HEAD_BYTES).

Per socket read the work is: ``feed``, llhttp with one ``on_body`` per chunk, then one
delivery of the read's payload (body.py: to the caller's ``on_chunk`` (push) or to one
future (chunks); the idle timeout, one watchdog entry per response).

A body that ends when the server closes the connection (no Content-Length, not
chunked) is complete only at a clean close: a reset mid-body is StreamInterrupted.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import httptools

from llmbatch.errors import StreamInterrupted
from llmbatch.http.base import merge_headers
from llmbatch.http.native.body import Body

if TYPE_CHECKING:
    from llmbatch.http.native.connection import Connection

__all__ = ["MAX_HEAD_BYTES", "Exchange", "HeadClosed"]

# The largest response head (interim responses, status line and headers) read; aiohttp's
# limits are 8 KiB per line and 32 KiB per field, h11's 16 KiB per head.
MAX_HEAD_BYTES = 64 * 1024
# Stop reading from the socket while this much unread body is buffered (chunks mode).
_READ_HIGH_WATER = 256 * 1024


class HeadClosed(Exception):
    """The connection ended before the response head (mapped by the adapter)."""

    def __init__(self, cause: BaseException | None, got_bytes: bool) -> None:
        super().__init__(str(cause) if cause else "closed by the server")
        self.cause = cause
        self.got_bytes = got_bytes


class _Behind(Exception):
    """Raised in a parser callback: bytes follow the complete response (stop there)."""


class Exchange(Body):
    """The response to one request: its head, then its body, as they arrive."""

    __slots__ = (
        "conn",
        "parser",
        "head_bytes",
        "in_head",
        "got_bytes",
        "raw",
        "status",
        "headers",
        "http_version",
        "keep_alive",
        "until_close",
        "parts",
        "complete",
        "extra",
        "paused",
    )

    def __init__(self, conn: Connection, idle_s: float) -> None:
        super().__init__(conn.loop, idle_s)
        self.conn = conn
        parser = self.parser = httptools.HttpResponseParser(self)
        parser.set_dangerous_leniencies(lenient_headers=True, lenient_optional_cr_before_lf=True)
        self.head_bytes = 0
        self.in_head = True
        self.got_bytes = False
        self.raw: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.headers: dict[str, str] = {}
        self.http_version = "HTTP/1.1"
        self.keep_alive = False
        self.until_close = False
        self.parts: list[bytes] = []  # body bytes of the read being parsed
        self.complete = False  # llhttp saw the end of the response
        self.extra = False  # bytes came after it (the connection is not reused)
        self.paused = False  # reading stopped: too much body unread (chunks mode)

    def _buffered(self) -> None:
        if self.pending_size > _READ_HIGH_WATER and not self.paused:
            self.paused = True
            self.conn.pause_reading()

    def _taken(self) -> None:
        if self.paused:
            self.paused = False
            self.conn.resume_reading()

    def reusable(self) -> bool:
        """The response ended cleanly and the server keeps the connection open."""
        return self.body_done and self.error is None and self.keep_alive and not self.extra

    # -- bytes in ----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """One socket read."""
        if self.body_done:
            self.extra = True  # after the response: never reused
            return
        if self.in_head:
            self.got_bytes = True
            rest = b""
            room = MAX_HEAD_BYTES - self.head_bytes
            if len(data) > room:  # llhttp has no limit: up to ours, then see
                data, rest = data[:room], data[room:]
            self.head_bytes += len(data)
            if not self._parse(data):
                return
            if self.in_head:
                if rest:
                    self._refuse(f"response head longer than {MAX_HEAD_BYTES} bytes")
                return
            if rest and not self._parse(rest):
                return
        elif not self._parse(data):
            return
        self.last = self.loop.time()
        parts = self.parts
        if parts:
            payload = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            if self.inflate is not None:
                try:
                    payload = self.inflate.decompress(payload)
                except zlib.error as exc:
                    self._fail(StreamInterrupted(f"invalid response body: {exc}"))
                    self.conn.abort()
                    return
            if payload:
                self._deliver(payload)
        if self.complete and not self.body_done:
            self._end_body()

    def _parse(self, data: bytes) -> bool:
        """Run llhttp over ``data``; False when the response was refused."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse("101 Switching Protocols, which was not asked for")
            return False
        except httptools.HttpParserError as exc:
            if self.complete:  # bytes behind the response (on_message_begin raised _Behind)
                self.extra = True  # the response in front stands; the connection goes
                return True
            self._refuse(str(exc))
            return False
        return True

    def _refuse(self, why: str) -> None:
        err = StreamInterrupted(f"invalid response from the server: {why}")
        if self.in_head:
            self._fail_head(err)
        else:
            self._fail(err)
        self.conn.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection ended (``exc``: why, None for a clean close)."""
        if self.in_head:
            self._fail_head(HeadClosed(exc, self.got_bytes))
        elif not self.body_done:
            if self.until_close and exc is None:
                self._end_body()  # the close is the end of this body
            else:
                why = f": {exc}" if exc else ""
                self._fail(StreamInterrupted(f"connection closed mid-response{why}"))

    # -- llhttp's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Behind  # what follows the response is not ours to read

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        raw, self.raw = self.raw, []
        if 100 <= status < 200:
            return  # interim (1xx): the final answer follows; 101 fails in _parse
        # llhttp strips the whitespace before a value, not after (RFC 9110 5.5).
        headers = self.headers = merge_headers(
            (name.decode("latin-1"), value.rstrip(b" \t").decode("utf-8", "replace"))
            for name, value in raw
        )
        self.status = status
        self.http_version = f"HTTP/{parser.get_http_version()}"
        self.keep_alive = parser.should_keep_alive()
        self.until_close = (
            status not in (204, 304)
            and "content-length" not in headers
            and not headers.get("transfer-encoding", "").lower().endswith("chunked")
        )
        self.decode_as(headers.get("content-encoding"))
        self.in_head = False
        if not self.head_fut.done():
            self.head_fut.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if not self.in_head:  # not an interim response's end
            self.complete = True
