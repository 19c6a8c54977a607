"""aiohttp adapter: one ClientSession per run, connector sized to the concurrency.

An ordinary use of aiohttp's public API (``session.post``, ``resp.content.iter_any()``),
so its figures say what an aiohttp user gets; raw speed is ``--client native``'s job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from llmbatch.errors import ConnectError, ReadTimeout, StreamInterrupted
from llmbatch.http.base import (
    ClientAdapter,
    ClientOptions,
    HTTPRequest,
    StreamingResponse,
    merge_headers,
)
from llmbatch.http.tls import certificate_error_from
from llmbatch.http.watchdog import within

__all__ = ["AiohttpAdapter"]

# An idle connection is closed after this long: below uvicorn's 5 s idle close.
KEEPALIVE_S = 4.0


class AiohttpAdapter(ClientAdapter):
    """Streams with aiohttp. The connector limit equals the concurrency (never the
    silent default of 100); no total timeout on the session: connect and idle-read
    timeouts here, the per-request deadline in the dispatcher."""

    name = "aiohttp"

    def __init__(self, options: ClientOptions) -> None:
        super().__init__(options)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so the adapter can be built outside a running loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_S
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
    async def open(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        session = self._get_session()
        t = self.timeouts
        try:
            with within(t.first_byte_s + t.connect_s):  # a watchdog entry, no timer
                # The run's SSLContext per request, so plain-HTTP runs never build it.
                ssl_ctx = self.ssl_context if request.url.startswith("https:") else True
                resp = await session.post(
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    ssl=ssl_ctx,
                    # Never: a redirect would carry the key and the prompt elsewhere
                    # (aiohttp strips only Authorization). A 3xx becomes Redirected.
                    allow_redirects=False,
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
            v = resp.version
            yield StreamingResponse(
                status=resp.status,
                headers=merge_headers(resp.headers.items()),
                chunks=_chunks(resp),
                http_version=f"HTTP/{v.major}.{v.minor}" if v is not None else "HTTP/1.1",
                discard=resp.close,
            )
        finally:
            resp.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it arrives (``iter_any``: whatever each read brought), errors mapped."""
    try:
        async for chunk in resp.content.iter_any():
            yield chunk
    except TimeoutError as exc:  # aiohttp's ServerTimeoutError (sock_read) is one
        raise ReadTimeout(f"no data for longer than the idle timeout ({exc})") from None
    except aiohttp.ClientError as exc:
        raise StreamInterrupted(f"stream interrupted: {type(exc).__name__}: {exc}") from None
