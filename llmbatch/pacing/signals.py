"""One owner per signal: which controller a failed attempt teaches.

Two controllers pace a run: the rate pacer (how fast requests may start) and, with
``--concurrency auto``, the concurrency controller (how many may be in flight). If both
answered the same signal, a 429 the pacer already handles would also cut concurrency,
and a run held at a rate limit would end up unable to carry that rate (50 requests per
second at 0.3 s each need 15 in flight). So each signal has one owner:

- A 429 that carries rate-limit information (headers the pacer's family reads) belongs
  to the rate pacer alone: it pauses for the Retry-After and learns the limit.
- The concurrency controller backs off only on what says the server itself is
  overloaded: a 429 *without* rate information (a concurrency cap, a busy server), 503
  and 529 and an ``overloaded`` error in the stream (strong: :data:`OVERLOADED`), other
  5xx, 408 and timeouts (latency growing past what the server can take: :data:`STRAINED`).
  Its other signal, latency growth, comes from successes (``on_success``).
- Everything else (a dropped connection, a malformed stream, a 4xx) teaches neither.

A 429 without rate information still pauses the pacer for its Retry-After: that is an
instruction for the next sends, not a lesson about the rate.
"""

from __future__ import annotations

from llmbatch.errors import (
    DeadlineExceeded,
    ProviderOverloaded,
    RateLimited,
    ReadTimeout,
    RequestError,
    ServerError,
    StatusError,
)

__all__ = ["OVERLOADED", "STRAINED", "overload_signal"]

OVERLOADED = "overloaded"
"""The server refused for load: decrease concurrency multiplicatively (x0.7)."""
STRAINED = "strained"
"""The server failed or took too long: decrease concurrency mildly (x0.9)."""

# 529 is Anthropic's "overloaded"; 503 is everyone's "try later".
_OVERLOAD_STATUSES = frozenset({503, 529})


def overload_signal(exc: RequestError, *, rate_info: bool) -> str | None:
    """What ``exc`` tells the concurrency controller: OVERLOADED, STRAINED or None.

    ``rate_info``: the response carried rate-limit information the pacer read (then a
    429 is the pacer's alone).
    """
    if isinstance(exc, RateLimited):
        return None if rate_info else OVERLOADED
    if isinstance(exc, ProviderOverloaded):
        return OVERLOADED
    if isinstance(exc, StatusError) and exc.status in _OVERLOAD_STATUSES:
        return OVERLOADED
    if isinstance(exc, ServerError) and (exc.status >= 500 or exc.status == 408):
        return STRAINED
    if isinstance(exc, (ReadTimeout, DeadlineExceeded)):
        return STRAINED
    return None
