"""Rate limits end to end: the mock enforces RPM/TPM like a provider; llmbatch paces.

Time is scaled: the limits' window is 3 s instead of 60 s (a factor of 20), on both
sides, so "600 requests per minute" runs at 200 requests per second. Both sides run on
virtual time (tests/virtualtime.py): a run's duration and its 429s are the pacing's, not
the machine's load, and come out the same on every run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from llmbatch.cli.job import execute_run
from llmbatch.cli.report import format_summary
from llmbatch.config.model import RunConfig
from llmbatch.mockserver import MockConfig, start_mock_server

from .conftest import config_for, read_results, write_jsonl
from .test_run import check_complete
from .virtualtime import loop_time

WINDOW_S = 3.0  # one scaled "minute"


def scaled(cfg: RunConfig) -> RunConfig:
    limits = dataclasses.replace(cfg.provider.limits, window_s=WINDOW_S)
    return dataclasses.replace(cfg, provider=dataclasses.replace(cfg.provider, limits=limits))


@pytest.mark.virtualtime
async def test_auto_concurrency_under_rpm_limit_learned_from_headers(tmp_path: Path) -> None:
    server = await start_mock_server(
        MockConfig(tokens=4, ttft_s=0.0, itl_s=0.0, rpm=600, limit_window_s=WINDOW_S)
    )
    try:
        n = 1000
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(n)]
        )
        # No limit is configured: llmbatch learns it from the x-ratelimit-* headers.
        cfg = scaled(config_for(server, tmp_path, concurrency="auto"))
        t0 = loop_time()
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        elapsed = loop_time() - t0
        ideal = n / (600 / WINDOW_S)
        print(f"rpm test: {elapsed:.2f}s (ideal {ideal:.2f}s), 429s {server.stats.rate_limited}")
        assert out.result.metrics.succeeded == n
        # Within the stated rate from an empty bucket (it starts whole: 3.04 s measured).
        assert elapsed <= ideal, f"{elapsed:.2f}s vs ideal {ideal:.2f}s"
        assert server.stats.rate_limited <= 0.01 * n, server.stats.rate_limited
        check_complete(out.run_dir, prompts, tokens=4)
        assert out.result.metrics.summary()["concurrency_limit"] >= 1
        # What the run used of the limit the server stated (600 per 3 s), on disk and
        # in the end summary.
        summary = orjson.loads((out.run_dir / "summary.json").read_bytes())
        rate = summary["rate"]["requests"]
        assert rate["limit_per_s"] == pytest.approx(200, rel=0.1)  # read from rounded figures
        assert rate["used_per_s"] > 0  # above 200 here: the bucket starts whole (600)
        line = f"rate used: {rate['used_per_s']:.0f} of {rate['limit_per_s']:.0f} req/s"
        assert line in format_summary(summary)
    finally:
        await server.close()


@pytest.mark.virtualtime
async def test_token_rate_learned_from_headers_stays_under_tpm(tmp_path: Path) -> None:
    tpm = 6000  # per scaled minute: 2,000 tokens per second, refilled continuously
    server = await start_mock_server(
        MockConfig(tokens=20, ttft_s=0.0, itl_s=0.0, tpm=tpm, limit_window_s=WINDOW_S)
    )
    try:
        n = 600
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}", "max_tokens": 20} for i in range(n)]
        )
        cfg = scaled(config_for(server, tmp_path, concurrency=16))
        t0 = loop_time()
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        elapsed = loop_time() - t0
        assert out.result.metrics.succeeded == n
        assert server.stats.rate_limited <= 0.01 * n, server.stats.rate_limited
        # The bucket starts full (tpm), then refills at tpm / window: the server's pace.
        total = sum(tok for _, tok in server.stats.admitted)
        ideal = (total - tpm) / (tpm / WINDOW_S)
        print(f"tpm test: {elapsed:.2f}s (ideal {ideal:.2f}s), 429s {server.stats.rate_limited}")
        # The pacer reserves each request's max_tokens and an input estimate before it is
        # sent, so it runs below the server's pace (5.38 s measured against 3.6 s ideal).
        assert elapsed <= ideal * 1.5 + 1.0, (elapsed, ideal)
        assert len(read_results(out.run_dir)) == n
    finally:
        await server.close()
