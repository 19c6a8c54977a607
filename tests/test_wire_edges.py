"""HTTP wire edge cases that real servers produce, against every client adapter.

Each case scripts the exact bytes of the answers (tests/rawhttp.py), drives llmbatch the
way a user does (``llmbatch.Client`` with the openai provider, or the CLI) and asserts what
the user sees: each answer's text, its status and error kind, attempts, the exit code, and
the connections and requests the server saw. Every case runs for every name in
``llmbatch.config.model.CLIENTS``, so a new adapter is checked without touching this file.

Where adapters legitimately differ (one library refuses what another accepts), the test
names the adapter and says why; docs/clients.md lists the differences.

The cases run on virtual time (tests/virtualtime.py), the server and the client on one
loop: a hold, a drip or a Retry-After takes no test time, and a timeout is the one the
case sets up, never the machine's load. The CLI cases run ``llmbatch`` as a child process
on the real clock (marked ``subprocess``).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

import llmbatch
from llmbatch.config.model import CLIENTS

from .conftest import read_results, write_jsonl
from .rawhttp import (
    Action,
    Close,
    Drip,
    Hold,
    RawServer,
    Reset,
    Seen,
    Send,
    chunk,
    chunked,
    gzip_stream,
    openai_events,
    response_head,
)
from .virtualtime import TIMER_SLACK_S

pytestmark = [pytest.mark.timeout(30), pytest.mark.virtualtime]

# Multibyte on purpose: 2-, 3- and 4-byte UTF-8 sequences for splits to land inside.
TOKENS = ["Hel", "lo, ", "Grüße ", "世界", " 🌍", "!"]
TEXT = "".join(TOKENS)
EVENTS = openai_events(TOKENS)
BODY = b"".join(EVENTS)
SSE = (("Content-Type", "text/event-stream"),)
JSON = (("Content-Type", "application/json"),)

FAST = {"connect_s": 2.0, "first_byte_s": 3.0, "idle_s": 3.0, "total_s": 20.0}
SHORT_IDLE = {**FAST, "first_byte_s": 0.4, "idle_s": 0.4}
RETRY = {"max_attempts": 3, "backoff_base_s": 0.01, "backoff_max_s": 5.0}


def ok_chunked(events: Sequence[bytes] = EVENTS, **framing: Any) -> list[Action]:
    """The whole answer: a chunked 200 with one chunk per event."""
    return [Send(response_head(headers=SSE, chunked=True) + chunked(events, **framing))]


def ok_length(body: bytes = BODY) -> list[Action]:
    return [Send(response_head(headers=SSE, content_length=len(body)) + body)]


Serve = Callable[..., Awaitable[RawServer]]


@pytest.fixture(params=CLIENTS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start raw servers: ``await serve(script0, script1, ...)`` or ``serve(answer=fn)``."""
    servers: list[RawServer] = []

    async def start(
        *scripts: Sequence[Action], answer: Any = None, tls: ssl.SSLContext | None = None
    ) -> RawServer:
        server = RawServer(answer) if answer is not None else RawServer.scripted(*scripts)
        servers.append(await server.start(tls))
        return server

    yield start
    for server in servers:
        await server.close()


