"""A fixed window learned from 429s that say nothing but Retry-After.

Some servers count requests per fixed window and answer the one too many with a 429 and a
``Retry-After`` (the time until the window ends), without any rate-limit header. From that
alone, with what our own answers tell:

- a 429's Retry-After, counted from when the server refused (between our send and its
  answer: the middle is taken), is the end of the window it came in (a *boundary*);
- the requests of ours the server admitted since the window before it (their send times
  are known from their answers) are its limit: it refused the next one (answers still
  on their way are missed: the limit is then a little low, which is the safe side);
- two boundaries in consecutive windows are one window apart.

A window is believed only once a third boundary falls on the grid the first two drew:
other 429s (a concurrency cap's, a busy server's) also come with a Retry-After, and their
ends fall anywhere. One off the grid ends it: 429s are then never read as windows again in
the run. Until a window is believed, a 429 only pauses sending for its Retry-After.

Then from the last boundary on, at most the limit goes per window, and every fourth
window one more (a probe: admitted, it raises the limit; refused, it confirms the grid at
one 429 per four windows). Send times are counted as planned here (first come, first
served). A request that reserved before the window was believed and still waits (for the
Retry-After that taught it) is planned when it looks again (a *ticket*, found again
through a context variable, since each request paces in its own task), so the requests
held by that pause do not all go at the boundary on top of the limit.
"""

from __future__ import annotations

import bisect
import contextvars
import math
from dataclasses import dataclass

from llmbatch.pacing.bucket import Clock

__all__ = ["MIN_WINDOW_S", "PROBE_EVERY", "RetryAfterWindow"]

PROBE_EVERY = 4  # every 4th window sends one more than the limit
MIN_WINDOW_S = 0.25  # ends closer than this are one window's, read at different moments


@dataclass(slots=True)
class _Ticket:
    at_s: float | None = None  # planned send time, once planned


_ticket: contextvars.ContextVar[_Ticket | None] = contextvars.ContextVar(
    "llmbatch_retry_after_ticket", default=None
)


class RetryAfterWindow:
    """Fixed windows learned from bare 429s: ``refused`` and ``admitted`` teach it,
    ``reserve`` and ``ticket_wait_s`` pace by it."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._admitted: list[float] = []  # send times of admitted requests, in order
        self.boundaries: list[float] = []  # window ends learned, ascending
        self.limit: int | None = None
        self.window_s: float | None = None
        self.confirmed = False  # a third boundary fell on the grid of the first two
        self.disabled = False  # one fell off it: never read 429s as windows again
        self._planned: list[float] = []  # planned send times after the last boundary

    @property
    def learned(self) -> bool:
        """True once a window is believed (limit, length, and a grid confirmed)."""
        return self.confirmed and not self.disabled and self.limit is not None

    # -- what the server said ---------------------------------------------------------
    def admitted(self, sent_at_s: float) -> None:
        """An answer (not a 429) to a request sent at ``sent_at_s``."""
        if self.disabled:
            return
        bisect.insort(self._admitted, sent_at_s)
        if not self.learned:
            return
        assert self.limit is not None and self.window_s is not None
        start = self.boundaries[-1]
        if sent_at_s >= start:
            start += math.floor((sent_at_s - start) / self.window_s) * self.window_s
        admitted = len(self._admitted) - bisect.bisect_left(self._admitted, start)
        self.limit = max(self.limit, admitted)  # a probe got through: the limit is more

    def refused(self, sent_at_s: float, retry_after_s: float) -> None:
        """A 429 with ``retry_after_s`` to a request sent at ``sent_at_s``."""
        if self.disabled:
            return
        now = self._clock()
        # The server counted from when it refused, somewhere between our send and now
        # (a busy loop reads answers late): the middle, give or take half the span.
        spread_s = max(0.0, now - sent_at_s)
        end = sent_at_s + spread_s / 2 + retry_after_s
        last = self.boundaries[-1] if self.boundaries else -math.inf
        tolerance = max(0.02, spread_s, 0.01 * (self.window_s or 0.0))
        if end <= last + max(tolerance, MIN_WINDOW_S):
            return  # another 429 of a window we know the end of
        if self.boundaries:
            gap = end - last
            if self.window_s is None:
                self.window_s = gap  # consecutive windows' ends are one window apart
            else:
                steps = gap / self.window_s
                off_s = abs(steps - round(steps)) * self.window_s
                if off_s > tolerance + 0.05 * self.window_s:
                    self._disable()  # not a fixed window's 429s
                    return
                self.confirmed = True
        # Every answer admitted in the refused request's window (since the last boundary
        # at most): the refused one may have gone a hair before others of its burst.
        start = last if self.window_s is None else max(last, end - self.window_s)
        count = len(self._admitted) - bisect.bisect_left(self._admitted, start - tolerance)
        if count > 0:
            self.limit = count
        self.boundaries.append(end)
        # Only sends since the previous boundary can count towards a later window.
        del self._admitted[: bisect.bisect_left(self._admitted, last)]
        self._planned = [t for t in self._planned if t >= end]

    def _disable(self) -> None:
        self.disabled = True
        self.limit = None
        self._admitted.clear()
        self._planned.clear()

    # -- pacing -----------------------------------------------------------------------
    def reserve(self) -> float:
        """Seconds until this request may go (0.0 = now)."""
        if not self.learned:
            # Nothing believed yet; should a window be while this request still waits
            # (for the Retry-After of the 429 that confirmed it), it is planned then.
            _ticket.set(None if self.disabled else _Ticket())
            return 0.0
        _ticket.set(None)
        return max(0.0, self._place(max(self._clock(), self.boundaries[-1])) - self._clock())

    def ticket_wait_s(self) -> float:
        """Seconds a request that reserved before the window was believed still waits
        (0.0 for every other request)."""
        ticket = _ticket.get()
        if ticket is None:
            return 0.0
        if ticket.at_s is None:
            if not self.learned:
                return 0.0  # still nothing believed: keep the ticket for later
            ticket.at_s = self._place(max(self._clock(), self.boundaries[-1]))
        wait_s = ticket.at_s - self._clock()
        if wait_s <= 0:
            _ticket.set(None)
            return 0.0
        return wait_s

    def _place(self, t: float) -> float:
        """Plan a send at the earliest time >= t whose window has room."""
        assert self.limit is not None and self.window_s is not None
        start, window = self.boundaries[-1], self.window_s
        k = max(0, math.floor((t - start) / window))
        while True:
            lo, hi = start + k * window, start + (k + 1) * window
            used = bisect.bisect_left(self._planned, hi) - bisect.bisect_left(self._planned, lo)
            room = self.limit + (1 if k % PROBE_EVERY == PROBE_EVERY - 1 else 0)
            if used < room:
                at = max(t, lo)
                bisect.insort(self._planned, at)
                return at
            k += 1
