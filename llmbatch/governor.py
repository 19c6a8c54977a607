"""Client-side pacing: RPM/TPM token buckets, rate-limit headers, adaptive concurrency.

Everything here is pure logic over an injectable clock (``time.monotonic`` by default):
no I/O, no sleeping. Callers turn the returned wait times into ``asyncio.sleep`` calls.

- :class:`TokenBucket` -- one rate limit, with debt (reserve now, wait until repaid).
- :class:`RateGovernor` -- a bucket per configured or server-reported limit (requests,
  input tokens, output tokens, total tokens), fed by OpenAI / Anthropic rate-limit headers
  and 429s.
- :class:`AdaptiveConcurrency` -- AIMD controller for the number of requests in flight.
- :class:`ConcurrencyLimiter` -- asyncio primitive enforcing a limit that may change.
- :func:`estimate_input_tokens` -- a tokenizer-free prompt size estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "TOKENS_PER_MESSAGE",
    "AdaptiveConcurrency",
    "ConcurrencyLimiter",
    "RateGovernor",
    "TokenBucket",
    "estimate_input_tokens",
    "parse_duration_s",
    "parse_reset_s",
]

Clock = Callable[[], float]

CHARS_PER_TOKEN = 4
"""Average characters per token for English text with BPE tokenizers (OpenAI's rule of thumb).

Code and non-Latin scripts run denser (CJK is closer to 1 char per token), so the estimate
can be low; :meth:`RateGovernor.settle` corrects the buckets once the server reports usage.
"""

TOKENS_PER_MESSAGE = 4
"""Per-message framing overhead (role markers, separators); OpenAI documents 3-4 tokens."""


def estimate_input_tokens(text_chars: int, messages: int = 1) -> int:
    """Estimate prompt tokens without a tokenizer.

    ``ceil(text_chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages``. Only used to
    reserve rate-limit budget before sending; the server's usage figures settle the
    difference afterwards, so a rough estimate is enough and no tokenizer is downloaded.
    """
    chars = max(0, text_chars)
    return -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * max(0, messages)


def _finite_nonneg(value: float) -> bool:
    return math.isfinite(value) and value >= 0


class TokenBucket:
    """A token bucket that allows debt.

    The balance refills continuously at ``rate_per_s`` up to ``capacity``. :meth:`reserve`
    always takes the tokens at once, even into a negative balance, and tells the caller how
    long to wait until that debt is repaid. Because later callers queue behind the debt, a
    crowd of reservations is spread out at exactly the refill rate, and a single request
    larger than the capacity still gets through (after a proportionate wait).
    """

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock = time.monotonic) -> None:
        """Start full (balance = capacity)."""
        self._check_rate(rate_per_s, capacity)
        self._rate_per_s = float(rate_per_s)
        self._capacity = float(capacity)
        self._clock = clock
        self._balance = float(capacity)
        self._last_s = clock()

    @staticmethod
    def _check_rate(rate_per_s: float, capacity: float) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be positive and finite, got {rate_per_s!r}")
        if not _finite_nonneg(capacity):
            raise ValueError(f"capacity must be >= 0 and finite, got {capacity!r}")

    @staticmethod
    def _check_amount(amount: float) -> None:
        if not _finite_nonneg(amount):
            raise ValueError(f"amount must be >= 0 and finite, got {amount!r}")

    def _refill(self) -> None:
        now_s = self._clock()
        # max(): a clock that steps backwards must not mint tokens or create debt.
        elapsed_s = max(0.0, now_s - self._last_s)
        self._last_s = now_s
        if self._balance < self._capacity:
            self._balance = min(self._capacity, self._balance + elapsed_s * self._rate_per_s)

    @property
    def rate_per_s(self) -> float:
        """Refill rate in tokens per second."""
        return self._rate_per_s

    @property
    def capacity(self) -> float:
        """Maximum balance (the largest burst allowed without waiting)."""
        return self._capacity

    @property
    def available(self) -> float:
        """Current balance after refill; negative while in debt."""
        self._refill()
        return self._balance

    def wait_s(self) -> float:
        """Seconds until the balance is back to zero (0.0 when not in debt)."""
        self._refill()
        return max(0.0, -self._balance / self._rate_per_s)

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now; return seconds to wait before acting (0.0 if still >= 0)."""
        self._check_amount(amount)
        self._refill()
        self._balance -= amount
        return max(0.0, -self._balance / self._rate_per_s)

    def refund(self, amount: float) -> None:
        """Give back ``amount`` (an over-estimate), never above capacity."""
        self._check_amount(amount)
        self._refill()
        self._balance = min(self._capacity, self._balance + amount)

    def charge(self, amount: float) -> None:
        """Take an extra ``amount`` (an under-estimate); later reservations wait for it."""
        self._check_amount(amount)
        self._refill()
        self._balance -= amount

    def set_rate(self, rate_per_s: float, capacity: float | None = None) -> None:
        """Change the refill rate (and optionally the capacity, clamping the balance to it)."""
        new_capacity = self._capacity if capacity is None else capacity
        self._check_rate(rate_per_s, new_capacity)
        self._refill()  # time so far accrues at the old rate
        self._rate_per_s = float(rate_per_s)
        self._capacity = float(new_capacity)
        self._balance = min(self._balance, self._capacity)

    def set_available(self, tokens: float) -> None:
        """Lower the balance to ``tokens`` (may be negative); never raises it.

        Used to sync with a server-reported remaining count: the server cannot see our
        in-flight reservations, so trusting a higher figure could overshoot the limit.
        """
        if math.isnan(tokens):
            return
        self._refill()
        self._balance = min(self._balance, float(tokens))


# ---------------------------------------------------------------------------------------
# Rate-limit header parsing

_DURATION_UNITS_S = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # Go prints microseconds with the micro sign...
    "\u03bcs": 1e-6,  # ...which is easily confused with Greek mu
    "ns": 1e-9,
}
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
# Longer units first so "ms" is not read as "m" followed by garbage.
_UNIT = "(?:" + "|".join(sorted(_DURATION_UNITS_S, key=len, reverse=True)) + ")"
_DURATION_RE = re.compile(rf"(?:{_NUM}{_UNIT})+")
_DURATION_PART_RE = re.compile(rf"({_NUM})({_UNIT})")
_PLAIN_NUMBER_RE = re.compile(_NUM)
_RFC3339_PREFIX_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def parse_duration_s(text: str) -> float | None:
    """Parse a Go-style duration as OpenAI sends it ("1s", "6m0s", "20ms", "1m30.5s").

    A bare number is taken as seconds. Returns None for anything malformed or negative.
    """
    value = text.strip()
    if _PLAIN_NUMBER_RE.fullmatch(value):
        return float(value)
    if not _DURATION_RE.fullmatch(value):
        return None
    return sum(float(n) * _DURATION_UNITS_S[u] for n, u in _DURATION_PART_RE.findall(value))


def parse_reset_s(text: str, wall_now_s: float) -> float | None:
    """Seconds until a reset, from a duration (OpenAI) or an RFC 3339 timestamp (Anthropic).

    ``wall_now_s`` is the current Unix time. A timestamp in the past gives 0.0; a timestamp
    without an offset is taken as UTC. Returns None for anything malformed.
    """
    duration_s = parse_duration_s(text)
    if duration_s is not None:
        return duration_s
    value = text.strip().upper()  # RFC 3339 allows lower-case "t" and "z"
    if not _RFC3339_PREFIX_RE.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - wall_now_s)