# Every Client trusts only the test CA (as with --ca-bundle): over plain HTTP it is never
# used, but the httpx adapters build their SSL context per Client, and from the system
# store that costs ~40 ms of CPU each time (several seconds over this file).
_CA_PEM: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the PEM file of the CA that signed it."""
    import trustme

    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    pem = tmp_path_factory.mktemp("wire-tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    _CA_PEM[:] = [pem]
    return ctx, pem


def client(server: RawServer, adapter: str, **opts: Any) -> llmbatch.Client:
    """A Client as a user makes one for an OpenAI-compatible server."""
    options: dict[str, Any] = {
        "base_url": server.url,
        "api_key": "sk-wire",
        "model": "gpt-wire",
        "client": adapter,
        "concurrency": 2,
        "timeouts": FAST,
        "retry": RETRY,
        "ca_bundle": _CA_PEM[0],
    }
    options.update(opts)
    return llmbatch.Client("openai", **options)


async def complete(
    server: RawServer, adapter: str, prompts: int = 1, **opts: Any
) -> list[llmbatch.Result]:
    """``prompts`` requests one after another through one Client (so one pool)."""
    async with client(server, adapter, **opts) as llm:
        return [await llm.complete(f"prompt {i}") for i in range(prompts)]


def assert_exact(r: llmbatch.Result, attempts: int | None = 1) -> None:
    assert r.error is None, r.error
    assert r.ok and r.text == TEXT and r.finish_reason == "stop"
    assert r.usage.output_tokens == len(TOKENS) and not r.usage.output_estimated
    if attempts is not None:
        assert r.attempts == attempts, r.output_line["llmbatch"]["attempts"]


def attempt_errors(r: llmbatch.Result) -> list[str | None]:
    """The error kind of each attempt, as results.jsonl records it."""
    return [a["error"] for a in r.output_line["llmbatch"]["attempts"]]


# -- framing that every HTTP/1.1 client must read ------------------------------------------


async def test_one_byte_writes(serve: Serve, adapter: str) -> None:
    # Status line, headers, chunk sizes and SSE events, each byte in its own write.
    head = response_head(headers=SSE, chunked=True)
    server = await serve([Send(head + chunked(EVENTS), split=1)])
    (r,) = await complete(server, adapter)
    assert_exact(r)
    assert server.connections == 1 and len(server.requests) == 1


async def test_one_byte_writes_content_length(serve: Serve, adapter: str) -> None:
    server = await serve([Send(response_head(headers=SSE, content_length=len(BODY)) + BODY, 1)])
    (r,) = await complete(server, adapter)
    assert_exact(r)


@pytest.mark.parametrize(
    "framing",
    [
        {"upper": True},
        {"ext": ";foo=bar"},
        {"upper": True, "ext": ';name="quoted;value"', "last_ext": ";end=1"},
        {"ext": ";a;b=c"},
    ],
    ids=["uppercase-hex", "extension", "quoted-extension", "two-extensions"],
)
async def test_chunk_size_spellings(serve: Serve, adapter: str, framing: dict[str, Any]) -> None:
    # RFC 9112 7.1: chunk-size is HEXDIG (either case), chunk-ext is ignored by recipients.
    assert any(len(e) >= 10 for e in EVENTS)  # so the sizes have hex letters
    server = await serve(ok_chunked(**framing))
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)


async def test_chunk_size_with_leading_zeros(serve: Serve, adapter: str) -> None:
    body = b"".join(chunk(e, zeros=3) for e in EVENTS) + b"0000\r\n\r\n"
    server = await serve([Send(response_head(headers=SSE, chunked=True) + body)])
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)


async def test_trailers_after_last_chunk(serve: Serve, adapter: str) -> None:
    # Trailer fields end the body; the connection stays usable for the next answer.
    trailers = [("X-Usage-Tokens", "6"), ("Server-Timing", "total;dur=12.5")]
    server = await serve(ok_chunked(trailers=trailers))
    results = await complete(server, adapter, prompts=3)
    for r in results:
        assert_exact(r)
    assert len(server.requests) == 3
    assert server.connections == 1, (
        "a body that ended at its trailers leaves the connection reusable"
    )


async def test_content_length_body(serve: Serve, adapter: str) -> None:
    server = await serve(ok_length())
    results = await complete(server, adapter, prompts=3)
    for r in results:
        assert_exact(r)
    assert server.connections == 1 and len(server.requests) == 3


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
async def test_close_delimited_body(serve: Serve, adapter: str, version: str) -> None:
    # No Content-Length, no chunking: the body ends when the server closes (RFC 9112 6.3).
    head = response_head(headers=SSE, version=version)
    server = await serve([Send(head + BODY, split=[len(head) + 7, len(head) + 100]), Close()])
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)
    assert server.connections == 2 and len(server.requests) == 2


async def test_connection_close_header(serve: Serve, adapter: str) -> None:
    # The first answer says Connection: close; the next request must go on a new
    # connection (never on the closed one) and succeed at its first attempt.
    closing = response_head(headers=(*SSE, ("Connection", "close")), chunked=True)
    server = await serve([Send(closing + chunked(EVENTS)), Close()], ok_chunked())
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)
    assert server.connections == 2 and len(server.requests) == 2
    assert [s.conn for s in server.requests] == [0, 1]


async def test_idle_keepalive_closed_by_server(serve: Serve, adapter: str) -> None:
    # The server answers with keep-alive, then closes the connection while it is idle (a
    # keep-alive timeout, like uvicorn's 5 s). The next request still succeeds.
    server = await serve([*ok_chunked(), Close()], ok_chunked())
    async with client(server, adapter) as llm:
        first = await llm.complete("a")
        await server.wait_for(lambda s: s.connections == 1 and not s.open_connections)
        second = await llm.complete("b")
    assert_exact(first)
    assert_exact(second, attempts=None)
    # A client may notice the close before reusing (one attempt) or find out by sending
    # on it (the request never reached the server: retried, two attempts). Either way the
    # server saw each request exactly once.
    assert second.attempts <= 2 and len(server.requests) == 2
    assert server.connections == 2


async def test_keepalive_closed_as_request_arrives(serve: Serve, adapter: str) -> None:
    # The race behind "Server disconnected without sending a response": the server
    # closes a kept-alive connection just as the client sends the next request on it.
    server = await serve(ok_chunked(), [Close()], ok_chunked())
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second, attempts=2)
    assert attempt_errors(second)[0] == "stream_interrupted"
    assert len(server.requests) == 3


async def test_reset_before_response_is_retried(serve: Serve, adapter: str) -> None:
    server = await serve([Reset()], ok_chunked())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] in ("stream_interrupted", "connect_error")


# -- answers cut short -----------------------------------------------------------------------


def _cut_in_chunk(events: Sequence[bytes] = EVENTS) -> bytes:
    """A chunked answer cut inside the 4th chunk's data (mid-event, mid-chunk)."""
    body = b"".join(chunk(e) for e in events)
    cut = sum(len(chunk(e)) for e in events[:3]) + 20
    return response_head(headers=SSE, chunked=True) + body[:cut]


async def test_truncated_mid_chunk_is_retried(serve: Serve, adapter: str, tmp_path: Path) -> None:
    server = await serve([Send(_cut_in_chunk()), Close()], ok_chunked())
    async with client(server, adapter) as llm:
        async with llm.batch(["cut"], run_dir=tmp_path / "run") as batch:
            (r,) = [x async for x in batch]
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "stream_interrupted"
    # The text file starts over with the retry: no duplicated or spliced text.
    (rec,) = read_results(tmp_path / "run")
    assert (tmp_path / "run" / rec["llmbatch"]["text_file"]).read_text("utf-8") == TEXT
    assert len(server.requests) == 2


