"""httpx adapter: HTTP/1.1 by default, HTTP/2 with --http2, optional aiohttp transport.

httpcore's pool rescans every connection on each request add/release, so its cost
grows faster than linearly with the pool size (RESEARCH.md section 2). We therefore
split the connection budget over several smaller clients used in rotation, and set
``max_keepalive_connections = max_connections`` to avoid httpcore's keep-alive bug
(connections closed on release when keep-alive < in use).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from ..config import Timeouts
from ..errors import ConnectError, ReadTimeout, StreamInterrupted, http_status_error
from .base import ERROR_BODY_LIMIT, ClientAdapter, HTTPRequest, StreamingResponse, request_id_from

__all__ = ["DEFAULT_POOL_SIZE", "HttpxAdapter"]

# Connections per httpx client before we add another client to the rotation. Measured
# (bench/RESULTS.md, fast shape): CPU per token at C=300 / C=1000 was 49 / 41 µs with 16,
# 52 / 52 with 32, 72 / 69 with 64, 76 / 85 with 128 and 103 / 287 with a single pool;
# 8 was no better than 16 at C=1000 and adds clients (memory).
DEFAULT_POOL_SIZE = 16
KEEPALIVE_EXPIRY_S = 4.0  # below common server idle timeouts (uvicorn: 5 s)


class HttpxAdapter(ClientAdapter):
    """Streams with httpx.AsyncClient (several, in rotation, at high concurrency)."""

    name = "httpx"

    def __init__(
        self,
        *,
        max_connections: int,
        timeouts: Timeouts,
        verify_tls: bool = True,
        http2: bool = False,
        aiohttp_transport: bool = False,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        super().__init__(max_connections=max_connections, timeouts=timeouts, verify_tls=verify_tls)
        self.http2 = http2
        self.aiohttp_transport = aiohttp_transport
        if aiohttp_transport:
            self.name = "httpx-aiohttp"
            pools = 1  # aiohttp's connector has no rescanning pool to split
        else:
            pools = max(1, math.ceil(max_connections / max(1, pool_size)))
        self._n_pools = pools
        self._clients: list[httpx.AsyncClient] = []
        self._rotation: itertools.cycle[httpx.AsyncClient] | None = None

    def _make_client(self, limit: int) -> httpx.AsyncClient:
        t = self.timeouts
        limits = httpx.Limits(
            max_connections=limit,
            max_keepalive_connections=limit,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        transport: httpx.AsyncBaseTransport
        if self.aiohttp_transport:
            import aiohttp
            from httpx_aiohttp import AiohttpTransport

            def session() -> aiohttp.ClientSession:
                return aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=limit, ssl=self.verify_tls, keepalive_timeout=KEEPALIVE_EXPIRY_S
                    )
                )

            transport = AiohttpTransport(limits=limits, client=session)
        else:
            # Limits go on the transport: the client ignores its own when given one.
            transport = httpx.AsyncHTTPTransport(
                limits=limits, http2=self.http2, verify=self.verify_tls, retries=0
            )
        return httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                connect=t.connect_s, read=t.idle_s, write=t.idle_s, pool=t.total_s
            ),
        )

    def _next_client(self) -> httpx.AsyncClient:
        if self._rotation is None:
            per_pool = math.ceil(self.max_connections / self._n_pools)
            self._clients = [self._make_client(per_pool) for _ in range(self._n_pools)]
            self._rotation = itertools.cycle(self._clients)
        return next(self._rotation)

    @asynccontextmanager
    async def stream(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        client = self._next_client()
        t = self.timeouts
        req = client.build_request(
            "POST", request.url, content=request.body, headers=request.headers
        )
        try:
            async with asyncio.timeout(t.first_byte_s + t.connect_s):
                resp = await client.send(req, stream=True)
        except TimeoutError:
            raise ReadTimeout(f"no response headers within {t.first_byte_s:g}s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectError(f"cannot connect to {request.url}: {exc}") from None
        except httpx.TimeoutException as exc:
            raise ReadTimeout(f"timed out waiting for response: {exc}") from None
        except httpx.TransportError as exc:
            raise StreamInterrupted(f"{type(exc).__name__}: {exc}") from None
        try:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            rid = request_id_from(headers)
            if resp.status_code >= 300:
                body = b""
                try:
                    async for part in resp.aiter_bytes():
                        body += part
                        if len(body) >= ERROR_BODY_LIMIT:
                            break
                except (httpx.HTTPError, TimeoutError):
                    pass
                raise http_status_error(resp.status_code, headers, body, rid)
            yield StreamingResponse(
                status=resp.status_code, headers=headers, chunks=_chunks(resp), request_id=rid
            )
        finally:
            await resp.aclose()

    async def aclose(self) -> None:
        clients, self._clients, self._rotation = self._clients, [], None
        for c in clients:
            await c.aclose()


async def _chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_bytes():
            if chunk:
                yield chunk
    except httpx.TimeoutException as exc:
        raise ReadTimeout(f"no data for longer than the idle timeout ({exc})") from None
    except httpx.TransportError as exc:
        raise StreamInterrupted(f"stream interrupted: {type(exc).__name__}: {exc}") from None
