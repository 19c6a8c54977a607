"""httpx adapter: HTTP/1.1 by default, HTTP/2 with --http2, optional aiohttp transport.

httpcore's pool rescans every connection on each request add/release, so its cost
grows faster than linearly with the pool size (RESEARCH.md section 2). We therefore
split the connection budget over several smaller clients used in rotation, and set
``max_keepalive_connections = max_connections`` to avoid httpcore's keep-alive bug
(connections closed on release when keep-alive < in use).

HTTP/2: httpcore (1.0.9) keeps handing requests to an h2 connection whose streams are
all in use (``is_available()`` ignores the stream count), where they queue on the
connection's semaphore: a stall, never a second connection (fix in httpcore PR #1088,
unreleased). So with ``--http2`` each client of the rotation is a *lane* that carries
one h2 connection, we count the streams in flight per lane, and a request goes to the
least busy lane with a free stream, or to a new lane when every lane is full. A lane's
capacity is the server's SETTINGS_MAX_CONCURRENT_STREAMS as httpcore applies it (capped
by httpcore's own 100), read from the connection once known; ``h2_max_streams`` can cap
it lower (measured: fewer streams per connection did not help, bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpcore
import httpx

from llmbatch.errors import ConnectError, PoolTimeout, ReadTimeout, StreamInterrupted
from llmbatch.http.base import (
    ClientAdapter,
    ClientOptions,
    HTTPRequest,
    StreamingResponse,
    merge_headers,
)
from llmbatch.http.httpcore_asyncio import AsyncioBackend
from llmbatch.http.httpx_transport import PoolTransport
from llmbatch.http.tls import certificate_error_from
from llmbatch.http.watchdog import within

__all__ = ["DEFAULT_POOL_SIZE", "HttpxAdapter"]

# Connections per httpx client before we add another client to the rotation. httpcore's
# pool does O(n^2) work per request add/release (its keep-alive check counts every
# connection for every idle one). Measured (bench/RESULTS.md): fast shape, anyio backend,
# C=300 / C=1000: 49 / 41 µs per token with 16, 52 / 52 with 32, 72 / 69 with 64, 103 /
# 287 with a single pool; realistic shape, C=300, on our asyncio backend: 1.80x / 1.74x /
# 2.07x / 2.40x of the bare loop with 4 / 8 / 16 / 32.
DEFAULT_POOL_SIZE = 8
KEEPALIVE_EXPIRY_S = 4.0  # below common server idle timeouts (uvicorn: 5 s)
# Streams per h2 connection until the server's SETTINGS say otherwise: httpcore's own
# cap (it announces and never exceeds 100), also what api.anthropic.com allows.
DEFAULT_H2_STREAMS = 100
_BACKEND = AsyncioBackend()  # stateless: one for every pool


@dataclass(slots=True, eq=False)
class _Lane:
    """One client of the HTTP/2 rotation: its streams in flight and how many it may carry."""

    client: httpx.AsyncClient
    pool: httpcore.AsyncConnectionPool | None  # None: another transport (aiohttp's)
    capacity: int
    in_flight: int = 0
    learned: bool = False


class HttpxAdapter(ClientAdapter):
    """Streams with httpx.AsyncClient (several, in rotation, at high concurrency)."""

    name = "httpx"

    def __init__(
        self,
        options: ClientOptions,
        *,
        aiohttp_transport: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
        h2_max_streams: int = DEFAULT_H2_STREAMS,
    ) -> None:
        super().__init__(options)
        self.http2 = options.http2
        self.aiohttp_transport = aiohttp_transport
        if aiohttp_transport:
            self.name = "httpx-aiohttp"
            pools = 1  # aiohttp's connector has no rescanning pool to split
        else:
            pools = max(1, math.ceil(self.max_connections / max(1, pool_size)))
        self._n_pools = pools
        self._clients: list[httpx.AsyncClient] = []
        self._rotation: itertools.cycle[httpx.AsyncClient] | None = None
        # HTTP/2 only: lanes, and the streams a new lane is assumed to carry.
        self._pool_size = max(1, pool_size)
        self._lanes: list[_Lane] = []
        # Streams per h2 connection at most, below the server's limit (bench hook).
        self._h2_max_streams = max(1, h2_max_streams)
        self._lane_streams = self._h2_max_streams
        # Set once the first response (or failure) told us what the server allows.
        self._lanes_sized = asyncio.Event()
        self._probing = False
        self._parsed_urls: dict[str, httpx.URL] = {}

    def _make_client(
        self, limit: int
    ) -> tuple[httpx.AsyncClient, httpcore.AsyncConnectionPool | None]:
        """A client of at most ``limit`` connections, and its httpcore pool (if ours)."""
        t = self.timeouts
        limits = httpx.Limits(
            max_connections=limit,
            max_keepalive_connections=limit,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        transport: httpx.AsyncBaseTransport
        pool = None
        if self.aiohttp_transport:
            import aiohttp
            from httpx_aiohttp import AiohttpTransport

            def session() -> aiohttp.ClientSession:
                return aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=limit, ssl=self.ssl_context, keepalive_timeout=KEEPALIVE_EXPIRY_S
                    )
                )

            transport = AiohttpTransport(limits=limits, client=session)
        else:
            # Limits go on the pool: the client ignores its own when given a transport.
            pool = httpcore.AsyncConnectionPool(
                ssl_context=self.ssl_context,
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                http1=True,
                http2=self.http2,
                retries=0,
                network_backend=_BACKEND,
            )
            transport = PoolTransport(pool)
        timeout = httpx.Timeout(connect=t.connect_s, read=t.idle_s, write=t.idle_s, pool=t.total_s)
        return httpx.AsyncClient(transport=transport, timeout=timeout), pool

    def _next_client(self) -> httpx.AsyncClient:
        if self._rotation is None:
            per_pool = math.ceil(self.max_connections / self._n_pools)
            self._clients = [self._make_client(per_pool)[0] for _ in range(self._n_pools)]
            self._rotation = itertools.cycle(self._clients)
        return next(self._rotation)

    def _take_lane(self) -> _Lane:
        """The least busy lane with a free stream; a new lane when all are full."""
        best: _Lane | None = None
        for lane in self._lanes:
            if lane.in_flight < lane.capacity and (best is None or lane.in_flight < best.in_flight):
                best = lane
        if best is None:
            # Room for HTTP/1.1 too, should the server not agree to h2 in ALPN.
            client, pool = self._make_client(self._pool_size)
            best = _Lane(client, pool, capacity=self._lane_streams)
            self._lanes.append(best)
        best.in_flight += 1
        return best

    def _learn_capacity(self, lane: _Lane, http_version: str) -> None:
        """Size ``lane`` (and lanes to come) by what its connection turned out to be."""
        lane.learned = True
        if http_version != "HTTP/2":
            lane.capacity = self._pool_size  # one request per HTTP/1.1 connection
            return
        streams = _h2_stream_limit(lane.pool) if lane.pool is not None else None
        if streams is not None:
            lane.capacity = self._lane_streams = min(streams, self._h2_max_streams)

    @asynccontextmanager
    async def open(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        if not self.http2:
            async with self._send(self._next_client(), request) as resp:
                yield resp
            return
        probe = False
        if not self._lanes_sized.is_set():
            # The first request goes alone, so the rest are spread by the server's own
            # stream limit rather than piled onto lanes sized by a guess.
            if self._probing:
                await self._lanes_sized.wait()
            else:
                self._probing = probe = True
        lane = self._take_lane()
        try:
            async with self._send(lane.client, request) as resp:
                if not lane.learned:
                    self._learn_capacity(lane, resp.http_version)
                self._lanes_sized.set()
                yield resp
        finally:
            lane.in_flight -= 1
            if probe:
                self._lanes_sized.set()  # also when it failed: the others try for themselves

    @asynccontextmanager
    async def _send(
        self, client: httpx.AsyncClient, request: HTTPRequest
    ) -> AsyncIterator[StreamingResponse]:
        t = self.timeouts
        req = client.build_request(
            "POST", self._url(request.url), content=request.body, headers=request.headers
        )
        try:
            async with asyncio.timeout(t.first_byte_s + t.connect_s):
                # Explicitly never (httpx's default too): a 3xx becomes Redirected.
                resp = await client.send(req, stream=True, follow_redirects=False)
        except TimeoutError:
            raise ReadTimeout(f"no response headers within {t.first_byte_s:g}s") from None
        except httpx.PoolTimeout as exc:
            raise PoolTimeout(f"no connection of the pool came free: {exc}") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            after_connect = _aiohttp_after_connect(exc)
            if after_connect is not None:
                raise after_connect from None
            cert_error = certificate_error_from(exc, request.url)
            if cert_error is not None:
                raise cert_error from None
            raise ConnectError(f"cannot connect to {request.url}: {exc}") from None
        except httpx.TimeoutException as exc:
            raise ReadTimeout(f"timed out waiting for response: {exc}") from None
        except httpx.TransportError as exc:
            raise StreamInterrupted(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            if _is_h2_error(exc):
                raise _mapped(exc) from None
            mapped = _aiohttp_after_connect(exc) if _is_aiohttp_error(exc) else None
            if mapped is None:
                raise
            raise mapped from None
        try:
            headers = merge_headers(resp.headers.multi_items())
            reader = _Body(resp, headers.get("content-encoding", ""))
            yield StreamingResponse(
                status=resp.status_code,
                headers=headers,
                chunks=reader.chunks(),
                http_version=resp.http_version,
                push=reader.push,
            )
        finally:
            await resp.aclose()

    def _url(self, url: str) -> httpx.URL:
        """``url`` parsed once: a run sends every request to the same few URLs, and
        httpx's parser costs ~1.5% of the CPU when tokens are 20 ms apart."""
        parsed = self._parsed_urls.get(url)
        if parsed is None:
            if len(self._parsed_urls) >= 64:
                self._parsed_urls.clear()
            parsed = self._parsed_urls[url] = httpx.URL(url)
        return parsed

    async def aclose(self) -> None:
        clients, self._clients, self._rotation = self._clients, [], None
        clients += [lane.client for lane in self._lanes]
        self._lanes = []
        for c in clients:
            await c.aclose()