async def test_truncated_mid_event_at_chunk_boundary(serve: Serve, adapter: str) -> None:
    # The chunked body ends properly (last chunk) but in the middle of an SSE event: the
    # HTTP layer is fine, the stream has no [DONE]. Retried as a truncated stream.
    head = response_head(headers=SSE, chunked=True)
    partial = [*EVENTS[:3], EVENTS[3][:15]]
    server = await serve([Send(head + chunked(partial))], ok_chunked())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "truncated_stream"


async def test_truncated_content_length_body(serve: Serve, adapter: str) -> None:
    head = response_head(headers=SSE, content_length=len(BODY))
    server = await serve([Send(head + BODY[:100]), Close()], ok_length())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "stream_interrupted"


async def test_close_delimited_body_cut_mid_event(serve: Serve, adapter: str) -> None:
    # Without a length, a close is the body's end: what is cut is the SSE stream.
    head = response_head(headers=SSE, version="HTTP/1.0")
    server = await serve([Send(head + BODY[:150]), Close()], ok_chunked())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "truncated_stream"


@pytest.mark.parametrize(
    "empty",
    [
        response_head(headers=SSE, content_length=0),
        response_head(headers=SSE, chunked=True) + b"0\r\n\r\n",
        response_head(headers=SSE, version="HTTP/1.0"),
    ],
    ids=["content-length-0", "last-chunk-only", "close-delimited"],
)
async def test_empty_200_is_a_truncated_stream(serve: Serve, adapter: str, empty: bytes) -> None:
    server = await serve([Send(empty), Close()], ok_chunked())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "truncated_stream"


async def test_headers_then_nothing_times_out_and_retries(serve: Serve, adapter: str) -> None:
    head = response_head(headers=SSE, chunked=True)
    server = await serve([Send(head + chunk(EVENTS[0])), Hold()], ok_chunked())
    (r,) = await complete(server, adapter, timeouts=SHORT_IDLE)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "read_timeout"
    await server.wait_for(lambda s: s.closed_by_client >= 1)  # the stalled one was closed


async def test_no_response_at_all_times_out_and_retries(serve: Serve, adapter: str) -> None:
    server = await serve([Hold()], ok_chunked())
    (r,) = await complete(server, adapter, timeouts=SHORT_IDLE)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "read_timeout"


# -- servers that never finish: the client's deadlines end them ------------------------------

ONE_ATTEMPT = {"max_attempts": 1}


async def test_pings_forever_before_content_hit_total_deadline(serve: Serve, adapter: str) -> None:
    # A queueing server may ping before the first token for as long as it likes; only
    # total_s ends the attempt (deadline_exceeded), and the connection is closed.
    head = response_head(headers=SSE, chunked=True)
    server = await serve([Send(head + chunk(EVENTS[0])), Drip(chunk(b": ping\n\n"), 0.05)])
    timeouts = {**FAST, "idle_s": 0.3, "total_s": 0.5}
    (r,) = await complete(server, adapter, timeouts=timeouts, retry=ONE_ATTEMPT)
    assert not r.ok and r.error is not None and r.error.code == "deadline_exceeded", r.error
    await server.wait_for(lambda s: s.closed_by_client >= 1)


async def test_pings_after_content_hit_idle_timeout(serve: Serve, adapter: str) -> None:
    # Once content has started, keep-alive pings are not progress: read_timeout at idle_s.
    head = response_head(headers=SSE, chunked=True)
    started = b"".join(chunk(e) for e in EVENTS[:3])
    server = await serve([Send(head + started), Drip(chunk(b": ping\n\n"), 0.05)])
    timeouts = {**FAST, "idle_s": 0.4, "total_s": 10.0}
    (r,) = await complete(server, adapter, timeouts=timeouts, retry=ONE_ATTEMPT)
    assert not r.ok and r.error is not None and r.error.code == "read_timeout", r.error
    await server.wait_for(lambda s: s.closed_by_client >= 1)


async def test_head_trickled_forever_hits_first_byte_timeout(serve: Serve, adapter: str) -> None:
    # Header lines keep coming, the head never ends: bounded by the time to the response
    # headers (first_byte_s after connecting), whatever each read's idle timer says.
    server = await serve([Send(b"HTTP/1.1 200 OK\r\n"), Drip(b"X-Slow: 1\r\n", 0.05)])
    timeouts = {"connect_s": 0.2, "first_byte_s": 0.3, "idle_s": 0.2, "total_s": 10.0}
    (r,) = await complete(server, adapter, timeouts=timeouts, retry=ONE_ATTEMPT)
    assert not r.ok and r.error is not None and r.error.code == "read_timeout", r.error
    await server.wait_for(lambda s: s.closed_by_client >= 1)


# -- answers that are not what they should be -------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"GARBAGE\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"\x15\x03\x01\x00\x02\x02\x46"],
    ids=["text", "ssh-banner", "tls-alert"],
)
async def test_garbage_instead_of_status_line(serve: Serve, adapter: str, garbage: bytes) -> None:
    server = await serve([Send(garbage), Close()])
    (r,) = await complete(server, adapter)
    assert not r.ok and r.error is not None and r.text in ("", None)
    assert r.error.code == "stream_interrupted", r.error
    # Bounded: never more attempts than the policy allows.
    assert r.attempts <= RETRY["max_attempts"] and len(server.requests) == r.attempts


