"""The mock's rate limits: admission and the headers a provider would send.

Plain logic over an injectable clock (no aiohttp), so any front-end can use it and a test
can run it on virtual time. This is deliberately its own small implementation, not
llmbatch's pacing code: the mock checks that code and must not share its mistakes.

Server models (``MockConfig.limit_mode``):

- ``refill``: a bucket holding the whole limit, refilled continuously at limit / window
  (OpenAI: reset = time until full again, as a Go duration: ``6m0s``, ``1.5s``, ``20ms``);
- ``sliding``: at most ``limit`` within any window (reset = until the newest admission
  leaves it);
- ``fixed``: at most ``limit`` per window [k W, (k + 1) W) counted from the server's start
  (reset = until the window ends).

Limits: requests, tokens (input + output), input tokens and output tokens per window,
requests per day. With ``output_counted = "end"`` output tokens are charged when the
answer ends (its length unknown before): a request is admitted while the budget is not
in debt, and its output is charged after. Every limit keeps a log of what it admitted,
from which :meth:`MockRateLimits.measured` gives the rate achieved against the rate
allowed: the server's own account of how close a client came to its limit.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmbatch.mockserver.clock import loop_now
from llmbatch.mockserver.config import MockConfig

__all__ = [
    "Admission",
    "FixedCounter",
    "MockRateLimits",
    "RefillCounter",
    "SlidingCounter",
]

Clock = Callable[[], float]


class SlidingCounter:
    """At most ``limit`` units within any ``window_s``: a log of recent admissions."""

    def __init__(self, limit: float, window_s: float, clock: Clock) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._log: deque[tuple[float, float]] = deque()  # (time, units), oldest first
        self._used = 0.0

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.window_s:
            self._used -= self._log.popleft()[1]

    def wait_s(self, units: float) -> float:
        """Seconds until ``units`` fit (0.0 = now)."""
        now = self._clock()
        self._expire(now)
        excess = self._used + units - self.limit
        if excess <= 0 or not self._log:
            return 0.0
        for at, n in self._log:  # the oldest admissions leave the window first
            excess -= n
            if excess <= 0:
                return at + self.window_s - now
        return self._log[-1][0] + self.window_s - now

    def take(self, units: float) -> None:
        self._log.append((self._clock(), units))
        self._used += units

    def remaining(self) -> float:
        self._expire(self._clock())
        return max(0.0, self.limit - self._used)

    def reset_s(self) -> float:
        """Seconds until the whole limit is free again (the newest admission has left)."""
        now = self._clock()
        self._expire(now)
        return self._log[-1][0] + self.window_s - now if self._log else 0.0

    def window_start(self, t: float) -> float:
        """Where the window that admitted at ``t`` counts from (itself, for a sliding one)."""
        return t


class RefillCounter:
    """A bucket of ``limit`` units refilled continuously at ``limit / window_s`` (OpenAI)."""

    def __init__(self, limit: float, window_s: float, clock: Clock) -> None:
        self.limit = limit
        self.window_s = window_s
        self._rate_per_s = limit / window_s
        self._clock = clock
        self._level = limit
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.limit, self._level + max(0.0, now - self._at) * self._rate_per_s)
        self._at = now

    def wait_s(self, units: float) -> float:
        self._refill()
        # A request above the whole limit waits for a full bucket, then overdraws it.
        need = min(units, self.limit) - self._level
        return max(0.0, need / self._rate_per_s)

    def take(self, units: float) -> None:
        self._refill()
        self._level -= units

    def remaining(self) -> float:
        self._refill()
        return max(0.0, self._level)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again ("back to its initial state")."""
        self._refill()
        return (self.limit - self._level) / self._rate_per_s

    def window_start(self, t: float) -> float:
        return t


class FixedCounter:
    """At most ``limit`` units per window [k W, (k + 1) W), counted from its creation."""

    def __init__(self, limit: float, window_s: float, clock: Clock) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._origin = clock()
        self._index = 0
        self._used = 0.0

    def _roll(self) -> float:
        now = self._clock()
        index = math.floor((now - self._origin) / self.window_s)
        if index != self._index:
            self._index = index
            self._used = 0.0
        return now

    def _end(self) -> float:
        return self._origin + (self._index + 1) * self.window_s

    def wait_s(self, units: float) -> float:
        now = self._roll()
        if self._used + units <= self.limit or self._used == 0:
            return 0.0
        return self._end() - now

    def take(self, units: float) -> None:
        self._roll()
        self._used += units

    def remaining(self) -> float:
        self._roll()
        return max(0.0, self.limit - self._used)

    def reset_s(self) -> float:
        """Seconds until this window ends."""
        now = self._roll()
        return self._end() - now

    def window_start(self, t: float) -> float:
        return self._origin + math.floor((t - self._origin) / self.window_s) * self.window_s


Counter = SlidingCounter | RefillCounter | FixedCounter
_COUNTERS: dict[str, type[Counter]] = {
    "sliding": SlidingCounter,
    "refill": RefillCounter,
    "fixed": FixedCounter,
}


@dataclass(slots=True)
class Admission:
    """The verdict on one request: headers to send, and a wait when it is refused."""

    headers: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None  # None = admitted

    @property
    def admitted(self) -> bool:
        return self.retry_after_s is None


