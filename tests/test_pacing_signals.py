"""One owner per signal, the admission ramp, and refill readings the server refutes.

Pure logic on deterministic clocks; two runs against the mock show what a user sees
(summary.json's concurrency limit, the requests the server counted), on virtual time
(tests/virtualtime.py): the TTFTs --concurrency auto reads are the mock's, not the load's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmbatch.cli.job import execute_run
from llmbatch.engine.gate import Ramp
from llmbatch.errors import (
    ConnectError,
    ProviderOverloaded,
    RateLimited,
    ReadTimeout,
    ServerError,
    StreamInterrupted,
)
from llmbatch.mockserver import MockConfig, start_mock_server
from llmbatch.pacing import DEFAULT_OUTPUT_ESTIMATE, OutputEstimate, RateGovernor
from llmbatch.pacing.learned import ARRIVAL_JITTER_S as J  # what waits is planned this late
from llmbatch.pacing.signals import OVERLOADED, STRAINED, overload_signal

from .conftest import config_for, write_jsonl
from .test_pacing_headers import FakeClock

pytestmark = [pytest.mark.timeout(30), pytest.mark.virtualtime]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def http(cls: type[ServerError] | type[RateLimited], status: int) -> ServerError | RateLimited:
    return cls(f"HTTP {status}", status=status)


def test_each_signal_has_one_owner() -> None:
    # A 429 the pacer learned a rate from is the pacer's alone.
    assert overload_signal(http(RateLimited, 429), rate_info=True) is None
    # Without rate information it says the server is busy: concurrency backs off.
    assert overload_signal(http(RateLimited, 429), rate_info=False) == OVERLOADED
    assert overload_signal(http(ServerError, 503), rate_info=False) == OVERLOADED
    assert overload_signal(http(ServerError, 529), rate_info=True) == OVERLOADED
    assert overload_signal(ProviderOverloaded("overloaded"), rate_info=False) == OVERLOADED
    assert overload_signal(http(ServerError, 500), rate_info=False) == STRAINED
    assert overload_signal(ReadTimeout("slow"), rate_info=False) == STRAINED
    # A dropped connection or a 409 says nothing about load.
    assert overload_signal(ConnectError("refused"), rate_info=False) is None
    assert overload_signal(StreamInterrupted("reset"), rate_info=False) is None
    assert overload_signal(http(ServerError, 409), rate_info=False) is None


def openai_headers(limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
    }


def test_refill_reading_refuted_by_reports_becomes_a_window(clock: FakeClock) -> None:
    # OpenAI's headers from a server counting a sliding second: the reset stays near 1 s
    # while the use grows, which no continuous refill does (one rate: (limit-left)/reset).
    gov = RateGovernor(rpm=None, input_tpm=None, output_tpm=None, family="openai", clock=clock)
    assert gov.observe_headers(openai_headers(50, 40, "1s"), age_s=0.0)  # 10/s, if refill
    for _ in range(40):
        assert gov.reserve(0, 0) == 0.0  # what remains goes at once
    clock.advance(0.01)
    gov.observe_headers(openai_headers(50, 0, "990ms"), age_s=0.01)  # 50/s: not one rate
    # Read as refill, the next would go 20 ms later (50 / 0.99 s); as a window, nothing
    # comes back before the reset.
    assert gov.reserve(0, 0) >= 0.98


def test_real_refill_reports_keep_their_reading(clock: FakeClock) -> None:
    # OpenAI's own: 600 per minute, each report implies 10 per second.
    gov = RateGovernor(rpm=None, input_tpm=None, output_tpm=None, family="openai", clock=clock)
    gov.observe_headers(openai_headers(600, 599, "100ms"))
    for used, reset in ((5, "500ms"), (40, "4s"), (300, "30s")):
        gov.observe_headers(openai_headers(600, 600 - used, reset))
    waits = [gov.reserve(0, 0) for _ in range(301)]
    assert waits[299] == 0.0 and waits[300] == pytest.approx(0.1 + J)  # 10 per second


async def test_ramp_doubles_per_answer_until_informed() -> None:
    ramp = Ramp(lambda: 64)
    started: list[int] = []

    async def request(i: int) -> None:
        await ramp.wait_turn()
        started.append(i)

    tasks = [asyncio.create_task(request(i)) for i in range(20)]
    await asyncio.sleep(0)
    assert started == [0]  # the first goes alone
    ramp.answered(informed=False)  # an answer without rate information: two more
    await asyncio.sleep(0)
    assert len(started) == 3
    ramp.answered(informed=False)
    ramp.answered(informed=False)
    await asyncio.sleep(0)
    assert len(started) == 7
    ramp.answered(informed=True)  # the pacer knows the rate now: the ramp is over
    await asyncio.gather(*tasks)
    assert len(started) == 20 and ramp.is_open


async def test_ramp_opens_at_the_concurrency() -> None:
    ramp = Ramp(lambda: 4)
    await ramp.wait_turn()
    ramp.answered(informed=False)  # 3 allowed
    assert not ramp.is_open
    ramp.answered(informed=False)  # 5 >= 4
    assert ramp.is_open


async def test_cancelled_waiter_passes_its_turn_on() -> None:
    ramp = Ramp(lambda: 64)
    await ramp.wait_turn()
    waiter = asyncio.create_task(ramp.wait_turn())
    other = asyncio.create_task(ramp.wait_turn())
    await asyncio.sleep(0)
    waiter.cancel()
    ramp.answered(informed=False)
    await asyncio.wait_for(other, 1.0)


CLAIMING = {
    "x-ratelimit-limit-requests": "1000",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "20ms",
}


@pytest.mark.parametrize("informed", [True, False])
async def test_429s_cut_concurrency_only_without_rate_information(
    tmp_path: Path, informed: bool
) -> None:
    # A fifth of the prompts first get a 429; with rate-limit headers the pacer owns
    # them and --concurrency auto keeps growing, without them it backs off.
    server = await start_mock_server(
        MockConfig(
            tokens=4,
            ttft_s=0.2,  # latency itself stays flat
            itl_s=0.0,
            faults={"429": 0.2},
            retry_after_s=0.02,
            fault_headers=CLAIMING if informed else {},
        )
    )
    try:
        n = 100
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(n)]
        )
        cfg = config_for(server, tmp_path, concurrency="auto")
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        summary = out.result.metrics.summary()
        assert summary["requests"]["succeeded"] == n
        assert server.stats.faults["429"] >= 0.1 * n
        print(f"informed={informed}: concurrency limit {summary['concurrency_limit']}")
        if informed:
            # 101 with the seeded jitter; 73-104 over 20 unseeded runs.
            assert summary["concurrency_limit"] >= 64, summary["concurrency_limit"]
        else:
            assert summary["concurrency_limit"] <= 10, summary["concurrency_limit"]  # 6-7
    finally:
        await server.close()


def test_output_estimate_learns_from_answers_that_ended() -> None:
    est = OutputEstimate(window=10)
    assert est.for_request(None) == DEFAULT_OUTPUT_ESTIMATE  # nothing known yet
    assert est.for_request(50) == 50  # the request's own cap
    for n in range(10, 110, 10):  # 10, 20, ..., 100
        est.observe(n)
    assert est.for_request(None) == 80  # the 70th percentile of the last ten
    assert est.for_request(30) == 30  # never above max_tokens


def test_an_under_estimate_delays_every_request_already_waiting(clock: FakeClock) -> None:
    # The server counts 1,000 tokens a minute; a request estimated at 100 used 400: the
    # requests timed on the estimate all go 300 tokens' time (18 s) later.
    gov = RateGovernor(rpm=None, input_tpm=None, output_tpm=None, family="openai", clock=clock)
    gov.observe_headers(
        {
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "900",
            "x-ratelimit-reset-tokens": "6s",
        }
    )
    gov.observe_headers(
        {
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "800",
            "x-ratelimit-reset-tokens": "12s",
        }
    )
    assert gov.paused_for_s() == 0.0
    gov.settle(0, 100, 0, 400)
    assert gov.paused_for_s() == pytest.approx(18.0)


def test_windows_learned_from_bare_429s(clock: FakeClock) -> None:
    # 5 per fixed 10 s window, nothing but Retry-After: the first 429 names a window's
    # end, the second the window's length, a third on that grid confirms it.
    gov = RateGovernor(rpm=None, input_tpm=None, output_tpm=None, clock=clock)

    def window(first_429_in_s: float) -> None:
        for _ in range(5):
            assert gov.reserve(0, 0) == 0.0  # nothing believed yet: no pacing
            gov.observe_headers({}, age_s=0.0)  # admitted
        gov.on_rate_limited(first_429_in_s, age_s=0.0)  # the sixth
        clock.advance(first_429_in_s)

    window(4.0)
    window(10.0)
    assert gov.snapshot()["limits"] == {}  # two ends: a length, not yet believed
    window(10.0)  # on the grid: believed
    waits = [gov.reserve(0, 0) for _ in range(11)]
    assert waits[:5] == [0.0] * 5
    assert waits[5:10] == [pytest.approx(10.0)] * 5
    assert waits[10] == pytest.approx(20.0)
    assert gov.snapshot()["limits"]["server:requests/retry-after"]["rate_per_s"] == 0.5


def test_429s_off_any_grid_are_never_read_as_windows(clock: FakeClock) -> None:
    # A concurrency cap: the same short Retry-After whenever it refuses.
    gov = RateGovernor(rpm=None, input_tpm=None, output_tpm=None, clock=clock)
    for gap_s in (0.0, 0.7, 1.9, 0.6):
        clock.advance(gap_s)
        for _ in range(3):
            gov.reserve(0, 0)
            gov.observe_headers({}, age_s=0.0)
        gov.on_rate_limited(0.05, age_s=0.0)
    clock.advance(1.0)
    assert [gov.reserve(0, 0) for _ in range(20)] == [0.0] * 20
    assert gov.snapshot()["limits"] == {}