@pytest.mark.parametrize("status", ["100 Continue", "102 Processing", "103 Early Hints"])
async def test_informational_response_before_200(serve: Serve, adapter: str, status: str) -> None:
    # RFC 9110 15.2: a client must accept 1xx answers it did not ask for (two of them here).
    one = f"HTTP/1.1 {status}\r\nLink: </style.css>; rel=preload\r\n\r\n".encode()
    early = one + one
    server = await serve([Send(early), *ok_chunked()])
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)


@pytest.mark.parametrize(
    "head",
    [
        response_head("200", SSE, chunked=True),
        response_head("200 ", SSE, chunked=True),
        response_head(headers=SSE, chunked=True).replace(b"\r\n", b"\n"),
        response_head(headers=(*SSE, ("Transfer-Encoding", "Chunked"))),
        response_head(headers=(*SSE, ("X-Folded", "a\r\n  b")), chunked=True),
    ],
    ids=["no-reason-no-space", "no-reason", "lf-only-head", "te-capitalised", "obs-fold"],
)
async def test_status_and_header_spellings(serve: Serve, adapter: str, head: bytes) -> None:
    # Tolerated by every client in the wild (RFC 9112 2.2, 4, 5.2): the answer is read.
    server = await serve([Send(head + chunked(EVENTS))])
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)


async def test_answer_complete_then_stall(serve: Serve, adapter: str) -> None:
    # [DONE] arrived, then the server neither ends the chunked body nor closes: the answer
    # is complete and kept; the stalled connection is not reused.
    head = response_head(headers=SSE, chunked=True)
    server = await serve([Send(head + b"".join(chunk(e) for e in EVENTS)), Hold()], ok_chunked())
    (first, second) = await complete(server, adapter, prompts=2, timeouts=SHORT_IDLE)
    assert_exact(first)
    assert_exact(second)
    assert len(server.requests) == 2 and server.connections == 2


async def test_answer_complete_then_reset(serve: Serve, adapter: str) -> None:
    head = response_head(headers=SSE, chunked=True)
    server = await serve([Send(head + b"".join(chunk(e) for e in EVENTS)), Reset()], ok_chunked())
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)
    assert len(server.requests) == 2


async def test_very_long_event(serve: Serve, adapter: str) -> None:
    # One 256 KiB token (one SSE line) in 1000-byte chunks: no line-length limit.
    tokens = ["x" * 262_144, "y"]
    body = b"".join(openai_events(tokens))
    server = await serve(ok_chunked([body[i : i + 1000] for i in range(0, len(body), 1000)]))
    (r,) = await complete(server, adapter)
    assert r.ok and r.text == "".join(tokens), r.error


async def test_503_html_close_delimited_then_200(serve: Serve, adapter: str) -> None:
    # A proxy's error page: no length, body ended by close. Retried, then answered.
    page = response_head("503 Service Unavailable", (("Content-Type", "text/html"),))
    server = await serve([Send(page + b"<html><body>busy</body></html>"), Close()], ok_chunked())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "server_error"
    assert server.connections == 2


async def test_stray_crlf_after_body(serve: Serve, adapter: str) -> None:
    # An extra CRLF after a complete body (old servers do this). Nothing is lost; h11
    # (httpx) reads it as the start of the next answer on that connection, so the next
    # request fails once there and is retried on a new connection (llhttp skips it, or
    # native drops the connection when the CRLF comes in a read of its own).
    server = await serve(
        [Send(response_head(headers=SSE, content_length=len(BODY)) + BODY + b"\r\n")]
    )
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second, attempts=1 if adapter != "httpx" else 2)


# Adapters on aiohttp's HTTP parser (llhttp): it parses a whole read at once and raises on
# the first invalid byte, before it hands over the response that came complete in front.
AIOHTTP_PARSER = {"aiohttp", "httpx-aiohttp"}


async def test_bytes_after_complete_body_in_same_read(
    request: pytest.FixtureRequest, serve: Serve, adapter: str
) -> None:
    # A complete answer with junk right behind it in the same TCP segment (a server that
    # miscounts, or a response splitting proxy): the answer must be kept, the connection
    # dropped. The next request then succeeds.
    if adapter in AIOHTTP_PARSER:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="aiohttp bug: its parser fails the whole read (Bad status line) and "
                "throws away the complete answer in front of the junk; every retry the same",
            )
        )
    junk = response_head(headers=SSE, content_length=len(BODY)) + BODY + b"JUNK"
    server = await serve([Send(junk)], ok_chunked())
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second, attempts=None)


async def test_chunked_with_content_length(serve: Serve, adapter: str) -> None:
    # RFC 9112 6.3: with both, Transfer-Encoding overrides Content-Length, and the message
    # "ought to be handled as an error": every adapter refuses it (h11 would let chunked
    # win; http/base.py refuses it for all).
    head = response_head(headers=(*SSE, ("Content-Length", "12")), chunked=True)
    server = await serve([Send(head + chunked(EVENTS))])
    (r,) = await complete(server, adapter)
    assert not r.ok and r.error is not None and r.error.code == "stream_interrupted"
    assert r.attempts == RETRY["max_attempts"] == len(server.requests)


