"""``--client native``: llmbatch's own streaming HTTP/1.1 client on an asyncio Protocol.

Neither aiohttp nor httpx is imported. Per socket read the work is: the protocol's
``data_received``, the chunked decoder (h1.py), and the caller's ``on_chunk`` (push) or
one future (chunks); the idle timeout is one watchdog entry per response, moved lazily
(watchdog.py), not a timer per read. With 20 ms between tokens each token is its own
read, and aiohttp's StreamReader, payload parser and timers were most of that cost
(bench/RESULTS.md).

What it does: HTTP/1.1 keep-alive per origin, sized to the run's concurrency (like the
aiohttp connector's limit, shared by every host); idle connections kept at most
KEEPALIVE_S (below uvicorn's 5 s idle close); TLS through tls.py's context (CA bundle,
--insecure, SNI, ALPN "http/1.1"); Content-Length, chunked and close-delimited bodies;
gzip and deflate content encodings (zlib). What it does not: HTTP/2 (a ConfigError
points to --client httpx), proxies (HTTP(S)_PROXY and friends are ignored, as the
aiohttp adapter's ``trust_env=False`` and the httpx adapter's own transport do),
Expect: 100-continue, redirects, cookies.

Errors are llmbatch's own, as the other adapters raise them: ConnectError (refused,
DNS, TLS handshake, connect timeout; CertificateError for a rejected certificate),
ReadTimeout (no response head within first_byte_s, no data for idle_s),
StreamInterrupted (closed or invalid response), HTTPStatusError before any chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from llmbatch.config.load import Timeouts
from llmbatch.errors import (
    ConnectError,
    ReadTimeout,
    RequestError,
    StreamInterrupted,
    UnexpectedContentType,
    http_status_error,
)
from llmbatch.http.base import (
    ERROR_BODY_LIMIT,
    ClientAdapter,
    HTTPRequest,
    StreamingResponse,
    request_id_from,
)
from llmbatch.http.h1 import BodyReader, HeadParser, ProtocolError, ResponseHead, body_reader
from llmbatch.http.tls import certificate_error_from
from llmbatch.http.watchdog import _Watchdog, watch, within

__all__ = ["KEEPALIVE_S", "NativeAdapter"]

# An idle connection is closed after this long: below common server idle timeouts
# (uvicorn 5 s, nginx 75 s, Node 5 s), so we rarely send on one the server is closing.
KEEPALIVE_S = 4.0
# A reused connection that was idle this long and then closed before any response byte
# may have met the server's idle close: retried once (NativeAdapter._exchange).
_STALE_IDLE_S = 1.0
# Stop reading from the socket while this much unread body is buffered (chunks mode).
_READ_HIGH_WATER = 256 * 1024
# Timers firing this close to a deadline count as at it (uvloop's clock has 1 ms steps).
_SLACK_S = 1e-3
_DEFAULT_HEADERS = (("accept", "*/*"), ("accept-encoding", "gzip, deflate"))

# _Conn states
_IDLE, _HEAD, _BODY = range(3)


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a URL's requests go: the pool key, and the Host header to send."""

    tls: bool
    host: str
    port: int
    host_header: str
    display: str  # scheme://host:port, for messages


class _Closed(Exception):
    """The connection ended before the response head (internal; mapped in _exchange)."""

    def __init__(self, cause: BaseException | None, got_bytes: bool) -> None:
        super().__init__(str(cause) if cause else "closed by the server")
        self.cause = cause
        self.got_bytes = got_bytes


class _Inflate:
    """gzip or deflate content decoding. "deflate" is meant to be zlib-wrapped, but
    some servers send raw deflate: the first bytes decide, as browsers and httpx do."""

    __slots__ = ("_z", "_sniff")

    def __init__(self, gzip: bool) -> None:
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self._sniff = not gzip

    def decompress(self, data: bytes) -> bytes:
        if self._sniff:
            self._sniff = False
            try:
                return self._z.decompress(data)
            except zlib.error:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._z.decompress(data)

    def flush(self) -> bytes:
        return self._z.flush()


