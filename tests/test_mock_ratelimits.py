"""The mock's own rate limits (sliding windows, continuous refill), on a fake clock."""

from __future__ import annotations

import pytest

from llmbatch.mockserver import MockConfig
from llmbatch.mockserver.ratelimits import (
    FixedCounter,
    MockRateLimits,
    RefillCounter,
    SlidingCounter,
)


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
    verdict = limits.admit(100, 0)
    assert verdict.admitted
    h = verdict.headers
    assert h["x-ratelimit-limit-requests"] == "1000"
    assert h["x-ratelimit-remaining-requests"] == "999"
    assert h["x-ratelimit-reset-requests"] == "1m26.4s"  # one request refills in 86400 s / 1000
    assert h["x-ratelimit-limit-tokens"] == "600"
    assert h["x-ratelimit-remaining-tokens"] == "500"
    assert h["x-ratelimit-reset-tokens"] == "10s"
    refused = limits.admit(600, 0)
    assert refused.retry_after_s == pytest.approx(10.0)


@pytest.mark.parametrize("mode", ["always", "on_429", "never"])
def test_header_modes(mode: str) -> None:
    clock = Clock()
    limits = MockRateLimits(MockConfig(rpm=1, limit_window_s=1, limit_headers=mode), clock)
    ok, refused = limits.admit(1, 0), limits.admit(1, 0)
    assert ok.admitted and not refused.admitted
    assert bool(ok.headers) == (mode == "always")
    assert bool(refused.headers) == (mode in ("always", "on_429"))


def test_anthropic_style_reset_is_rfc3339() -> None:
    limits = MockRateLimits(MockConfig(rpm=10, limit_window_s=1, limit_mode="sliding"), Clock())
    h = limits.admit(1, 0, style="anthropic").headers
    assert h["anthropic-ratelimit-requests-limit"] == "10"
    assert h["anthropic-ratelimit-requests-remaining"] == "9"
    assert h["anthropic-ratelimit-requests-reset"].endswith("Z")


def test_bad_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="limit_mode"):
        MockConfig(limit_mode="leaky")
    with pytest.raises(ValueError, match="limit_headers"):
        MockConfig(limit_headers="sometimes")


@pytest.mark.subprocess
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

    res = CliRunner().invoke(app, ["mock-server", "--limit-mode", "leaky"])
    assert res.exit_code == 2
    assert "limit_mode" in res.output


def test_fixed_window_counts_per_window_from_the_start() -> None:
    clock = Clock()
    c = FixedCounter(3, 10.0, clock)
    clock.now += 8.0  # late in the first window
    for _ in range(3):
        assert c.wait_s(1) == 0.0
        c.take(1)
    assert c.wait_s(1) == pytest.approx(2.0)  # until the window ends, not 10 s after
    assert c.reset_s() == pytest.approx(2.0)
    clock.now += 2.0
    assert c.remaining() == 3 and c.wait_s(1) == 0.0
    assert c.window_start(clock.now + 3.0) == pytest.approx(clock.now)


def test_output_counted_at_the_end_puts_the_budget_in_debt() -> None:
    clock = Clock()
    limits = MockRateLimits(
        MockConfig(tpm=100, limit_window_s=60, limit_mode="refill", output_counted="end"), clock
    )
    assert limits.admit(10, 500).admitted  # only the 10 input tokens count now
    limits.finish(500)  # the answer ended: 500 more, the bucket 410 in debt
    refused = limits.admit(10, 500)
    assert not refused.admitted
    assert refused.retry_after_s == pytest.approx((410 + 10) * 60 / 100)  # debt, then 10
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert refused.headers["x-ratelimit-reset-tokens"] == "5m6s"  # (100 + 410) / (100/60)


def test_anthropic_input_and_output_token_limits_have_their_headers() -> None:
    clock = Clock()
    limits = MockRateLimits(
        MockConfig(rpm=50, input_tpm=1000, output_tpm=500, limit_window_s=60), clock
    )
    h = limits.admit(40, 100, style="anthropic").headers
    assert h["anthropic-ratelimit-input-tokens-remaining"] == "960"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "400"
    assert h["anthropic-ratelimit-requests-remaining"] == "49"
    assert h["anthropic-ratelimit-output-tokens-reset"].endswith("Z")
    assert not any(k.startswith("x-ratelimit") for k in h)
    # OpenAI has no per-direction headers: only the requests limit shows there.
    assert set(limits.headers("openai")) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }


def test_measured_rate_is_what_was_admitted_beyond_one_limit() -> None:
    clock = Clock()
    limits = MockRateLimits(MockConfig(rpm=10, limit_window_s=1, limit_mode="refill"), clock)
    for i in range(30):  # 10 at once, then one every 0.11 s: just under the allowed rate
        clock.now = 1000.0 + max(0, i - 9) * 0.11
        assert limits.admit(1, 1).admitted
    m = limits.measured()["requests"]
    assert m["admitted"] == 30
    assert m["achieved_per_s"] == pytest.approx(20 / 2.2)  # 20 beyond the limit in 2.2 s
    assert m["allowed_per_s"] == 10.0