def _h2_stream_limit(pool: httpcore.AsyncConnectionPool) -> int | None:
    """Streams httpcore lets the pool's h2 connection carry: min(server's, its own).

    httpcore exposes the pool's connections but not an h2 connection's settings, so
    those are read defensively; None (keep the assumed capacity) when the layout is not
    the expected one.
    """
    for conn in pool.connections:
        state = getattr(getattr(conn, "_connection", None), "_h2_state", None)
        if state is None:
            continue
        try:
            remote = int(state.remote_settings.max_concurrent_streams)
            local = int(state.local_settings.max_concurrent_streams)
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
        return max(1, min(remote, local))
    return None


class _Body:
    """A response body as ``chunks`` or ``push`` (base.StreamingResponse), errors mapped.

    Without a content-encoding the body is read with ``aiter_raw`` (``aiter_bytes``
    would add an identity decoder per read; one read per token when tokens are 20 ms
    apart). ``push`` saves the caller's ``async for`` and one generator layer per read.
    """

    __slots__ = ("_source",)

    def __init__(self, resp: httpx.Response, content_encoding: str) -> None:
        encoded = content_encoding.strip().lower() not in ("", "identity")
        self._source: AsyncIterable[bytes] = resp.aiter_bytes() if encoded else resp.aiter_raw()

    async def chunks(self) -> AsyncIterator[bytes]:
        with _body_errors_mapped():
            async for chunk in self._source:
                if chunk:
                    yield chunk

    async def push(self, on_chunk: Callable[[bytes], bool], drain_s: float) -> None:
        reads = aiter(self._source)
        with _body_errors_mapped():
            async for chunk in reads:
                if chunk and on_chunk(chunk):
                    break
            else:
                return
        # Complete: read the rest for reuse, briefly; nothing after the answer counts.
        with contextlib.suppress(TimeoutError, httpx.HTTPError), within(drain_s):
            async for _ in reads:
                pass


