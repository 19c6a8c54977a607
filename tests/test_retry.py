"""The retry policy: decisions by exception type, backoff bounds, Retry-After floor."""

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from llmbatch.config.model import RetryPolicy
from llmbatch.engine.retry import Verdict, classify, run_with_retries
from llmbatch.errors import (
    AuthError,
    BadRequest,
    ConnectError,
    MalformedResponse,
    ProviderOverloaded,
    QuotaExhausted,
    RateLimited,
    ReadTimeout,
    ServerError,
    StreamInterrupted,
    TruncatedStream,
    http_status_error,
)

FAST = RetryPolicy(max_attempts=4, max_total_s=10.0, backoff_base_s=0.001, backoff_max_s=0.004)


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (ConnectError("x"), Verdict.RETRY),
        (ReadTimeout("x"), Verdict.RETRY),
        (StreamInterrupted("x"), Verdict.RETRY),
        (TruncatedStream("x"), Verdict.RETRY),
        (MalformedResponse("x"), Verdict.RETRY),
        (ProviderOverloaded("x"), Verdict.RETRY),
        (RateLimited("x", status=429), Verdict.RETRY),
        (ServerError("x", status=503), Verdict.RETRY),
        (BadRequest("x", status=400), Verdict.FAIL_REQUEST),
        (AuthError("x", status=401), Verdict.ABORT_RUN),
        (QuotaExhausted("x", status=429), Verdict.ABORT_RUN),
    ],
)
def test_classification_by_type(exc: Exception, verdict: Verdict) -> None:
    assert classify(exc) is verdict


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (429, b'{"error": {"code": "rate_limit_exceeded"}}', RateLimited),
        (429, b'{"error": {"code": "insufficient_quota", "message": "x"}}', QuotaExhausted),
        (429, b"not json", RateLimited),
        (401, b"", AuthError),
        (403, b"", AuthError),
        (408, b"", ServerError),
        (409, b"", ServerError),
        (500, b"", ServerError),
        (529, b"", ServerError),
        (400, b"", BadRequest),
        (404, b"", BadRequest),
        (413, b"", BadRequest),
        (422, b"", BadRequest),
    ],
)
def test_status_mapping(status: int, body: bytes, cls: type) -> None:
    assert type(http_status_error(status, {}, body)) is cls


def test_retry_after_headers() -> None:
    assert http_status_error(429, {"retry-after": "7"}, b"").retry_after_s == 7.0
    assert http_status_error(429, {"retry-after-ms": "250"}, b"").retry_after_s == 0.25
    # Not a whole HTTP-date, or not a date at all: unknown.
    assert http_status_error(429, {"retry-after": "Wed, 21 Oct 2015"}, b"").retry_after_s is None
    assert http_status_error(429, {"retry-after": "soon"}, b"").retry_after_s is None
    # An HTTP-date (RFC 9110 10.2.3): the seconds until it; one in the past is now.
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert http_status_error(429, {"retry-after": past}, b"").retry_after_s == 0.0
    ahead = formatdate(time.time() + 30, usegmt=True)
    secs = http_status_error(503, {"retry-after": ahead}, b"").retry_after_s
    assert secs is not None and 28 <= secs <= 30


async def test_transient_errors_retried_until_success() -> None:
    calls: list[int] = []
    waits: list[float] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if n < 3:
            raise StreamInterrupted("cut")
        return "ok"

    out = await run_with_retries(attempt, FAST, on_retry=lambda e, w: waits.append(w))
    assert out == "ok" and calls == [1, 2, 3] and len(waits) == 2
    assert all(0 <= w <= FAST.backoff_max_s for w in waits)


async def test_attempt_cap_reraises_last_error() -> None:
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        raise ServerError(f"boom {n}", status=500)

    with pytest.raises(ServerError, match="boom 4"):
        await run_with_retries(attempt, FAST)
    assert calls == [1, 2, 3, 4]


@pytest.mark.parametrize("exc", [BadRequest("no", status=400), AuthError("key", status=401)])
async def test_fatal_errors_not_retried(exc: Exception) -> None:
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        raise exc

    with pytest.raises(type(exc)):
        await run_with_retries(attempt, FAST)
    assert calls == [1]


async def test_retry_after_is_a_floor() -> None:
    waits: list[float] = []

    async def attempt(n: int) -> str:
        if n == 1:
            raise RateLimited("slow down", status=429, retry_after_s=0.03)
        return "ok"

    await run_with_retries(
        attempt, FAST, on_retry=lambda e, w: waits.append(w), rng=random.Random(1)
    )
    assert waits == [pytest.approx(0.03)]  # above the 4 ms jitter ceiling


async def test_retry_after_longer_than_budget_gives_up_at_once() -> None:
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=5, max_total_s=2.0, backoff_base_s=0.001, backoff_max_s=0.01)

    async def attempt(n: int) -> str:
        calls.append(n)
        raise RateLimited("later", status=429, retry_after_s=3600)

    with pytest.raises(RateLimited):
        await run_with_retries(attempt, policy)
    assert calls == [1]  # it did not sleep an hour first


def test_errors_inside_streams() -> None:
    from llmbatch.errors import ProviderError, RejectedInStream
    from llmbatch.providers.base import stream_error

    assert isinstance(stream_error({"type": "overloaded_error"}), ProviderOverloaded)
    assert isinstance(stream_error({"code": 400, "message": "bad"}), RejectedInStream)
    assert isinstance(stream_error({"type": "invalid_request_error"}), RejectedInStream)
    assert type(stream_error({"type": "server_error"})) is ProviderError
    assert type(stream_error({"code": 429})) is ProviderError
    assert classify(stream_error({"code": 422})) is Verdict.FAIL_REQUEST
    assert classify(stream_error({"type": "api_error"})) is Verdict.RETRY
