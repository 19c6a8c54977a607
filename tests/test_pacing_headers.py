"""Rate-limit headers per provider family, read into pace: deterministic clocks, no sleeps.

What is asserted is the pace a caller gets (the waits ``reserve`` hands out), for the
header shapes each provider documents (RESEARCH.md section 8).
"""

from __future__ import annotations

import pytest

from llmbatch.config.model import RATE_HEADER_FAMILIES
from llmbatch.pacing import FAMILIES, RateGovernor, family_for, parse_duration_s, parse_reset_s
from llmbatch.pacing.learned import ARRIVAL_JITTER_S as J  # what waits is planned this late

pytestmark = pytest.mark.timeout(5)

WALL_NOW = 1_721_239_740.0  # 2024-07-17T18:09:00Z


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def gov_for(
    clock: FakeClock, family: str, *, rpm: float | None = None, header_window_s: float | None = None
) -> RateGovernor:
    return RateGovernor(
        rpm=rpm,
        input_tpm=None,
        output_tpm=None,
        family=family,
        header_window_s=header_window_s,
        clock=clock,
        wall_clock=lambda: WALL_NOW + (clock.now - 1000.0),
    )


def waits(gov: RateGovernor, n: int, est_in: int = 0, est_out: int = 0) -> list[float]:
    return [gov.reserve(est_in, est_out) for _ in range(n)]


def openai(limit: str, remaining: str, reset: str, kind: str = "requests") -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": limit,
        f"x-ratelimit-remaining-{kind}": remaining,
        f"x-ratelimit-reset-{kind}": reset,
    }


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1m30.5s", 90.5),
        ("2m59.56s", 179.56),
        ("1h2m3s", 3723.0),
        ("0s", 0.0),
        ("1.5\u00b5s", 1.5e-6),
        ("7", 7.0),
        (" 3s ", 3.0),
    ],
)
def test_parse_duration_forms(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "s", "abc", "1x", "-1s", "1m-3s", "1 s", "1.2.3s", "nan", "inf", "1e3s", "ms"]
)
def test_parse_duration_malformed(text: str) -> None:
    assert parse_duration_s(text) is None


def test_parse_reset_rfc3339_and_unix_times() -> None:
    assert parse_reset_s("2024-07-17T18:09:30Z", WALL_NOW) == pytest.approx(30)
    assert parse_reset_s("2024-07-17t18:09:30.5z", WALL_NOW) == pytest.approx(30.5)
    assert parse_reset_s("2024-07-17T20:09:30+02:00", WALL_NOW) == pytest.approx(30)
    assert parse_reset_s("2024-07-17T18:08:00Z", WALL_NOW) == 0.0  # in the past
    assert parse_reset_s("2024-13-17T18:09:30Z", WALL_NOW) is None
    assert parse_reset_s("tomorrow", WALL_NOW) is None
    assert parse_reset_s(str(int(WALL_NOW) + 5), WALL_NOW) == pytest.approx(5)  # Unix s
    assert parse_reset_s(str(int(WALL_NOW * 1000) + 2500), WALL_NOW) == pytest.approx(2.5)


def test_config_names_every_family() -> None:
    assert set(RATE_HEADER_FAMILIES) == set(FAMILIES)
    assert family_for("", "openai", "openai").name == "openai"
    assert family_for("", "my-claude", "anthropic").name == "anthropic"
    assert family_for("", "vllm", "openai").name == "generic"
    assert family_for("azure", "vllm", "openai").name == "azure"


# --------------------------------------------------------------------------- OpenAI


def test_openai_reset_is_continuous_refill_not_a_minute(clock: FakeClock) -> None:
    # 50 per second: a request's worth comes back in 20 ms ("until the initial state").
    gov = gov_for(clock, "openai")
    gov.observe_headers(openai("50", "49", "20ms"))
    assert waits(gov, 49) == [0.0] * 49
    assert waits(gov, 2) == pytest.approx([0.02 + J, 0.04 + J])  # 50/s, not 50/min


def test_openai_real_token_pair(clock: FakeClock) -> None:
    # A real pair: 2,000,000 tokens, 1,999,796 left, back to full in 6 ms.
    gov = gov_for(clock, "openai")
    gov.observe_headers(openai("2000000", "1999796", "6ms", kind="tokens"))
    assert gov.reserve(1_000_000, 900_000) == 0.0
    rate = 204 / 0.006
    assert gov.reserve(99_796, 1000) == pytest.approx(1000 / rate + J)


def test_remaining_never_raises_the_balance(clock: FakeClock) -> None:
    gov = gov_for(clock, "openai")
    gov.observe_headers(openai("100", "10", "9s"))  # 10 per second back
    assert waits(gov, 10) == [0.0] * 10
    gov.observe_headers(openai("100", "90", "1s"))  # predates the 10 just reserved
    assert gov.reserve(0, 0) == pytest.approx(0.1 + J)


