"""The client adapter contract: one streaming POST, raw body bytes out.

An adapter knows HTTP and its library, nothing of providers or SSE. It maps every
library exception to llmbatch's own (errors.py) at this edge, so retry decisions
never depend on which adapter runs. A non-2xx answer is read (bounded) and raised
as HTTPStatusError before any body chunk is yielded.
"""

from __future__ import annotations

import contextlib
import ssl
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from llmbatch.config.load import Timeouts
from llmbatch.errors import RequestError
from llmbatch.http.tls import make_ssl_context
from llmbatch.http.watchdog import within

__all__ = [
    "ERROR_BODY_LIMIT",
    "BodyPush",
    "ClientAdapter",
    "HTTPRequest",
    "StreamingResponse",
    "feed_chunks",
]

# How much of an error response body is kept (for messages and quota detection).
ERROR_BODY_LIMIT = 64 * 1024


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
    """A 2xx response whose body is still arriving; ``headers`` has lower-case keys.

    ``http_version`` is the protocol the response actually came over ("HTTP/1.1" or
    "HTTP/2"), whatever was asked for.

    The body is read either from ``chunks`` or, where the adapter offers it, through
    ``push(on_chunk, drain_s)``: every chunk goes to ``on_chunk`` as it arrives, with no
    await per read, and the call returns at the end of the body. ``on_chunk`` returning
    True means the answer is complete: the rest is read undelivered for at most
    ``drain_s`` (for reuse), and errors after that point are ignored. Exceptions from
    ``on_chunk`` are raised from ``push``, and so are the body's errors (mapped as for
    ``chunks``). Use one of the two, once.
    """

    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]
    request_id: str | None = field(default=None)
    http_version: str = "HTTP/1.1"
    push: BodyPush | None = None


def request_id_from(headers: Mapping[str, str]) -> str | None:
    """The provider's request id, from the headers OpenAI / Anthropic / vLLM use."""
    return headers.get("x-request-id") or headers.get("request-id")


class ClientAdapter(ABC):
    """Base class of the HTTP client adapters. One instance per run, sized to it.

    ``ssl_context`` (tls.py) is what every adapter verifies servers with: the CAs of
    ``ca_bundle`` when given, else the system store; nothing when not ``verify_tls``.
    """

    name: str = "base"

    def __init__(
        self,
        *,
        max_connections: int,
        timeouts: Timeouts,
        verify_tls: bool = True,
        ca_bundle: Path | None = None,
        http2: bool = False,
        tls_up_front: bool = True,
    ) -> None:
        self.max_connections = max_connections
        self.timeouts = timeouts
        self.verify_tls = verify_tls
        self._tls_args = (ca_bundle, verify_tls, http2)
        self._ssl_context: ssl.SSLContext | None = None
        if ca_bundle is not None and tls_up_front:
            self._ssl_context = self.ssl_context  # a bad bundle fails before anything is sent

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The run's SSLContext, built on first use: loading the system's CAs costs
        ~30 ms of CPU, which a run over plain HTTP never needs to pay."""
        if self._ssl_context is None:
            ca_bundle, verify, http2 = self._tls_args
            self._ssl_context = make_ssl_context(ca_bundle=ca_bundle, verify=verify, http2=http2)
        return self._ssl_context

    @abstractmethod
    def stream(self, request: HTTPRequest) -> AbstractAsyncContextManager[StreamingResponse]:
        """Send ``request``; yield a StreamingResponse whose chunks are raw body bytes.

        Raises ConnectError, ReadTimeout, StreamInterrupted or HTTPStatusError.
        Leaving the context releases the connection (drained for reuse when possible).
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Close every pooled connection."""

    async def __aenter__(self) -> ClientAdapter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def feed_chunks(
    chunks: AsyncIterator[bytes],
    on_chunk: Callable[[bytes], bool],
    drain_s: float,
    *,
    draining: bool = False,
) -> None:
    """The push contract over an async iterator of (already mapped) chunks.

    Each chunk goes to ``on_chunk`` until it returns True (the answer is complete);
    then the rest is read unread for at most ``drain_s`` so the connection can be
    reused, and nothing that happens to it now (a drop, a stall) counts.
    ``draining=True``: the answer is already complete, only drain.
    """
    if not draining:
        async for chunk in chunks:
            if on_chunk(chunk):
                draining = True
                break
    if draining:
        with contextlib.suppress(TimeoutError, RequestError), within(drain_s):
            async for _ in chunks:
                pass
