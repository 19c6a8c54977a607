"""A token bucket with debt: the hard cap for a configured rate limit."""

from __future__ import annotations

import math
from collections.abc import Callable

from llmbatch.clock import now

__all__ = ["Clock", "TokenBucket", "finite_nonneg"]

Clock = Callable[[], float]


def finite_nonneg(value: float) -> bool:
    """True for a finite number >= 0."""
    return math.isfinite(value) and value >= 0


class TokenBucket:
    """A token bucket that allows debt.

    The balance refills continuously at ``rate_per_s`` up to ``capacity``. :meth:`reserve`
    always takes the tokens at once, even into a negative balance, and tells the caller how
    long to wait until that debt is repaid. Because later callers queue behind the debt, a
    crowd of reservations is spread out at exactly the refill rate, and a single request
    larger than the capacity still gets through (after a proportionate wait).
    """

    def __init__(self, rate_per_s: float, capacity: float, clock: Clock = now) -> None:
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
        if not finite_nonneg(capacity):
            raise ValueError(f"capacity must be >= 0 and finite, got {capacity!r}")

    @staticmethod
    def _check_amount(amount: float) -> None:
        if not finite_nonneg(amount):
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

    def set_available(self, tokens: float) -> None:
        """Lower the balance to ``tokens`` (may be negative); never raises it.

        Used to sync with a server-reported remaining count: the server cannot see our
        in-flight reservations, so trusting a higher figure could overshoot the limit.
        """
        if math.isnan(tokens):
            return
        self._refill()
        self._balance = min(self._balance, float(tokens))
