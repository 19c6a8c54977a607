"""aiohttp adapter: one ClientSession per run, connector sized to the concurrency."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from llmbatch.config.load import Timeouts
from llmbatch.errors import ConnectError, ReadTimeout, StreamInterrupted, http_status_error
from llmbatch.http.aiohttp_push import map_body_error, push_body
from llmbatch.http.base import (
    ERROR_BODY_LIMIT,
    ClientAdapter,
    HTTPRequest,
    StreamingResponse,
    request_id_from,
)
from llmbatch.http.tls import certificate_error_from
from llmbatch.http.watchdog import within

__all__ = ["AiohttpAdapter"]


class AiohttpAdapter(ClientAdapter):
    """Streams with aiohttp. The connector limit equals the concurrency (never the
    silent default of 100); no total timeout on the session: connect and idle-read
    timeouts here, the per-request deadline in the dispatcher."""

    name = "aiohttp"

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
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so the adapter can be built outside a running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=4.0,  # below uvicorn's 5 s idle close
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.timeouts.connect_s,
                    sock_read=self.timeouts.idle_s,
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    @asynccontextmanager
    async def stream(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        session = self._get_session()
        t = self.timeouts
        try:
            with within(t.first_byte_s + t.connect_s):  # a watchdog entry, no timer
                # The run's SSLContext per request, so plain-HTTP runs never build it.
                ssl_ctx = self.ssl_context if request.url.startswith("https:") else True
                resp = await session.post(
                    request.url, data=request.body, headers=request.headers, ssl=ssl_ctx
                )
        except TimeoutError:
            raise ReadTimeout(f"no response headers within {t.first_byte_s:g}s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise certificate_error_from(exc, request.url) or ConnectError(
                f"TLS handshake with {request.url} failed: {exc}"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(f"cannot connect to {request.url}: {exc.os_error}") from None
        except aiohttp.ServerTimeoutError as exc:
            raise ReadTimeout(f"timed out waiting for response: {exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise StreamInterrupted(f"connection closed before the response: {exc}") from None
        except aiohttp.ClientResponseError as exc:
            # aiohttp's parser errors carry a made-up status 400: say what they are.
            why = " ".join(exc.message.split())
            raise StreamInterrupted(f"not a valid HTTP response: {why}") from None
        except aiohttp.ClientError as exc:
            raise StreamInterrupted(f"{type(exc).__name__}: {exc}") from None
        try:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            rid = request_id_from(headers)
            if resp.status >= 300:
                try:
                    body = await resp.content.read(ERROR_BODY_LIMIT)
                except (aiohttp.ClientError, TimeoutError):
                    body = b""
                raise http_status_error(resp.status, headers, body, rid)
            v = resp.version
            idle_s = t.idle_s

            def push(on_chunk: Callable[[bytes], bool], drain_s: float) -> Awaitable[None]:
                return push_body(
                    resp, on_chunk, idle_s=idle_s, drain_s=drain_s, pull=lambda: _chunks(resp)
                )

            yield StreamingResponse(
                status=resp.status,
                headers=headers,
                chunks=_chunks(resp),
                request_id=rid,
                http_version=f"HTTP/{v.major}.{v.minor}" if v is not None else "HTTP/1.1",
                push=push,
            )
        finally:
            resp.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    content = resp.content
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                return
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise map_body_error(exc) from None
