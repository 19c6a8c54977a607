"""Metric definitions (vLLM's), measured against a mock with known timing, and aggregates."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from llmbatch.cli.job import execute_run
from llmbatch.metrics import SLO, Histogram, RunMetrics, spread_tokens
from llmbatch.mockserver import MockConfig, MockServer, start_mock_server
from llmbatch.records import Attempt, Outcome, RequestMetrics

from .conftest import ADAPTERS, config_for, read_results, write_jsonl
from .virtualtime import TIMER_SLACK_S

TTFT_S = 0.2
ITL_S = 0.02
TOKENS = 8


# -- Histogram ---------------------------------------------------------------------------
def test_histogram_empty_and_single() -> None:
    h = Histogram()
    assert h.percentile(50) is None
    assert h.summary() == {"mean": None, "p50": None, "p90": None, "p95": None, "p99": None}
    h.add(0.123)
    assert h.percentile(50) == h.percentile(99) == 0.123  # clamped to the observed range


@pytest.mark.parametrize("v", [0.0013, 0.02, 0.2, 0.7, 0.999, 1.004, 1.3, 45.0])
def test_histogram_percentile_within_half_a_percent(v: float) -> None:
    h = Histogram()
    h.add_many([v / 2, v, v * 2])
    p50 = h.percentile(50)
    assert p50 is not None and abs(p50 / v - 1) <= 0.0051  # the bucket midpoint


def test_histogram_percentiles_of_a_sweep() -> None:
    h = Histogram()
    values = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s
    h.add_many(values)
    assert h.count == 1000 and h.min == 0.001 and h.max == 1.0
    for p in (50, 90, 95, 99):
        exact = values[math.ceil(len(values) * p / 100) - 1]  # nearest rank
        got = h.percentile(p)
        assert got is not None and abs(got / exact - 1) <= 0.011, (p, got, exact)
    assert h.summary()["mean"] == pytest.approx(0.5005, abs=1e-6)


# -- per-request definitions ----------------------------------------------------------------
def test_tpot_definition() -> None:
    m = RequestMetrics(ttft_s=0.2, e2el_s=0.34, output_tokens=8)
    assert m.tpot_s == pytest.approx((0.34 - 0.2) / 7)
    assert RequestMetrics(ttft_s=0.2, e2el_s=0.2, output_tokens=1).tpot_s is None


def _ok(ttft: float, e2el: float, tokens: int, attempts: int = 1) -> Outcome:
    hist = [Attempt(i + 1, 429, "rate_limited", None, None, 0.0) for i in range(attempts - 1)]
    hist.append(Attempt(attempts, 200, None, None, None, 0.0))
    m = RequestMetrics(
        ttft_s=ttft, e2el_s=e2el, output_tokens=tokens, output_tokens_estimated=False
    )
    return Outcome("x", 200, None, {}, None, None, hist, m)


def test_slo_goodput() -> None:
    slo = SLO(ttft_s=0.5, tpot_s=0.05)
    assert slo.active and not SLO().active
    assert slo.met_by(RequestMetrics(ttft_s=0.4, e2el_s=0.4, output_tokens=1))  # no TPOT: 1 token
    assert not slo.met_by(RequestMetrics())  # no TTFT at all
    rm = RunMetrics(slo=slo, started_at=0.0)
    rm.add(_ok(0.4, 0.4 + 9 * 0.04, 10), finished_at=1.0)  # good
    rm.add(_ok(0.6, 0.6 + 9 * 0.01, 10), finished_at=1.0)  # TTFT too slow
    rm.add(_ok(0.1, 0.1 + 9 * 0.06, 10, attempts=3), finished_at=1.0)  # TPOT too slow
    failed = Outcome("y", 500, None, None, "server_error", "boom", [], RequestMetrics())
    rm.add(failed, finished_at=1.0)
    rm.ended_at = 2.0
    s = rm.summary()
    assert s["goodput"]["good_requests"] == 1
    assert s["goodput"]["requests_per_s"] == 0.5
    assert s["requests"]["succeeded"] == 3 and s["requests"]["failed"] == 1
    assert s["retries"] == 2 and s["rate_limited_429"] == 2
    assert "goodput" not in RunMetrics().summary()


def test_peak_counts_tokens_while_they_stream() -> None:
    buckets: dict[int, float] = {}
    spread_tokens(buckets, 0.5, 2.5, 100)
    assert buckets == pytest.approx({0: 25.0, 1: 50.0, 2: 25.0})
    rm = RunMetrics(started_at=0.0)
    # 4 requests each streaming 100 tokens over [0.5, 2.5]: 200 tokens in second 1.
    for _ in range(4):
        rm.add(_ok(0.5, 2.5, 100), finished_at=2.5)
    rm.ended_at = 3.0
    assert rm.summary()["throughput"]["peak_output_tokens_per_s"] == 200
    short = RunMetrics(started_at=0.0)
    short.add(_ok(0.1, 0.4, 50), finished_at=0.4)
    short.ended_at = 0.5  # shorter than one bucket: the run's own rate
    assert short.summary()["throughput"]["peak_output_tokens_per_s"] == 100


# -- measured against the mock -----------------------------------------------------------
@pytest.fixture
async def timed_server() -> AsyncIterator[MockServer]:
    # Every prompt's first attempt gets a 429 (Retry-After 150 ms), so each request has
    # queue time (the failed attempt and the wait) that must not show up in its TTFT.
    cfg = MockConfig(
        tokens=TOKENS, ttft_s=TTFT_S, itl_s=ITL_S, faults={"429": 1.0}, retry_after_s=0.15
    )
    server = await start_mock_server(cfg)
    try:
        yield server
    finally:
        await server.close()


@pytest.mark.virtualtime
@pytest.mark.parametrize("client", ADAPTERS)
async def test_measured_timing_matches_the_mock(
    tmp_path: Path, timed_server: MockServer, client: str
) -> None:
    # On virtual time (tests/virtualtime.py) the mock's delays are exact, so each metric is
    # the mock's figure: TTFT 200 ms, ITL 20 ms, E2EL 200 + 7 x 20 ms; the 429'd attempt and
    # its 150 ms Retry-After are queue time, none of it in the TTFT.
    rows = [{"id": f"p{i}", "prompt": f"prompt number {i}"} for i in range(8)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = config_for(timed_server, tmp_path, client=client, concurrency=8)
    cfg = dataclasses.replace(cfg, retry=dataclasses.replace(cfg.retry, backoff_base_s=0.01))
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    s = out.result.metrics.summary()
    assert s["requests"]["succeeded"] == 8
    assert s["retries"] == 8 and s["rate_limited_429"] == 8
    e2el_s = TTFT_S + (TOKENS - 1) * ITL_S
    lat = s["latency_s"]
    # The summary's percentiles are histogram buckets' midpoints: within half a percent.
    for name, value in (("ttft", TTFT_S), ("itl", ITL_S), ("tpot", ITL_S), ("e2el", e2el_s)):
        for stat in ("p50", "p99"):
            assert lat[name][stat] == pytest.approx(value, rel=0.0051), (name, lat[name])
    assert s["tokens"]["output"] == 8 * TOKENS
    assert s["tokens"]["requests_with_estimated_output_tokens"] == 0
    records = read_results(out.run_dir)
    for r in records:
        m = r["llmbatch"]["metrics"]
        assert m["output_tokens"] == TOKENS and m["chunks"] == TOKENS
        assert m["output_tokens_estimated"] is False
        # the mock's prompt_tokens: words + 1 per message
        assert m["input_tokens"] == len(f"prompt number {r['custom_id'][1:]}".split()) + 1
        assert m["queue_s"] == pytest.approx(0.15, abs=TIMER_SLACK_S)  # the 429 and its Retry-After
        assert m["ttft_s"] == pytest.approx(TTFT_S, abs=TIMER_SLACK_S)
        assert m["e2el_s"] == pytest.approx(e2el_s, abs=TIMER_SLACK_S)


async def _packed_no_usage(request: web.Request) -> web.StreamResponse:
    """A server sending two tokens per chunk and no usage (token counts are estimated)."""
    await request.read()
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for text in (" a b", " c d", " e"):
        chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await resp.write(b"data: " + orjson.dumps(done) + b"\n\ndata: [DONE]\n\n")
    return resp


async def test_token_counts_without_usage_are_chunk_counts_flagged(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _packed_no_usage)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:

        class _S:
            url = f"http://127.0.0.1:{port}/v1"

        prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}])
        cfg = config_for(_S, tmp_path)  # type: ignore[arg-type]
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
    finally:
        await runner.cleanup()
    m = read_results(out.run_dir)[0]["llmbatch"]["metrics"]
    assert m["output_tokens"] == 3 and m["output_tokens_estimated"] is True
    assert m["input_tokens"] is None
    s = out.result.metrics.summary()
    assert s["tokens"]["requests_with_estimated_output_tokens"] == 1


def test_histogram_add_many_counts_like_add_one_by_one() -> None:
    import random

    rng = random.Random(7)
    values = [0.0, 1e-9, 1e-6, 2e-6, 0.02, 0.02, 1.0, 1.01, 1.0201]
    values += [rng.lognormvariate(-4, 2) for _ in range(3000)]
    values += [math.exp(b * math.log(1.01)) for b in range(-1300, 400, 37)]  # bucket edges
    one = Histogram()
    for v in values:
        one.add(v)
    many = Histogram()
    many.add_many(values[:1000])
    many.add_many(values[1000:])
    assert many.bucket_counts() == one.bucket_counts()
    assert (many.count, many.min, many.max) == (one.count, one.min, one.max)
    assert many.total == pytest.approx(one.total)
    assert many.summary() == one.summary()


def test_histogram_add_many_in_many_small_batches_counts_like_add() -> None:
    # 20,000 gaps in 64-value requests (past the batch size), a summary read midway.
    import random

    rng = random.Random(11)
    values = [rng.choice((0.0, rng.gauss(0.02, 0.004))) for _ in range(20_000)]
    values = [abs(v) for v in values]
    one, many = Histogram(), Histogram()
    for i in range(0, len(values), 64):
        part = values[i : i + 64]
        for v in part:
            one.add(v)
        many.add_many(part)
        if i == 64 * 100:
            assert many.summary() == one.summary()
    assert many.bucket_counts() == one.bucket_counts()
    assert (many.count, many.min, many.max) == (one.count, one.min, one.max)
    assert many.summary() == one.summary()
