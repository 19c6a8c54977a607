"""The mock over HTTPS with HTTP/2: an ASGI front-end on the mock's own h2 server.

The ASGI front-end runs the very handlers the aiohttp server runs (answers, timing,
faults, rate limits), through the seam every aiohttp handler already writes to: the
response writer (aiohttp's ``AbstractStreamWriter``: ``write_headers``, ``write``,
``write_eof``). ``_ASGIWriter`` implements it on ASGI messages, and the request the
handler reads is an aiohttp ``web.Request`` over the ASGI body. Nothing of the answer
logic is copied here.

h2server.py speaks h2 (HTTP/1.1 goes to aiohttp, as ALPN decides), announces
``max_streams`` as SETTINGS_MAX_CONCURRENT_STREAMS on every connection and sends GOAWAY
as nginx does (hypercorn, used before, cannot finish the streams its GOAWAY promised;
h2server.py says why). The server's
TLS context counts handshakes, so ``stats.connections`` is how many connections the
clients opened. A handler that drops its connection cannot do so through ASGI (it has
no stream reset), so here the ``disconnect`` fault ends its stream early (no end
marker: the client sees a truncated stream) and ``reset`` answers 502 with no body;
other streams on the connection go on, as they would behind an h2 proxy.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11, RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from llmbatch.mockserver.h2server import H2Server
from llmbatch.mockserver.server import MockServer
from llmbatch.mockserver.state import MockState, MockStats
from llmbatch.mockserver.tls import MockTLS, server_ssl_context

__all__ = ["DEFAULT_MAX_STREAMS", "H2MockServer", "serve_h2"]

DEFAULT_MAX_STREAMS = 100  # what api.anthropic.com allows per connection
# Connection-specific headers aiohttp adds for HTTP/1.1; forbidden in HTTP/2 (RFC 9113 8.2.2).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _ASGIWriter(AbstractStreamWriter):
    """aiohttp's response-writer seam, written as ASGI http.response.* messages."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._eof = False

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        status = int(status_line.split(" ", 2)[1])
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in headers.items()
            if k.lower() not in _HOP_BY_HOP
        ]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if chunk:
            self.output_size += len(chunk)
            await self._send(
                {"type": "http.response.body", "body": bytes(chunk), "more_body": True}
            )

    async def write_eof(self, chunk: bytes = b"") -> None:
        if not self._eof:
            self._eof = True
            self.output_size += len(chunk)
            await self._send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def drain(self) -> None:
        return None

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        return None  # the mock never compresses

    def enable_chunking(self) -> None:
        return None  # framing is the ASGI server's job


class _ASGIBody:
    """The request body as the aiohttp request reads it (``readany`` until b"")."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._done = False

    def set_read_chunk_size(self, size: int) -> None:
        return None

    async def readany(self) -> bytes:
        if self._done:
            return b""
        msg = await self._receive()
        if msg["type"] != "http.request":
            self._done = True  # http.disconnect
            return b""
        self._done = not msg.get("more_body", False)
        body: bytes = msg.get("body", b"")
        return body


class _Transport:
    """What a handler may do to "its connection": drop it (here: reset the stream)."""

    def __init__(self, peer: Any) -> None:
        self.aborted = False
        self._peer = peer

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default


class _Protocol:
    """The few attributes of aiohttp's RequestHandler that web.Request reads."""

    ssl_context = None
    sockname = None
    max_field_size = 8190
    max_line_length = 8190
    max_headers = 128

    def __init__(self, transport: _Transport, writer: _ASGIWriter, peer: Any) -> None:
        self.transport = transport
        self.writer = writer
        self.peername = peer


def asgi_app(app: web.Application) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI application running ``app``'s routes and handlers."""
    router = app.router

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = CIMultiDict[str]()
        for k, v in scope["headers"]:
            headers.add(k.decode("latin-1"), v.decode("latin-1"))
        path = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            path += b"?" + scope["query_string"]
        target = path.decode("latin-1")
        message = RawRequestMessage(
            scope["method"],
            target,
            HttpVersion11,
            CIMultiDictProxy(headers),
            tuple((k, v) for k, v in scope["headers"]),
            False,
            None,
            False,
            False,
            URL(target),
        )
        writer = _ASGIWriter(send)
        peer = scope.get("client")
        transport = _Transport(peer)
        task = asyncio.current_task()
        assert task is not None
        request = web.Request(
            message,
            _ASGIBody(receive),  # type: ignore[arg-type]
            _Protocol(transport, writer, peer),  # type: ignore[arg-type]
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=app._client_max_size,
        )
        try:
            match = await router.resolve(request)
            response = await match.handler(request)
        except web.HTTPException as exc:
            response = exc
        except ConnectionError:
            if not transport.aborted:
                raise
            response = web.Response(status=502)  # "reset" before any answer
        if transport.aborted and response.prepared:
            await writer.write_eof()  # "disconnect": the stream ends here, unfinished
            return
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()

    return handle


class H2MockServer(MockServer):
    """A running mock over HTTPS: h2 (h2server.py) or HTTP/1.1 (aiohttp) by ALPN."""

    def __init__(  # noqa: PLW0231 (MockServer's runner serves HTTP/1.1 alone)
        self,
        state: MockState,
        host: str,
        port: int,
        tls: MockTLS,
        max_streams: int,
        h2server: H2Server,
        runner: web.AppRunner,
    ) -> None:
        self._state = state
        self.host = host
        self.port = port
        self.tls = tls
        self.max_streams = max_streams
        self.url = f"https://{host}:{port}/v1"
        self._h2 = h2server
        self._runner = runner

    @property
    def stats(self) -> MockStats:
        """Live counters, as MockServer.stats (``connections``: TLS connections opened)."""
        return self._state.stats

    async def close(self, grace_s: float = 0.2) -> None:
        """Stop listening; GOAWAY on every h2 connection, whose streams in flight get
        ``grace_s`` to finish; then close everything."""
        await self._h2.close(grace_s)
        await self._runner.cleanup()


async def serve_h2(
    state: MockState,
    app: web.Application,
    tls: MockTLS,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_streams: int = DEFAULT_MAX_STREAMS,
    goaway_after: int | None = None,
) -> H2MockServer:
    """Serve ``app`` (the handlers of ``state``) over HTTPS with h2, in the running loop.

    ``goaway_after``: an h2 connection gets GOAWAY (last_stream_id = the last stream it
    received; the streams in flight still finish, later ones are refused) once it has
    received this many streams, as nginx does after ``keepalive_requests``.
    """

    def on_handshake() -> None:
        state.stats.connections += 1

    def on_refused() -> None:
        state.stats.streams_refused += 1

    ctx = server_ssl_context(tls, alpn=["h2", "http/1.1"], on_handshake=on_handshake)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    http1 = runner.server
    assert http1 is not None
    server = H2Server(
        asgi_app(app),
        http1,
        max_streams=max_streams,
        goaway_after=goaway_after,
        on_refused=on_refused,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    await server.listen(sock, ctx)
    bound_port = int(sock.getsockname()[1])
    return H2MockServer(state, host, bound_port, tls, max_streams, server, runner)