def _duration(seconds: float) -> str:
    """OpenAI's reset format: a Go-style duration ("1s", "6m0s", "12ms")."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(seconds, 60)
    if minutes >= 1:
        return f"{int(minutes)}m{secs:.3g}s"
    return f"{secs:.3f}".rstrip("0").rstrip(".") + "s"


# Header labels per limit: (OpenAI's, Anthropic's); None = that family has no such header.
_LABELS = {
    "requests": ("requests", "requests"),
    "requests_day": ("requests", "requests"),
    "tokens": ("tokens", "tokens"),
    "input_tokens": (None, "input-tokens"),
    "output_tokens": (None, "output-tokens"),
}


class MockRateLimits:
    """The limits ``cfg`` configures, counted as its ``limit_mode`` says."""

    def __init__(
        self, cfg: MockConfig, clock: Clock = loop_now, wall_clock: Clock = time.time
    ) -> None:
        """``clock`` counts the windows; ``wall_clock`` (Unix time) dates RFC 3339 resets."""
        make = _COUNTERS[cfg.limit_mode]
        self._cfg = cfg
        self._clock = clock
        self._wall_clock = wall_clock
        self._counters: dict[str, Counter] = {}
        for name, limit in (
            ("requests", cfg.rpm),
            ("tokens", cfg.tpm),
            ("input_tokens", cfg.input_tpm),
            ("output_tokens", cfg.output_tpm),
        ):
            if limit is not None:
                self._counters[name] = make(limit, cfg.limit_window_s, clock)
        if cfg.rpd is not None:
            self._counters["requests_day"] = make(cfg.rpd, cfg.day_window_s, clock)
        # What each limit admitted: (time, units), for measured().
        self._log: dict[str, list[tuple[float, float]]] = {n: [] for n in self._counters}

    @property
    def active(self) -> bool:
        """True when any limit is configured."""
        return bool(self._counters)

    def _costs(self, input_tokens: int, output_tokens: int) -> dict[str, float]:
        out = 0.0 if self._cfg.output_counted == "end" else float(output_tokens)
        return {
            "requests": 1.0,
            "requests_day": 1.0,
            "tokens": input_tokens + out,
            "input_tokens": float(input_tokens),
            "output_tokens": out,
        }

    def admit(self, input_tokens: int, output_tokens: int, style: str = "openai") -> Admission:
        """Charge one request if every limit allows it (``style``: openai, anthropic or
        gemini; Gemini sends no rate-limit headers, it says when to retry in a 429's body).

        Output tokens counted at the end are not charged here (see :meth:`finish`); the
        request only needs those budgets out of debt.
        """
        costs = self._costs(input_tokens, output_tokens)
        wait = max((c.wait_s(costs[name]) for name, c in self._counters.items()), default=0.0)
        verdict = Admission(retry_after_s=wait if wait > 0 else None)
        if verdict.admitted:
            now = self._clock()
            for name, c in self._counters.items():
                c.take(costs[name])
                if costs[name]:
                    self._log[name].append((now, costs[name]))
        mode = self._cfg.limit_headers
        if style == "gemini":
            return verdict
        if mode == "always" or (mode == "on_429" and not verdict.admitted):
            verdict.headers = self.headers(style)
        return verdict

    def finish(self, output_tokens: int) -> None:
        """An answer ended with ``output_tokens``: charge them where counted at the end."""
        if self._cfg.output_counted != "end" or output_tokens <= 0:
            return
        now = self._clock()
        for name in ("tokens", "output_tokens"):
            counter = self._counters.get(name)
            if counter is not None:
                counter.take(float(output_tokens))
                self._log[name].append((now, float(output_tokens)))

    def headers(self, style: str = "openai") -> dict[str, str]:
        """Rate-limit headers: limit, remaining and reset per limit.

        ``openai``: x-ratelimit-{limit,remaining,reset}-{requests,tokens}, reset as a Go
        duration; ``anthropic``: anthropic-ratelimit-{requests,tokens,input-tokens,
        output-tokens}-{limit,remaining,reset}, reset as an RFC 3339 time. With a per-day
        request limit, the requests headers describe it (as Groq's do).
        """
        out: dict[str, str] = {}
        wall_now = self._wall_clock()
        anthropic = style == "anthropic"
        for name, c in self._counters.items():
            if name == "requests" and "requests_day" in self._counters:
                continue
            label = _LABELS[name][1 if anthropic else 0]
            if label is None:
                continue
            limit, left, reset_s = str(int(c.limit)), str(int(c.remaining())), c.reset_s()
            if anthropic:
                prefix = f"anthropic-ratelimit-{label}"
                out[f"{prefix}-limit"] = limit
                out[f"{prefix}-remaining"] = left
                out[f"{prefix}-reset"] = _rfc3339(wall_now + reset_s)
            else:
                out[f"x-ratelimit-limit-{label}"] = limit
                out[f"x-ratelimit-remaining-{label}"] = left
                out[f"x-ratelimit-reset-{label}"] = _duration(reset_s)
        return out

    def measured(self) -> dict[str, dict[str, Any]]:
        """Per limit, from what it admitted: the rate achieved against the rate allowed.

        Achieved = (units admitted - limit) / time from the start of the first window to
        the last admission: every model admits a whole limit at once (a full bucket, an
        empty window), then at most limit per window. A client that keeps the limit busy
        from its first admission to its last scores 1.0 against ``allowed_per_s``; one
        that admitted fewer than a whole limit has no rate to measure (None).
        """
        out: dict[str, dict[str, Any]] = {}
        for name, c in self._counters.items():
            log = self._log[name]
            units = sum(n for _, n in log)
            achieved = None
            if log and units > c.limit:
                span_s = log[-1][0] - c.window_start(log[0][0])
                achieved = (units - c.limit) / span_s if span_s > 0 else None
            out[name] = {
                "limit": c.limit,
                "window_s": c.window_s,
                "admitted": len(log),
                "units": units,
                "achieved_per_s": achieved,
                "allowed_per_s": c.limit / c.window_s,
            }
        return out


def _rfc3339(unix_s: float) -> str:
    """Anthropic's reset format, with milliseconds (a whole-second time would round)."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_s))
    return f"{whole}.{int(unix_s % 1 * 1000):03d}Z"
