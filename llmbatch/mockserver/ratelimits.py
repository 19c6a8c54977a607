"""The mock's rate limits: admission and the headers a provider would send.

Plain logic over an injectable clock (no aiohttp), so any front-end can use it. This is
deliberately its own small implementation, not llmbatch's pacing code: the mock checks
that code and must not share its mistakes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from llmbatch.mockserver.config import MockConfig

__all__ = ["Admission", "MockRateLimits", "RefillCounter", "SlidingCounter"]

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


Counter = SlidingCounter | RefillCounter


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


class MockRateLimits:
    """Requests (per window and per day) and tokens per window, as ``cfg`` configures."""

    def __init__(self, cfg: MockConfig, clock: Clock = time.monotonic) -> None:
        make = SlidingCounter if cfg.limit_mode == "sliding" else RefillCounter
        self._cfg = cfg
        # requests / tokens per window, requests_day per day.
        self._counters: dict[str, Counter] = {}
        if cfg.rpm is not None:
            self._counters["requests"] = make(cfg.rpm, cfg.limit_window_s, clock)
        if cfg.tpm is not None:
            self._counters["tokens"] = make(cfg.tpm, cfg.limit_window_s, clock)
        if cfg.rpd is not None:
            self._counters["requests_day"] = make(cfg.rpd, cfg.day_window_s, clock)

    @property
    def active(self) -> bool:
        """True when any limit is configured."""
        return bool(self._counters)

    def admit(self, tokens: int, style: str = "openai") -> Admission:
        """Charge one request of ``tokens`` (prompt + completion) if every limit allows it.

        ``style`` names the header family: ``openai``, ``anthropic`` or ``gemini`` (none:
        Gemini says when to retry in a 429's body only).
        """
        costs = {"requests": 1.0, "requests_day": 1.0, "tokens": float(tokens)}
        waits = [c.wait_s(costs[name]) for name, c in self._counters.items()]
        wait = max(waits, default=0.0)
        verdict = Admission(retry_after_s=wait if wait > 0 else None)
        if verdict.admitted:
            for name, c in self._counters.items():
                c.take(costs[name])
        mode = self._cfg.limit_headers
        if style == "gemini":
            return verdict
        if mode == "always" or (mode == "on_429" and not verdict.admitted):
            verdict.headers = self.headers(style)
        return verdict

    def headers(self, style: str = "openai") -> dict[str, str]:
        """Rate-limit headers: limit, remaining and reset per requests and tokens.

        ``openai``: x-ratelimit-{limit,remaining,reset}-{requests,tokens}, reset as a Go
        duration; ``anthropic``: anthropic-ratelimit-{requests,tokens}-{limit,remaining,
        reset}, reset as an RFC 3339 time. With a per-day request limit, the requests
        headers describe it (as Groq's do).
        """
        out: dict[str, str] = {}
        wall_now = time.time()
        for name, c in self._counters.items():
            if name == "requests" and "requests_day" in self._counters:
                continue
            label = "requests" if name.startswith("requests") else "tokens"
            limit, left, reset_s = str(int(c.limit)), str(int(c.remaining())), c.reset_s()
            if style == "anthropic":
                prefix = f"anthropic-ratelimit-{label}"
                out[f"{prefix}-limit"] = limit
                out[f"{prefix}-remaining"] = left
                out[f"{prefix}-reset"] = _rfc3339(wall_now + reset_s)
            else:
                out[f"x-ratelimit-limit-{label}"] = limit
                out[f"x-ratelimit-remaining-{label}"] = left
                out[f"x-ratelimit-reset-{label}"] = _duration(reset_s)
        return out


def _rfc3339(unix_s: float) -> str:
    """Anthropic's reset format, with milliseconds (a whole-second time would round)."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_s))
    return f"{whole}.{int(unix_s % 1 * 1000):03d}Z"