async def test_chunk_extension_with_whitespace(serve: Serve, adapter: str) -> None:
    # RFC 9112 7.1.1 allows whitespace around a chunk extension's ";" (BWS); neither
    # llhttp nor h11 reads it, so no adapter does. Rare in practice.
    body = b"".join(f"{len(e):x} ; a=b\r\n".encode() + e + b"\r\n" for e in EVENTS)
    server = await serve([Send(response_head(headers=SSE, chunked=True) + body + b"0\r\n\r\n")])
    (r,) = await complete(server, adapter)
    assert not r.ok and r.error is not None and r.error.code == "stream_interrupted"
    assert r.attempts == RETRY["max_attempts"] == len(server.requests)


@pytest.mark.parametrize(
    ("coding", "wbits"),
    [("gzip", 31), ("deflate", 15), ("deflate", -15)],
    ids=["gzip", "deflate-zlib", "deflate-raw"],
)
async def test_compressed_sse(serve: Serve, adapter: str, coding: str, wbits: int) -> None:
    # RFC 9110 8.4.1.2: "deflate" is zlib-wrapped, but some servers send raw deflate;
    # clients accept both.
    head = response_head(headers=(*SSE, ("Content-Encoding", coding)), chunked=True)
    server = await serve([Send(head + chunked(gzip_stream(EVENTS, wbits=wbits)))])
    (first, second) = await complete(server, adapter, prompts=2)
    assert_exact(first)
    assert_exact(second)


async def test_gzip_with_content_length(serve: Serve, adapter: str) -> None:
    body = b"".join(gzip_stream(EVENTS))
    hdrs = (*SSE, ("Content-Encoding", "gzip"))
    server = await serve([Send(response_head(headers=hdrs, content_length=len(body)) + body, 7)])
    (r,) = await complete(server, adapter)
    assert_exact(r)


async def test_long_header_line_accepted(serve: Serve, adapter: str) -> None:
    # 6 KiB, under every library's limit (aiohttp's is 8190 bytes per field).
    hdrs = (*SSE, ("X-Long", "a" * 6000))
    server = await serve([Send(response_head(headers=hdrs, chunked=True) + chunked(EVENTS))])
    (r,) = await complete(server, adapter)
    assert_exact(r)


# Adapters built on aiohttp's parser refuse a header field over 8190 bytes (its
# max_field_size); h11 allows a whole head of up to 16 KiB, native one of 64 KiB; curl, Go
# and Python's http.client take 64 KiB or more. A legitimate difference (docs/clients.md).
REFUSES_16K_HEADER = {"aiohttp", "httpx-aiohttp"}


async def test_16k_header_line(serve: Serve, adapter: str) -> None:
    hdrs = (*SSE, ("X-Long", "a" * 15_000))
    server = await serve([Send(response_head(headers=hdrs, chunked=True) + chunked(EVENTS))])
    (r,) = await complete(server, adapter)
    if adapter in REFUSES_16K_HEADER:
        assert not r.ok and r.error is not None and r.error.code == "stream_interrupted"
        assert "8190" in r.error.message  # the message names the limit
        assert r.attempts == RETRY["max_attempts"] == len(server.requests)
    else:
        assert_exact(r)


async def test_huge_header_line_fails_cleanly(serve: Serve, adapter: str) -> None:
    # 200 KiB in one header: every client refuses it (a limit protects its memory); the
    # request must fail with an error, bounded in attempts, never hang.
    hdrs = (*SSE, ("X-Huge", "b" * 200_000))
    server = await serve([Send(response_head(headers=hdrs, chunked=True) + chunked(EVENTS))])
    (r,) = await complete(server, adapter)
    assert not r.ok and r.error is not None
    assert r.attempts <= RETRY["max_attempts"] and len(server.requests) == r.attempts


def _head(*extra: tuple[str, str], **kw: Any) -> bytes:
    return response_head(headers=(*SSE, *extra), **kw)


@pytest.mark.parametrize(
    "answer",
    [
        _head(chunked=True) + b"FFFFFFFFFFFFFFFFFFFFFFFF\r\n" + BODY,
        _head(("Content-Length", "-1")) + BODY,
        _head(("Content-Length", "abc")) + BODY,
        _head(("Content-Length", f"{len(BODY)}, 20")) + BODY,
        _head(("X-Bad ", "space before the colon"), chunked=True) + chunked(EVENTS),
        response_head("abc OK", SSE, chunked=True) + chunked(EVENTS),
        b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",  # an HTTP/2 SETTINGS frame
        BODY,  # a body with no status line or head (HTTP/0.9 style)
    ],
    ids=[
        "chunk-size-overflow",
        "content-length-negative",
        "content-length-not-a-number",
        "content-length-conflicting",
        "space-before-colon",
        "status-not-a-number",
        "http2-frame",
        "no-head",
    ],
)
async def test_malformed_answer_fails_cleanly(serve: Serve, adapter: str, answer: bytes) -> None:
    # Refused by every client (RFC 9112 5.1, 6.3, 7.1): stream_interrupted, retried up to
    # max_attempts and no further, nothing taken from it as text.
    server = await serve([Send(answer), Close()])
    (r,) = await complete(server, adapter)
    assert not r.ok and r.error is not None and r.error.code == "stream_interrupted", r.error
    assert r.text in ("", None)
    assert r.attempts == RETRY["max_attempts"] == len(server.requests)


