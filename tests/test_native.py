"""``--client native`` beyond the shared contract: imports, the pool, keep-alive reuse."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from llmbatch.config.model import Timeouts
from llmbatch.errors import PoolTimeout, StreamInterrupted
from llmbatch.http import ClientOptions, HTTPRequest, make_client
from llmbatch.http.native import adapter as native_adapter
from llmbatch.http.native.exchange import MAX_HEAD_BYTES
from llmbatch.mockserver import MockConfig, MockServer, start_mock_server

from .conftest import read_results, write_jsonl
from .virtualtime import TIMER_SLACK_S, loop_time

FAST = Timeouts(connect_s=5.0, first_byte_s=5.0, idle_s=5.0, total_s=20.0)
SSE = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'


@pytest.mark.subprocess
async def test_native_run_imports_neither_aiohttp_nor_httpx(
    tmp_path: Path, mock_server: MockServer
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(3)])
    run_dir = tmp_path / "run"
    argv = ["llmbatch", "run", str(prompts), "-p", "vllm", "--base-url", mock_server.url]
    argv += ["--model", "m", "--client", "native", "--no-progress", "-o", str(run_dir)]
    code = (
        "import sys\n"
        f"sys.argv = {argv!r}\n"
        "from llmbatch.cli.app import main\n"
        "rc = 0\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "print('loaded', sorted(m for m in ('aiohttp', 'httpx', 'httpcore') if m in sys.modules))\n"
        "print('rc', rc)\n"
    )
    # The mock serves from this test's loop while the child runs.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    out, err = out_b.decode(), err_b.decode()
    assert "loaded []" in out, out + err
    assert "rc 0" in out, out + err
    records = read_results(run_dir)
    assert len(records) == 3 and all(r["error"] is None for r in records)
    assert mock_server.stats.completed == 3


async def test_http2_over_cleartext_is_http1(mock_server: MockServer) -> None:
    # h2 is asked for in TLS ALPN; an http:// origin gets HTTP/1.1 (no cleartext h2c).
    client = make_client("native", ClientOptions(max_connections=1, timeouts=FAST, http2=True))
    async with client, client.stream(chat_request(mock_server.url)) as resp:
        assert resp.http_version == "HTTP/1.1"
        assert b"[DONE]" in b"".join([c async for c in resp.chunks])


def chat_request(url: str, **headers: str) -> HTTPRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "n"}], "stream": True}
    return HTTPRequest(
        url=f"{url}/chat/completions",
        headers={"content-type": "application/json", **headers},
        body=orjson.dumps(body),
    )


async def read_all(client: object, req: HTTPRequest) -> bytes:
    async with client.stream(req) as resp:  # type: ignore[attr-defined]
        return b"".join([c async for c in resp.chunks])


async def test_pool_never_opens_more_connections_than_its_size() -> None:
    server = await start_mock_server(MockConfig(tokens=8, ttft_s=0.0, itl_s=0.005))
    try:
        async with make_client("native", ClientOptions(max_connections=3, timeouts=FAST)) as client:
            bodies = await asyncio.gather(
                *(read_all(client, chat_request(server.url)) for _ in range(12))
            )
        assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
        assert server.stats.completed == 12
        assert server.stats.max_in_flight <= 3  # what the server saw in flight
    finally:
        await server.close()


class _ClosingServer:
    """Answers the first request on a connection, then closes it when the next request
    arrives, without a byte of response (a server's keep-alive close racing a request)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                self.requests += 1
                if served:
                    break  # close without answering
                served += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(SSE), SSE)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
def stale_after_0s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_adapter, "STALE_IDLE_S", 0.0)


async def test_stale_keep_alive_connection_is_retried_once(stale_after_0s: None) -> None:
    closing = _ClosingServer()
    async with (
        closing as url,
        make_client("native", ClientOptions(max_connections=1, timeouts=FAST)) as client,
    ):
        assert await read_all(client, chat_request(url)) == SSE
        # The idle connection is closed by the server as our request arrives: sent
        # again on a new connection, which answers.
        assert await read_all(client, chat_request(url)) == SSE
    assert closing.connections == 2
    assert closing.requests == 3


