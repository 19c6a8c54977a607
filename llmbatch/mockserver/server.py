"""Routing and start-up: the mock as an aiohttp.web application on a TCP port."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from llmbatch.mockserver.anthropic import AnthropicRoutes
from llmbatch.mockserver.config import MockConfig
from llmbatch.mockserver.gemini import GeminiRoutes
from llmbatch.mockserver.openai import OpenAIRoutes
from llmbatch.mockserver.responses import ResponsesRoutes
from llmbatch.mockserver.state import MockState, MockStats
from llmbatch.mockserver.tls import MockTLS, server_ssl_context

__all__ = ["MockServer", "build_app", "start_mock_server"]


def build_app(state: MockState) -> web.Application:
    """The aiohttp application serving ``state``'s endpoints."""
    openai = OpenAIRoutes(state)
    anthropic = AnthropicRoutes(state, openai)
    responses = ResponsesRoutes(state, openai)
    gemini = GeminiRoutes(state, openai)

    async def models(request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": state.cfg.model, "object": "model"}]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def get_stats(request: web.Request) -> web.Response:
        stats = state.stats.as_dict()
        if state.limits.active:  # the server's own account of the rate a client achieved
            stats["limits"] = state.limits.measured()
        return web.Response(body=orjson.dumps(stats), content_type="application/json")

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", openai.chat)
    app.router.add_post("/v1/completions", openai.completions)
    app.router.add_post("/v1/messages", anthropic.messages)
    app.router.add_post("/v1/responses", responses.responses)
    # Gemini's API answers under both versions: the mock's /v1 base URL serves it too.
    app.router.add_post("/v1/models/{target}", gemini.models)
    app.router.add_post("/v1beta/models/{target}", gemini.models)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/mock/stats", get_stats)
    app.router.add_post("/mock/reset", reset)
    return app


class MockServer:
    """A running mock server; ``url`` is its OpenAI-style base URL (ending in /v1)."""

    def __init__(
        self,
        runner: web.AppRunner,
        state: MockState,
        host: str,
        port: int,
        tls: MockTLS | None = None,
    ) -> None:
        self._runner = runner
        self._state = state
        self.host = host
        self.port = port
        self.tls = tls  # the certificates when serving HTTPS (tls.ca_file: the CA to trust)
        self.url = f"{'https' if tls else 'http'}://{host}:{port}/v1"

    @property
    def stats(self) -> MockStats:
        """Live counters (requests, in-flight, max in-flight, faults injected)."""
        return self._state.stats

    def measured(self) -> dict[str, dict[str, Any]]:
        """Per rate limit, the rate a client achieved against the rate it allows (the
        server's own log; empty without limits)."""
        return self._state.limits.measured()

    async def wait_completed(self, count: int) -> None:
        """Wait until ``count`` answers have been sent in full."""
        await self._state.wait_completed(count)

    async def wait_in_flight(self, count: int) -> None:
        """Wait until ``count`` requests are in flight at once."""
        await self._state.wait_in_flight(count)

    async def close(self) -> None:
        """Stop listening and close open connections."""
        await self._runner.cleanup()


async def start_mock_server(
    cfg: MockConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: MockTLS | None = None,
    http2: bool = False,
    max_streams: int = 100,
    goaway_after: int | None = None,
) -> MockServer:
    """Start the mock on ``host:port`` (port 0 = an ephemeral port) in the running loop.

    With ``tls`` (tls.make_mock_tls) it serves HTTPS: HTTP/1.1 from aiohttp, or with
    ``http2`` h2 (h2server.py) and HTTP/1.1 (aiohttp) by ALPN, allowing ``max_streams``
    concurrent streams per connection and sending GOAWAY on a connection's
    ``goaway_after``-th stream (h2front.py).
    """
    state = MockState(cfg or MockConfig())
    if http2:
        from llmbatch.mockserver.h2front import serve_h2

        if tls is None:
            raise ValueError("the mock serves HTTP/2 over TLS only: pass tls=make_mock_tls()")
        return await serve_h2(
            state,
            build_app(state),
            tls,
            host=host,
            port=port,
            max_streams=max_streams,
            goaway_after=goaway_after,
        )
    runner = web.AppRunner(
        build_app(state), access_log=None, handle_signals=False, shutdown_timeout=0.1
    )
    await runner.setup()
    ssl_ctx = None
    if tls is not None:

        def on_handshake() -> None:
            state.stats.connections += 1

        ssl_ctx = server_ssl_context(tls, alpn=["http/1.1"], on_handshake=on_handshake)
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True, ssl_context=ssl_ctx)
    await site.start()
    bound = runner.addresses[0]
    return MockServer(runner, state, host, int(bound[1]), tls)