def _parse_count(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except (TypeError, ValueError, AttributeError):
        return None
    return value if _finite_nonneg(value) else None


# (limit, remaining, reset) header names per bucket.
_HeaderNames = tuple[str, str, str]
_OPENAI_HEADERS: dict[str, _HeaderNames] = {
    "requests": (
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ),
    "tokens": (
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ),
}
_ANTHROPIC_HEADERS: dict[str, _HeaderNames] = {
    name: (f"{prefix}-limit", f"{prefix}-remaining", f"{prefix}-reset")
    for name, prefix in (
        ("requests", "anthropic-ratelimit-requests"),
        ("input_tokens", "anthropic-ratelimit-input-tokens"),
        ("output_tokens", "anthropic-ratelimit-output-tokens"),
        ("tokens", "anthropic-ratelimit-tokens"),
    )
}


# ---------------------------------------------------------------------------------------
# Rate governor


@dataclass
class _Limit:
    """One rate limit: where it came from and the bucket enforcing it."""

    configured: float | None  # per window, from the user
    bucket: TokenBucket
    server: float | None = None  # per window, last reported by the server
    server_remaining: float | None = None
    server_reset_at_s: float | None = None  # on the monotonic clock

    @property
    def effective(self) -> float:
        # Never exceed what the user asked for, nor what the server says it allows.
        candidates = [v for v in (self.configured, self.server) if v is not None]
        return min(candidates)


class RateGovernor:
    """Paces requests under requests-per-window and tokens-per-window limits.

    Each limit (requests, input tokens, output tokens, total tokens) gets a
    :class:`TokenBucket` refilling at ``limit / window_s`` per second. Its capacity is only
    ``burst_s`` seconds' worth (``limit * min(1, burst_s / window_s)``): servers measure in
    short windows too, so a 600 RPM limit starts with a burst of ~10 requests, not 600.

    Limits come from the constructor or, when none is configured, from rate-limit headers
    (:meth:`observe_headers`); a server-reported limit below a configured one also wins.
    The buckets are the gate; headers and 429s only ever make pacing stricter.

    Typical use per request::

        await asyncio.sleep(gov.reserve(est_in, est_out))
        await asyncio.sleep(gov.paused_for_s())  # a 429 may have arrived meanwhile
        ...send, read headers -> gov.observe_headers(h); on 429 -> gov.on_rate_limited(ra)
        gov.settle(est_in, est_out, usage_in, usage_out)
    """

    def __init__(
        self,
        *,
        rpm: float | None,
        input_tpm: float | None,
        output_tpm: float | None,
        total_tpm: float | None = None,
        window_s: float = 60.0,
        burst_s: float = 1.0,
        default_backoff_s: float = 1.0,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        """Configure limits per ``window_s`` (None = unlimited until a server reports one).

        ``total_tpm`` limits input + output tokens together (OpenAI's TPM). ``wall_clock``
        (Unix time) is only used to read Anthropic's RFC 3339 reset timestamps.
        """
        for name, value in (
            ("window_s", window_s),
            ("burst_s", burst_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not _finite_nonneg(default_backoff_s):
            raise ValueError(f"default_backoff_s must be >= 0, got {default_backoff_s!r}")
        self._window_s = float(window_s)
        self._burst_fraction = min(1.0, burst_s / window_s)
        self._default_backoff_s = float(default_backoff_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._paused_until_s = -math.inf
        self._limits: dict[str, _Limit] = {}
        for name, limit in (
            ("requests", rpm),
            ("input_tokens", input_tpm),
            ("output_tokens", output_tpm),
            ("tokens", total_tpm),
        ):
            if limit is None:
                continue
            if not (math.isfinite(limit) and limit > 0):
                raise ValueError(f"limit for {name} must be positive, got {limit!r}")
            self._limits[name] = _Limit(configured=float(limit), bucket=self._new_bucket(limit))

    def _new_bucket(self, limit: float) -> TokenBucket:
        rate_per_s, capacity = self._shape(limit)
        return TokenBucket(rate_per_s, capacity, self._clock)

    def _shape(self, limit: float) -> tuple[float, float]:
        return limit / self._window_s, limit * self._burst_fraction

    @staticmethod
    def _costs(est_input: float, est_output: float) -> dict[str, float]:
        return {
            "requests": 1.0,
            "input_tokens": est_input,
            "output_tokens": est_output,
            "tokens": est_input + est_output,
        }

    def paused_for_s(self) -> float:
        """Seconds left of a pause set by :meth:`on_rate_limited` (0.0 if none).

        A caller that was already sleeping on an earlier :meth:`reserve` when the 429 came
        can check this before sending.
        """
        return max(0.0, self._paused_until_s - self._clock())

    def reserve(self, est_input_tokens: int, est_output_tokens: int) -> float:
        """Reserve budget for one request; return seconds to wait before sending it.

        Every bucket is charged now; the wait is the longest of their debts and any pause.
        """
        if est_input_tokens < 0 or est_output_tokens < 0:
            raise ValueError("token estimates must be >= 0")
        costs = self._costs(est_input_tokens, est_output_tokens)
        wait_s = self.paused_for_s()
        for name, limit in self._limits.items():
            wait_s = max(wait_s, limit.bucket.reserve(costs[name]))
        return wait_s

    def settle(
        self,
        est_input: int,
        est_output: int,
        actual_input: int | None,
        actual_output: int | None,
    ) -> None:
        """Correct a reservation once usage is known (None = unknown, keep the estimate).

        Over-estimates are refunded (up to each bucket's capacity), under-estimates charged
        so that later requests absorb the difference.
        """
        delta_in = 0.0 if actual_input is None else float(actual_input - est_input)
        delta_out = 0.0 if actual_output is None else float(actual_output - est_output)
        deltas = {
            "input_tokens": delta_in,
            "output_tokens": delta_out,
            "tokens": delta_in + delta_out,
        }
        for name, delta in deltas.items():
            limit = self._limits.get(name)
            if limit is None or delta == 0:
                continue
            if delta > 0:
                limit.bucket.charge(delta)
            else:
                limit.bucket.refund(-delta)

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """A 429 arrived: pause everything for ``retry_after_s`` (or the default backoff).

        Besides the pause floor, each bucket is put in debt worth the pause, so the requests
        queued during it are released at the bucket's rate afterwards, not all at once.
        """
        pause_s = self._default_backoff_s
        if retry_after_s is not None and _finite_nonneg(retry_after_s):
            pause_s = retry_after_s
        self._paused_until_s = max(self._paused_until_s, self._clock() + pause_s)
        for limit in self._limits.values():
            limit.bucket.set_available(-limit.bucket.rate_per_s * pause_s)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn from OpenAI (``x-ratelimit-*``) or Anthropic (``anthropic-ratelimit-*``) headers.

        - ``limit``: adopted when no limit is configured (``limit`` per ``window_s``), and
          lowers a configured limit that is higher than the server's.
        - ``remaining``: the bucket balance is lowered to it (never raised). Both providers
          refill continuously, so the remaining count is the safe budget right now and we
          pace before the server has to refuse us. (The figure predates our requests still
          in flight; those are already charged locally, which is why it can only lower.)
        - ``reset``: a Go duration (OpenAI) or RFC 3339 time (Anthropic), kept for
          :meth:`snapshot`.

        Anthropic's ``anthropic-ratelimit-tokens-*`` describes the most restrictive token
        limit, so it is used as a combined limit only when the input/output-specific
        headers are absent. Keys are case-insensitive; malformed values are ignored.
        """
        lowered = {str(k).lower(): v for k, v in headers.items()}
        groups: list[tuple[str, _HeaderNames]] = list(_OPENAI_HEADERS.items())
        split_tokens = any(
            key in lowered
            for name in ("input_tokens", "output_tokens")
            for key in _ANTHROPIC_HEADERS[name]
        )
        groups += [
            (name, keys)
            for name, keys in _ANTHROPIC_HEADERS.items()
            if not (name == "tokens" and split_tokens)
        ]
        for name, (limit_key, remaining_key, reset_key) in groups:
            if not any(k in lowered for k in (limit_key, remaining_key, reset_key)):
                continue
            self._apply_server_report(
                name,
                limit=_parse_count(lowered.get(limit_key)),
                remaining=_parse_count(lowered.get(remaining_key)),
                reset_text=lowered.get(reset_key),
            )

    def _apply_server_report(
        self,
        name: str,
        *,
        limit: float | None,
        remaining: float | None,
        reset_text: str | None,
    ) -> None:
        entry = self._limits.get(name)
        if limit is not None and limit > 0:
            if entry is None:
                entry = _Limit(configured=None, server=limit, bucket=self._new_bucket(limit))
                self._limits[name] = entry
            elif entry.server != limit:
                before = entry.effective
                entry.server = limit
                if entry.effective != before:
                    entry.bucket.set_rate(*self._shape(entry.effective))
        if entry is None:
            return  # remaining/reset without a known limit: no rate to pace at
        if remaining is not None:
            entry.server_remaining = remaining
            entry.bucket.set_available(remaining)
        if reset_text is not None:
            try:
                reset_s = parse_reset_s(str(reset_text), self._wall_clock())
            except (OverflowError, ValueError):
                reset_s = None
            if reset_s is not None:
                entry.server_reset_at_s = self._clock() + reset_s

    def snapshot(self) -> dict[str, Any]:
        """Current limits, rates and balances, for a progress display.

        ``{"paused_for_s", "window_s", "limits": {name: {"limit", "source", "rate_per_s",
        "capacity", "available", "server_remaining", "server_reset_in_s"}}}`` where name is
        one of requests, input_tokens, output_tokens, tokens.
        """
        now_s = self._clock()
        limits: dict[str, dict[str, Any]] = {}
        for name, entry in self._limits.items():
            if entry.configured is not None and entry.effective == entry.configured:
                source = "config"
            else:
                source = "server"
            reset_in_s = None
            if entry.server_reset_at_s is not None:
                reset_in_s = max(0.0, entry.server_reset_at_s - now_s)
            limits[name] = {
                "limit": entry.effective,
                "source": source,
                "rate_per_s": entry.bucket.rate_per_s,
                "capacity": entry.bucket.capacity,
                "available": entry.bucket.available,
                "server_remaining": entry.server_remaining,
                "server_reset_in_s": reset_in_s,
            }
        return {"paused_for_s": self.paused_for_s(), "window_s": self._window_s, "limits": limits}


# ---------------------------------------------------------------------------------------
# Adaptive concurrency


class AdaptiveConcurrency:
    """AIMD controller for how many requests may be in flight.

    How it decides:

    - Start at ``initial``; always stay within ``[floor, cap]``.
    - Latency is the time to first token. It is smoothed with an EWMA (``ewma_alpha``);
      the baseline is the lowest smoothed value seen over the last ``baseline_window_s``.
    - Slow start (like TCP's): until the first sign of congestion, every success adds
      one slot, so the limit doubles per round trip; a batch against a roomy provider
      gets from 8 to 256 in flight in five round trips, not 250.
    - After that, on a success, if smoothed TTFT <= ``latency_hold`` x baseline, grow
      additively: +1 after as many successes as the current limit (~+1 per round trip).
      Between ``latency_hold`` and ``latency_tolerance`` x baseline, hold steady: the
      server is queueing, more concurrency would only add latency.
    - Above ``latency_tolerance`` x baseline (default 2x), decrease multiplicatively
      (x ``decrease_factor``, default 0.7).
    - On a 429, decrease x ``decrease_factor``; on another error, mildly (x ``error_factor``,
      default 0.9). A decrease always removes at least one slot.
    - At most one decrease per cooldown window (the smoothed TTFT, at least
      ``min_cooldown_s``): requests in flight when the server pushed back all report it at
      once, so a burst of 429s counts once, and the strongest signal in a window wins.
      Any decrease, or latency entering the hold band, ends slow start for good.
    """

    def __init__(
        self,
        *,
        initial: int,
        floor: int,
        cap: int,
        clock: Clock = time.monotonic,
        decrease_factor: float = 0.7,
        error_factor: float = 0.9,
        latency_tolerance: float = 2.0,
        latency_hold: float = 1.5,
        ewma_alpha: float = 0.2,
        min_cooldown_s: float = 1.0,
        baseline_window_s: float = 60.0,
        slow_start: bool = True,
    ) -> None:
        """Validate the bounds and tunables; ``initial`` is clamped into ``[floor, cap]``."""
        if floor < 1 or cap < floor:
            raise ValueError(f"need 1 <= floor <= cap, got floor={floor}, cap={cap}")
        if not (0 < decrease_factor < 1 and 0 < error_factor < 1):
            raise ValueError("decrease_factor and error_factor must be in (0, 1)")
        if not (1 <= latency_hold <= latency_tolerance):
            raise ValueError("need 1 <= latency_hold <= latency_tolerance")
        if not (0 < ewma_alpha <= 1):
            raise ValueError("ewma_alpha must be in (0, 1]")
        if not (_finite_nonneg(min_cooldown_s) and baseline_window_s > 0):
            raise ValueError("min_cooldown_s must be >= 0 and baseline_window_s > 0")
        self._floor = floor
        self._cap = cap
        self._limit = min(cap, max(floor, initial))
        self._clock = clock
        self._decrease_factor = decrease_factor
        self._error_factor = error_factor
        self._latency_tolerance = latency_tolerance
        self._latency_hold = latency_hold
        self._ewma_alpha = ewma_alpha
        self._min_cooldown_s = min_cooldown_s
        self._baseline_window_s = baseline_window_s
        self._successes = 0
        self._slow_start = slow_start
        self._ewma_ttft_s: float | None = None
        # Monotonic deque of (time, smoothed TTFT), values increasing: front = window minimum.
        self._recent: deque[tuple[float, float]] = deque()
        self._cooldown_until_s = -math.inf
        self._limit_at_cooldown_start = self._limit

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._limit

    @property
    def smoothed_ttft_s(self) -> float | None:
        """EWMA of time to first token (None before the first success)."""
        return self._ewma_ttft_s

    @property
    def baseline_ttft_s(self) -> float | None:
        """Lowest smoothed TTFT over the baseline window (None before the first success)."""
        return self._recent[0][1] if self._recent else None

    def on_success(self, ttft_s: float) -> None:
        """A request succeeded with this time to first token: maybe grow, maybe back off."""
        if not _finite_nonneg(ttft_s):
            self._grow()  # a success without a usable latency still counts
            return
        now_s = self._clock()
        if self._ewma_ttft_s is None:
            self._ewma_ttft_s = ttft_s
        else:
            self._ewma_ttft_s += self._ewma_alpha * (ttft_s - self._ewma_ttft_s)
        ewma_s = self._ewma_ttft_s
        while self._recent and self._recent[-1][1] >= ewma_s:
            self._recent.pop()
        self._recent.append((now_s, ewma_s))
        while self._recent[0][0] < now_s - self._baseline_window_s:
            self._recent.popleft()
        baseline_s = self._recent[0][1]
        if ewma_s > baseline_s * self._latency_tolerance:
            self._decrease(self._decrease_factor)
        elif ewma_s <= baseline_s * self._latency_hold:
            self._grow()
        else:
            self._slow_start = False  # the server has started to queue

    def on_rate_limited(self) -> None:
        """A 429 arrived: decrease multiplicatively (once per cooldown window)."""
        self._decrease(self._decrease_factor)

    def on_error(self) -> None:
        """A transient error (timeout, reset, 5xx): decrease mildly (once per cooldown window)."""
        self._decrease(self._error_factor)

    @property
    def in_slow_start(self) -> bool:
        """True until the first sign of congestion."""
        return self._slow_start

    def _grow(self) -> None:
        if self._slow_start:
            self._limit = min(self._cap, self._limit + 1)
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit = min(self._cap, self._limit + 1)

    def _decrease(self, factor: float) -> None:
        self._slow_start = False
        now_s = self._clock()
        if now_s >= self._cooldown_until_s:
            self._limit_at_cooldown_start = self._limit
            self._cooldown_until_s = now_s + max(self._min_cooldown_s, self._ewma_ttft_s or 0.0)
        start = self._limit_at_cooldown_start
        # Epsilon: 70 * 0.7 is 48.999... in binary floating point.
        target = min(start - 1, math.floor(start * factor + 1e-9))
        self._limit = max(self._floor, min(self._limit, target))
        self._successes = 0


# ---------------------------------------------------------------------------------------
# Concurrency limiter


class ConcurrencyLimiter:
    """An asyncio semaphore whose size is read from ``limit_source()`` and may change.

    At most ``limit_source()`` holders at once, served first come, first served. When the
    limit falls, no holder is interrupted; new acquisitions wait until ``in_use`` drops
    below it. The limit is re-read on every acquire and release; call :meth:`notify` after
    raising it to wake waiters at once. Slots are handed directly to waiters, so there is
    no busy-waiting, and a waiter cancelled at any point never keeps a slot.
    """

    def __init__(self, limit_source: Callable[[], int]) -> None:
        """``limit_source`` is called for the current limit (e.g. ``lambda: aimd.limit``)."""
        self._limit_source = limit_source
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        """Number of slots currently held."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Number of tasks waiting for a slot."""
        return len(self._waiters)

    @property
    def limit(self) -> int:
        """The current limit, as reported by ``limit_source``."""
        return self._limit_source()

    async def acquire(self) -> None:
        """Wait for a slot and take it."""
        if not self._waiters and self._in_use < self._limit_source():
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just before the cancellation landed: pass it on.
                self.release()
            else:
                # _wake() may already have dropped it (it skips cancelled futures).
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
                self._wake()  # our place may have been the one blocking others
            raise

    def release(self) -> None:
        """Give a slot back and hand it to the next waiter if the limit allows."""
        if self._in_use <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_use -= 1
        self._wake()

    def notify(self) -> None:
        """Re-read the limit and wake as many waiters as it now allows."""
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self._limit_source():
            fut = self._waiters.popleft()
            if fut.done():  # cancelled while queued; its task is already unwinding
                continue
            self._in_use += 1
            fut.set_result(None)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with limiter.slot():`` -- hold a slot for the duration of the block."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()