def test_headers_are_case_insensitive(clock: FakeClock) -> None:
    gov = gov_for(clock, "openai")
    gov.observe_headers(
        {"X-RateLimit-Limit-Requests": "120", "X-RATELIMIT-REMAINING-REQUESTS": "1"}
    )
    assert waits(gov, 1) == [0.0]
    assert gov.reserve(0, 0) > 0


@pytest.mark.parametrize(
    "headers",
    [
        openai("abc", "-", "soon"),
        openai("-5", "1e400", "1m-3s"),
        openai("nan", "inf", ""),
        {"anthropic-ratelimit-requests-limit": "x", "anthropic-ratelimit-requests-reset": "2024"},
        {"x-ratelimit-reset-requests": "5s"},  # a reset without limit or remaining
    ],
)
def test_malformed_headers_are_ignored(clock: FakeClock, headers: dict[str, str]) -> None:
    gov = gov_for(clock, "generic")
    gov.observe_headers(headers)
    assert gov.snapshot()["limits"] == {}
    assert gov.reserve(10, 10) == 0.0


# --------------------------------------------------------------------------- windows


def hold(window_s: float) -> float:
    """How long a send holds its share when no answer has shown it: a window and a bit."""
    return window_s * 1.03 + 0.02


def shown_hold(age_s: float, reset_s: float, window_s: float) -> float:
    """The hold an answer showed (sent age_s ago, reset_s to go), plus the jitter margin."""
    return age_s + reset_s + 0.01 + 0.01 * window_s


def test_generic_sliding_second_is_paced_per_second_not_per_minute(clock: FakeClock) -> None:
    # The server: 50 per sliding second, limit 50, remaining 49, reset 1s.
    gov = gov_for(clock, "generic")
    gov.observe_headers(openai("50", "49", "1s"))
    assert waits(gov, 49) == [0.0] * 49
    assert gov.reserve(0, 0) == pytest.approx(1.0)  # the probe's share is back at reset
    # The burst's last answer (sent 50 ms ago) says the window is full: our 49 sends free
    # a window after each (plus the 50 ms it took them to arrive), the 50th a window
    # after its own send.
    gov.observe_headers(openai("50", "0", "1s"), age_s=0.05)
    h = shown_hold(0.05, 1.0, 1.0)
    assert waits(gov, 50) == pytest.approx([h] * 49 + [1.0 + h])


def test_generic_use_by_others_is_free_by_the_reset_not_before(clock: FakeClock) -> None:
    gov = gov_for(clock, "generic")
    gov.observe_headers(openai("10", "0", "3s"))  # in use by others, all free in 3 s
    assert waits(gov, 10) == pytest.approx([3.0] * 10)
    clock.advance(3.0)
    # Our 10 sends hold their share a window each (the window: the longest reset seen).
    assert gov.reserve(0, 0) == pytest.approx(hold(3.0))


def test_groq_requests_count_per_day_tokens_per_minute(clock: FakeClock) -> None:
    gov = gov_for(clock, "groq")
    gov.observe_headers(
        {**openai("14400", "14000", "2m59.56s"), **openai("6000", "1000", "50s", "tokens")}
    )
    keys = set(gov.snapshot()["limits"])
    assert keys == {"server:requests/86400s", "server:tokens/60s"}
    # 14,000 requests left today: not a per-minute pace of 14,400 / 60 s.
    assert waits(gov, 100) == [0.0] * 100
    assert gov.reserve(900, 200) == pytest.approx(50.0)  # tokens: 1000 left, back at reset


def test_together_displays_per_minute_enforces_per_second(clock: FakeClock) -> None:
    gov = gov_for(clock, "together")

    def h(remaining: str) -> dict[str, str]:
        return {"x-ratelimit-limit": "600", "x-ratelimit-remaining": remaining}

    gov.observe_headers({**h("600"), "x-ratelimit-reset": "1"})
    assert waits(gov, 10) == [0.0] * 10  # 600 per minute = 10 per second
    gov.observe_headers({**h("0"), "x-ratelimit-reset": "1"}, age_s=0.05)  # our 10 in use
    h = shown_hold(0.05, 1.0, 1.0)
    assert waits(gov, 11) == pytest.approx([h] * 10 + [2 * h])


@pytest.mark.parametrize(("window_s", "expected"), [(None, 10.0), (1.0, 1.0)])
def test_azure_remaining_only_over_its_window(
    clock: FakeClock, window_s: float | None, expected: float
) -> None:
    # A 300 RPM deployment enforced over 10 s windows reports 50 remaining.
    gov = gov_for(clock, "azure", header_window_s=window_s)
    gov.observe_headers({"x-ratelimit-remaining-requests": "50"})
    assert waits(gov, 50) == [0.0] * 50
    assert gov.reserve(0, 0) == pytest.approx(expected)  # no reset: free a window from now