def _inflater(encoding: str) -> _Inflate | None | str:
    """The decoder of a content-encoding: None for none, the name when unsupported."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return _Inflate(gzip=True)
    if enc == "deflate":
        return _Inflate(gzip=False)
    return enc


class _Conn(asyncio.Protocol):
    """One connection and the state of the exchange it carries.

    It is also its response's idle-timeout entry in the watchdog (``when``, ``fire``):
    ``last`` moves with every read, ``when`` only when the entry comes due.
    """

    __slots__ = (
        "pool",
        "origin",
        "loop",
        "transport",
        "counted",
        "closed",
        "state",
        "used",
        "idle_since",
        "idle_s",
        "head_parser",
        "head_fut",
        "head",
        "got_bytes",
        "reader",
        "inflate",
        "bad_encoding",
        "pending",
        "pending_size",
        "paused",
        "waiter",
        "on_chunk",
        "push_fut",
        "finished",
        "muted",
        "error",
        "body_done",
        "last",
        "when",
        "dog",
    )

    def __init__(self, pool: _Pool, origin: _Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.counted = False  # holds one of the pool's connection slots
        self.closed = False
        self.state = _IDLE
        self.used = 0  # exchanges begun on this connection
        self.idle_since = 0.0
        self.idle_s = 0.0
        self.head_parser = HeadParser()
        self.head_fut: asyncio.Future[None] | None = None
        self.head: ResponseHead | None = None
        self.got_bytes = False
        self.reader: BodyReader | None = None
        self.inflate: _Inflate | None = None
        self.bad_encoding = ""
        self.pending: list[bytes] = []  # body bytes not yet taken (chunks mode, or before push)
        self.pending_size = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None  # chunks(): waiting for data
        self.on_chunk: Callable[[bytes], bool] | None = None  # push(): the callback
        self.push_fut: asyncio.Future[None] | None = None  # push(): the end of delivery
        self.finished = False  # the callback said the answer is complete
        self.muted = False  # nothing more goes to the callback (it raised)
        self.error: BaseException | None = None  # the body failed (mapped)
        self.body_done = False
        self.last = 0.0
        self.when = 0.0
        self.dog: _Watchdog | None = None  # the watchdog holding this entry, while armed

    # -- the exchange ------------------------------------------------------------------

    def begin(self, idle_s: float) -> asyncio.Future[None]:
        """Start an exchange; the future resolves when the response head is in."""
        self.state = _HEAD
        self.used += 1
        self.idle_s = idle_s
        self.head_parser = HeadParser()
        self.head = None
        self.got_bytes = False
        self.reader = None
        self.inflate = None
        self.bad_encoding = ""
        self.pending = []
        self.pending_size = 0
        self.on_chunk = None
        self.push_fut = None
        self.finished = False
        self.muted = False
        self.error = None
        self.body_done = False
        fut = self.head_fut = self.loop.create_future()
        return fut

    def reusable(self) -> bool:
        """The exchange ended cleanly and the server keeps the connection open."""
        head, reader = self.head, self.reader
        return (
            not self.closed
            and self.body_done
            and self.error is None
            and head is not None
            and reader is not None
            and head.keep_alive
            and not reader.until_close
            and not reader.extra
        )

    def take(self) -> bytes:
        """Every pending body byte (there are some)."""
        pending = self.pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self.pending = []
        self.pending_size = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def abort(self) -> None:
        """Close at once (the connection is mid-exchange or untrustworthy)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.pool.drop(self)

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.state == _BODY and not self.body_done:
            self._body(data)
            return
        if self.state != _HEAD:
            if self.state == _BODY and self.reader is not None:
                self.reader.extra += data  # after the body: never reused (reusable())
            else:
                self.abort()  # bytes on an idle connection, nobody asked for them
            return
        self.got_bytes = True
        try:
            head = self.head_parser.feed(data)
            if head is None:
                return
            reader = body_reader(head)
        except ProtocolError as exc:
            self._fail_head(StreamInterrupted(f"invalid response from the server: {exc}"))
            self.abort()
            return
        self.head = head
        self.reader = reader
        inflate = _inflater(head.headers.get("content-encoding", ""))
        if isinstance(inflate, str):
            self.bad_encoding = inflate  # raised by the adapter; the body stays raw
        else:
            self.inflate = inflate
        self.state = _BODY
        self.last = self.loop.time()
        fut = self.head_fut
        if fut is not None and not fut.done():
            fut.set_result(None)
        rest = self.head_parser.extra
        if rest:
            self._body(rest)
        elif reader.done:
            self._end_body()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.drop(self)
        if self.state == _HEAD:
            self._fail_head(_Closed(exc, self.got_bytes))
        elif self.state == _BODY and not self.body_done:
            reader = self.reader
            try:
                if reader is None:
                    raise ProtocolError("no body reader")
                reader.eof()
            except ProtocolError:
                why = f": {exc}" if exc else ""
                self._fail(StreamInterrupted(f"connection closed mid-response{why}"))
            else:
                self._end_body()

    # -- body delivery -----------------------------------------------------------------

    def _body(self, data: bytes) -> None:
        reader = self.reader
        assert reader is not None
        self.last = self.loop.time()
        try:
            payload = reader.feed(data)
            if payload and self.inflate is not None:
                payload = self.inflate.decompress(payload)
        except (ProtocolError, zlib.error) as exc:
            self._fail(StreamInterrupted(f"invalid response body: {exc}"))
            self.abort()
            return
        if payload:
            self._deliver(payload)
        if reader.done:
            self._end_body()

    def _deliver(self, payload: bytes) -> None:
        on_chunk = self.on_chunk
        if on_chunk is None:
            self.pending.append(payload)
            self.pending_size += len(payload)
            if self.pending_size > _READ_HIGH_WATER and not self.paused and self.transport:
                self.paused = True
                self.transport.pause_reading()
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if self.finished or self.muted:
            return  # after the end marker the rest is drained unread
        try:
            finished = on_chunk(payload)
        except Exception as exc:  # noqa: BLE001 - raised from push() as it is
            self.muted = True
            fut = self.push_fut
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            return
        if finished:
            self.finished = True
            fut = self.push_fut
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _end_body(self) -> None:
        if self.inflate is not None:
            tail = self.inflate.flush()
            self.inflate = None
            if tail:
                self._deliver(tail)
        self.body_done = True
        self._wake()

    def _fail(self, err: BaseException) -> None:
        """The body failed: chunks() raises ``err``; push() too, unless already complete."""
        if self.error is None:
            self.error = err
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        fut = self.push_fut
        if fut is not None and not fut.done():
            if self.error is None or self.finished:
                fut.set_result(None)
            else:
                fut.set_exception(self.error)

    def _fail_head(self, err: BaseException) -> None:
        fut = self.head_fut
        if fut is not None and not fut.done():
            fut.set_exception(err)

    # -- the idle timeout (a watchdog entry) -------------------------------------------

    def watch_idle(self) -> None:
        """Arm the idle timeout of this response (one watchdog entry)."""
        if self.dog is None:
            self.when = self.last + self.idle_s
            self.dog = watch(self, self.loop)

    def unwatch_idle(self) -> None:
        dog, self.dog = self.dog, None
        if dog is not None:
            dog.discard(self)

    def fire(self, now: float) -> bool:
        """The idle deadline came due: time out, or move it after the last read."""
        if self.state != _BODY or self.body_done or self.error is not None or self.finished:
            self.dog = None  # the watchdog drops the entry
            return True
        due = self.last + self.idle_s
        if now >= due - _SLACK_S:
            if self.on_chunk is None and self.waiter is None:
                # chunks mode and the reader is busy with what it has: not idle.
                self.when = now + self.idle_s
                return False
            self.dog = None
            self._fail(ReadTimeout("no data for longer than the idle timeout"))
            return True
        self.when = due
        return False


