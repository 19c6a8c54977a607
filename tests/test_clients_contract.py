"""One contract, every adapter: real loopback sockets, the same assertions.

The first part runs against the mock server; the second feeds every adapter the same
scripted bytes (tests/rawhttp.py) and asserts the same status, headers, body and error
class from each: where the libraries underneath disagree (h11 reads Transfer-Encoding
with Content-Length, aiohttp follows redirects, a repeated header is one value or
several), llmbatch's adapters do not.

On virtual time (tests/virtualtime.py): each adapter's timeout fires at exactly its limit,
whatever the machine's load, and the mock's 5 s stall takes no test time.
"""

from __future__ import annotations

import gzip
import weakref
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from llmbatch.config.model import Timeouts
from llmbatch.errors import (
    AuthError,
    BadRequest,
    ConnectError,
    MalformedResponse,
    QuotaExhausted,
    RateLimited,
    ReadTimeout,
    Redirected,
    ServerError,
    StreamInterrupted,
)
from llmbatch.http import ClientAdapter, ClientOptions, HTTPRequest, make_client
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.providers.sse import SSEDecoder

from .conftest import ADAPTERS
from .rawhttp import Action, Close, RawServer, Reset, Send, chunk, chunked, response_head
from .virtualtime import TIMER_SLACK_S, loop_time

pytestmark = pytest.mark.virtualtime

MESSAGES = [{"role": "user", "content": "contract"}]
FAST = Timeouts(connect_s=2.0, first_byte_s=2.0, idle_s=2.0, total_s=10.0)


# How collect() reads each adapter's body: "chunks", or "push" where the adapter offers it.
_READ_MODE: weakref.WeakKeyDictionary[ClientAdapter, str] = weakref.WeakKeyDictionary()


# The adapters whose StreamingResponse offers push (the others give chunks only).
PUSHING = ["httpx", "native"]


@pytest.fixture(params=[*ADAPTERS, *(f"{name}+push" for name in PUSHING)])
async def adapter(request: pytest.FixtureRequest) -> AsyncIterator[ClientAdapter]:
    name, _, mode = request.param.partition("+")
    client = make_client(
        name,
        ClientOptions(
            max_connections=8,
            timeouts=Timeouts(connect_s=2.0, first_byte_s=0.5, idle_s=0.5, total_s=10.0),
        ),
    )
    _READ_MODE[client] = mode or "chunks"
    async with client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    s = await start_mock_server(MockConfig(tokens=12, ttft_s=0.0, itl_s=0.0, stall_s=5.0))
    try:
        yield s
    finally:
        await s.close()


def chat_request(url: str, *, stream: bool = True, **headers: str) -> HTTPRequest:
    body = {"model": "m", "messages": MESSAGES, "stream": stream}
    return HTTPRequest(
        url=f"{url}/chat/completions",
        headers={"content-type": "application/json", **headers},
        body=orjson.dumps(body),
    )


async def collect(client: ClientAdapter, req: HTTPRequest) -> tuple[bytes, dict[str, str]]:
    async with client.stream(req) as resp:
        if _READ_MODE.get(client) == "push":
            assert resp.push is not None
            parts: list[bytes] = []

            def on_chunk(chunk: bytes) -> bool:
                parts.append(chunk)
                return False  # the whole body, as chunks would give it

            await resp.push(on_chunk, 1.0)
        else:
            parts = [c async for c in resp.chunks]
        return b"".join(parts), dict(resp.headers)


def stream_text(raw: bytes) -> str:
    dec = SSEDecoder()
    out = []
    for ev in dec.feed(raw):
        if ev.data == b"[DONE]":
            continue
        for ch in orjson.loads(ev.data)["choices"]:
            out.append(ch["delta"].get("content") or "")
    return "".join(out)


async def test_normal_stream(adapter: ClientAdapter, server: MockServer) -> None:
    raw, headers = await collect(adapter, chat_request(server.url))
    assert headers["content-type"].startswith("text/event-stream")
    assert stream_text(raw) == expected_text(MESSAGES, 12)
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_connection_is_reused(adapter: ClientAdapter, server: MockServer) -> None:
    for _ in range(5):
        await collect(adapter, chat_request(server.url))
    assert server.stats.completed == 5