def test_cerebras_window_in_the_header_name(clock: FakeClock) -> None:
    gov = gov_for(clock, "cerebras")
    gov.observe_headers(
        {
            "x-ratelimit-limit-requests-day": "14400",
            "x-ratelimit-remaining-requests-day": "3",
            "x-ratelimit-reset-requests-day": "3600",
            "x-ratelimit-limit-tokens-minute": "60000",
            "x-ratelimit-remaining-tokens-minute": "59000",
            "x-ratelimit-reset-tokens-minute": "30",
        }
    )
    assert set(gov.snapshot()["limits"]) == {"server:requests/86400s", "server:tokens/60s"}
    assert waits(gov, 3) == [0.0] * 3
    assert gov.reserve(0, 0) == pytest.approx(3600.0)


def test_anthropic_rfc3339_resets_and_split_tokens(clock: FakeClock) -> None:
    gov = gov_for(clock, "anthropic")

    def h(kind: str, limit: str, remaining: str, reset: str) -> dict[str, str]:
        p = f"anthropic-ratelimit-{kind}"
        return {f"{p}-limit": limit, f"{p}-remaining": remaining, f"{p}-reset": reset}

    gov.observe_headers(
        {
            **h("requests", "50", "3", "2024-07-17T18:09:47Z"),  # 47 back within 47 s
            **h("input-tokens", "40000", "39000", "2024-07-17T18:09:01Z"),
            **h("output-tokens", "8000", "100", "2024-07-17T18:09:10Z"),
            # The most restrictive of the two above: not a limit of its own here.
            **h("tokens", "8000", "100", "2024-07-17T18:09:10Z"),
        }
    )
    keys = set(gov.snapshot()["limits"])
    assert keys == {"server:requests/60s", "server:input_tokens/60s", "server:output_tokens/60s"}
    assert waits(gov, 3) == [0.0] * 3
    assert gov.reserve(0, 0) == pytest.approx(1.0 + J)  # 1 request per second comes back
    # 100 output tokens left, 790 per second coming back: 890 more waits 1 s.
    assert gov.reserve(0, 890) == pytest.approx(max(2.0, 890 / 790) + J)


# --------------------------------------------------------------------------- 429s, expiry


def test_limit_from_a_429_is_a_pause_until_its_reset_not_a_rate(clock: FakeClock) -> None:
    # No headers on 200s; a 429 claims limit 60, remaining 0, reset 1s, Retry-After 1.
    gov = gov_for(clock, "generic")
    gov.observe_headers(openai("60", "0", "1s"))
    gov.on_rate_limited(1.0)
    assert waits(gov, 20) == pytest.approx([1.0] * 20)
    clock.advance(1.0)
    assert waits(gov, 40) == [0.0] * 40  # whole again at the reset
    clock.advance(1.0)
    # A window on, nothing restated the limit: it is gone, not 60 per second for good.
    assert waits(gov, 1000) == [0.0] * 1000
    assert gov.snapshot()["limits"] == {}


def test_openrouter_headers_on_429_with_unix_ms_reset(clock: FakeClock) -> None:
    gov = gov_for(clock, "openrouter")
    reset_ms = str(int((WALL_NOW + 5) * 1000))
    gov.observe_headers(
        {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset_ms}
    )
    assert gov.reserve(0, 0) == pytest.approx(5.0)
    clock.advance(5.0)
    assert waits(gov, 19) == [0.0] * 19
    clock.advance(60.0)  # OpenRouter counts per minute
    assert waits(gov, 100) == [0.0] * 100  # expired: nothing confirmed it


def test_a_limit_responses_stop_confirming_expires(clock: FakeClock) -> None:
    gov = gov_for(clock, "openai")
    gov.observe_headers(openai("600", "0", "60s"))  # empty, full again in a minute
    assert gov.reserve(0, 0) == pytest.approx(0.1 + J)
    clock.advance(121)  # past the reset, and a window (the longest reset seen) more
    assert waits(gov, 1000) == [0.0] * 1000


def test_confirmed_limit_keeps_gating(clock: FakeClock) -> None:
    gov = gov_for(clock, "generic")
    for _ in range(5):
        gov.observe_headers(openai("2", "0", "1s"))
        assert max(waits(gov, 3)) >= 1.0  # two per window: the third waits a window
        clock.advance(2.0)
    assert list(gov.snapshot()["limits"]) == ["server:requests"]


def test_configured_cap_stays_hard_and_reports_may_lower_the_pace(clock: FakeClock) -> None:
    gov = gov_for(clock, "generic", rpm=600)  # our cap: 10 per second, burst of 10
    gov.observe_headers(openai("6000", "6000", "0s"))  # the server would allow more
    assert waits(gov, 12) == pytest.approx([0.0] * 10 + [0.1, 0.2])
    gov.observe_headers(openai("100", "0", "5s"))  # ...and now says it is empty for 5 s
    assert gov.reserve(0, 0) == pytest.approx(5.0)
