"""How many requests may be in flight: an AIMD controller and the limiter enforcing it."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Callable

from llmbatch.clock import now
from llmbatch.pacing.bucket import Clock, finite_nonneg

__all__ = ["AdaptiveConcurrency", "ConcurrencyLimiter", "wait_in_line"]


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
      (x ``decrease_factor``, default 0.7). Latency within ``min_latency_growth_s``
      (10 ms) of the baseline always counts as flat: below that, ratios measure the
      event loop's jitter, not the server.
    - When the server says it is overloaded (a 429 without rate information, 503, 529:
      ``on_rate_limited``), decrease x ``decrease_factor``; on another 5xx or a timeout,
      mildly (x ``error_factor``, default 0.9). Which signals reach it is decided in
      ``pacing/signals.py`` (one owner per signal). A decrease always removes at least one slot.
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
        clock: Clock = now,
        decrease_factor: float = 0.7,
        error_factor: float = 0.9,
        latency_tolerance: float = 2.0,
        latency_hold: float = 1.5,
        ewma_alpha: float = 0.2,
        min_cooldown_s: float = 1.0,
        baseline_window_s: float = 60.0,
        slow_start: bool = True,
        min_latency_growth_s: float = 0.01,
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
        if not (finite_nonneg(min_cooldown_s) and baseline_window_s > 0):
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
        self._min_growth_s = min_latency_growth_s
        self._ewma_ttft_s: float | None = None
        # Monotonic deque of (time, smoothed TTFT), values increasing: front = window minimum.
        self._recent: deque[tuple[float, float]] = deque()
        self._cooldown_until_s = -math.inf
        self._limit_at_cooldown_start = self._limit

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._limit

    def on_success(self, ttft_s: float) -> None:
        """A request succeeded with this time to first token: maybe grow, maybe back off."""
        if not finite_nonneg(ttft_s):
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
        # Growth of less than min_latency_growth_s is the event loop's jitter, not the
        # server queueing (2x of a 1 ms TTFT is noise).
        if ewma_s - baseline_s <= self._min_growth_s or ewma_s <= baseline_s * self._latency_hold:
            self._grow()
        elif ewma_s > baseline_s * self._latency_tolerance:
            self._decrease(self._decrease_factor)
        else:
            self._slow_start = False  # the server has started to queue

    def on_rate_limited(self) -> None:
        """A 429 arrived: decrease multiplicatively (once per cooldown window)."""
        self._decrease(self._decrease_factor)

    def on_error(self) -> None:
        """A transient error (timeout, reset, 5xx): decrease mildly (once per cooldown window)."""
        self._decrease(self._error_factor)

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
        # Cancelled after leaving the line, our place may have been the one blocking others.
        await wait_in_line(self._waiters, pass_on=self.release, left=self._wake)

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


async def wait_in_line(
    waiters: deque[asyncio.Future[None]],
    *,
    pass_on: Callable[[], None],
    left: Callable[[], None] | None = None,
) -> None:
    """Wait at the end of ``waiters`` until a waker resolves our future (it pops futures
    from the front and skips the cancelled ones).

    Cancelled, the turn is not lost: one handed to us just before the cancellation landed
    is passed on (``pass_on``); otherwise our place is left, then ``left`` is called.
    """
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await fut
    except asyncio.CancelledError:
        if fut.done() and not fut.cancelled():
            pass_on()
        else:
            # The waker may already have dropped it (it skips cancelled futures).
            with contextlib.suppress(ValueError):
                waiters.remove(fut)
            if left is not None:
                left()
        raise