class _Pool:
    """Connections per origin, at most ``limit`` in all (open or being opened).

    Idle connections are reused newest first (the least likely to have been closed by
    the server); a request finding none and no free slot waits in FIFO order for a
    released connection or a freed slot.
    """

    __slots__ = ("loop", "limit", "open", "idle", "waiters", "conns")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = max(1, limit)
        self.open = 0
        self.idle: dict[_Origin, list[_Conn]] = {}
        # (origin, future): a connection of that origin, or None for a free slot.
        self.waiters: deque[tuple[_Origin, asyncio.Future[_Conn | None]]] = deque()
        self.conns: set[_Conn] = set()

    def take_idle(self, origin: _Origin) -> _Conn | None:
        conns = self.idle.get(origin)
        if not conns:
            return None
        stale = self.loop.time() - KEEPALIVE_S
        while conns and conns[0].idle_since < stale:
            conns[0].abort()  # drop() takes it off the list
        while conns:
            conn = conns.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.abort()
        return None

    def close_idle_elsewhere(self, origin: _Origin) -> bool:
        """Close an idle connection of another origin to free its slot for ``origin``."""
        for other, conns in self.idle.items():
            if other != origin and conns:
                conns[0].abort()
                return True
        return False

    def release(self, conn: _Conn) -> None:
        """``conn`` finished an exchange: keep it, hand it on, or close it."""
        conn.on_chunk = None
        conn.waiter = None
        conn.push_fut = None
        conn.unwatch_idle()
        if not conn.reusable():
            conn.abort()
            return
        conn.state = _IDLE
        conn.idle_since = self.loop.time()
        waiters = self.waiters
        while waiters and waiters[0][1].done():
            waiters.popleft()
        if waiters:
            for i, (origin, fut) in enumerate(waiters):
                if origin == conn.origin and not fut.done():
                    del waiters[i]
                    fut.set_result(conn)
                    return
            conn.abort()  # someone waits for another origin: its slot goes to them
            return
        self.idle.setdefault(conn.origin, []).append(conn)

    def drop(self, conn: _Conn) -> None:
        """``conn`` is gone: off the idle list, and its slot to a waiter or back."""
        conns = self.idle.get(conn.origin)
        if conns and conn in conns:
            conns.remove(conn)
        if not conn.counted:
            return
        conn.counted = False
        self.conns.discard(conn)
        self.free_slot()

    def free_slot(self) -> None:
        """A slot is free: the first live waiter gets it, else the count goes down."""
        waiters = self.waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes on (``open`` unchanged)
                return
        self.open -= 1

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()
        self.idle.clear()