async def test_non_streaming_response(adapter: ClientAdapter, server: MockServer) -> None:
    raw, headers = await collect(adapter, chat_request(server.url, stream=False))
    body = orjson.loads(raw)
    assert body["choices"][0]["message"]["content"] == expected_text(MESSAGES, 12)
    assert headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("fault", "exc_type", "status"),
    [
        ("429", RateLimited, 429),
        ("quota", QuotaExhausted, 429),
        ("401", AuthError, 401),
        ("400", BadRequest, 400),
        ("503", ServerError, 503),
    ],
)
async def test_http_errors_carry_status_and_headers(
    adapter: ClientAdapter, server: MockServer, fault: str, exc_type: type, status: int
) -> None:
    with pytest.raises(exc_type) as info:
        await collect(adapter, chat_request(server.url, **{"x-mock-fault": fault}))
    assert info.value.status == status
    if fault == "429":
        assert info.value.retry_after_s == pytest.approx(0.05)
        assert "retry-after-ms" in info.value.headers


async def test_reset_before_response(adapter: ClientAdapter, server: MockServer) -> None:
    with pytest.raises(StreamInterrupted):
        await collect(adapter, chat_request(server.url, **{"x-mock-fault": "reset"}))


async def test_disconnect_mid_stream(adapter: ClientAdapter, server: MockServer) -> None:
    with pytest.raises(StreamInterrupted):
        await collect(adapter, chat_request(server.url, **{"x-mock-fault": "disconnect"}))


async def test_stall_mid_stream_hits_idle_timeout(
    adapter: ClientAdapter, server: MockServer
) -> None:
    # The mock stalls 5 s after its first tokens: idle_s (0.5 s) after the last byte.
    t0 = loop_time()
    with pytest.raises(ReadTimeout):
        await collect(adapter, chat_request(server.url, **{"x-mock-fault": "stall"}))
    assert loop_time() - t0 == pytest.approx(0.5, abs=TIMER_SLACK_S)


async def test_slow_first_byte_times_out(adapter: ClientAdapter, server: MockServer) -> None:
    # The mock holds its response headers back: first_byte_s (0.5 s) after sending.
    t0 = loop_time()
    with pytest.raises(ReadTimeout):
        await collect(adapter, chat_request(server.url, **{"x-mock-fault": "slow_first_byte"}))
    assert loop_time() - t0 == pytest.approx(0.5, abs=TIMER_SLACK_S)


async def test_connect_refused(adapter: ClientAdapter) -> None:
    # Bind a port, then close it, so nothing listens there.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError):
        await collect(adapter, chat_request(f"http://127.0.0.1:{port}/v1"))


# -- raw bodies the mock does not produce ------------------------------------------------

SAMPLE = (
    b'data: {"choices":[{"delta":{"content":"he"}}]}\r\n\r\n'
    b": ping\n\n"
    b'data: {"choices":[{"delta":{"content":"llo \xc3\xa9"}}]}\n\n'
    b"data: [DONE]\n\n"
)


async def _raw_app(request: web.Request) -> web.StreamResponse:
    mode = request.query.get("mode", "bytes")
    headers = {"content-type": "text/event-stream"}
    if mode == "gzip":
        headers["content-encoding"] = "gzip"
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    if mode == "gzip":  # compressed by the server, in two chunks
        body = gzip.compress(SAMPLE)
        await resp.write(body[:20])
        await resp.write(body[20:])
    elif mode == "bytes":
        for i in range(len(SAMPLE)):  # one chunked-encoding chunk per byte
            await resp.write(SAMPLE[i : i + 1])
    else:
        big = b"x" * (1 << 20)
        line = b'data: {"choices":[{"delta":{"content":"' + big + b'"}}]}\n\n'
        await resp.write(line + b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def raw_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _raw_app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_body_split_at_every_byte(adapter: ClientAdapter, raw_url: str) -> None:
    raw, _ = await collect(adapter, chat_request(raw_url))
    assert raw == SAMPLE
    assert stream_text(raw) == "hello é"


async def test_one_mebibyte_sse_line(adapter: ClientAdapter, raw_url: str) -> None:
    req = chat_request(raw_url)
    req = HTTPRequest(url=req.url + "?mode=big", headers=req.headers, body=req.body)
    raw, _ = await collect(adapter, req)
    assert stream_text(raw) == "x" * (1 << 20)


@pytest.mark.parametrize("name", PUSHING)
async def test_push_raises_what_on_chunk_raises_and_stops_at_the_answer(
    server: MockServer, name: str
) -> None:
    # A callback error ends the read with that error; a callback that says "complete" at
    # [DONE] gets nothing more, and the next request on the same adapter still gets a
    # whole answer.
    client = make_client(name, ClientOptions(max_connections=1, timeouts=FAST))
    async with client:
        async with client.stream(chat_request(server.url)) as resp:
            assert resp.push is not None

            def boom(chunk: bytes) -> bool:
                raise MalformedResponse("bad chunk")

            with pytest.raises(MalformedResponse, match="bad chunk"):
                await resp.push(boom, 1.0)
        parts: list[bytes] = []

        def until_done(chunk: bytes) -> bool:
            assert not parts or not parts[-1].endswith(b"data: [DONE]\n\n")
            parts.append(chunk)
            return b"data: [DONE]\n\n" in chunk

        async with client.stream(chat_request(server.url)) as resp:
            assert resp.push is not None
            await resp.push(until_done, 1.0)
        assert stream_text(b"".join(parts)) == expected_text(MESSAGES, 12)
    assert server.stats.completed >= 1


async def test_gzip_body_is_decoded(adapter: ClientAdapter, raw_url: str) -> None:
    req = chat_request(raw_url)
    req = HTTPRequest(url=req.url + "?mode=gzip", headers=req.headers, body=req.body)
    raw, headers = await collect(adapter, req)
    assert headers.get("content-encoding") == "gzip"
    assert raw == SAMPLE


# -- the same bytes, the same answer from every adapter -------------------------------------

SSE = (("Content-Type", "text/event-stream"),)
EVENTS = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]
BODY = b"".join(EVENTS)
LENGTH = str(len(BODY))
OK: list[Action] = [Send(response_head(headers=SSE, chunked=True) + chunked(EVENTS))]


