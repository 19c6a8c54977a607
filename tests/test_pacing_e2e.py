"""Whole CLI runs against the mock's rate limits and 429s (issue 11's "done when" bullets).

Each run is ``python -m llmbatch run`` in a child process against a mock in this loop,
timed from start to exit (start-up included). Time is scaled where a provider's window
would make a test slow; the mock counts what it saw (429s, retries before Retry-After).
The strict whole-run ratios live in bench/pacing.py; the bounds here hold on a loaded
machine.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import orjson
import pytest

import llmbatch
from llmbatch import RetryPolicy
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.mockserver.answers import answer_length, prompt_key

from . import virtualtime
from .conftest import read_results, write_jsonl
from .test_run import check_complete, text_on_disk

pytestmark = pytest.mark.subprocess


async def run_cli(
    server: MockServer, prompts: Path, out: Path, *args: str, provider: str = "vllm"
) -> float:
    """Run the CLI to completion; its wall time in seconds (asserts exit code 0)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_")}
    env["OPENAI_API_KEY"] = env["ANTHROPIC_API_KEY"] = "sk-test"  # the mock ignores keys
    env["OPENROUTER_API_KEY"] = "sk-test"
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmbatch",
        "run",
        str(prompts),
        "--provider",
        provider,
        "--base-url",
        server.url,
        "--model",
        "mock-model",
        "--run-dir",
        str(out),
        "--no-progress",
        *args,
        env=env,
        cwd=out.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, output.decode(errors="replace")
    return elapsed


def prompts_file(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(n)])


# (limit mode, limit, window, provider profile): each lets 300 prompts finish in about
# 5 s at best and announces itself only in OpenAI-style headers (nothing is configured
# on our side). A server of unknown kind (vllm profile) is read as windows; the openai
# profile reads resets as OpenAI documents them: continuous refill.
WINDOWS = {
    "sliding-1s": ("sliding", 50, 1.0, "vllm"),  # 50 per sliding second: 300 in 5-6 s
    "sliding-10s-scaled": ("sliding", 110, 2.5, "vllm"),  # 10 s at 1/4 time: 0, 2.5, 5 s
    "refill-minute-scaled": ("refill", 170, 6.0, "openai"),  # a minute at 1/10: 170 + 28/s
}


@pytest.mark.timeout(90)
async def test_limit_announced_only_on_429s_is_learned_from_them(tmp_path: Path) -> None:
    # 50 per sliding second, headers only with the 429s (as OpenRouter sends them): each
    # 429 teaches the window for a while; the run is neither pinned nor hammering.
    tokens = 8
    server = await start_mock_server(
        MockConfig(
            tokens=tokens,
            ttft_s=0.01,
            itl_s=0.001,
            rpm=50,
            limit_window_s=1.0,
            limit_mode="sliding",
            limit_headers="on_429",
        )
    )
    try:
        n = 300
        prompts = prompts_file(tmp_path, n)
        elapsed = await run_cli(server, prompts, tmp_path / "run", "--concurrency", "auto")
        st = server.stats
        print(f"on_429: {elapsed:.2f}s, 429s {st.rate_limited}")
        # measured: 4-5 of 300 on a quiet machine, up to 26 with five test suites running
        assert st.rate_limited < 0.15 * n, st.rate_limited
        assert st.early_retries == 0
        assert elapsed <= 3.0 * 6.0, f"{elapsed:.2f}s"
        check_complete(tmp_path / "run", prompts, tokens=tokens)
    finally:
        await server.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("shape", list(WINDOWS))
async def test_run_keeps_to_the_pace_the_headers_announce(tmp_path: Path, shape: str) -> None:
    mode, limit, window_s, provider = WINDOWS[shape]
    tokens = 8
    server = await start_mock_server(
        MockConfig(
            tokens=tokens,
            ttft_s=0.01,
            itl_s=0.001,
            rpm=limit,
            limit_window_s=window_s,
            limit_mode=mode,
        )
    )
    try:
        n = 300
        prompts = prompts_file(tmp_path, n)
        elapsed = await run_cli(
            server, prompts, tmp_path / "run", "--concurrency", "auto", provider=provider
        )
        st = server.stats
        admitted = [t for t, _ in server.stats.admitted]
        span = admitted[-1] - admitted[0]
        print(f"{shape}: {elapsed:.2f}s, at the server {span:.2f}s, 429s {st.rate_limited}")
        # The target is 1.15x of 6 s (300 prompts at 50 per second) for the whole
        # run: bench/pacing.py holds it to that. Here, on a machine shared by many test
        # runs, the pace the server saw must be far from 60x too slow (the old reading of
        # these headers as per-minute figures: 6 minutes), and no faster than allowed.
        assert span <= 2.0 * 6.0, f"{span:.2f}s"
        assert elapsed <= 3.0 * 6.0, f"{elapsed:.2f}s"
        # The bound (under 1% of requests answered 429) is held on virtual time
        # (test_pacing_sim.py). Here a window's sends are timed by a process sharing 2 cores
        # with a whole test suite: a stall of the sender longer than the jitter it has seen
        # lets a few requests reach the server early (7 of 300 once under xdist, 0-2 idle).
        # A burst at start would be tens (the concurrency), which this still catches.
        assert st.rate_limited < 0.05 * n, st.rate_limited
        assert st.early_retries == 0
        check_complete(tmp_path / "run", prompts, tokens=tokens)
    finally:
        await server.close()


RETRY_CONFIG = """
[retry]
max_attempts = 6
backoff_base_s = 0.2
backoff_max_s = 5.0
"""


