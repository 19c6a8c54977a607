"""``--engine ray``'s one budget at the provider's limit, on virtual time and without Ray.

Two (or three) workers' engines pace through one lease governor (tests/leasesim.py: built
as the Ray actors build them; each call to the governor takes 5-20 ms of virtual time, one
at a time) against the mock's own rate-limit models, as tests/test_pacing_sim.py does for
one process. The server's log must show the cluster within 5% of the rate it allows,
fewer than 1% of requests answered 429, and every answer exact.

The sliding window runs 3,000 prompts (one process's test runs 1,500): the measured rate
ends at the last admission, whose phase within its window moves the figure by up to 2%
at 30 windows (one process scores 0.947-0.971 at 1,000-3,000 prompts), and a cluster's
round trip to the governor moves that phase.
"""

from __future__ import annotations

import pytest

from .leasesim import simulate_cluster
from .test_pacing_sim import MODELS

pytestmark = pytest.mark.timeout(60)

# name: (model of test_pacing_sim, prompts (None: the model's), workers, call latency)
CASES = {
    "sliding-1s": ("sliding-1s", 3000, 2, 0.01),
    "sliding-1s-three-workers-20ms": ("sliding-1s", 3000, 3, 0.02),
    "openai-rpm": ("openai-rpm", None, 2, 0.01),
    "openai-rpm-three-workers-20ms": ("openai-rpm", None, 3, 0.02),
    "openai-tpm": ("openai-tpm", None, 2, 0.005),
    "anthropic": ("anthropic", None, 2, 0.01),
    "fixed-retry-after-only": ("fixed-retry-after-only", None, 2, 0.01),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cluster_reaches_the_allowed_rate(case: str) -> None:
    name, prompts, workers, latency_s = CASES[case]
    server, default_prompts, options, binding = MODELS[name]
    result = simulate_cluster(
        server,
        prompts=prompts or default_prompts,
        workers=workers,
        call_latency_s=latency_s,
        concurrency="auto",
        **options,
    )
    ratio = result.ratio(binding)
    print(
        f"{case}: {ratio:.3f} of the allowed {binding} rate, 429s {result.rate_limited} of "
        f"{result.requests}, {result.summary['calls']} calls, concurrency "
        f"{result.concurrency_limit}, {result.duration_s:.0f} s virtual"
    )
    assert result.exact, "every prompt answered, byte for byte"
    assert 0.95 <= ratio <= 1.001, ratio
    assert result.share_429 < 0.01, (result.rate_limited, result.requests)
    if name != "fixed-retry-after-only":  # (its windows are learned per worker, no grants)
        per_worker = result.summary["lease"]["granted_per_worker"]
        assert sorted(per_worker) == [f"w{i}" for i in range(workers)]


def test_fixed_concurrency_sends_no_burst_at_the_start() -> None:
    # 32 in flight per worker, 50 per sliding second: each worker's first answer states the
    # limit; from then on it waits for grants, and the governor counts the one request each
    # sent before it knew (the server did).
    server, _, options, _ = MODELS["sliding-1s"]
    for latency_s in (0.005, 0.05):
        result = simulate_cluster(
            server, prompts=300, concurrency=32, call_latency_s=latency_s, **options
        )
        assert result.exact and result.rate_limited == 0, (latency_s, result.rate_limited)
        assert result.ratio() >= 0.9, (latency_s, result.ratio())