@pytest.fixture
async def raw_servers() -> AsyncIterator[list[RawServer]]:
    servers: list[RawServer] = []
    yield servers
    for s in servers:
        await s.close()


async def scripted(servers: list[RawServer], *scripts: list[Action]) -> RawServer:
    """A raw server giving the n-th request ``scripts[n]`` (the last repeats)."""
    server = RawServer.scripted(*scripts)
    servers.append(await server.start())
    return server


async def test_repeated_header_reads_the_same(
    adapter: ClientAdapter, raw_servers: list[RawServer]
) -> None:
    # RFC 9110 5.3: a field sent several times is its values joined by ", ", in order
    # (aiohttp and h11 hand over each line; a dict built from them kept one or the other).
    hdrs = (("X-Ratelimit-Remaining", "9"), ("x-ratelimit-remaining", "8"))
    hdrs += (("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"))
    head = response_head(headers=(*SSE, *hdrs), content_length=len(BODY))
    server = await scripted(raw_servers, [Send(head + BODY)])
    raw, headers = await collect(adapter, chat_request(server.url))
    assert raw == BODY
    assert headers["x-ratelimit-remaining"] == "9, 8"
    assert headers["set-cookie"] == "a=1, b=2"
    assert headers["content-type"] == "text/event-stream"


def _with(*extra: tuple[str, str], status: str = "200 OK") -> bytes:
    return response_head(status, (*SSE, *extra))


# Answers every adapter refuses (StreamInterrupted), whatever its library reads.
REFUSED = {
    # RFC 9112 6.3: "ought to be handled as an error" (h11 lets chunked win).
    "te-with-content-length": _with(("Content-Length", "20"), ("Transfer-Encoding", "chunked"))
    + chunked(EVENTS),
    "transfer-coding-not-chunked": _with(("Transfer-Encoding", "gzip")) + BODY,
    "gzip-then-chunked": _with(("Transfer-Encoding", "gzip, chunked")) + chunked(EVENTS),
    "status-099": response_head("099 Early", SSE, content_length=len(BODY)) + BODY,
    "101-not-asked-for": _with(("Upgrade", "h2c"), ("Connection", "Upgrade"), status="101 Go"),
    # RFC 9110 5.5: never part of a field value (aiohttp reads it; NUL it refuses).
    "control-byte-in-value": _with(("X-Request-Id", "a\x01b"), ("Content-Length", LENGTH)) + BODY,
    "nul-in-value": _with(("X-Request-Id", "a\x00b"), ("Content-Length", LENGTH)) + BODY,
}


@pytest.mark.parametrize("answer", list(REFUSED.values()), ids=list(REFUSED))
async def test_refused_by_every_adapter(
    adapter: ClientAdapter, raw_servers: list[RawServer], answer: bytes
) -> None:
    server = await scripted(raw_servers, [Send(answer)], OK)
    with pytest.raises(StreamInterrupted, match="invalid|not a valid|Protocol|refused"):
        await collect(adapter, chat_request(server.url))
    raw, _ = await collect(adapter, chat_request(server.url))  # and the next one is read
    assert raw == BODY
    if answer is REFUSED["te-with-content-length"]:
        assert server.connections == 2  # never reused: where does that body end?