class NativeAdapter(ClientAdapter):
    """Streams over llmbatch's own HTTP/1.1 client (h1.py) on asyncio Protocols."""

    name = "native"

    def __init__(
        self,
        *,
        max_connections: int,
        timeouts: Timeouts,
        verify_tls: bool = True,
        ca_bundle: Path | None = None,
        tls_up_front: bool = True,
    ) -> None:
        super().__init__(
            max_connections=max_connections,
            timeouts=timeouts,
            verify_tls=verify_tls,
            ca_bundle=ca_bundle,
            tls_up_front=tls_up_front,
        )
        self._pool: _Pool | None = None
        self._routes: dict[str, tuple[_Origin, str]] = {}

    # -- requests ----------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        origin, target = self._route(request.url)
        data = _request_bytes(origin, target, request.headers, request.body)
        t = self.timeouts
        try:
            with within(t.first_byte_s + t.connect_s):  # a watchdog entry, no timer
                conn = await self._exchange(origin, data, request.url)
        except TimeoutError:
            raise ReadTimeout(f"no response headers within {t.first_byte_s:g}s") from None
        pool = conn.pool
        try:
            head = conn.head
            assert head is not None
            headers = head.headers
            rid = request_id_from(headers)
            if conn.bad_encoding:
                raise UnexpectedContentType(
                    f"content-encoding {conn.bad_encoding!r} is not supported by --client "
                    "native (gzip and deflate are)"
                )
            if head.status >= 300:
                body = await _error_body(conn)
                raise http_status_error(head.status, headers, body, rid)
            yield StreamingResponse(
                status=head.status,
                headers=headers,
                chunks=_chunks(conn),
                request_id=rid,
                http_version=head.http_version,
                push=lambda on_chunk, drain_s: _push(conn, on_chunk, drain_s),
            )
        finally:
            pool.release(conn)

    async def _exchange(self, origin: _Origin, data: bytes, url: str) -> _Conn:
        """Send ``data`` on a pooled connection; return it once the response head is in."""
        for attempt in (1, 2):
            conn = await self._acquire(origin, url)
            idle_s = self.loop_time() - conn.idle_since if conn.used else 0.0
            reused = conn.used > 0
            fut = conn.begin(self.timeouts.idle_s)
            transport = conn.transport
            assert transport is not None
            try:
                transport.write(data)
                with within(self.timeouts.first_byte_s):
                    await fut
            except _Closed as closed:
                conn.abort()
                # Retried once, on a fresh connection, when a reused connection that sat
                # idle for a while ended before any response byte: the server's
                # keep-alive close crossing our request on the wire (it closes idle
                # connections at its own timeout), so it never read the request. Only
                # then: a connection in steady use that closes right after our request
                # went to a server that read it (a clean close and a reset look alike
                # here), and whether to send that POST again is the retry policy's
                # decision, as with the other adapters.
                stale = idle_s >= _STALE_IDLE_S
                if attempt == 1 and reused and not closed.got_bytes and stale:
                    continue
                why = f": {closed.cause}" if closed.cause else ""
                if closed.got_bytes:
                    raise StreamInterrupted(f"connection closed mid-response head{why}") from None
                raise StreamInterrupted(f"connection closed before the response{why}") from None
            except BaseException:
                conn.abort()  # a timeout or cancellation mid-exchange, an invalid head
                raise
            return conn
        raise AssertionError("unreachable")  # pragma: no cover

    def loop_time(self) -> float:
        pool = self._pool
        return pool.loop.time() if pool is not None else 0.0

    async def _acquire(self, origin: _Origin, url: str) -> _Conn:
        """An idle connection of ``origin``, a new one, or the next one released."""
        pool = self._get_pool()
        conn = pool.take_idle(origin)
        if conn is not None:
            return conn
        if pool.open >= pool.limit and not pool.close_idle_elsewhere(origin):
            fut: asyncio.Future[_Conn | None] = pool.loop.create_future()
            pool.waiters.append((origin, fut))
            try:
                got = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    handed = fut.result()  # handed over just as we were cancelled
                    if handed is None:
                        pool.free_slot()
                    else:
                        pool.release(handed)
                raise
            if got is not None:
                return got
        else:
            pool.open += 1
        try:
            return await self._connect(pool, origin, url)
        except BaseException:
            pool.free_slot()
            raise

    async def _connect(self, pool: _Pool, origin: _Origin, url: str) -> _Conn:
        conn = _Conn(pool, origin)
        ctx = self.ssl_context if origin.tls else None
        connect_s = self.timeouts.connect_s
        try:
            with within(connect_s):
                await pool.loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=ctx,
                    server_hostname=origin.host if ctx is not None else None,
                )
        except TimeoutError:
            raise ConnectError(
                f"cannot connect to {origin.display}: timed out after {connect_s:g}s"
            ) from None
        except ssl.SSLError as exc:
            raise certificate_error_from(exc, url) or ConnectError(
                f"TLS handshake with {origin.display} failed: {exc}"
            ) from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {url}: {exc}") from None
        if conn.closed or conn.transport is None:
            raise ConnectError(f"connection to {origin.display} closed while opening")
        conn.counted = True
        pool.conns.add(conn)
        return conn

    def _get_pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop:
            pool = self._pool = _Pool(loop, self.max_connections)
        return pool

    def _route(self, url: str) -> tuple[_Origin, str]:
        """``url``'s origin and request target, parsed once per URL."""
        route = self._routes.get(url)
        if route is None:
            if len(self._routes) >= 64:
                self._routes.clear()
            route = self._routes[url] = _parse_url(url)
        return route

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close_all()


