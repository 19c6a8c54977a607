"""At the provider's limit, measured by the server: each rate-limit model on virtual time.

The engine (admission ramp, governor, ``--concurrency auto``, retries) runs against the
mock's own rate-limit models (tests/pacesim.py): minutes of a per-minute limit pass in
about a second of CPU. For each model the server's log must show the run within 5% of
the rate it allows (achieved: what it admitted beyond one whole limit, over the time from
its first window to its last admission), fewer than 1% of requests answered 429, and
every answer exact. Answers take 0.1 s to the first token and ~0.3 s in all, so a run
needs well over a handful of requests in flight to keep up.
"""

from __future__ import annotations

from typing import Any

import pytest

from llmbatch.mockserver import MockConfig

from .pacesim import SimResult, simulate

pytestmark = pytest.mark.timeout(60)

LATENCY = {"tokens": 30, "ttft_s": 0.1, "itl_s": 0.007}
VARYING = {"tokens": 20, "tokens_spread": 200, "ttft_s": 0.1, "itl_s": 0.007}

# name: (server, prompts, run options, the limit that binds)
MODELS: dict[str, tuple[MockConfig, int, dict[str, Any], str]] = {
    # 50 per sliding second, OpenAI's headers, a server of unknown kind (generic reading).
    "sliding-1s": (
        MockConfig(**LATENCY, rpm=50, limit_window_s=1, limit_mode="sliding"),
        1500,
        {},
        "requests",
    ),
    # The same server read as OpenAI (refill): its reports refute that reading.
    "sliding-1s-read-as-openai": (
        MockConfig(**LATENCY, rpm=50, limit_window_s=1, limit_mode="sliding"),
        1500,
        {"family": "openai"},
        "requests",
    ),
    # OpenAI per minute: continuous refill, resets such as "59.9s" and "6m0s".
    "openai-rpm": (
        MockConfig(**LATENCY, rpm=600, limit_window_s=60, limit_mode="refill"),
        1800,
        {"family": "openai"},
        "requests",
    ),
    "openai-tpm": (
        MockConfig(**LATENCY, tpm=20_000, limit_window_s=60, limit_mode="refill"),
        2000,
        {"family": "openai"},
        "tokens",
    ),
    # Anthropic: requests, input and output tokens per minute, RFC 3339 resets.
    "anthropic": (
        MockConfig(
            **{**VARYING, "tokens_spread": 100},
            rpm=300,
            input_tpm=3000,
            output_tpm=20_000,
            limit_window_s=60,
        ),
        1500,
        {"family": "anthropic", "style": "anthropic"},
        "output_tokens",
    ),
    # A fixed minute that says nothing but Retry-After on its 429s.
    "fixed-retry-after-only": (
        MockConfig(
            **LATENCY, rpm=600, limit_window_s=60, limit_mode="fixed", limit_headers="never"
        ),
        2400,
        {},
        "requests",
    ),
    # Tokens per minute, output charged when the answer ends (20 to 220 tokens).
    "tpm-output-at-end": (
        MockConfig(**VARYING, tpm=60_000, limit_window_s=60, output_counted="end"),
        2000,
        {"family": "openai"},
        "tokens",
    ),
}


def run(name: str, concurrency: Any = "auto") -> SimResult:
    server, prompts, options, _ = MODELS[name]
    return simulate(server, prompts=prompts, concurrency=concurrency, **options)


@pytest.mark.parametrize("name", list(MODELS))
def test_run_reaches_the_allowed_rate(name: str) -> None:
    result = run(name)
    binding = MODELS[name][3]
    ratio = result.ratio(binding)
    print(
        f"{name}: {ratio:.3f} of the allowed {binding} rate, 429s {result.rate_limited} "
        f"of {result.requests}, {result.duration_s:.0f} s virtual"
    )
    assert result.exact, "every prompt answered, byte for byte"
    assert 0.95 <= ratio <= 1.001, ratio
    assert result.share_429 < 0.01, (result.rate_limited, result.requests)


def test_fixed_concurrency_too_reaches_the_rate() -> None:
    # 64 in flight, 50 per sliding second: the first answer's headers end the ramp.
    server, _, options, _ = MODELS["sliding-1s"]
    result = simulate(server, prompts=300, concurrency=64, **options)
    assert result.exact and result.rate_limited == 0
    assert result.ratio() >= 0.95, result.ratio()
