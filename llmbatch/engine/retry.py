"""The retry policy: the only module that imports tenacity.

Decisions are made on exception *types* (errors.py), never on message strings:

- transient (retried): TransportError, RateLimited, ServerError, ProviderError
  (overloaded, truncated or malformed streams, error payloads);
- fatal for the request: BadRequest (400, 404, 413, 422, ...), RejectedInStream (a
  4xx-class error inside the stream), UnexpectedContentType (a 2xx HTML page),
  Redirected (a 3xx: never followed), AnswerTooLarge (an answer past a size bound),
  UnexpectedError (anything unmapped);
- fatal for the run: AuthError (401/403), QuotaExhausted (429 insufficient_quota),
  CertificateError (the server's TLS certificate is not trusted: no retry can help).

Waits are exponential with full jitter, ``uniform(0, min(max, base * 2**n))``, and
never shorter than the server's ``Retry-After`` / ``retry-after-ms``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

from llmbatch.clock import now
from llmbatch.config.model import RetryPolicy
from llmbatch.errors import (
    AnswerTooLarge,
    AuthError,
    BadRequest,
    CertificateError,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Redirected,
    RejectedInStream,
    ServerError,
    StatusError,
    TransportError,
    UnexpectedContentType,
)

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["Verdict", "classify", "run_with_retries"]

T = TypeVar("T")


class Verdict(Enum):
    """What to do after an attempt failed."""

    RETRY = "retry"
    FAIL_REQUEST = "fail_request"
    ABORT_RUN = "abort_run"


def classify(exc: BaseException) -> Verdict:
    """Transient, fatal for this request, or fatal for the whole run."""
    if isinstance(exc, (AuthError, QuotaExhausted, CertificateError)):
        return Verdict.ABORT_RUN
    if isinstance(exc, (RejectedInStream, UnexpectedContentType, AnswerTooLarge, Redirected)):
        return Verdict.FAIL_REQUEST
    if isinstance(exc, (TransportError, RateLimited, ServerError, ProviderError)):
        return Verdict.RETRY
    if isinstance(exc, BadRequest):
        return Verdict.FAIL_REQUEST
    return Verdict.FAIL_REQUEST


# One generator for all requests: seeding one per request cost ~5% of a run's CPU.
_RNG = random.Random()


class _JitteredBackoff:
    """Full-jitter exponential backoff with the server's Retry-After as a floor."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or _RNG

    def __call__(self, state: RetryCallState) -> float:
        p = self.policy
        ceiling = min(p.backoff_max_s, p.backoff_base_s * 2 ** (state.attempt_number - 1))
        wait = self.rng.uniform(0.0, ceiling)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, StatusError) and exc.retry_after_s is not None:
            wait = max(wait, exc.retry_after_s)
        return wait


async def run_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[BaseException, float], None] | None = None,
    may_retry: Callable[[BaseException], bool] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Call ``attempt(n)`` for n = 1, 2, ... until it succeeds or may not be retried.

    ``on_retry(exc, wait_s)`` is called before each wait. The last exception is
    re-raised as is once attempts or total time run out, or when it is not transient
    (or ``may_retry(exc)`` says no: a stream whose text already reached its caller).
    The first attempt runs without tenacity: most requests succeed at once, and
    building the retry machinery only on failure keeps the common path cheap.
    """

    def retryable(exc: BaseException) -> bool:
        return classify(exc) is Verdict.RETRY and (may_retry is None or may_retry(exc))

    started = now()
    try:
        return await attempt(1)
    except Exception as exc:
        if policy.max_attempts <= 1 or not retryable(exc):
            raise
        first_failure: Exception = exc
    # Imported on the first failure only: most runs never retry, and start-up counts.
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_before_delay

    counter = 0

    async def once() -> T:
        nonlocal counter
        counter += 1
        if counter == 1:
            raise first_failure  # replayed so tenacity waits and counts it
        return await attempt(counter)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc, state.next_action.sleep)

    remaining_s = max(0.0, policy.max_total_s - (now() - started))
    retrying = AsyncRetrying(
        # stop_before_delay: a wait (even a long Retry-After) never runs past the budget.
        stop=stop_after_attempt(policy.max_attempts) | stop_before_delay(remaining_s),
        wait=_JitteredBackoff(policy, rng),
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(once)
