"""``--max-cost``: requests are admitted only while spent + the worst case of every
request in flight, this one included, stays within the budget.

A request's worst case (``rates.worst_case_usd``) holds its place from admission until
its record: then what it really cost replaces it. A request that does not fit waits
while others are in flight (their real cost is usually far below their worst case, so
room comes back); when it does not fit with nothing in flight, it never will, and
admission stops for good. So a run never spends more than its budget, unless the
server bills more than a request's bound (see docs/cost.md for what the bound assumes).

:class:`CostBudget` is the budget of one process. Under ``--engine ray`` the cluster's
one budget lives in the lease governor actor, and each worker's :class:`Spend` asks it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["GRANTED", "NEVER", "WAIT", "CostBudget", "Spend"]

GRANTED, WAIT, NEVER = "granted", "wait", "never"
_EPS = 1e-12  # float sums: a request that fits exactly is not refused by rounding


class Spend(Protocol):
    """What the engine needs from a budget (one process's, or the cluster's)."""

    @property
    def max_usd(self) -> float:
        """The budget."""

    async def admit(self, worst_usd: float) -> bool:
        """Reserve ``worst_usd``, waiting while requests in flight may still make room;
        False when it can never fit (admission stops)."""

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        """A request admitted with ``worst_usd`` ended, costing ``actual_usd``."""

    def add_spent(self, usd: float) -> None:
        """Count money spent before (a resumed run's records)."""


class CostBudget:
    """One budget (USD): spent so far, and the worst cases reserved by requests in flight."""

    def __init__(self, max_usd: float, *, spent_usd: float = 0.0) -> None:
        self._max_usd = max_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        self.in_flight = 0
        self._changed: asyncio.Event | None = None

    @property
    def max_usd(self) -> float:
        """The budget."""
        return self._max_usd

    def try_reserve(self, worst_usd: float) -> str:
        """GRANTED (reserved), WAIT (may fit once requests in flight end) or NEVER."""
        if self.spent_usd + self.reserved_usd + worst_usd <= self._max_usd + _EPS:
            self.reserved_usd += worst_usd
            self.in_flight += 1
            return GRANTED
        return WAIT if self.in_flight else NEVER

    async def admit(self, worst_usd: float) -> bool:
        """Reserve ``worst_usd``, waiting while requests in flight may make room."""
        while True:
            verdict = self.try_reserve(worst_usd)
            if verdict != WAIT:
                return verdict == GRANTED
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        """Replace a request's reserved worst case by what it cost."""
        self.reserved_usd = max(0.0, self.reserved_usd - worst_usd)
        self.in_flight -= 1
        if self.in_flight == 0:
            self.reserved_usd = 0.0  # no float residue once nothing is reserved
        self.spent_usd += actual_usd
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def add_spent(self, usd: float) -> None:
        """Count money spent before (a resumed run's records)."""
        self.spent_usd += usd