# RFC 9110 8.6: a recipient may accept a repeated Content-Length with one value; llhttp
# refuses it, h11 reads it (and folds the two into one before httpx sees them).
REJECTS_REPEATED_CONTENT_LENGTH = {*AIOHTTP_PARSER, "native"}


async def test_repeated_identical_content_length(serve: Serve, adapter: str) -> None:
    length = ("Content-Length", str(len(BODY)))
    server = await serve([Send(_head(length, length) + BODY)])
    (r,) = await complete(server, adapter)
    if adapter in REJECTS_REPEATED_CONTENT_LENGTH:
        assert not r.ok and r.error is not None and r.error.code == "stream_interrupted"
        assert r.attempts == RETRY["max_attempts"]
    else:
        assert_exact(r)


async def test_nul_in_a_header_value(serve: Serve, adapter: str) -> None:
    # RFC 9110 5.5: a recipient must reject the message or replace the NUL with SP; a NUL
    # must never reach results.jsonl (here in the request id).
    rid = ("X-Request-Id", "req\x00abc")
    server = await serve([Send(_head(rid, chunked=True) + chunked(EVENTS))])
    (r,) = await complete(server, adapter)
    if r.ok:
        assert_exact(r)
        assert "\x00" not in (r.output_line["response"]["request_id"] or "")
    else:
        assert r.error is not None and r.error.code == "stream_interrupted"
        assert r.attempts == RETRY["max_attempts"]


async def test_invalid_chunk_size_is_retried(serve: Serve, adapter: str) -> None:
    head = response_head(headers=SSE, chunked=True)
    bad = head + chunk(EVENTS[0]) + b"ZZ\r\n" + EVENTS[1] + b"\r\n"
    server = await serve([Send(bad), Close()], ok_chunked())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "stream_interrupted"


async def test_429_retry_after_then_200(serve: Serve, adapter: str) -> None:
    body = b'{"error": {"message": "Rate limit reached", "type": "requests", "code": null}}'
    hdrs = (*JSON, ("Retry-After", "1"))
    limited = response_head("429 Too Many Requests", hdrs, content_length=len(body)) + body
    server = await serve([Send(limited)], ok_chunked())
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] == "rate_limited"
    first, second = server.requests
    # Exactly Retry-After later (the backoff's own wait, at most 10 ms, is below it).
    assert second.at - first.at == pytest.approx(1.0, abs=TIMER_SLACK_S), "not at the Retry-After"


async def test_429_retry_after_http_date(serve: Serve, adapter: str) -> None:
    # Retry-After as an HTTP-date (RFC 9110 10.2.3): the retry must not come before it.
    # The client turns the date into a wait by the wall clock, then waits on the loop's
    # (virtual) clock: by the wall clock the retry arrives at once, so the wait it took
    # is the loop's time between the two requests.
    body = b'{"error": {"message": "slow down", "type": "requests"}}'
    wall: list[float] = []
    due: list[float] = []

    def answer(seen: Seen) -> list[Action]:
        wall.append(time.time())
        if seen.n > 0:
            return ok_chunked()
        # Whole seconds, 1.2 to 2.2 s ahead: clear of the 1 s pause that stands in for
        # a Retry-After not understood.
        due.append(float(math.floor(wall[0] + 1.2) + 1))
        hdrs = (*JSON, ("Retry-After", formatdate(due[0], usegmt=True)))
        return [Send(response_head("429 Too Many Requests", hdrs, content_length=len(body)) + body)]

    server = await serve(answer=answer)
    (r,) = await complete(server, adapter)
    assert_exact(r, attempts=2)
    waited = server.requests[1].at - server.requests[0].at
    # Not before the date (its wall time when the retry came), nor later than it was
    # from the first answer: the wait is the date less the (real) time it took to read it.
    assert due[0] - wall[1] <= waited <= due[0] - wall[0], (waited, due[0] - wall[0])


# -- SSE spellings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sep", "space"),
    [(b"\n", False), (b"\r\n", True), (b"\r\n", False), (b"\r", True)],
    ids=["lf-nospace", "crlf", "crlf-nospace", "cr-only"],
)
async def test_sse_line_endings_and_spacing(
    serve: Serve, adapter: str, sep: bytes, space: bool
) -> None:
    events = openai_events(TOKENS, sep=sep, space=space)
    # Cut every event in two, so a CR and its LF can land in different chunks.
    halves = [p for e in events for p in (e[: len(e) - 1], e[len(e) - 1 :])]
    server = await serve(ok_chunked(halves))
    (r,) = await complete(server, adapter)
    assert_exact(r)


async def test_sse_comments_fields_and_bom(serve: Serve, adapter: str) -> None:
    # A BOM, keep-alive comments, event/id/retry fields and an unknown field: all ignored.
    extra = [b"\xef\xbb\xbf: connected\n\n", b": ping\n\n", b"retry: 3000\nid: 7\n\n"]
    events = [*extra, *(b"event: message\nid: 8\nfoo: bar\n" + e for e in EVENTS)]
    server = await serve(ok_chunked(events))
    (r,) = await complete(server, adapter)
    assert_exact(r)