async def test_close_on_a_busy_connection_is_not_retried() -> None:
    # Reused at once (not idle for long): the close after our request reached the
    # server is the retry policy's business, raised as StreamInterrupted.
    closing = _ClosingServer()
    async with (
        closing as url,
        make_client("native", ClientOptions(max_connections=1, timeouts=FAST)) as client,
    ):
        assert await read_all(client, chat_request(url)) == SSE
        with pytest.raises(StreamInterrupted, match="closed before the response"):
            await read_all(client, chat_request(url))
    assert closing.connections == 1
    assert closing.requests == 2


@pytest.mark.virtualtime
async def test_waiting_for_a_pooled_connection_is_its_own_timeout() -> None:
    # One connection, held by a slow answer: the second request waits for it exactly
    # connect_s (on virtual time), and says so (not "no response headers").
    server = await start_mock_server(MockConfig(tokens=4, ttft_s=5.0, itl_s=0.0))
    timeouts = Timeouts(connect_s=0.2, first_byte_s=10.0, idle_s=10.0, total_s=20.0)
    try:
        options = ClientOptions(max_connections=1, timeouts=timeouts)
        async with make_client("native", options) as client:
            slow = asyncio.create_task(read_all(client, chat_request(server.url)))
            await asyncio.sleep(0)  # it takes the only connection first
            t0 = loop_time()
            with pytest.raises(PoolTimeout, match="no connection came free within 0.2s"):
                await read_all(client, chat_request(server.url))
            assert loop_time() - t0 == pytest.approx(0.2, abs=TIMER_SLACK_S)
            slow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slow
        assert server.stats.max_in_flight == 1
    finally:
        await server.close()


def _head_of(size: int) -> bytes:
    """A 200 head of exactly ``size`` bytes (one long header), then a small body."""
    start = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-f: "
    end = b"\r\ncontent-length: %d\r\n\r\n" % len(SSE)
    return start + b"v" * (size - len(start) - len(end)) + end + SSE


class _OneAnswer:
    """Answers every request with the same bytes, written ``step`` bytes at a time."""

    def __init__(self, answer: bytes, step: int) -> None:
        self.answer, self.step = answer, step
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            for i in range(0, len(self.answer), self.step):
                writer.write(self.answer[i : i + self.step])
                await writer.drain()
        writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("step", [1 << 20, 4096, 1000])
async def test_response_head_limit(step: int) -> None:
    # llhttp has no limit of its own: a head of MAX_HEAD_BYTES is read, one byte more is
    # refused, whether it comes in one read or in many.
    options = ClientOptions(max_connections=1, timeouts=FAST)
    async with _OneAnswer(_head_of(MAX_HEAD_BYTES), step) as url:
        async with make_client("native", options) as client:
            assert await read_all(client, chat_request(url)) == SSE
    async with _OneAnswer(_head_of(MAX_HEAD_BYTES + 1), step) as url:
        async with make_client("native", options) as client:
            with pytest.raises(StreamInterrupted, match="head longer than 65536 bytes"):
                await read_all(client, chat_request(url))


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    # The server closes a keep-alive connection while it is idle in the pool, and the next
    # request comes before the loop has read that close (here: the loop is blocked while
    # the close arrives). Reusing it would send the request into a closed socket and fail
    # the attempt; the pool polls an idle socket before reuse and connects anew.
    body = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    listener = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    may_close, closed = threading.Event(), threading.Event()
    connections = []

    def read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += conn.recv(65536)

    def serve() -> None:
        for i in range(2):
            conn, _ = listener.accept()
            connections.append(conn)
            read_request(conn)
            conn.sendall(answer)
            if i == 0:
                may_close.wait(10)
                conn.close()  # idle, in the client's pool
                closed.set()
        listener.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        async with make_client("native", ClientOptions(max_connections=1, timeouts=FAST)) as client:
            assert await read_all(client, chat_request(url)) == body
            may_close.set()
            assert closed.wait(10)  # blocks the loop: it has not read the close yet
            assert await read_all(client, chat_request(url)) == body
    finally:
        may_close.set()
        server.join(10)
        for conn in connections:
            conn.close()
    assert len(connections) == 2  # the second request went to a new connection
