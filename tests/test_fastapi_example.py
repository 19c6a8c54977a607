"""examples/fastapi_app.py under uvicorn on 127.0.0.1, the mock as its provider.

All on one loop on virtual time (tests/virtualtime.py): the mock's 2 s answers take no
test time, and no load can keep the 300 callers from being in flight together."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import orjson
import pytest
import uvicorn

from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server

APP_FILE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"
APP_CONCURRENCY = 300

pytestmark = pytest.mark.virtualtime


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app", APP_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def want(prompt: str, n: int) -> str:
    return expected_text([{"role": "user", "content": prompt}], n)


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    # Each answer takes 2 s, so 300 concurrent callers really are in flight together.
    server = await start_mock_server(MockConfig(tokens=8, ttft_s=2.0, itl_s=0.02))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def app_url(mock: MockServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("LLMBATCH_EXAMPLE_PROVIDER", "vllm")
    monkeypatch.setenv("LLMBATCH_EXAMPLE_BASE_URL", mock.url)
    monkeypatch.setenv("LLMBATCH_EXAMPLE_MODEL", "mock-model")
    monkeypatch.setenv("LLMBATCH_EXAMPLE_CONCURRENCY", str(APP_CONCURRENCY))
    module = load_example()
    config = uvicorn.Config(
        module.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", backlog=2048
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)  # uvicorn offers no start event; polls its own flag
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_complete_and_stream_under_load(app_url: str, mock: MockServer) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def complete(i: int) -> None:
            async with http.post(f"{app_url}/complete", json={"prompt": f"c{i}"}) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
                assert body["text"] == want(f"c{i}", 8)

        async def stream(i: int) -> None:
            async with http.post(f"{app_url}/stream", json={"prompt": f"s{i}"}) as resp:
                assert resp.status == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                raw = await resp.read()
            events = [e for e in raw.split(b"\n\n") if e.strip()]
            assert events[-1] == b"data: [DONE]"
            text = "".join(orjson.loads(e[len(b"data: ") :])["text"] for e in events[:-1])
            assert text == want(f"s{i}", 8)

        await asyncio.gather(*(complete(i) for i in range(300)))
        # The app allows 300 in flight and the mock saw them all at once: no hidden cap.
        assert mock.stats.max_in_flight == APP_CONCURRENCY
        await asyncio.gather(*(stream(i) for i in range(50)))
    assert mock.stats.completed == 350


async def test_batch_endpoint_streams_ndjson(app_url: str) -> None:
    lines = b"\n".join(orjson.dumps({"id": f"b{i}", "prompt": f"b{i}"}) for i in range(20))
    lines += b"\n{not json}\n"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{app_url}/batch", data=lines) as resp:
            assert resp.status == 200
            rows = [orjson.loads(x) for x in (await resp.read()).splitlines()]
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 21
    assert all(by_id[f"b{i}"]["text"] == want(f"b{i}", 8) for i in range(20))
    bad = [r for r in rows if not r["ok"]]
    assert len(bad) == 1 and bad[0]["error"] == "input_error"


async def test_a_malformed_body_is_a_client_error(app_url: str, mock: MockServer) -> None:
    """Not JSON: 400 naming the problem, never a 500 with a traceback; nothing is sent."""
    async with aiohttp.ClientSession() as http:
        for path in ("/complete", "/stream"):
            async with http.post(f"{app_url}{path}", data=b'{"prompt": ') as resp:
                assert resp.status == 400
                detail = (await resp.json())["detail"]
                assert detail.startswith("the body is not valid JSON: Expecting value")
        async with http.post(f"{app_url}/complete", json={"messages": "not a list"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["detail"]["code"] == "input_error"
    assert mock.stats.requests == 0