def _utf8_splits(events: Sequence[bytes]) -> list[bytes]:
    """The stream cut inside every multibyte UTF-8 character (after its first byte)."""
    body = b"".join(events)
    cuts = [i + 1 for i, b in enumerate(body) if b >= 0xC0]
    assert len(cuts) == 5  # ü ß 世 界 🌍
    pieces, start = [], 0
    for c in cuts:
        pieces.append(body[start:c])
        start = c
    pieces.append(body[start:])
    return pieces


async def test_utf8_character_split_across_chunks(serve: Serve, adapter: str) -> None:
    server = await serve(ok_chunked(_utf8_splits(EVENTS)))
    (r,) = await complete(server, adapter)
    assert_exact(r)


async def test_utf8_character_split_across_gzip_chunks(serve: Serve, adapter: str) -> None:
    head = response_head(headers=(*SSE, ("Content-Encoding", "gzip")), chunked=True)
    server = await serve([Send(head + chunked(gzip_stream(_utf8_splits(EVENTS))))])
    (r,) = await complete(server, adapter)
    assert_exact(r)


async def test_content_type_with_parameters(serve: Serve, adapter: str) -> None:
    hdrs = (("content-type", "text/event-stream;charset=UTF-8"),)
    server = await serve([Send(response_head(headers=hdrs, chunked=True) + chunked(EVENTS))])
    (r,) = await complete(server, adapter)
    assert_exact(r)


async def test_content_type_in_capitals(serve: Serve, adapter: str) -> None:
    hdrs = (("Content-Type", "Text/Event-Stream; charset=utf-8"),)
    server = await serve([Send(response_head(headers=hdrs, chunked=True) + chunked(EVENTS))])
    (r,) = await complete(server, adapter)
    assert_exact(r)


# -- over TLS ---------------------------------------------------------------------------------


async def test_tls_one_byte_records(
    serve: Serve, adapter: str, tls_pair: tuple[ssl.SSLContext, Path]
) -> None:
    # Every byte of the answer in its own TLS record.
    ctx, pem = tls_pair
    head = response_head(headers=SSE, chunked=True)
    server = await serve([Send(head + chunked(EVENTS), split=1)], tls=ctx)
    (r,) = await complete(server, adapter, ca_bundle=pem)
    assert_exact(r)


@pytest.mark.parametrize("close_notify", [True, False], ids=["close-notify", "no-close-notify"])
async def test_tls_close_delimited_body(
    serve: Serve, adapter: str, tls_pair: tuple[ssl.SSLContext, Path], close_notify: bool
) -> None:
    # A body ended by the close, with or without TLS close_notify. Without it, RFC 9112
    # 9.8 calls the body incomplete; the SSE stream says otherwise ([DONE] came), and
    # many servers close that way: the answer is kept.
    ctx, pem = tls_pair
    head = response_head(headers=SSE, version="HTTP/1.0")
    server = await serve([Send(head + BODY), Close(close_notify)], tls=ctx)
    (first, second) = await complete(server, adapter, prompts=2, ca_bundle=pem)
    assert_exact(first)
    assert_exact(second)
    assert server.connections == 2


async def test_tls_close_delimited_cut_without_close_notify(
    serve: Serve, adapter: str, tls_pair: tuple[ssl.SSLContext, Path]
) -> None:
    # Cut mid-event with no close_notify: the stream is incomplete, retried, exact.
    ctx, pem = tls_pair
    head = response_head(headers=SSE, version="HTTP/1.0")
    server = await serve([Send(head + BODY[:150]), Close(False)], ok_chunked(), tls=ctx)
    (r,) = await complete(server, adapter, ca_bundle=pem)
    assert_exact(r, attempts=2)
    assert attempt_errors(r)[0] in ("truncated_stream", "stream_interrupted")


async def test_tls_keepalive_closed_without_close_notify(
    serve: Serve, adapter: str, tls_pair: tuple[ssl.SSLContext, Path]
) -> None:
    # Complete chunked answers; the server then drops the idle TLS connection abruptly.
    ctx, pem = tls_pair
    server = await serve([*ok_chunked(), Close(False)], ok_chunked(), tls=ctx)
    async with client(server, adapter, ca_bundle=pem) as llm:
        first = await llm.complete("a")
        await server.wait_for(lambda s: s.connections == 1 and not s.open_connections)
        second = await llm.complete("b")
    assert_exact(first)
    assert_exact(second, attempts=None)
    assert second.attempts <= 2 and len(server.requests) == 2


# -- streaming to a caller, and the CLI ------------------------------------------------------


async def test_stream_deltas_over_one_byte_writes(serve: Serve, adapter: str) -> None:
    head = response_head(headers=SSE, chunked=True)
    server = await serve([Send(head + chunked(EVENTS), split=1)])
    async with client(server, adapter) as llm:
        deltas = [d async for d in llm.stream("hi")]
    assert deltas == TOKENS


async def test_stream_cut_after_text_raises(serve: Serve, adapter: str) -> None:
    # Client.stream: once text reached the caller, a cut is raised, not retried (a retry
    # would repeat text the caller has); what was yielded is a prefix of the answer.
    server = await serve([Send(_cut_in_chunk()), Close()], ok_chunked())
    seen: list[str] = []
    async with client(server, adapter) as llm:
        with pytest.raises(llmbatch.TransportError):
            async for delta in llm.stream("hi"):
                seen.append(delta)
    assert seen and TEXT.startswith("".join(seen))
    assert len(server.requests) == 1


