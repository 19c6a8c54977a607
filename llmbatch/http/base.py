"""The client adapter contract: one streaming POST, raw body bytes out.

An adapter knows HTTP and its library, nothing of providers or SSE. It maps every
library exception to llmbatch's own (errors.py) at this edge, so retry decisions
never depend on which adapter runs. What every adapter must agree on is decided here,
once, for all of them (``ClientAdapter.stream``): a status outside 2xx is an error
(StatusError, its body read up to ERROR_BODY_LIMIT, before any body chunk is
yielded); response headers have lower-case names and a repeated header reads as its
values joined by ", " (RFC 9110 5.3); framing that RFC 9112 calls an error is refused
whatever the library let through.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from llmbatch.config.model import Timeouts
from llmbatch.errors import RequestError, StreamInterrupted, http_status_error
from llmbatch.http.tls import make_ssl_context
from llmbatch.http.watchdog import within

__all__ = [
    "ERROR_BODY_LIMIT",
    "BodyPush",
    "ClientAdapter",
    "ClientOptions",
    "HTTPRequest",
    "StreamingResponse",
    "feed_chunks",
    "merge_headers",
    "request_id_from",
]

# How much of an error response body is kept (for messages and quota detection).
ERROR_BODY_LIMIT = 64 * 1024
# Characters never part of a field value (RFC 9110 5.5): the controls but HTAB.
_CTL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    """What every adapter is built with (one value for all, as httpx's Limits/Timeout).

    ``max_connections``: the pool's size, the run's concurrency. ``ca_bundle``: a PEM
    file of the CAs to trust instead of the system store; ``verify_tls=False`` checks
    nothing (tests). ``tls_up_front=False`` (the target is plain HTTP): the SSLContext is
    built only if an https request comes, saving the CA loading (~30 ms of CPU).
    """

    max_connections: int
    timeouts: Timeouts = field(default_factory=Timeouts)
    verify_tls: bool = True
    ca_bundle: Path | None = None
    http2: bool = False
    tls_up_front: bool = True


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """A POST to make: URL, headers and an already-encoded JSON body."""

    url: str
    headers: Mapping[str, str]
    body: bytes


# push(on_chunk, drain_s): see StreamingResponse.
BodyPush = Callable[[Callable[[bytes], bool], float], Awaitable[None]]


@dataclass(slots=True)
class StreamingResponse:
    """A response whose body is still arriving; ``headers`` as ``merge_headers`` gives them.

    ``http_version`` is the protocol the response actually came over ("HTTP/1.1" or
    "HTTP/2"), whatever was asked for.

    The body is read either from ``chunks`` or, where the adapter offers it, through
    ``push(on_chunk, drain_s)``: every chunk goes to ``on_chunk`` as it arrives, with no
    await per read, and the call returns at the end of the body. ``on_chunk`` returning
    True means the answer is complete: the rest is read undelivered for at most
    ``drain_s`` (for reuse), and errors after that point are ignored. Exceptions from
    ``on_chunk`` are raised from ``push``, and so are the body's errors (mapped as for
    ``chunks``). Use one of the two, once.

    ``discard``, where the library allows it, closes the connection instead of letting
    it go back to the pool (``ClientAdapter.stream`` calls it when the response was
    refused or its reading failed).
    """

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]
    http_version: str = "HTTP/1.1"
    push: BodyPush | None = None
    discard: Callable[[], object] | None = None

    @property
    def request_id(self) -> str | None:
        """The provider's request id (request_id_from)."""
        return request_id_from(self.headers)


def request_id_from(headers: Mapping[str, str]) -> str | None:
    """The provider's request id, from the headers OpenAI / Anthropic / vLLM use."""
    return headers.get("x-request-id") or headers.get("request-id")


def merge_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Response header fields as one mapping: lower-case names, and a field that came
    several times as its values joined by ", " in order (RFC 9110 5.3), whichever
    library read them (aiohttp and h11 hand over every line; a dict would keep one)."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        seen = headers.get(key)
        headers[key] = value if seen is None else f"{seen}, {value}"
    return headers


