"""Rate limits learned from the server's reports: spend what remains, whole again by reset.

Each report (:class:`~llmbatch.pacing.headers.Report`) restates a limit: ``remaining``
can be spent now, and by ``reset`` the budget is whole (``limit``) again. What happens in
between depends on the family:

- :class:`RefillLimit` (OpenAI, Anthropic: continuous refill): the budget comes back at
  (limit - remaining) / reset per second, so the pace is smooth and exact.
- :class:`WindowLimit` (sliding or fixed windows, or unknown): each request we send
  holds its share for one window from its send, and the rest of what the report says
  is in use (other clients) is free by its reset, not before. This is safe for every
  window shape and exact for a sliding one; the window is the one the family or config
  states, else the longest reset seen (a reset never exceeds the window).

A 429 refutes a refill reading (the budget we thought had come back had not: the server
counts in windows after all, as many OpenAI-compatible servers do while sending OpenAI's
headers), and so do two reports whose (limit - remaining) / reset differ by more than 2x
(a continuous refill has one rate): the governor then reads that limit as a window
(:func:`as_window`), which is safe for every shape and loses no average rate on a
server that does refill continuously.

A learned limit gates only while the server keeps confirming it: a window after its
reset and after our last send through it, with no new report, it expires. So a limit
that came with one 429 (OpenRouter sends headers only then) pauses the run until its
reset and is then forgotten; a figure nothing restates never holds a run down.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from llmbatch.pacing.bucket import Clock
from llmbatch.pacing.headers import Report

__all__ = [
    "ARRIVAL_JITTER_S",
    "LearnedLimit",
    "RefillLimit",
    "WindowLimit",
    "as_window",
    "learned_limit",
]


class _Learned:
    """What both models share: the limit, the window, the latest reset."""

    def __init__(self, report: Report, fallback_window_s: float, clock: Clock) -> None:
        self._clock = clock
        self._fallback_window_s = fallback_window_s
        self.limit = 0.0
        self.window_s = report.window_s
        self._largest_reset_s = 0.0
        self.reset_at_s = -math.inf
        self.remaining: float | None = None
        self.last_report = report
        # Rates the reports implied as a refill would, (lowest, highest, latest).
        self._implied = (math.inf, 0.0, 0.0)

    def _restate(self, report: Report) -> tuple[float, float] | None:
        """Update limit, window and reset; (left now, reset in s), or None without a limit."""
        self.last_report = report
        remaining = report.remaining
        if report.limit is not None:
            self.limit = report.limit
        elif remaining is not None:  # Azure: no limit header; the most ever left + 1
            self.limit = max(self.limit, remaining + 1)
        if report.window_s is not None:
            self.window_s = report.window_s
        if self.limit <= 0:
            return None
        reset_s = report.reset_s
        if reset_s is None:  # no reset given: what is in use is free a window from now
            reset_s = self.window()
        self._largest_reset_s = max(self._largest_reset_s, reset_s)
        self.remaining = remaining
        self.reset_at_s = self._clock() + reset_s
        left = self.limit if remaining is None else min(remaining, self.limit)
        if report.reset_s is not None and reset_s >= _RATE_CHECK_MIN_RESET_S and left < self.limit:
            implied = (self.limit - left) / reset_s
            lo, hi, _ = self._implied
            self._implied = (min(lo, implied), max(hi, implied), implied)
        return left, reset_s

    @property
    def stated_rate_per_s(self) -> float:
        """The rate the server's reports state, for display: the one rate its reports
        imply when they agree (continuous refill: (limit - remaining) / reset), else
        limit per window."""
        lo, hi, last = self._implied
        if 0 < lo and hi <= lo * _RATE_TOLERANCE:
            return last
        return self.limit / self.window()

    def window(self) -> float:
        """The window: stated (profile, config, header name), else the longest reset seen."""
        if self.window_s is not None:
            return self.window_s
        return self._largest_reset_s if self._largest_reset_s > 0 else self._fallback_window_s


class RefillLimit(_Learned):
    """A continuously refilled budget: (limit - remaining) comes back over ``reset``."""

    def __init__(self, report: Report, fallback_window_s: float, clock: Clock) -> None:
        super().__init__(report, fallback_window_s, clock)
        self._balance = math.inf
        self._rate_per_s = 0.0
        self._at_s = clock()
        self._promised_until_s = -math.inf
        self._checked_rate_per_s: float | None = None
        self.refuted = False  # reports showed the budget does not refill
        # Our recent sends (planned time, amount): a window reading takes them over.
        self.sends: deque[tuple[float, float]] = deque(maxlen=4096)
        self.last_age_s: float | None = None
        self.observe(report)

    def observe(self, report: Report, age_s: float | None = None) -> None:
        """Lower the balance to ``remaining``; the refill rate is what comes back by reset."""
        self.last_age_s = age_s
        if self.limit > 0:
            self._advance()
        restated = self._restate(report)
        if restated is None:
            return
        left, reset_s = restated
        checked = self._checked_rate_per_s
        if checked and left <= 0 and reset_s > self.limit / checked:
            # Nothing left, and the reset further off than refilling the whole limit
            # takes: the server is in debt (it charges some usage after admitting, such
            # as output tokens when an answer ends); the reset says how deep.
            left = self.limit - checked * reset_s
        # The server cannot see what we sent after this request; those are charged
        # locally already, so its figure may only lower our balance.
        self._balance = min(self._balance, left)
        if reset_s > 0 and self.limit > left:
            rate_per_s = (self.limit - left) / reset_s
            if reset_s >= _RATE_CHECK_MIN_RESET_S:
                if self.limit - left >= _RATE_CHECK_MIN_USED:
                    self._check_rate(rate_per_s)
                self._rate_per_s = rate_per_s
            elif self._checked_rate_per_s is None:
                # A reset of a few whole milliseconds and a remaining count rounded down
                # give a rough rate: used only until a longer reset gives a better one.
                self._rate_per_s = rate_per_s
        elif self._rate_per_s <= 0:
            self._rate_per_s = self.limit / self.window()

    def _check_rate(self, rate_per_s: float) -> None:
        """Under continuous refill every report implies the same rate, (limit -
        remaining) / reset; one that implies another by more than 2x refutes it (a
        window: the reset stays near the window while the use changes)."""
        known = self._checked_rate_per_s
        if known is None:
            self._checked_rate_per_s = rate_per_s
        elif not known / _RATE_TOLERANCE <= rate_per_s <= known * _RATE_TOLERANCE:
            self.refuted = True

    def _advance(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._at_s)
        self._balance = min(self.limit, self._balance + elapsed * self._rate_per_s)
        self._at_s = now

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now; seconds until the server will have it (0.0 = now)."""
        self._advance()
        self._balance -= amount
        # What must wait is planned a little late: requests reach the server with some
        # jitter (the event loop, the connection each one takes), so a bucket drained to
        # exactly zero answers the early arrivals with 429. The delay shifts the schedule
        # once (the balance keeps the count), so it costs no rate.
        wait_s = 0.0
        if self._balance < 0 and self._rate_per_s > 0:
            wait_s = -self._balance / self._rate_per_s + ARRIVAL_JITTER_S
        self._promised_until_s = max(self._promised_until_s, self._at_s + wait_s)
        self.sends.append((self._at_s + wait_s, amount))
        return wait_s

    def adjust(self, delta: float) -> None:
        """Charge (delta > 0) or refund (delta < 0) a difference found from usage."""
        self._advance()
        self._balance = min(self.limit, self._balance - delta)

    def empty(self) -> None:
        """A 429: whatever we believed, nothing is left now."""
        self._advance()
        self._balance = min(self._balance, 0.0)

    def expired(self) -> bool:
        """A window past the reset and every promised release, with no new report."""
        last = max(self.reset_at_s, self._promised_until_s)
        return self._clock() >= last + self.window()

    @property
    def available(self) -> float:
        """The local balance now (negative while in debt)."""
        self._advance()
        return self._balance

    @property
    def rate_per_s(self) -> float:
        """The refill rate."""
        return self._rate_per_s


