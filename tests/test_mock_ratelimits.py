"""The mock's own rate limits (sliding windows, continuous refill), on a fake clock."""

from __future__ import annotations

import pytest

from llmbatch.mockserver import MockConfig
from llmbatch.mockserver.ratelimits import MockRateLimits, RefillCounter, SlidingCounter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("window_s", [1.0, 10.0, 60.0])
def test_sliding_window_admits_limit_per_any_window(window_s: float) -> None:
    clock = Clock()
    c = SlidingCounter(50, window_s, clock)
    start = clock.now
    for i in range(50):
        clock.now = start + i * window_s / 100  # 50 requests over half a window
        assert c.wait_s(1) == 0.0
        c.take(1)
    assert c.remaining() == 0
    # The oldest admission leaves the window first: one slot frees at its expiry.
    assert c.wait_s(1) == pytest.approx(window_s - 49 * window_s / 100)
    assert c.reset_s() == pytest.approx(window_s)  # the newest admission leaves last
    clock.now = start + window_s
    assert c.wait_s(1) == 0.0
    assert c.remaining() == 1


def test_refill_counter_is_openai_continuous_refill() -> None:
    clock = Clock()
    c = RefillCounter(60, 60.0, clock)  # one per second, holding the whole minute
    for _ in range(60):
        c.take(1)
    assert c.remaining() == 0
    assert c.reset_s() == pytest.approx(60.0)  # "until back to its initial state"
    assert c.wait_s(1) == pytest.approx(1.0)
    clock.now += 6
    assert c.remaining() == pytest.approx(6)
    assert c.reset_s() == pytest.approx(54.0)


def test_headers_per_day_requests_next_to_per_minute_tokens() -> None:
    clock = Clock()
    cfg = MockConfig(rpd=1000, tpm=600, limit_window_s=60, day_window_s=86400)
    limits = MockRateLimits(cfg, clock)
    verdict = limits.admit(100)
    assert verdict.admitted
    h = verdict.headers
    assert h["x-ratelimit-limit-requests"] == "1000"
    assert h["x-ratelimit-remaining-requests"] == "999"
    assert h["x-ratelimit-reset-requests"] == "1m26.4s"  # one request refills in 86400 s / 1000
    assert h["x-ratelimit-limit-tokens"] == "600"
    assert h["x-ratelimit-remaining-tokens"] == "500"
    assert h["x-ratelimit-reset-tokens"] == "10s"
    refused = limits.admit(600)
    assert refused.retry_after_s == pytest.approx(10.0)


@pytest.mark.parametrize("mode", ["always", "on_429", "never"])
def test_header_modes(mode: str) -> None:
    clock = Clock()
    limits = MockRateLimits(MockConfig(rpm=1, limit_window_s=1, limit_headers=mode), clock)
    ok, refused = limits.admit(1), limits.admit(1)
    assert ok.admitted and not refused.admitted
    assert bool(ok.headers) == (mode == "always")
    assert bool(refused.headers) == (mode in ("always", "on_429"))


def test_anthropic_style_reset_is_rfc3339() -> None:
    limits = MockRateLimits(MockConfig(rpm=10, limit_window_s=1, limit_mode="sliding"), Clock())
    h = limits.admit(1, style="anthropic").headers
    assert h["anthropic-ratelimit-requests-limit"] == "10"
    assert h["anthropic-ratelimit-requests-remaining"] == "9"
    assert h["anthropic-ratelimit-requests-reset"].endswith("Z")


def test_bad_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="limit_mode"):
        MockConfig(limit_mode="fixed")
    with pytest.raises(ValueError, match="limit_headers"):
        MockConfig(limit_headers="sometimes")


@pytest.mark.timeout(30)
async def test_mock_server_cli_flags_set_a_sliding_limit_with_headers_on_429_only() -> None:
    import asyncio
    import sys

    import httpx

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmbatch",
        "mock-server",
        "--port",
        "0",
        "--rpm",
        "2",
        "--limit-window-s",
        "10",
        "--limit-mode",
        "sliding",
        "--limit-headers",
        "on_429",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = (await proc.stderr.readline()).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(base_url=url) as client:
            first = await client.post("/chat/completions", json=body)
            second = await client.post("/chat/completions", json=body)
            third = await client.post("/chat/completions", json=body)
        assert first.status_code == second.status_code == 200
        assert "x-ratelimit-limit-requests" not in first.headers
        assert third.status_code == 429
        assert third.headers["x-ratelimit-limit-requests"] == "2"
        assert third.headers["x-ratelimit-remaining-requests"] == "0"
        assert 9.0 < float(third.headers["retry-after-ms"]) / 1000 <= 10.0
    finally:
        proc.terminate()
        await proc.wait()


def test_mock_server_cli_rejects_an_unknown_limit_mode() -> None:
    from typer.testing import CliRunner

    from llmbatch.cli.app import app

    res = CliRunner().invoke(app, ["mock-server", "--limit-mode", "fixed"])
    assert res.exit_code == 2
    assert "limit_mode" in res.output