def _invalid_head(headers: Mapping[str, str]) -> StreamInterrupted | None:
    """What RFC 9112 and 9110 say a client must not read, whether its parser read it.

    llhttp (aiohttp, native) refuses most of these itself; h11 (httpx) reads
    Transfer-Encoding with Content-Length (chunked wins) and a repeated identical
    Content-Length, and aiohttp's lenient llhttp lets control bytes through.
    """
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if "content-length" in headers:
            # RFC 9112 6.3: "ought to be handled as an error" (request smuggling).
            return StreamInterrupted("invalid response: Transfer-Encoding with Content-Length")
        if coding.strip().lower() != "chunked":
            return StreamInterrupted(f"invalid response: unsupported transfer coding {coding!r}")
    length = headers.get("content-length")
    if length is not None and "," in length:
        return StreamInterrupted(f"invalid response: repeated Content-Length {length!r}")
    if _CTL.search("".join(headers.values())) is not None:
        # RFC 9110 5.5: field values hold no control character but HTAB.
        return StreamInterrupted("invalid response: control character in a header value")
    return None


class ClientAdapter(ABC):
    """Base class of the HTTP client adapters. One instance per run, sized to it.

    ``ssl_context`` (tls.py) is what every adapter verifies servers with: the CAs of
    ``ca_bundle`` when given, else the system store; nothing when not ``verify_tls``.
    """

    name: str = "base"

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.max_connections = options.max_connections
        self.timeouts = options.timeouts
        self._ssl_context: ssl.SSLContext | None = None
        if options.ca_bundle is not None and options.tls_up_front:
            self._ssl_context = self.ssl_context  # a bad bundle fails before anything is sent

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The run's SSLContext, built on first use: loading the system's CAs costs
        ~30 ms of CPU, which a run over plain HTTP never needs to pay."""
        if self._ssl_context is None:
            o = self.options
            self._ssl_context = make_ssl_context(
                ca_bundle=o.ca_bundle, verify=o.verify_tls, http2=o.http2
            )
        return self._ssl_context

    @asynccontextmanager
    async def stream(self, request: HTTPRequest) -> AsyncIterator[StreamingResponse]:
        """Send ``request``; yield a 2xx StreamingResponse whose chunks are raw body bytes.

        Raises ConnectError, ReadTimeout, StreamInterrupted or StatusError.
        Leaving the context releases the connection (drained for reuse when possible).
        """
        async with self.open(request) as resp:
            try:
                invalid = _invalid_head(resp.headers)
                if invalid is not None:
                    raise invalid
                status = resp.status
                if 200 <= status < 300:
                    yield resp
                    return
            except BaseException:
                if resp.discard is not None:
                    resp.discard()  # refused, or abandoned mid-body: never pooled
                raise
            if status < 200:  # 1xx are interim (never final), 0xx are not HTTP
                raise StreamInterrupted(f"invalid response: status {status} as the answer")
            # Its body is read: the connection may carry the next request.
            body = await _error_body(resp.chunks)
            raise http_status_error(status, resp.headers, body, resp.request_id, url=request.url)

    @abstractmethod
    def open(self, request: HTTPRequest) -> AbstractAsyncContextManager[StreamingResponse]:
        """Send ``request``; yield the response, whatever its status (``stream`` checks).

        Headers come from ``merge_headers``. Raises ConnectError, ReadTimeout or
        StreamInterrupted. Leaving the context releases the connection.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Close every pooled connection."""

    async def __aenter__(self) -> ClientAdapter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _error_body(chunks: AsyncIterator[bytes]) -> bytes:
    """Up to ERROR_BODY_LIMIT bytes of a non-2xx body (what arrived, on any failure)."""
    parts: list[bytes] = []
    size = 0
    with contextlib.suppress(RequestError):
        async for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_LIMIT:
                break
    return b"".join(parts)[:ERROR_BODY_LIMIT]


async def feed_chunks(
    chunks: AsyncIterator[bytes], on_chunk: Callable[[bytes], bool], drain_s: float
) -> None:
    """The push contract over an async iterator of (already mapped) chunks.

    Each chunk goes to ``on_chunk`` until it returns True (the answer is complete);
    then the rest is read unread for at most ``drain_s`` so the connection can be
    reused, and nothing that happens to it now (a drop, a stall) counts.
    """
    async for chunk in chunks:
        if on_chunk(chunk):
            break
    else:
        return
    with contextlib.suppress(TimeoutError, RequestError), within(drain_s):
        async for _ in chunks:
            pass
