"""``--client native``: the adapter over the pools, their connections, llhttp and h2.

With ``--http2`` an https origin is asked for h2 in ALPN and served by the HTTP/2 pool
(h2pool.py, h2connection.py) when the server agrees, else by the HTTP/1.1 pool; http://
origins always get HTTP/1.1 (no cleartext h2c).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from llmbatch.errors import (
    ConnectError,
    PoolTimeout,
    ReadTimeout,
    StreamInterrupted,
    UnexpectedContentType,
)
from llmbatch.http.base import (
    ClientAdapter,
    ClientOptions,
    HTTPRequest,
    StreamingResponse,
)
from llmbatch.http.native.connection import Connection
from llmbatch.http.native.exchange import Exchange, HeadClosed
from llmbatch.http.native.h2connection import H2Connection, H2Stream, Refused
from llmbatch.http.native.h2pool import H2Pool
from llmbatch.http.native.pool import Pool
from llmbatch.http.native.wire import Origin, h2_request_headers, parse_url, request_bytes
from llmbatch.http.tls import certificate_error_from
from llmbatch.http.watchdog import within

__all__ = ["NativeAdapter"]

# A reused connection that was idle this long and then closed before any response byte
# may have met the server's idle close: retried once (NativeAdapter._exchange).
STALE_IDLE_S = 1.0
# A request the server never processed (above a GOAWAY's last_stream_id, or refused) is
# sent again on another connection, not counted as an attempt, at most this many times.
MAX_REFUSED = 10


class NativeAdapter(ClientAdapter):
    """Streams over llmbatch's own HTTP/1.1 client: asyncio Protocols, llhttp."""

    name = "native"

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self._pool: Pool | None = None
        self._h2pool: H2Pool | None = None
        self._routes: dict[str, tuple[Origin, str]] = {}

    @asynccontextmanager
    async def open(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        origin, target = self._route(request.url)
        if self.options.http2 and origin.tls:
            stream = await self._h2_stream(origin, target, request)
            if stream is not None:  # else the server chose HTTP/1.1
                try:
                    _check_encoding(stream.bad_encoding, stream.status)
                    yield StreamingResponse(
                        status=stream.status,
                        headers=stream.headers,
                        chunks=stream.chunks(),
                        http_version="HTTP/2",
                        push=stream.push,
                        discard=stream.cancel,
                    )
                finally:
                    stream.detach()
                    stream.cancel()  # nothing if it ended; else reset (CANCEL)
                return
        data = request_bytes(origin, target, request.headers, request.body)
        exchange = await self._exchange(origin, data, request.url)
        conn = exchange.conn
        try:
            _check_encoding(exchange.bad_encoding, exchange.status)
            yield StreamingResponse(
                status=exchange.status,
                headers=exchange.headers,
                chunks=exchange.chunks(),
                http_version=exchange.http_version,
                push=exchange.push,
                discard=conn.abort,
            )
        finally:
            conn.pool.release(conn)

    async def _exchange(self, origin: Origin, data: bytes, url: str) -> Exchange:
        """Send ``data`` on a pooled connection; return its exchange once the head is in."""
        t = self.timeouts
        for attempt in (1, 2):
            conn = await self._acquire(origin, url)
            reused = conn.used > 0
            idle_s = conn.loop.time() - conn.idle_since if reused else 0.0
            exchange = conn.begin(data, t.idle_s)
            try:
                with within(t.first_byte_s):
                    await exchange.head_fut
            except HeadClosed as closed:
                conn.abort()
                # Retried once, on a fresh connection, when a reused connection that sat
                # idle for a while ended before any response byte: the server's
                # keep-alive close crossing our request on the wire (it closes idle
                # connections at its own timeout), so it never read the request. Only
                # then: a connection in steady use that closes right after our request
                # went to a server that read it (a clean close and a reset look alike
                # here), and whether to send that POST again is the retry policy's
                # decision, as with the other adapters.
                stale = idle_s >= STALE_IDLE_S
                if attempt == 1 and reused and not closed.got_bytes and stale:
                    continue
                why = f": {closed.cause}" if closed.cause else ""
                if closed.got_bytes:
                    raise StreamInterrupted(f"connection closed mid-response head{why}") from None
                raise StreamInterrupted(f"connection closed before the response{why}") from None
            except TimeoutError:
                conn.abort()
                raise ReadTimeout(f"no response headers within {t.first_byte_s:g}s") from None
            except BaseException:
                conn.abort()  # a cancellation mid-exchange, an invalid head
                raise
            return exchange
        raise AssertionError("unreachable")  # pragma: no cover

    async def _h2_stream(
        self, origin: Origin, target: str, request: HTTPRequest
    ) -> H2Stream | None:
        """Send the request on an HTTP/2 stream; return it once its head is in (None when
        the origin speaks HTTP/1.1). A refused stream is sent again, for free."""
        headers = h2_request_headers(origin, target, request.headers, request.body)
        t = self.timeouts
        pool = self._get_h2pool()
        for _ in range(MAX_REFUSED + 1):
            conn = await pool.acquire(origin, t.connect_s)
            if conn is None:
                return None
            try:
                stream = conn.begin(headers, request.body, t.idle_s)
            except Refused:
                continue
            try:
                with within(t.first_byte_s):
                    await stream.head_fut
            except Refused:
                continue  # never processed by the server: another connection takes it
            except TimeoutError:
                stream.cancel()
                raise ReadTimeout(f"no response headers within {t.first_byte_s:g}s") from None
            except BaseException:
                stream.cancel()
                raise
            return stream
        raise StreamInterrupted(
            f"HTTP/2: the server refused the request {MAX_REFUSED + 1} times "
            "(GOAWAY or REFUSED_STREAM)"
        )

    async def _h2_connect(self, pool: H2Pool, origin: Origin) -> H2Connection | None:
        """A new HTTP/2 connection, once the server's SETTINGS are in; None when the
        server's ALPN chose HTTP/1.1."""
        conn = H2Connection(pool, origin)
        await self._open_socket(conn, origin, origin.display)
        if conn.alpn != "h2":
            conn.close()
            return None
        try:
            with within(self.timeouts.connect_s):
                await conn.ready
        except TimeoutError:
            conn.close()
            raise ConnectError(
                f"cannot connect to {origin.display}: no HTTP/2 SETTINGS within "
                f"{self.timeouts.connect_s:g}s"
            ) from None
        except BaseException:
            conn.close()
            raise
        if conn.closed:
            raise ConnectError(f"connection to {origin.display} closed before its HTTP/2 SETTINGS")
        return conn

    def _get_h2pool(self) -> H2Pool:
        loop = asyncio.get_running_loop()
        pool = self._h2pool
        if pool is None or pool.loop is not loop:
            pool = self._h2pool = H2Pool(loop, self.max_connections, self._h2_connect)
        return pool

    async def _acquire(self, origin: Origin, url: str) -> Connection:
        """An idle connection of ``origin``, a new one, or the next one released."""
        pool = self._get_pool()
        conn = pool.take_idle(origin)
        if conn is not None:
            return conn
        if pool.open >= pool.limit and not pool.close_idle_elsewhere(origin):
            wait_s = self.timeouts.connect_s
            try:
                with within(wait_s):
                    got = await pool.wait(origin)
            except TimeoutError:
                raise PoolTimeout(
                    f"no connection came free within {wait_s:g}s "
                    f"(all {pool.limit} in use; max_connections)"
                ) from None
            if got is not None:
                return got
        else:
            pool.open += 1
        try:
            return await self._connect(pool, origin, url)
        except BaseException:
            pool.free_slot()
            raise

    async def _connect(self, pool: Pool, origin: Origin, url: str) -> Connection:
        conn = Connection(pool, origin)
        await self._open_socket(conn, origin, url)
        if conn.closed or conn.transport is None:
            raise ConnectError(f"connection to {origin.display} closed while opening")
        conn.counted = True
        pool.conns.add(conn)
        return conn

    async def _open_socket(self, conn: asyncio.Protocol, origin: Origin, url: str) -> None:
        """Connect ``conn`` to ``origin`` (TLS for https), errors mapped."""
        ctx = self.ssl_context if origin.tls else None
        connect_s = self.timeouts.connect_s
        loop = asyncio.get_running_loop()
        try:
            with within(connect_s):
                await loop.create_connection(
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

    def _get_pool(self) -> Pool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop:
            pool = self._pool = Pool(loop, self.max_connections)
        return pool

    def _route(self, url: str) -> tuple[Origin, str]:
        """``url``'s origin and request target, parsed once per URL."""
        route = self._routes.get(url)
        if route is None:
            if len(self._routes) >= 64:
                self._routes.clear()
            route = self._routes[url] = parse_url(url)
        return route

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close_all()
        h2pool, self._h2pool = self._h2pool, None
        if h2pool is not None:
            h2pool.close_all()


def _check_encoding(bad_encoding: str, status: int) -> None:
    """A 2xx body in a content-encoding we cannot decode is refused (not retried)."""
    if bad_encoding and 200 <= status < 300:
        raise UnexpectedContentType(
            f"content-encoding {bad_encoding!r} is not supported by "
            "--client native (gzip and deflate are)"
        )