@pytest.mark.parametrize(
    "size_line",
    [b"0x1a", b"-1", b"+5", b"1_0", b"", b"1" * 17, b"zz"],
    ids=["0x-prefix", "negative", "plus-sign", "underscore", "empty", "17-digits", "not-hex"],
)
async def test_bad_chunk_size_is_refused(
    adapter: ClientAdapter, raw_servers: list[RawServer], size_line: bytes
) -> None:
    # RFC 9112 7.1: chunk-size is 1*HEXDIG, nothing else (int(x, 16) would take some).
    answer = response_head(headers=SSE, chunked=True) + chunk(EVENTS[0])
    server = await scripted(raw_servers, [Send(answer + size_line + b"\r\nabc\r\n"), Close()])
    with pytest.raises(StreamInterrupted):
        await collect(adapter, chat_request(server.url))


async def test_chunk_data_without_its_crlf_is_refused(
    adapter: ClientAdapter, raw_servers: list[RawServer]
) -> None:
    answer = response_head(headers=SSE, chunked=True) + b"3\r\nabcX\r\n0\r\n\r\n"
    server = await scripted(raw_servers, [Send(answer), Close()])
    with pytest.raises(StreamInterrupted):
        await collect(adapter, chat_request(server.url))


async def test_redirect_is_an_error_not_followed(
    adapter: ClientAdapter, raw_servers: list[RawServer]
) -> None:
    # Anything outside 2xx is an error (aiohttp would follow a 307 with the same POST); a
    # 3xx is Redirected, naming where it pointed (docs/security.md).
    moved = response_head(
        "307 Temporary Redirect", (("Location", "/v1/elsewhere"),), content_length=5
    )
    server = await scripted(raw_servers, [Send(moved + b"moved")])
    with pytest.raises(Redirected) as info:
        await collect(adapter, chat_request(server.url))
    assert info.value.status == 307 and info.value.body == "moved"
    assert info.value.location == "/v1/elsewhere" and info.value.code == "redirected"
    assert [s.target for s in server.requests] == ["/v1/chat/completions"]


async def test_error_status_body_and_headers(
    adapter: ClientAdapter, raw_servers: list[RawServer]
) -> None:
    body = b'{"error": {"message": "no such model"}}'
    hdrs = (("Content-Type", "application/json"), ("X-Request-Id", "req-1"), ("X-A", "1"))
    page = response_head("404 Not Found", (*hdrs, ("X-A", "2")), chunked=True)
    server = await scripted(raw_servers, [Send(page + chunked([body[:9], body[9:]]))])
    with pytest.raises(BadRequest) as info:
        await collect(adapter, chat_request(server.url))
    err = info.value
    assert (err.status, err.body, err.request_id) == (404, body.decode(), "req-1")
    assert err.headers["x-a"] == "1, 2"


# aiohttp ends a body that runs to the close at any close, a reset too (its protocol's
# connection_lost feeds the parser EOF whatever the cause), and nothing public tells
# them apart: there the SSE stream decides (no [DONE], truncated_stream).
READS_RESET_AS_END = {"aiohttp", "httpx-aiohttp"}


@pytest.mark.parametrize("cut", [Close(), Reset()], ids=["clean-close", "reset"])
async def test_close_delimited_body(
    adapter: ClientAdapter, raw_servers: list[RawServer], cut: Action
) -> None:
    # A body without length or chunking ends at the close (RFC 9112 6.3), a clean one:
    # ended by a reset it is cut short, whatever arrived before.
    head = response_head(headers=SSE, version="HTTP/1.0")
    server = await scripted(raw_servers, [Send(head + BODY), cut])
    if isinstance(cut, Close) or adapter.name in READS_RESET_AS_END:
        raw, _ = await collect(adapter, chat_request(server.url))
        assert raw == BODY
    else:
        with pytest.raises(StreamInterrupted, match="reset"):
            await collect(adapter, chat_request(server.url))


@pytest.mark.parametrize(
    "answer",
    [
        response_head(headers=SSE, chunked=True) + chunk(EVENTS[0]),
        response_head(headers=SSE, content_length=len(BODY)) + BODY[:10],
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event",
        b"",
    ],
    ids=["mid-chunked", "mid-content-length", "mid-head", "before-response"],
)
@pytest.mark.parametrize("cut", [Close(), Reset()], ids=["close", "reset"])
async def test_cut_short(
    adapter: ClientAdapter, raw_servers: list[RawServer], answer: bytes, cut: Action
) -> None:
    server = await scripted(raw_servers, [Send(answer), cut])
    with pytest.raises(StreamInterrupted):
        await collect(adapter, chat_request(server.url))


async def test_no_body_statuses(adapter: ClientAdapter, raw_servers: list[RawServer]) -> None:
    # 204 has no body whatever its headers say; the connection is reused after it.
    server = await scripted(raw_servers, [Send(response_head("204 No Content", SSE))], OK)
    assert (await collect(adapter, chat_request(server.url)))[0] == b""
    assert (await collect(adapter, chat_request(server.url)))[0] == BODY
    assert server.connections == 1