@contextlib.contextmanager
def _body_errors_mapped() -> Iterator[None]:
    """An error of the body's read (``_is_body_error``) raised as llmbatch's own."""
    try:
        yield
    except Exception as exc:
        if not _is_body_error(exc):
            raise
        raise _mapped(exc) from None


def _mapped(exc: Exception) -> Exception:
    """llmbatch's error for an httpx (or unmapped aiohttp) error while reading a body."""
    after_connect = _aiohttp_after_connect(exc)
    if after_connect is not None:
        return after_connect
    if isinstance(exc, httpx.TimeoutException):
        return ReadTimeout(f"no data for longer than the idle timeout ({exc})")
    return StreamInterrupted(f"stream interrupted: {type(exc).__name__}: {exc}")


# httpx-aiohttp (0.2) maps aiohttp's errors coarsely: every ClientConnectionError becomes
# httpx.ConnectTimeout (also a server that dropped an open connection, or a read
# timeout), and errors outside its table (ClientResponseError: a bad status line, an
# invalid chunk size, a header over aiohttp's limit) pass through as aiohttp's own.
# Both are put right here from the aiohttp error itself (tests/test_wire_edges.py).


def _is_body_error(exc: BaseException) -> bool:
    """An error of the body's read that ``_mapped`` turns into llmbatch's own."""
    return (
        isinstance(exc, (httpx.TimeoutException, httpx.TransportError, httpcore.NetworkError))
        or _is_aiohttp_error(exc)
        or _is_h2_error(exc)
    )


def _is_h2_error(exc: BaseException) -> bool:
    """An error of the h2 library or httpcore that httpx let through unmapped.

    httpcore (1.0.9) lets h2's own ProtocolError escape when a frame arrives on a
    connection that GOAWAY closed ("Invalid input ConnectionInputs.RECV_DATA in state
    ConnectionState.CLOSED"); the connection is gone, the request is worth another try.
    """
    if isinstance(exc, (httpcore.ProtocolError, httpcore.NetworkError)):
        return True
    h2 = sys.modules.get("h2.exceptions")  # loaded whenever an h2 connection exists
    return h2 is not None and isinstance(exc, h2.H2Error)


def _is_aiohttp_error(exc: BaseException) -> bool:
    """An aiohttp error that the httpx-aiohttp transport let through unmapped."""
    aiohttp = sys.modules.get("aiohttp")  # loaded whenever its transport is in use
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


def _aiohttp_after_connect(exc: BaseException) -> Exception | None:
    """What an aiohttp error (the one raised, or the one httpx-aiohttp wrapped) means
    when the connection was open: None for connect failures and httpx's own errors."""
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
    connect_failures = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
    if not isinstance(cause, aiohttp.ClientError) or isinstance(cause, connect_failures):
        return None
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return ReadTimeout(f"timed out reading the response: {cause}")
    if isinstance(cause, aiohttp.ClientResponseError):  # a parser error, "status" 400
        return StreamInterrupted(f"not a valid HTTP response: {' '.join(cause.message.split())}")
    return StreamInterrupted(f"stream interrupted: {type(cause).__name__}: {cause}")
