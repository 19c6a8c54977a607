"""Time limits as a user meets them: total_s and idle_s through a Client on real sockets
(every adapter), and ``within`` behaving like ``asyncio.timeout``.

On virtual time (tests/virtualtime.py): a limit fires at exactly its value, whatever the
machine's load, and the seconds of streaming and stalling take none of the test's time."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

import llmbatch
from llmbatch.http import watchdog
from llmbatch.http.watchdog import within
from llmbatch.mockserver import MockConfig, start_mock_server

from .conftest import ADAPTERS
from .virtualtime import TIMER_SLACK_S, loop_time

pytestmark = pytest.mark.virtualtime


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_total_s_ends_a_slow_stream_with_deadline_exceeded(adapter: str) -> None:
    # 40 tokens 50 ms apart (2 s) against total_s = 0.5: tokens keep coming, so neither
    # idle_s nor first_byte_s applies; the whole-attempt limit does.
    server = await start_mock_server(MockConfig(tokens=40, ttft_s=0.0, itl_s=0.05))
    try:
        async with llmbatch.Client(
            "vllm",
            base_url=server.url,
            model="m",
            client=adapter,
            timeouts={"total_s": 0.5, "idle_s": 5.0},
            retry={"max_attempts": 1},
        ) as llm:
            t0 = loop_time()
            r = await llm.complete("hi")
            elapsed = loop_time() - t0
    finally:
        await server.close()
    assert not r.ok and r.error is not None and r.error.code == "deadline_exceeded"
    assert "longer than 0.5s" in r.error.message
    assert elapsed == pytest.approx(0.5, abs=TIMER_SLACK_S)  # at the limit, not before or after


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_idle_s_counts_from_the_last_byte_not_from_the_start(adapter: str) -> None:
    # Tokens every 150 ms for 1.2 s with idle_s = 0.5: never idle that long, so the
    # answer is whole; then a stall of the same stream fails it with read_timeout 0.5 s
    # after its last token.
    seen = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal seen
        seen += 1
        stall = seen == 2
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(8):
            await asyncio.sleep(0.15)
            await resp.write(b'data: {"choices":[{"delta":{"content":"w%d "}}]}\n\n' % i)
        if stall:
            await asyncio.sleep(3.0)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        opts = {"timeouts": {"idle_s": 0.5, "total_s": 20.0}, "retry": {"max_attempts": 1}}
        async with llmbatch.Client("vllm", base_url=url, model="m", client=adapter, **opts) as llm:
            ok = await llm.complete("hi")  # the first request streams through
            t0 = loop_time()
            stalled = await llm.complete("hi")  # the second one stalls before [DONE]
            stalled_after_s = loop_time() - t0
    finally:
        await runner.cleanup()
    assert ok.ok and ok.text == "".join(f"w{i} " for i in range(8))
    assert not stalled.ok and stalled.error is not None
    assert stalled.error.code == "read_timeout"
    assert stalled_after_s == pytest.approx(8 * 0.15 + 0.5, abs=TIMER_SLACK_S)


async def test_within_expires_like_asyncio_timeout() -> None:
    t0 = loop_time()
    with pytest.raises(TimeoutError):
        with within(0.05):
            await asyncio.sleep(5)
    assert loop_time() - t0 == pytest.approx(0.05, abs=TIMER_SLACK_S)
    # Nested: the inner (earlier) one fires; the outer one stays and later fires too.
    t0 = loop_time()
    with pytest.raises(TimeoutError):
        with within(0.3):
            with pytest.raises(TimeoutError):
                with within(0.02):
                    await asyncio.sleep(5)
            assert loop_time() - t0 == pytest.approx(0.02, abs=TIMER_SLACK_S)
            await asyncio.sleep(5)
    assert loop_time() - t0 == pytest.approx(0.3, abs=TIMER_SLACK_S)
    # Not reached: nothing raised, nothing left pending on the loop.
    with within(5.0):
        await asyncio.sleep(0)
    assert asyncio.get_running_loop() not in watchdog._DOGS


async def test_within_lets_an_outside_cancellation_through() -> None:
    async def body() -> None:
        with within(5.0):
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await asyncio.sleep(0)  # one step: the body waits in its block now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
