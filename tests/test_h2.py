"""HTTP/2 over loopback TLS: the hypercorn front-end, stream limits, many streams."""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import re
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from llmbatch.cli.job import execute_run
from llmbatch.config.load import Timeouts
from llmbatch.errors import ConfigError, RateLimited, ServerError
from llmbatch.http import ClientOptions, make_client
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.mockserver.tls import MockTLS, make_mock_tls

from .conftest import ADAPTERS, config_for, read_results, write_jsonl
from .test_tls import MESSAGES, chat_request, streamed_text

pytestmark = pytest.mark.h2

FAST = Timeouts(connect_s=10.0, first_byte_s=30.0, idle_s=30.0, total_s=60.0)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> MockTLS:
    return make_mock_tls(tmp_path_factory.mktemp("h2"))


@pytest.fixture
async def h2_server(certs: MockTLS) -> AsyncIterator[MockServer]:
    s = await start_mock_server(
        MockConfig(tokens=12, ttft_s=0.0, itl_s=0.0), tls=certs, http2=True, max_streams=100
    )
    try:
        yield s
    finally:
        await s.close()


@pytest.mark.parametrize("name", ADAPTERS)
async def test_every_adapter_gets_exact_answers(
    name: str, h2_server: MockServer, certs: MockTLS
) -> None:
    # httpx with --http2 speaks h2; the aiohttp-based adapters get HTTP/1.1 through ALPN.
    h2 = name == "httpx"
    async with make_client(
        name, ClientOptions(max_connections=4, timeouts=FAST, ca_bundle=certs.ca_file, http2=h2)
    ) as client:
        text, version = await streamed_text(client, h2_server.url)
    assert text == expected_text(MESSAGES, 12)
    assert version == ("HTTP/2" if h2 else "HTTP/1.1")


async def test_faults_through_the_asgi_front_end(h2_server: MockServer, certs: MockTLS) -> None:
    async with make_client(
        "httpx",
        ClientOptions(max_connections=4, timeouts=FAST, ca_bundle=certs.ca_file, http2=True),
    ) as client:
        req = chat_request(h2_server.url)
        with pytest.raises(RateLimited) as info:
            async with client.stream(
                type(req)(req.url, {**req.headers, "x-mock-fault": "429"}, req.body)
            ):
                pass
        assert info.value.retry_after_s == pytest.approx(0.05)
        # A drop mid-stream ends that stream early: half the answer, no [DONE].
        async with client.stream(
            type(req)(req.url, {**req.headers, "x-mock-fault": "disconnect"}, req.body)
        ) as resp:
            body = b"".join([c async for c in resp.chunks])
        assert body.count(b'"content":') == 1 + 6 and b"[DONE]" not in body
        with pytest.raises(ServerError, match="HTTP 502"):
            async with client.stream(
                type(req)(req.url, {**req.headers, "x-mock-fault": "reset"}, req.body)
            ):
                pass
        text, version = await streamed_text(client, h2_server.url)  # the connection lives on
    assert text == expected_text(MESSAGES, 12) and version == "HTTP/2"
    assert h2_server.stats.connections == 1
    assert h2_server.stats.faults == {"429": 1, "disconnect": 1, "reset": 1}


