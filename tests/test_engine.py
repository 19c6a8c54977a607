"""What the engine does with servers that behave like real ones: 200s that are not event
streams, keepalive pings, and --concurrency auto that really grows (server-side counts)."""

from __future__ import annotations

import asyncio
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

import llmbatch
from llmbatch.mockserver import MockConfig, expected_text, start_mock_server

from . import virtualtime
from .conftest import ADAPTERS, read_results, write_jsonl
from .virtualtime import TIMER_SLACK_S, loop_time

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[str, web.AppRunner]:
    app_ = web.Application()
    app_.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app_, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}/v1", runner


@pytest.fixture
async def html_server() -> AsyncIterator[str]:
    hits = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(
            text="<html><body>Please log in</body></html>", content_type="text/html"
        )

    url, runner = await serve(handler)
    try:
        yield url
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_json_200_is_accepted_as_the_answer(adapter: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["stream"] is True  # we asked for a stream; this server ignores it
        answer = {
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "whole answer"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        }
        return web.json_response(answer)

    url, runner = await serve(handler)
    try:
        async with llmbatch.Client("vllm", base_url=url, model="m", client=adapter) as llm:
            r = await llm.complete("hi")
    finally:
        await runner.cleanup()
    assert r.ok and r.text == "whole answer" and r.finish_reason == "stop"
    assert r.usage.output_tokens == 2 and not r.usage.output_estimated


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_html_200_fails_the_request_naming_the_content_type(
    html_server: str, adapter: str
) -> None:
    async with llmbatch.Client("vllm", base_url=html_server, model="m", client=adapter) as llm:
        r = await llm.complete("hi")
    assert not r.ok and r.error is not None
    assert r.error.code == "unexpected_content_type" and "text/html" in r.error.message
    assert r.attempts == 1  # not retried: a login page will not turn into an answer


@pytest.mark.subprocess
async def test_html_200_stops_the_run_at_the_systematic_failure_check(
    html_server: str, tmp_path: Path
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(50)])
    args = ["run", str(prompts), "--provider", "vllm", "--base-url", html_server, "-j", "4"]
    # The CLI in its own process (as a user runs it), so this loop keeps serving.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmbatch", *args, stdout=PIPE, stderr=STDOUT, cwd=tmp_path
    )
    out_b, _ = await asyncio.wait_for(proc.communicate(), timeout=50)
    output = out_b.decode()
    assert proc.returncode == 3, output
    assert "text/html" in output and "every request fails the same way" in output
    assert not read_results(tmp_path / "outputs" / "p-vllm")  # nothing recorded: re-run redoes all


def _chunk(text: str) -> bytes:
    payload = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@pytest.mark.virtualtime
async def test_pings_after_content_are_not_progress() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk("one "))
        for _ in range(200):  # pings every 20 ms, never another token (bounded: 4 s)
            await asyncio.sleep(0.02)
            await resp.write(b": ping\n\n")
        return resp

    url, runner = await serve(handler)
    try:
        async with llmbatch.Client(
            "vllm", base_url=url, model="m", timeouts={"idle_s": 0.3}, retry={"max_attempts": 1}
        ) as llm:
            t0 = loop_time()
            r = await llm.complete("hi")
            elapsed = loop_time() - t0
    finally:
        await runner.cleanup()
    assert not r.ok and r.error is not None and r.error.code == "read_timeout"
    assert "keepalive" in r.error.message
    # On virtual time the token comes at 0: idle_s after it, through 15 pings, not later.
    assert elapsed == pytest.approx(0.3, abs=TIMER_SLACK_S)


@pytest.mark.virtualtime
async def test_pings_before_the_first_token_are_allowed() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(25):  # queued for 0.5 s, well past idle_s, pinging (llama.cpp)
            await asyncio.sleep(0.02)
            await resp.write(b": ping\n\n")
        await resp.write(_chunk("queued ") + _chunk("answer") + b"data: [DONE]\n\n")
        return resp

    url, runner = await serve(handler)
    try:
        async with llmbatch.Client(
            "vllm", base_url=url, model="m", timeouts={"idle_s": 0.2}, retry={"max_attempts": 1}
        ) as llm:
            r = await llm.complete("hi")
    finally:
        await runner.cleanup()
    assert r.ok and r.text == "queued answer"


def test_concurrency_auto_grows_past_200_in_flight() -> None:
    # An unlimited server that holds every answer 1 s: slow start doubles per round trip,
    # so the mock counts 200 in flight within a few round trips. On virtual time
    # (tests/virtualtime.py) a loaded machine cannot stretch the TTFTs the controller reads.
    async def main() -> int:
        server = await start_mock_server(MockConfig(tokens=1, ttft_s=1.0, itl_s=0.0))
        try:
            async with llmbatch.Client(
                "vllm", base_url=server.url, model="mock-model", concurrency="auto"
            ) as llm:
                prompts = [f"p{i}" for i in range(1500)]
                async with llm.batch(prompts) as batch:
                    consumer = asyncio.create_task(_drain(batch))
                    await asyncio.wait_for(server.wait_in_flight(200), timeout=15.0)
                    consumer.cancel()
            return server.stats.max_in_flight
        finally:
            await server.close()

    assert virtualtime.run(main()) >= 200


async def _drain(batch: llmbatch.Batch) -> None:
    async for r in batch:
        assert r.ok and r.text == expected_text([{"role": "user", "content": f"p{r.line - 1}"}], 1)  # type: ignore[operator]
