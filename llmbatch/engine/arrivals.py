"""Open-loop load: when each request is due, and holding requests back until then.

An :class:`ArrivalProfile` describes a request rate as ``vllm bench serve`` does:
constant (``--request-rate R`` with no randomness), Poisson (exponential gaps, vLLM's
default ``--burstiness 1``) or gamma gaps with a burstiness factor ``b`` (shape ``b``,
scale ``1 / (rate * b)``: the same mean rate, burstier below 1, more regular above). A
ramp raises the rate from ``ramp_from_rps`` to ``rate_rps`` over ``ramp_up_s`` seconds,
linearly or exponentially (vLLM's ``--ramp-up-strategy``; it ramps over the whole run,
which is ``ramp_up_s`` equal to the run's length), then holds it.

:func:`arrival_offsets` yields the due times (seconds from the start) from a seeded
generator, so a schedule is reproducible and checkable without a clock;
:class:`ArrivalPacer` releases items at those times on an injectable clock and keeps
what it observed (how late each release was), so a client that cannot keep up with the
schedule says so instead of passing its own limit off as the server's.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from llmbatch.clock import now

__all__ = ["ARRIVAL_KINDS", "RAMP_KINDS", "ArrivalPacer", "ArrivalProfile", "arrival_offsets"]

ARRIVAL_KINDS = ("constant", "poisson")
RAMP_KINDS = ("linear", "exponential")

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalProfile:
    """A request rate and how requests are spread around it."""

    rate_rps: float
    kind: str = "poisson"  # constant: evenly spaced; poisson: gamma gaps of shape burstiness
    burstiness: float = 1.0
    ramp: str | None = None  # linear | exponential
    ramp_up_s: float = 0.0
    ramp_from_rps: float | None = None  # default: a tenth of rate_rps
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.rate_rps > 0 and math.isfinite(self.rate_rps)):
            raise ValueError(f"request rate must be a positive number, got {self.rate_rps!r}")
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(f"arrival kind must be one of {ARRIVAL_KINDS}, got {self.kind!r}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness!r}")
        if self.ramp is not None and self.ramp not in RAMP_KINDS:
            raise ValueError(f"ramp must be one of {RAMP_KINDS}, got {self.ramp!r}")
        if self.ramp_up_s < 0:
            raise ValueError(f"ramp-up must be >= 0 s, got {self.ramp_up_s!r}")
        if self.ramp_from_rps is not None and not self.ramp_from_rps > 0:
            raise ValueError(f"ramp start rate must be > 0, got {self.ramp_from_rps!r}")

    def rate_at(self, t_s: float) -> float:
        """The requested rate (req/s) at ``t_s`` seconds from the start."""
        if self.ramp is None or self.ramp_up_s <= 0 or t_s >= self.ramp_up_s:
            return self.rate_rps
        start = self.ramp_from_rps if self.ramp_from_rps is not None else self.rate_rps / 10
        progress = max(0.0, t_s) / self.ramp_up_s
        if self.ramp == "linear":
            return start + (self.rate_rps - start) * progress
        return float(start * (self.rate_rps / start) ** progress)


def arrival_offsets(profile: ArrivalProfile) -> Iterator[float]:
    """Due times in seconds from the start, endless and reproducible (``profile.seed``).

    The first request is due at 0. Each gap is drawn at the rate in force when the
    previous request was due, as vLLM draws it for the request's own rate.
    """
    rng = random.Random(profile.seed)
    t = 0.0
    while True:
        yield t
        rate = profile.rate_at(t)
        if profile.kind == "constant":
            t += 1.0 / rate
        else:
            b = profile.burstiness
            t += rng.gammavariate(b, 1.0 / (rate * b))


class ArrivalPacer:
    """Releases items at their due times; notes how late each release came.

    ``lateness_s`` holds, per released item, how long after its due time it was
    released: the consumer (a slot cap, or a client too busy to keep up) took that long
    to ask for it. ``clock`` and ``sleep`` are injectable (virtual time in tests).
    """

    def __init__(
        self,
        offsets: Iterator[float],
        *,
        clock: Callable[[], float] = now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._offsets = offsets
        self._clock = clock
        self._sleep = sleep
        self.started_at: float | None = None
        self.due: list[float] = []  # clock times the items were due
        self.lateness_s: list[float] = []

    async def pace(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items``, each held back until it is due (the first at once)."""
        clock = self._clock
        async for item in items:
            if self.started_at is None:
                self.started_at = clock()
            due = self.started_at + next(self._offsets)
            wait_s = due - clock()
            if wait_s > 0:
                await self._sleep(wait_s)
            self.due.append(due)
            self.lateness_s.append(max(0.0, clock() - due))
            yield item
