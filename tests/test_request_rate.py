"""``llmbatch run --request-rate``: open-loop arrivals (vLLM's definition) with --concurrency
as the cap, as the server sees them."""

from __future__ import annotations

from pathlib import Path

import pytest

from .cliutil import cli_runner, first_error_line, prompts, run_cli, start_mock
from .conftest import ThreadedMock, read_results

pytestmark = pytest.mark.timeout(60)


def test_a_request_rate_spreads_requests_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mocks: list[ThreadedMock]
) -> None:
    """At 40 req/s with 20 ms answers the server never holds more than a few requests at
    once, where the same run in closed loop fills the concurrency at once."""
    runner = cli_runner(tmp_path, monkeypatch)
    p = prompts(tmp_path, 60)
    open_loop = start_mock(mocks, tokens=4, ttft_s=0.02)
    res = run_cli(
        runner, str(p), "-p", "vllm", "--base-url", open_loop.url, "-o", "open",
        "-j", "32", "--request-rate", "40", "--burstiness", "2",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(read_results(tmp_path / "open")) == 60
    assert open_loop.server.stats.max_in_flight <= 10, open_loop.server.stats

    closed = start_mock(mocks, tokens=4, ttft_s=0.02)
    res = run_cli(
        runner, str(p), "-p", "vllm", "--base-url", closed.url, "-o", "closed", "-j", "32"
    )
    assert res.exit_code == 0, res.output
    assert closed.server.stats.max_in_flight >= 20, closed.server.stats


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--burstiness", "2"], "--burstiness shapes --request-rate's arrivals: give a rate too"),
        (["--request-rate", "0"], "--request-rate: request rate must be a positive number"),
        (["--request-rate", "5", "--engine", "ray"], "--request-rate runs on --engine local only"),
    ],
)
def test_bad_request_rate_options_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    runner = cli_runner(tmp_path, monkeypatch)
    res = run_cli(runner, str(prompts(tmp_path)), *args)
    assert res.exit_code == 2 and first_error_line(res.output).startswith(
        f"llmbatch: error: {message}"
    ), res.output