class WindowLimit(_Learned):
    """A window budget: others' use is free by the reset, each of our sends a window after it.

    Our sends are kept in order (send time, running total), so the earliest time a new
    request fits is found by bisection; send times never go backwards (first come,
    first served, as the token bucket's debt queue).
    """

    def __init__(self, report: Report, fallback_window_s: float, clock: Clock) -> None:
        super().__init__(report, fallback_window_s, clock)
        self._base_in_use = 0.0  # in use at the last report, not by our sends: free by reset
        self._sent_at: list[float] = []  # our sends within the last window, in order
        self._sent_cum: list[float] = []  # running total of their amounts
        self._first = 0  # index of the oldest send still of interest
        self._last_send_s = -math.inf
        self._holds: deque[float] = deque(maxlen=32)  # recent (age + reset) of answers
        self.observe(report)

    def _total(self) -> float:
        return self._sent_cum[-1] if self._sent_cum else 0.0

    def _cum_before(self, i: int) -> float:
        return self._sent_cum[i - 1] if i > 0 else 0.0

    def _drop_before(self, t: float) -> None:
        """Forget sends before ``t`` (a window old: released)."""
        i = bisect.bisect_left(self._sent_at, t, lo=self._first)
        self._first = i
        if i > 1024 and i * 2 > len(self._sent_at):  # compact now and then
            base = self._cum_before(i)
            self._sent_at = self._sent_at[i:]
            self._sent_cum = [c - base for c in self._sent_cum[i:]]
            self._first = 0

    def _hold(self) -> float:
        """How long one of our sends holds its share: a window, plus the time to arrive.

        The server counts from when a request arrives, which is after we planned to send
        it (timer lateness, connection, a busy loop). An answer sent ``age_s`` ago whose
        report says ``reset_s`` shows it directly: its share was held ``age_s + reset_s``
        from our send. The longest of the recent ones is used (a median let through 429s
        on a loaded machine), plus 1% and 10 ms for the next one's jitter; with none
        known, the window plus 3% and 20 ms.
        """
        window = self.window()
        if self._holds:
            return max(window, max(self._holds)) + 0.01 + 0.01 * window
        return window * 1.03 + 0.02

    def _own_in_use(self, t: float) -> float:
        """Our sends still holding budget at ``t`` (sent within a hold before it)."""
        i = bisect.bisect_right(self._sent_at, t - self._hold(), lo=self._first)
        return self._total() - self._cum_before(i)

    def observe(self, report: Report, age_s: float | None = None) -> None:
        """What the server reports in use is free by its reset; our older sends are in it.

        ``age_s`` is how long ago the request whose answer carried the report was sent:
        our sends before it are in the server's figure, later ones cannot be. Unknown, a
        margin of a quarter second plus a tenth of the window keeps recent sends counted
        (twice, at worst: safe).
        """
        now = self._clock()
        restated = self._restate(report)
        if restated is None:
            return
        left, _ = restated
        if age_s is None or not (math.isfinite(age_s) and age_s >= 0):
            age_s = 0.25 + 0.1 * self.window()
        elif report.reset_s is not None:
            self._holds.append(age_s + report.reset_s)
        self._drop_before(now - self._hold())
        # Our sends the figure includes free a window after each; the rest of the use
        # it reports (other clients, or what we cannot match) is free by the reset.
        lo = bisect.bisect_right(self._sent_at, now - self._hold(), lo=self._first)
        # Our sends planned up to this one's send are in the figure (this one included:
        # its planned time is never after its send). One that overtook it on the way
        # stays counted among ours anyway; only others' use could be taken one too low.
        covered_to = max(lo, bisect.bisect_right(self._sent_at, now - age_s, lo=lo))
        covered = self._cum_before(covered_to) - self._cum_before(lo)
        self._base_in_use = max(0.0, self.limit - left - covered)

    def _fits_at(self, amount: float, t_min: float) -> float:
        """The earliest time >= t_min at which ``amount`` more stays within the limit."""
        limit, hold = self.limit, self._hold()
        amount = min(amount, limit)  # one request above the limit: when all is free
        lo = self._first

        def own_free_at(need: float) -> float:
            # When our releases (sends from index lo on, oldest first) reach ``need``.
            if need <= 0:
                return -math.inf
            i = bisect.bisect_left(self._sent_cum, need + self._cum_before(lo), lo=lo)
            if i >= len(self._sent_cum):
                return math.inf
            return self._sent_at[i] + hold

        total = self._total() - self._cum_before(lo)
        # While the reported use still holds (before reset) ...
        t_a = own_free_at(total + self._base_in_use + amount - limit)
        if t_a < self.reset_at_s:
            return max(t_min, t_a)
        # ... or after the reset, when only our sends count.
        t_b = own_free_at(total + amount - limit)
        return max(t_min, self.reset_at_s, t_b)

    def reserve(self, amount: float) -> float:
        """Take ``amount`` at the earliest time it fits; seconds until then (0.0 = now)."""
        now = self._clock()
        self._drop_before(now - self._hold())
        t = self._fits_at(amount, max(now, self._last_send_s))
        if math.isinf(t):  # more than our log can ever release: wait for everything
            t = max(self.reset_at_s, self._last_send_s + self._hold(), now)
        self._last_send_s = t
        self._sent_at.append(t)
        self._sent_cum.append(self._total() + amount)
        return max(0.0, t - now)

    def take_over(self, at_s: float, amount: float) -> None:
        """Count a send made under another reading (times in order, as sent)."""
        self._sent_at.append(at_s)
        self._sent_cum.append(self._total() + amount)
        self._last_send_s = max(self._last_send_s, at_s)

    def adjust(self, delta: float) -> None:
        """Charge an under-estimate as a send of its own (refunds are not taken back)."""
        if delta > 0:
            t = max(self._clock(), self._last_send_s)
            self._sent_at.append(t)
            self._sent_cum.append(self._total() + delta)

    def empty(self) -> None:
        """A 429: the whole limit is in use until the reset at least."""
        self._base_in_use = self.limit

    def expired(self) -> bool:
        """A window past the reset and our last send through it, with no new report."""
        return self._clock() >= max(self.reset_at_s, self._last_send_s) + self.window()

    @property
    def available(self) -> float:
        """What could be sent now without waiting."""
        now = self._clock()
        base = self._base_in_use if now < self.reset_at_s else 0.0
        return self.limit - base - self._own_in_use(now)

    @property
    def rate_per_s(self) -> float:
        """The average pace the limit allows: limit per window."""
        return self.limit / self.window()