def test_occasional_429s_claiming_a_tiny_limit_do_not_pin_the_run(tmp_path: Path) -> None:
    # 400 prompts at concurrency 64, answers taking ~1 s. Transient faults in both runs;
    # in the second, 5% of prompts first get a 429 whose headers claim limit 60,
    # remaining 0, reset 1s, with Retry-After 1 (and no rate-limit headers on 200s).
    # In process on virtual time (tests/virtualtime.py): the two durations compare
    # exactly, whatever else the machine runs.
    tokens = 25
    transient = {"500": 0.02, "reset": 0.02, "disconnect": 0.02}
    n = 400
    prompts = prompts_file(tmp_path, n)
    retry = RetryPolicy(max_attempts=6, backoff_base_s=0.2, backoff_max_s=5.0)

    async def run(label: str, faults: dict[str, float]) -> float:
        server = await start_mock_server(
            MockConfig(
                tokens=tokens,
                ttft_s=0.5,
                itl_s=0.02,
                faults=faults,
                retry_after_s=1.0,
                fault_headers={
                    "x-ratelimit-limit-requests": "60",
                    "x-ratelimit-remaining-requests": "0",
                    "x-ratelimit-reset-requests": "1s",
                },
            )
        )
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with llmbatch.Client(
                "vllm", base_url=server.url, model="mock-model", concurrency=64, retry=retry
            ) as llm:
                await llm.batch(str(prompts), run_dir=tmp_path / f"run-{label}").wait()
            elapsed = loop.time() - started
            st = server.stats
            print(f"{label} 429s: {elapsed:.2f}s, faults {st.faults}")
            if label == "with":
                assert st.faults.get("429", 0) >= 0.03 * n, st.faults
            assert st.early_retries == 0  # no retry before its Retry-After
            return elapsed
        finally:
            await server.close()

    without = virtualtime.run(run("without", transient))
    with_429s = virtualtime.run(run("with", {**transient, "429": 0.05}))
    for label in ("without", "with"):
        check_complete(tmp_path / f"run-{label}", prompts, tokens=tokens)
    # Measured 9.15 s against 6.86-6.96 s (1.33x): the 429s pause sends for their
    # Retry-After, and the claimed "60 per second" is forgotten once it stops being restated.
    assert with_429s <= 1.5 * without, (without, with_429s)


# The server models of tests/test_pacing_sim.py through the CLI and real sockets, time
# scaled (a "minute" of 2-3 s): (server, prompts, provider, the limit that binds). On a
# shared machine only what the server saw is asserted: exact answers, few 429s, and the
# limit the end summary states; the achieved rates are in bench/pacing.py.
MODELS = {
    "anthropic": (
        MockConfig(
            tokens=10,
            tokens_spread=20,
            ttft_s=0.05,
            itl_s=0.005,
            rpm=300,
            input_tpm=10_000,
            output_tpm=1500,
            limit_window_s=3,
        ),
        150,
        "anthropic",
        "output_tokens",
    ),
    "fixed-retry-after-only": (
        MockConfig(
            tokens=8,
            ttft_s=0.05,
            itl_s=0.005,
            rpm=100,
            limit_window_s=2,
            limit_mode="fixed",
            limit_headers="never",
        ),
        300,
        "vllm",
        None,
    ),
    "tpm-output-at-end": (
        MockConfig(
            tokens=10,
            tokens_spread=40,
            ttft_s=0.05,
            itl_s=0.005,
            tpm=3000,
            limit_window_s=3,
            output_counted="end",
        ),
        150,
        "openai",
        "tokens",
    ),
}


def check_exact(run_dir: Path, n: int, cfg: MockConfig) -> None:
    """Every prompt has one record whose text on disk is the mock's answer, byte for byte."""
    records = {r["custom_id"]: r for r in read_results(run_dir)}
    assert len(records) == n
    for i in range(n):
        r = records[str(i)]
        assert r["error"] is None, r["error"]
        messages = [{"role": "user", "content": f"q{i}"}]
        length = answer_length(prompt_key(messages), cfg.tokens, cfg.tokens_spread)
        assert text_on_disk(run_dir, r) == expected_text(messages, length)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", list(MODELS))
async def test_server_model_through_the_cli(tmp_path: Path, name: str) -> None:
    cfg, n, provider, binding = MODELS[name]
    server = await start_mock_server(cfg)
    try:
        prompts = prompts_file(tmp_path, n)
        out = tmp_path / "run"
        await run_cli(server, prompts, out, "--concurrency", "auto", provider=provider)
        st = server.stats
        print(f"{name}: 429s {st.rate_limited} of {st.requests}")
        check_exact(out, n, cfg)
        # A short run's 429s are those of the windows where the limit is found: the first
        # for stated limits, the first three for a fixed window that says nothing (it is
        # believed on its third 429); longer runs stay under 1% (tests/test_pacing_sim.py).
        # (Until then every request in flight when a window fills draws a 429: 40 of 340
        # were seen at load average 12.)
        share = 0.25 if name == "fixed-retry-after-only" else 0.1
        assert st.rate_limited <= share * n, st.rate_limited
        assert st.early_retries == 0
        if binding is not None:  # the end summary states the limit the server stated
            stated = orjson.loads((out / "summary.json").read_bytes())["rate"][binding]
            allowed = {"tokens": cfg.tpm, "output_tokens": cfg.output_tpm}[binding]
            assert allowed is not None
            assert stated["limit_per_s"] == pytest.approx(allowed / cfg.limit_window_s, rel=0.1)
    finally:
        await server.close()
