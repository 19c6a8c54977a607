"""``--client native``: the adapter over the pool, its connections and llhttp."""

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
from llmbatch.http.native.pool import Pool
from llmbatch.http.native.wire import Origin, parse_url, request_bytes
from llmbatch.http.tls import certificate_error_from
from llmbatch.http.watchdog import within

__all__ = ["NativeAdapter"]

# A reused connection that was idle this long and then closed before any response byte
# may have met the server's idle close: retried once (NativeAdapter._exchange).
STALE_IDLE_S = 1.0


class NativeAdapter(ClientAdapter):
    """Streams over llmbatch's own HTTP/1.1 client: asyncio Protocols, llhttp."""

    name = "native"

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self._pool: Pool | None = None
        self._routes: dict[str, tuple[Origin, str]] = {}

    @asynccontextmanager
    async def open(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        origin, target = self._route(request.url)
        data = request_bytes(origin, target, request.headers, request.body)
        exchange = await self._exchange(origin, data, request.url)
        conn = exchange.conn
        try:
            if exchange.bad_encoding and 200 <= exchange.status < 300:
                raise UnexpectedContentType(
                    f"content-encoding {exchange.bad_encoding!r} is not supported by "
                    "--client native (gzip and deflate are)"
                )
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
