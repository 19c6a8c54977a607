"""The rate governor: configured limits as hard caps, server reports as further gates.

Pure logic over an injectable clock (the running loop's by default, llmbatch/clock.py): no
I/O, no sleeping. Callers turn the returned wait times into ``asyncio.sleep`` calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from llmbatch.clock import now
from llmbatch.pacing.bucket import Clock, TokenBucket, finite_nonneg
from llmbatch.pacing.headers import FAMILIES, HeaderFamily
from llmbatch.pacing.learned import LearnedLimit, RefillLimit, as_window, learned_limit
from llmbatch.pacing.retryafter import RetryAfterWindow

__all__ = ["LIMIT_NAMES", "RateGovernor", "stated_rates"]

LIMIT_NAMES = ("requests", "input_tokens", "output_tokens", "tokens")


def _costs(est_input: float, est_output: float) -> dict[str, float]:
    return {
        "requests": 1.0,
        "input_tokens": est_input,
        "output_tokens": est_output,
        "tokens": est_input + est_output,
    }


class RateGovernor:
    """Paces requests under configured limits and the limits the server reports.

    Configured limits (``rpm``, ``input_tpm``, ``output_tpm``, ``total_tpm`` per
    ``window_s``) are hard caps: each is a :class:`TokenBucket` refilling at
    ``limit / window_s`` per second, holding ``burst_s`` seconds' worth (servers measure
    in short windows too, so a 600 RPM cap starts with a burst of ~10 requests, not 600).
    Nothing the server says raises them.

    Server reports (:meth:`observe_headers`, read by ``family``) each become a
    :class:`LearnedLimit`: ``remaining`` can be spent now, by ``reset`` the budget is whole
    again, and between the two the family's refill model applies. Such a limit gates only
    while responses keep confirming it. The wait for a request is the longest over every
    gate and any pause from a 429.

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
        family: HeaderFamily | str = "generic",
        header_window_s: float | None = None,
        default_backoff_s: float = 1.0,
        clock: Clock = now,
        wall_clock: Clock = time.time,
    ) -> None:
        """Configure hard caps per ``window_s`` (None = no cap of ours).

        ``total_tpm`` limits input + output tokens together (OpenAI's TPM). ``family``
        names how rate-limit headers are read (see :mod:`llmbatch.pacing.headers`);
        ``header_window_s`` is the window the server's figures count over where the
        family's headers do not say. ``wall_clock`` (Unix time) reads absolute resets.
        """
        for name, value in (("window_s", window_s), ("burst_s", burst_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if header_window_s is not None and not (
            math.isfinite(header_window_s) and header_window_s > 0
        ):
            raise ValueError(f"header_window_s must be positive, got {header_window_s!r}")
        if not finite_nonneg(default_backoff_s):
            raise ValueError(f"default_backoff_s must be >= 0, got {default_backoff_s!r}")
        self._family = FAMILIES[family] if isinstance(family, str) else family
        self._window_s = float(window_s)
        self._header_window_s = header_window_s
        self._default_backoff_s = float(default_backoff_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._paused_until_s = -math.inf
        self._caps: dict[str, tuple[float, TokenBucket]] = {}
        burst_fraction = min(1.0, burst_s / window_s)
        for name, limit in zip(LIMIT_NAMES, (rpm, input_tpm, output_tpm, total_tpm), strict=True):
            if limit is None:
                continue
            if not (math.isfinite(limit) and limit > 0):
                raise ValueError(f"limit for {name} must be positive, got {limit!r}")
            bucket = TokenBucket(limit / window_s, limit * burst_fraction, clock)
            self._caps[name] = (float(limit), bucket)
        self._learned: dict[str, tuple[str, LearnedLimit]] = {}  # key -> (name, limit)
        # A server that says nothing but Retry-After: its windows, learned from 429s.
        self._bare = RetryAfterWindow(clock)

    @property
    def family(self) -> str:
        """The name of the header family this governor reads."""
        return self._family.name

    def paused_for_s(self) -> float:
        """Seconds left of a pause set by :meth:`on_rate_limited` (0.0 if none).

        A caller that was already sleeping on an earlier :meth:`reserve` when the 429 came
        checks this before sending.
        """
        pause_s = max(0.0, self._paused_until_s - self._clock())
        if self._bare.learned:
            pause_s = max(pause_s, self._bare.ticket_wait_s())
        return pause_s

    def reserve(self, est_input_tokens: int, est_output_tokens: int) -> float:
        """Reserve budget for one request; return seconds to wait before sending it.

        Every gate is charged now; the wait is the longest of their debts and any pause.
        """
        if est_input_tokens < 0 or est_output_tokens < 0:
            raise ValueError("token estimates must be >= 0")
        costs = _costs(est_input_tokens, est_output_tokens)
        wait_s = max(0.0, self._paused_until_s - self._clock())  # (not a ticket of before)
        for name, (_, bucket) in self._caps.items():
            wait_s = max(wait_s, bucket.reserve(costs[name]))
        for key in [k for k, (_, lim) in self._learned.items() if lim.expired()]:
            del self._learned[key]  # nothing confirmed it since its reset
        for name, learned in self._learned.values():
            wait_s = max(wait_s, learned.reserve(costs[name]))
        if not self._learned:  # (before any 429 this only marks the request unplanned)
            wait_s = max(wait_s, self._bare.reserve())
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
        deltas = {"input_tokens": delta_in, "output_tokens": delta_out}
        deltas["tokens"] = delta_in + delta_out
        for name, delta in deltas.items():
            if delta == 0:
                continue
            cap = self._caps.get(name)
            if cap is not None:
                if delta > 0:
                    cap[1].charge(delta)
                else:
                    cap[1].refund(-delta)
            for lname, learned in self._learned.values():
                if lname == name:
                    learned.adjust(delta)
                    if delta > 0 and learned.rate_per_s > 0:
                        # Requests already waiting were timed on the estimate: all of
                        # them go that much later.
                        start = max(self._paused_until_s, self._clock())
                        self._paused_until_s = start + delta / learned.rate_per_s

    def on_rate_limited(self, retry_after_s: float | None, *, age_s: float | None = None) -> None:
        """A 429 arrived: pause everything for ``retry_after_s`` (or the default backoff).

        Besides the pause floor, each configured bucket is put in debt worth the pause, so
        the requests queued during it are released at the cap's rate afterwards, not all at
        once; every learned limit is emptied (its next allowance comes at its reset).
        From a server that sends no rate-limit headers, ``retry_after_s`` and ``age_s``
        (since the refused request was sent) teach its windows (:mod:`retryafter`).
        """
        pause_s = self._default_backoff_s
        if retry_after_s is not None and finite_nonneg(retry_after_s):
            pause_s = retry_after_s
            if not self._learned and age_s is not None and finite_nonneg(age_s):
                # Nothing but Retry-After: it names the end of the server's window.
                self._bare.refused(self._clock() - age_s, retry_after_s)
        self._paused_until_s = max(self._paused_until_s, self._clock() + pause_s)
        for _, bucket in self._caps.values():
            bucket.set_available(-bucket.rate_per_s * pause_s)
        for _, learned in self._learned.values():
            learned.empty()

    def observe_headers(
        self,
        headers: Mapping[str, str],
        *,
        age_s: float | None = None,
        refused: bool = False,
        received_ago_s: float = 0.0,
    ) -> bool:
        """Learn from a response's rate-limit headers, read as the governor's family says.

        Each limit reported (limit, remaining, reset) restates a learned gate: what is
        ``remaining`` can be spent now (less what we sent since, which the server could
        not count yet), and by ``reset`` the whole limit is back. ``age_s``, when known,
        is how long ago the request that got this answer was sent: it tells which of our
        sends the figures include. Keys are case-insensitive; malformed values ignored.
        True when the headers reported any limit. ``refused``: the answer was a 429
        (else it counts as one the server admitted, for windows learned from 429s).
        ``received_ago_s``: the headers arrived that long ago (a cluster's workers send
        them on with their next call): their resets are that much nearer now.
        """
        if not refused and age_s is not None and finite_nonneg(age_s):
            self._bare.admitted(self._clock() - age_s)
        if not headers:
            return False
        delay_s = received_ago_s if finite_nonneg(received_ago_s) else 0.0
        reports = self._family.read(headers, self._wall_clock() - delay_s, self._header_window_s)
        if delay_s:
            reports = [
                r if r.reset_s is None else replace(r, reset_s=max(0.0, r.reset_s - delay_s))
                for r in reports
            ]
        for report in reports:
            entry = self._learned.get(report.key)
            if entry is None:
                learned = learned_limit(
                    report,
                    continuous=self._family.continuous,
                    fallback_window_s=self._window_s,
                    clock=self._clock,
                )
                if learned.limit > 0:
                    self._learned[report.key] = (report.name, learned)
            else:
                name, known = entry
                known.observe(report, age_s)
                if isinstance(known, RefillLimit) and known.refuted:
                    self._learned[report.key] = (name, as_window(known))
        return bool(reports)

    def snapshot(self) -> dict[str, Any]:
        """Current limits, rates and balances, for a progress display.

        ``{"paused_for_s", "window_s", "family", "limits": {key: {"limit", "source",
        "rate_per_s", "capacity", "available", "server_remaining", "server_reset_in_s"}}}``,
        and for server reports ``stated_rate_per_s`` (the rate their figures state).
        Configured caps are keyed by name (requests, input_tokens, output_tokens, tokens),
        server reports by ``server:`` + name + their window when known
        ("server:requests/86400s").
        """
        now_s = self._clock()
        limits: dict[str, dict[str, Any]] = {}
        for name, (limit, bucket) in self._caps.items():
            limits[name] = {
                "limit": limit,
                "source": "config",
                "rate_per_s": bucket.rate_per_s,
                "capacity": bucket.capacity,
                "available": bucket.available,
                "server_remaining": None,
                "server_reset_in_s": None,
            }
        for key, (_, learned) in self._learned.items():
            limits[f"server:{key}"] = {
                "limit": learned.limit,
                "source": "server",
                "rate_per_s": learned.rate_per_s,
                "stated_rate_per_s": learned.stated_rate_per_s,
                "capacity": learned.limit,
                "available": learned.available,
                "server_remaining": learned.remaining,
                "server_reset_in_s": max(0.0, learned.reset_at_s - now_s),
            }
        if self._bare.learned and self._bare.window_s and not self._learned:
            limits["server:requests/retry-after"] = {
                "limit": self._bare.limit,
                "source": "server",
                "rate_per_s": (self._bare.limit or 0) / self._bare.window_s,
                "capacity": self._bare.limit,
                "available": None,
                "server_remaining": None,
                "server_reset_in_s": None,
            }
        return {
            "paused_for_s": self.paused_for_s(),
            "window_s": self._window_s,
            "family": self._family.name,
            "limits": limits,
        }


def stated_rates(snapshot: dict[str, Any]) -> dict[str, float]:
    """The rate each limit of a :meth:`RateGovernor.snapshot` allows, per second, by name
    (requests, input_tokens, output_tokens, tokens): the strictest where several limits
    share a name (a configured cap and the server's, or per minute and per day)."""
    rates: dict[str, float] = {}
    for key, entry in (snapshot.get("limits") or {}).items():
        name = str(key).removeprefix("server:").partition("/")[0]
        rate = entry.get("stated_rate_per_s", entry.get("rate_per_s"))
        if name in LIMIT_NAMES and isinstance(rate, (int, float)) and rate > 0:
            rates[name] = min(rates.get(name, math.inf), float(rate))
    return rates