async def test_batch_over_connections_the_server_keeps_closing(serve: Serve, adapter: str) -> None:
    # While other requests are in flight, the server closes every connection without
    # saying so (no Connection: close): after its second answer (idle), or for two of
    # them when their second request arrives, unanswered (the keep-alive race). A
    # pooled connection the server has closed fails the request sent on it before the
    # client has read the FIN (more often on a loaded machine: once all 3 attempts of a
    # request met one); each is used once, so 8 attempts cannot all meet one. No
    # record is lost or duplicated, and every answer is exact.
    def racing(seen: Seen) -> bool:
        return seen.on_conn == 1 and seen.conn in (1, 3)

    def answer(seen: Seen) -> list[Action]:
        if seen.on_conn == 1:
            return [Close()] if racing(seen) else [*ok_chunked(), Close()]
        return ok_chunked()

    server = await serve(answer=answer)
    prompts = [{"id": f"p{i}", "prompt": f"p{i}"} for i in range(24)]
    retry = {**RETRY, "max_attempts": 8}
    async with client(server, adapter, concurrency=4, retry=retry) as llm:
        results = [r async for r in llm.batch(prompts)]
    assert sorted(r.id for r in results) == sorted(p["id"] for p in prompts)
    for r in results:
        assert_exact(r, attempts=None)
    errors = [e for r in results for e in attempt_errors(r) if e is not None]
    assert set(errors) <= {"stream_interrupted"}
    unanswered = sum(1 for s in server.requests if racing(s))
    assert 1 <= unanswered <= 2  # a pool reuses its connections
    # Every failed attempt is one the server closed on (or one sent on a connection
    # it had closed, which never reached it); every answer it gave was used once.
    assert len(server.requests) - unanswered == 24
    assert unanswered <= len(errors) <= unanswered + 24


async def _cli(
    server: RawServer, adapter: str, tmp_path: Path, prompts: int
) -> tuple[int, Path, str]:
    """``llmbatch run`` in a subprocess against ``server``: exit code, run dir, stderr."""
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"q{i}"} for i in range(prompts)]
    )
    out = tmp_path / "out"
    args = ["run", str(path), "--provider", "openai", "--base-url", server.url, "--model", "m"]
    args += ["--client", adapter, "--run-dir", str(out), "--concurrency", "2"]
    env = {"OPENAI_API_KEY": "sk-wire", "PATH": "/usr/bin:/bin", "LLMBATCH_LOOP": "asyncio"}
    env["PYTHONPATH"] = str(Path(llmbatch.__file__).parents[1])  # the llmbatch under test
    # ./config.toml of the run's working directory: the tests' timeouts and retries.
    toml = "[timeouts]\n" + "".join(f"{k} = {v}\n" for k, v in FAST.items())
    toml += "[retry]\n" + "".join(f"{k} = {v}\n" for k, v in RETRY.items())
    (tmp_path / "config.toml").write_text(toml)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmbatch",
        *args,
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


@pytest.mark.subprocess
async def test_cli_mixed_framings_exit_0(serve: Serve, adapter: str, tmp_path: Path) -> None:
    # One CLI run over answers of every framing, cut ones in between: all exact, exit 0.
    scripts = [
        ok_chunked(upper=True, ext=";x=1", trailers=[("X-T", "1")]),
        ok_length(),
        [Send(_cut_in_chunk()), Close()],
        [*ok_chunked(_utf8_splits(EVENTS)), Close()],
        [Send(response_head(headers=SSE, version="HTTP/1.0") + BODY), Close()],
        ok_chunked(openai_events(TOKENS, sep=b"\r\n", space=False)),
    ]
    server = await serve(*scripts, ok_chunked())
    code, out, err = await _cli(server, adapter, tmp_path, prompts=6)
    assert code == 0, err
    recs = read_results(out)
    assert len(recs) == 6 and len({r["custom_id"] for r in recs}) == 6
    for rec in recs:
        assert rec["error"] is None
        assert rec["response"]["body"]["choices"][0]["message"]["content"] == TEXT
        assert (out / rec["llmbatch"]["text_file"]).read_text("utf-8") == TEXT
    # At least one retry, for the answer cut short; a request sent on a connection the
    # server closed at that moment never reached it (retried too).
    attempts = sum(len(rec["llmbatch"]["attempts"]) for rec in recs)
    assert 7 <= len(server.requests) <= attempts


@pytest.mark.subprocess
async def test_cli_garbage_server_stops(serve: Serve, adapter: str, tmp_path: Path) -> None:
    # Pointed at something that is not an HTTP server: the run ends by itself, every
    # request failed (no record lost), bounded attempts.
    server = await serve([Send(b"SSH-2.0-OpenSSH_9.6\r\n"), Close()])
    code, out, err = await _cli(server, adapter, tmp_path, prompts=4)
    # Every request fails the same way: the systematic-failure check stops the run
    # (exit 3, resumable, no record for the prompts), with bounded attempts.
    assert code == 3, err
    assert "every request fails the same way" in err
    assert not (out / "results.jsonl").exists() or read_results(out) == []
    assert len(server.requests) <= 4 * RETRY["max_attempts"]