# Resets shorter than this are too coarse (whole milliseconds) to compare rates by, and
# so are fewer units in use (remaining is a whole number, rounded down: 1 of 2 is 2x).
_RATE_CHECK_MIN_RESET_S = 0.05
_RATE_CHECK_MIN_USED = 10
_RATE_TOLERANCE = 2.0
# How much earlier than planned a request may reach the server (RefillLimit.reserve).
ARRIVAL_JITTER_S = 0.05

LearnedLimit = RefillLimit | WindowLimit


def as_window(limit: RefillLimit) -> WindowLimit:
    """``limit`` read as a window from now on: its last report, and our recent sends
    (each holding its share for a window from when it went)."""
    window = WindowLimit(limit.last_report, limit._fallback_window_s, limit._clock)
    window.window_s = limit.window_s
    window._largest_reset_s = max(window._largest_reset_s, limit._largest_reset_s)
    for at_s, amount in limit.sends:
        window.take_over(at_s, amount)
    window.observe(limit.last_report, limit.last_age_s)
    return window


def learned_limit(
    report: Report, *, continuous: bool, fallback_window_s: float, clock: Clock
) -> LearnedLimit:
    """The model the family calls for, started from its first report."""
    cls = RefillLimit if continuous else WindowLimit
    return cls(report, fallback_window_s, clock)
