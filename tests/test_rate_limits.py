"""Rate limits end to end: the mock enforces RPM/TPM like a provider; llmbatch paces.

Time is scaled: the limits' window is 3 s instead of 60 s (a factor of 20), on both
sides, so "600 requests per minute" runs at 200 requests per second.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from llmbatch.config import RunConfig
from llmbatch.mockserver import MockConfig, start_mock_server
from llmbatch.runner import execute_run

from .conftest import config_for, read_results, write_jsonl
from .test_run import check_complete

WINDOW_S = 3.0  # one scaled "minute"


def scaled(cfg: RunConfig) -> RunConfig:
    limits = dataclasses.replace(cfg.provider.limits, window_s=WINDOW_S)
    return dataclasses.replace(cfg, provider=dataclasses.replace(cfg.provider, limits=limits))


@pytest.mark.timeout(60)
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
        t0 = time.monotonic()
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        elapsed = time.monotonic() - t0
        ideal = n / (600 / WINDOW_S)
        assert out.result.metrics.succeeded == n
        assert elapsed <= ideal * 1.15, f"{elapsed:.2f}s vs ideal {ideal:.2f}s"
        assert server.stats.rate_limited < 0.02 * n, server.stats.rate_limited
        check_complete(out.run_dir, prompts, tokens=4)
        assert out.result.metrics.summary()["concurrency_limit"] >= 1
    finally:
        await server.close()


@pytest.mark.timeout(60)
async def test_output_token_rate_stays_under_tpm(tmp_path: Path) -> None:
    tpm = 6000  # per scaled minute: 2,000 tokens per second
    server = await start_mock_server(
        MockConfig(tokens=20, ttft_s=0.0, itl_s=0.0, tpm=tpm, limit_window_s=WINDOW_S)
    )
    try:
        n = 300
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}", "max_tokens": 20} for i in range(n)]
        )
        cfg = scaled(config_for(server, tmp_path, concurrency=16))
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert out.result.metrics.succeeded == n
        assert server.stats.rate_limited < 0.05 * n, server.stats.rate_limited
        # Every scaled 10-second window (0.5 s here) stays under the limit (+ the burst).
        window = 10.0 / 60.0 * WINDOW_S
        allowed = tpm / WINDOW_S * window + tpm / 60.0
        log = server.stats.admitted
        for i, (t_start, _) in enumerate(log):
            in_window = sum(tok for t, tok in log[i:] if t - t_start < window)
            assert in_window <= allowed, (in_window, allowed)
        assert len(read_results(out.run_dir)) == n
    finally:
        await server.close()