def _parse_url(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConnectError(f"cannot connect to {url}: --client native speaks http:// and https://")
    tls = scheme == "https"
    default = 443 if tls else 80
    try:
        port = parts.port or default
    except ValueError:
        raise ConnectError(f"cannot connect to {url}: bad port") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    origin = _Origin(tls, host, port, host_header, f"{scheme}://{shown}:{port}")
    return origin, target


def _request_bytes(origin: _Origin, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """The request head and body, ready to write."""
    lines = [f"POST {target} HTTP/1.1", f"Host: {origin.host_header}"]
    given = set()
    for name, value in headers.items():
        key = name.lower()
        if key in ("host", "content-length", "transfer-encoding", "connection"):
            continue  # framing is ours
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"invalid character in HTTP header {name!r}")
        given.add(key)
        lines.append(f"{name}: {value}")
    for key, value in _DEFAULT_HEADERS:
        if key not in given:
            lines.append(f"{key}: {value}")
    lines.append(f"content-length: {len(body)}\r\n\r\n")
    return "\r\n".join(lines).encode("utf-8") + body


async def _error_body(conn: _Conn) -> bytes:
    """Up to ERROR_BODY_LIMIT bytes of a non-2xx body (what arrived, on any failure)."""
    parts: list[bytes] = []
    size = 0
    with contextlib.suppress(RequestError):
        async for chunk in _chunks(conn):
            parts.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                break
    return b"".join(parts)[:ERROR_BODY_LIMIT]


async def _chunks(conn: _Conn) -> AsyncIterator[bytes]:
    """The body as an async iterator of decoded chunks."""
    loop = conn.loop
    exchange = conn.used
    try:
        while True:
            if conn.pending:
                yield conn.take()
                continue
            if conn.error is not None:
                raise conn.error
            if conn.body_done:
                return
            conn.watch_idle()
            fut = conn.waiter = loop.create_future()
            try:
                await fut
            finally:
                conn.waiter = None
    finally:
        if conn.used == exchange:  # an abandoned iterator may be closed much later
            conn.unwatch_idle()


async def _push(conn: _Conn, on_chunk: Callable[[bytes], bool], drain_s: float) -> None:
    """The push contract (base.StreamingResponse.push) from ``data_received``."""
    if conn.pending and on_chunk(conn.take()):  # what came with the head
        conn.finished = True
    elif conn.error is not None:
        raise conn.error
    if conn.body_done or (conn.finished and conn.error is not None):
        return
    loop = conn.loop
    fut = conn.push_fut = loop.create_future()
    conn.on_chunk = on_chunk  # from here each read goes to it (none after the answer)
    conn.watch_idle()
    try:
        if not conn.finished:
            await fut
        if conn.finished and not conn.body_done and conn.error is None:
            # The end of the body did not come with the end marker: wait a little for
            # it so the connection is reused; whatever happens to it now does not count.
            fut = conn.push_fut = loop.create_future()
            with contextlib.suppress(TimeoutError, RequestError), within(drain_s):
                await fut
    finally:
        conn.on_chunk = None
        conn.push_fut = None
        conn.unwatch_idle()