async def _h2_run(
    tmp_path: Path, server: MockServer, certs: MockTLS, n: int, concurrency: int
) -> tuple[list[dict[str, object]], dict[str, object]]:
    rows = [{"id": i, "prompt": f"question {i}"} for i in range(n)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = config_for(
        server,
        tmp_path,
        client="httpx",
        http2=True,
        concurrency=concurrency,
        ca_bundle=certs.ca_file,
        text_files=False,
    )
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    summary = orjson.loads((out.run_dir / "summary.json").read_bytes())
    return read_results(out.run_dir), summary


@pytest.mark.timeout(180)
async def test_thousand_streams_over_stream_limited_connections(
    tmp_path: Path, certs: MockTLS
) -> None:
    server = await start_mock_server(
        MockConfig(tokens=4, ttft_s=0.0, itl_s=0.0), tls=certs, http2=True, max_streams=100
    )
    try:
        records, summary = await _h2_run(tmp_path, server, certs, 1000, 1000)
    finally:
        await server.close()
    assert summary["requests"]["succeeded"] == 1000  # type: ignore[index]
    assert summary["errors_by_class"] == {} and summary["attempt_errors_by_class"] == {}
    assert summary["http_versions"] == {"HTTP/2": 1000}
    assert len(records) == 1000
    assert all(r["llmbatch"]["metrics"]["http_version"] == "HTTP/2" for r in records)  # type: ignore[index]
    for r in records:
        text = r["response"]["body"]["choices"][0]["message"]["content"]  # type: ignore[index]
        assert text == expected_text([{"role": "user", "content": f"question {r['custom_id']}"}], 4)
    # 1,000 streams at 100 per connection: 10 connections, at most 10% more.
    assert server.stats.connections <= 11
    assert server.stats.requests == 1000


@pytest.mark.timeout(120)
async def test_full_connection_sends_requests_to_another(tmp_path: Path, certs: MockTLS) -> None:
    # A server allowing 25 streams, 200 requests in flight, each held for 2 s: the
    # server must see far more than 25 at once (no stall on one connection), over
    # about 200 / 25 connections.
    server = await start_mock_server(
        MockConfig(tokens=2, ttft_s=2.0, itl_s=0.0), tls=certs, http2=True, max_streams=25
    )
    try:
        records, summary = await _h2_run(tmp_path, server, certs, 200, 200)
    finally:
        await server.close()
    assert summary["http_versions"] == {"HTTP/2": 200}
    assert server.stats.max_in_flight > 100
    assert math.ceil(200 / 25) <= server.stats.connections <= math.ceil(200 / 25 * 1.1)


async def test_streams_per_connection_can_be_capped(h2_server: MockServer, certs: MockTLS) -> None:
    from llmbatch.http.httpx import HttpxAdapter

    gate = asyncio.Event()
    async with HttpxAdapter(
        ClientOptions(max_connections=40, timeouts=FAST, ca_bundle=certs.ca_file, http2=True),
        h2_max_streams=10,
    ) as client:
        req = chat_request(h2_server.url)
        held = type(req)(req.url, {**req.headers, "x-mock-ttft-ms": "60000"}, req.body)

        async def one() -> None:
            async with client.stream(held):
                await gate.wait()

        first = asyncio.create_task(one())  # the first request goes alone, sizing the lanes
        await h2_server.wait_in_flight(1)
        rest = [asyncio.create_task(one()) for _ in range(39)]
        await h2_server.wait_in_flight(40)
        gate.set()
        await asyncio.gather(first, *rest)
    assert h2_server.stats.connections == 4  # 40 streams, at most 10 per connection


@pytest.mark.parametrize("name", ["aiohttp", "httpx-aiohttp", "native"])
def test_http2_needs_httpx(name: str) -> None:
    with pytest.raises(ConfigError, match="--http2 needs --client httpx"):
        make_client(name, ClientOptions(max_connections=1, timeouts=FAST, http2=True))


@pytest.mark.subprocess
def test_cli_mock_server_tls_http2_prints_ca(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmbatch", "mock-server", "--port", "0", "--tls", "--http2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        second = proc.stderr.readline()
        url = re.search(r"listening on (https://127\.0\.0\.1:\d+/v1)", first)
        ca = re.search(r"--ca-bundle (\S+)", second)
        assert url and ca, (first, second)
        assert "HTTP/2 (max 100 streams per connection)" in second
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": "x"} for i in range(3)])
        base = [sys.executable, "-m", "llmbatch", "run", str(prompts), "-p", "vllm"]
        base += ["--base-url", url.group(1), "--client", "httpx", "--http2", "--no-progress"]
        ok = subprocess.run(
            [*base, "--ca-bundle", ca.group(1), "-o", str(tmp_path / "a")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert {r["llmbatch"]["metrics"]["http_version"] for r in read_results(tmp_path / "a")} == {
            "HTTP/2"
        }
        bad = subprocess.run(
            [*base, "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=60
        )
        assert bad.returncode == 3, bad.stderr
        assert "CertificateError" in bad.stderr and "--ca-bundle" in bad.stderr
        insecure = subprocess.run(
            [*base, "--insecure", "-o", str(tmp_path / "c")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert insecure.returncode == 0, insecure.stderr
        assert "warning: insecure: TLS certificates are NOT verified" in insecure.stderr
        assert "InsecureTLSWarning" not in insecure.stderr  # said once, by the CLI
        # compare takes the same TLS and HTTP/2 flags as run
        (tmp_path / "c.toml").write_text(f'[providers.vllm]\nbase_url = "{url.group(1)}"\n')
        cmp = subprocess.run(
            [sys.executable, "-m", "llmbatch", "compare", str(prompts), "-p", "vllm"]
            + ["--client", "httpx", "--http2", "--ca-bundle", ca.group(1), "--no-progress"]
            + ["-c", str(tmp_path / "c.toml"), "-o", str(tmp_path / "cmp")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cmp.returncode == 0, cmp.stderr
        (row,) = orjson.loads((tmp_path / "cmp" / "compare.json").read_bytes())["runs"]
        assert row["completed"] == 3 and row["failed"] == 0
        assert row["http_versions"] == {"HTTP/2": 3}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0
    assert not Path(ca.group(1)).parent.exists()  # its temporary certificates are removed


def _close_hypercorn_idle_coroutines() -> None:
    """Close the idle-timeout coroutines hypercorn made and never ran.

    hypercorn, closing a connection after its GOAWAY, now and then creates a coroutine
    of its own (TCPServer._idle_timeout) for a task group that is already closing, never
    awaited, held until some later garbage collection: its warning would then fail
    whichever test the collection happens in. Closed here, they warn no more.
    """
    for obj in gc.get_objects():
        if (
            isinstance(obj, types.CoroutineType)
            and obj.__qualname__ == "TCPServer._idle_timeout"
            and inspect.getcoroutinestate(obj) == inspect.CORO_CREATED
        ):
            obj.close()


@pytest.mark.timeout(120)
def test_goaway_loses_no_answer(tmp_path: Path, certs: MockTLS) -> None:
    # nginx's keepalive_requests: GOAWAY on every connection's 5th stream, 10 in flight.
    # httpcore fails every stream of a connection that got GOAWAY (also those the server
    # promised to finish); each such failure must be a retried transport error, never
    # an unexpected one, and the run must end with every answer.
    async def run() -> tuple[list[dict[str, object]], dict[str, object], int]:
        server = await start_mock_server(
            MockConfig(tokens=6, ttft_s=0.01, itl_s=0.001),
            tls=certs,
            http2=True,
            max_streams=100,
            goaway_after=5,
        )
        try:
            records, summary = await _h2_run(tmp_path, server, certs, 60, 10)
        finally:
            await server.close()
        return records, summary, server.stats.connections

    records, summary, connections = asyncio.run(run())
    _close_hypercorn_idle_coroutines()
    assert summary["requests"]["succeeded"] == 60  # type: ignore[index]
    assert summary["errors_by_class"] == {}
    assert "unexpected_error" not in summary["attempt_errors_by_class"]  # type: ignore[operator]
    assert sorted(r["custom_id"] for r in records) == sorted(str(i) for i in range(60))
    for r in records:
        text = r["response"]["body"]["choices"][0]["message"]["content"]  # type: ignore[index]
        assert text == expected_text([{"role": "user", "content": f"question {r['custom_id']}"}], 6)
    # 60 streams at most 5 per connection: GOAWAY was sent, at least 12 connections.
    assert connections >= 12
