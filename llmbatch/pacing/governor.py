"""The rate governor: configured limits as hard caps, server reports as further gates.

Pure logic over an injectable clock (``time.monotonic`` by default): no I/O, no sleeping.
Callers turn the returned wait times into ``asyncio.sleep`` calls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from llmbatch.pacing.bucket import Clock, TokenBucket, finite_nonneg
from llmbatch.pacing.headers import FAMILIES, HeaderFamily
from llmbatch.pacing.learned import LearnedLimit, learned_limit

__all__ = ["LIMIT_NAMES", "RateGovernor"]

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
        clock: Clock = time.monotonic,
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

    @property
    def family(self) -> str:
        """The name of the header family this governor reads."""
        return self._family.name

    def paused_for_s(self) -> float:
        """Seconds left of a pause set by :meth:`on_rate_limited` (0.0 if none).

        A caller that was already sleeping on an earlier :meth:`reserve` when the 429 came
        checks this before sending.
        """
        return max(0.0, self._paused_until_s - self._clock())

    def reserve(self, est_input_tokens: int, est_output_tokens: int) -> float:
        """Reserve budget for one request; return seconds to wait before sending it.

        Every gate is charged now; the wait is the longest of their debts and any pause.
        """
        if est_input_tokens < 0 or est_output_tokens < 0:
            raise ValueError("token estimates must be >= 0")
        costs = _costs(est_input_tokens, est_output_tokens)
        wait_s = self.paused_for_s()
        for name, (_, bucket) in self._caps.items():
            wait_s = max(wait_s, bucket.reserve(costs[name]))
        for key in [k for k, (_, lim) in self._learned.items() if lim.expired()]:
            del self._learned[key]  # nothing confirmed it since its reset
        for name, learned in self._learned.values():
            wait_s = max(wait_s, learned.reserve(costs[name]))
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

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """A 429 arrived: pause everything for ``retry_after_s`` (or the default backoff).

        Besides the pause floor, each configured bucket is put in debt worth the pause, so
        the requests queued during it are released at the cap's rate afterwards, not all at
        once; every learned limit is emptied (its next allowance comes at its reset).
        """
        pause_s = self._default_backoff_s
        if retry_after_s is not None and finite_nonneg(retry_after_s):
            pause_s = retry_after_s
        self._paused_until_s = max(self._paused_until_s, self._clock() + pause_s)
        for _, bucket in self._caps.values():
            bucket.set_available(-bucket.rate_per_s * pause_s)
        for _, learned in self._learned.values():
            learned.empty()

    def observe_headers(self, headers: Mapping[str, str], *, age_s: float | None = None) -> None:
        """Learn from a response's rate-limit headers, read as the governor's family says.

        Each limit reported (limit, remaining, reset) restates a learned gate: what is
        ``remaining`` can be spent now (less what we sent since, which the server could
        not count yet), and by ``reset`` the whole limit is back. ``age_s``, when known,
        is how long ago the request that got this answer was sent: it tells which of our
        sends the figures include. Keys are case-insensitive; malformed values ignored.
        """
        if not headers:
            return
        reports = self._family.read(headers, self._wall_clock(), self._header_window_s)
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
                entry[1].observe(report, age_s)

    def snapshot(self) -> dict[str, Any]:
        """Current limits, rates and balances, for a progress display.

        ``{"paused_for_s", "window_s", "family", "limits": {key: {"limit", "source",
        "rate_per_s", "capacity", "available", "server_remaining", "server_reset_in_s"}}}``.
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
                "capacity": learned.limit,
                "available": learned.available,
                "server_remaining": learned.remaining,
                "server_reset_in_s": max(0.0, learned.reset_at_s - now_s),
            }
        return {
            "paused_for_s": self.paused_for_s(),
            "window_s": self._window_s,
            "family": self._family.name,
            "limits": limits,
        }
