"""The mock's front-end-independent core: counters, waiters, plans, faults, rate limits.

Everything a request handler decides before it writes bytes lives here, as plain
classes over ``Mapping`` headers, so an aiohttp handler and an ASGI one can share it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from llmbatch.mockserver.answers import answer_length, count_prompt_tokens, prompt_key
from llmbatch.mockserver.clock import loop_now
from llmbatch.mockserver.config import MockConfig
from llmbatch.mockserver.faults import FaultPicker, int_header
from llmbatch.mockserver.ratelimits import Admission, Clock, MockRateLimits

__all__ = ["Arrival", "MockState", "MockStats", "Plan"]

Waiters = list[tuple[int, asyncio.Future[None]]]
# How much of a prompt answered twice names it in MockStats.answered_twice.
_LABEL_CHARS = 200


def _resolve(waiters: Waiters, value: int) -> Waiters:
    """Wake the waiters whose target ``value`` has reached; return the others."""
    keep = []
    for target, fut in waiters:
        if value >= target:
            if not fut.done():
                fut.set_result(None)
        else:
            keep.append((target, fut))
    return keep


async def _wait_for(waiters: Waiters, target: int) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append((target, fut))
    await fut


@dataclass(slots=True)
class MockStats:
    """Counters exposed at GET /mock/stats."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    completed: int = 0
    rate_limited: int = 0  # 429s from the configured rate limits (not injected faults)
    early_retries: int = 0  # retries of a prompt that came before its Retry-After
    connections: int = 0  # TLS connections opened (handshakes); 0 over cleartext
    # HTTP/2 streams refused unprocessed (opened after the connection's GOAWAY).
    streams_refused: int = 0
    # Token usage the answers sent in full reported (what a provider would bill).
    usage_input_tokens: int = 0
    usage_output_tokens: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    # (monotonic time, tokens) of every request admitted under a rate limit.
    admitted: list[tuple[float, int]] = field(default_factory=list)
    # Monotonic times of the rate limits' 429s.
    refused: list[float] = field(default_factory=list)
    # Per prompt (keyed by the hash of its messages, so a huge prompt is not kept): how
    # many requests for it arrived, and how many answers to it went out in full. A
    # prompt answered in full twice was billed twice by a real provider.
    started_by_prompt: dict[int, int] = field(default_factory=dict)
    answered_by_prompt: dict[int, int] = field(default_factory=dict)
    # The prompts answered in full more than once: their messages (JSON, cut to
    # _LABEL_CHARS) -> answers sent in full.
    answered_twice: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "completed": self.completed,
            "rate_limited": self.rate_limited,
            "early_retries": self.early_retries,
            "connections": self.connections,
            "streams_refused": self.streams_refused,
            "usage_input_tokens": self.usage_input_tokens,
            "usage_output_tokens": self.usage_output_tokens,
            "faults": dict(self.faults),
            "prompts_started": len(self.started_by_prompt),
            "prompts_answered": len(self.answered_by_prompt),
            "prompts_started_twice": sum(1 for n in self.started_by_prompt.values() if n > 1),
            "answered_twice": dict(self.answered_twice),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """How one answer is streamed: token count, whether max_tokens cut it, timing."""

    n: int
    capped: bool
    ttft: float
    itl: float
    t0: float
    # How much slower than planned the server runs now (>= 1; MockConfig.capacity).
    slowdown: Callable[[], float] = lambda: 1.0


class Arrival(NamedTuple):
    """What ``MockState.take`` made of one request."""

    key: bytes  # the prompt's key (prompt_key)
    plan: Plan
    input_tokens: int
    verdict: Admission
    fault: str | None  # None also when not admitted


class MockState:
    """Shared by every request of one mock server."""

    def __init__(
        self, cfg: MockConfig, clock: Clock = loop_now, wall_clock: Clock = time.time
    ) -> None:
        """``clock`` (and ``wall_clock``, Unix time) are the rate limits' and their log's."""
        self.cfg = cfg
        self.stats = MockStats()
        self.faults = FaultPicker(cfg)
        self._clock = clock
        self.limits = MockRateLimits(cfg, clock, wall_clock)
        self._not_before: dict[bytes, float] = {}  # prompt -> earliest allowed retry
        self._waiters: Waiters = []
        self._flight_waiters: Waiters = []

    def reset(self) -> None:
        """POST /mock/reset: fresh counters and attempt counts (limits keep their state)."""
        self.stats = MockStats()
        self.faults.clear()
        self._not_before.clear()

    def key_accepted(self, headers: Mapping[str, str]) -> bool:
        """True when the server needs no key or the request carries it."""
        want = self.cfg.api_key
        if want is None:
            return True
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        return want in (bearer, headers.get("x-api-key"))

    # -- counting ----------------------------------------------------------------------
    def begin(self) -> None:
        """A request arrived (before its body is read)."""
        st = self.stats
        st.requests += 1
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        if self._flight_waiters:
            self._flight_waiters = _resolve(self._flight_waiters, st.in_flight)

    def end(self) -> None:
        """The request's handler returned (answered, failed or cut)."""
        self.stats.in_flight -= 1

    def completed(self, key: bytes, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """The answer to prompt ``key`` (answers.prompt_key) went out in full, reporting
        this usage (0s: it reported none)."""
        st = self.stats
        st.completed += 1
        st.usage_input_tokens += input_tokens
        st.usage_output_tokens += output_tokens
        h = hash(key)
        n = st.answered_by_prompt[h] = st.answered_by_prompt.get(h, 0) + 1
        if n > 1:
            label = key[:_LABEL_CHARS].decode("utf-8", "replace")
            st.answered_twice[label] = n
        if self._waiters:
            self._waiters = _resolve(self._waiters, self.stats.completed)

    async def wait_completed(self, count: int) -> None:
        """Return once ``count`` answers were sent in full (for tests: no polling)."""
        if self.stats.completed < count:
            await _wait_for(self._waiters, count)

    async def wait_in_flight(self, count: int) -> None:
        """Return once ``count`` requests are being answered at the same time."""
        if self.stats.in_flight < count:
            await _wait_for(self._flight_waiters, count)

    # -- decisions ---------------------------------------------------------------------
    def plan(self, headers: Mapping[str, str], cap: Any, t0: float, key: bytes = b"") -> Plan:
        """Token count and timing, from the config and ``x-mock-*`` request headers
        (``key``: the prompt, which picks the length within ``tokens_spread``)."""
        cfg = self.cfg
        tokens = answer_length(key, cfg.tokens, cfg.tokens_spread)
        n = int_header(headers, "x-mock-tokens", tokens) or tokens
        capped = isinstance(cap, int) and not isinstance(cap, bool) and 0 < cap < n
        ttft_ms = int_header(headers, "x-mock-ttft-ms", None)
        itl_ms = int_header(headers, "x-mock-itl-ms", None)
        return Plan(
            n=cap if capped else n,
            capped=capped,
            ttft=cfg.ttft_s if ttft_ms is None else ttft_ms / 1000.0,
            itl=cfg.itl_s if itl_ms is None else itl_ms / 1000.0,
            t0=t0,
            slowdown=self.slowdown,
        )

    def slowdown(self) -> float:
        """in flight / capacity when more than ``capacity`` streams are served, else 1."""
        cap = self.cfg.capacity
        in_flight = self.stats.in_flight
        return in_flight / cap if cap is not None and in_flight > cap else 1.0

    def arrived(self, key: bytes) -> None:
        """A request for prompt ``key`` arrived: counted per prompt, and noted when it is a
        retry that came before the Retry-After it was given."""
        started = self.stats.started_by_prompt
        h = hash(key)
        started[h] = started.get(h, 0) + 1
        not_before = self._not_before.pop(key, None)
        # 1 ms of slack: Retry-After travels as whole milliseconds.
        if not_before is not None and loop_now() < not_before - 0.001:
            self.stats.early_retries += 1

    def told_to_wait(self, key: bytes, seconds: float) -> None:
        """A 429 told the client to retry ``key`` no earlier than ``seconds`` from now."""
        self._not_before[key] = loop_now() + seconds

    def fault_for(self, key: bytes, headers: Mapping[str, str]) -> str | None:
        """The fault this attempt gets (counted in stats), or None."""
        fault = self.faults.pick(key, headers)
        if fault:
            self.stats.faults[fault] = self.stats.faults.get(fault, 0) + 1
        return fault

    def admit(
        self, key: bytes, input_tokens: int, output_tokens: int, style: str = "openai"
    ) -> Admission:
        """Rate-limit admission for one request; refusals are counted.

        A refusal's headers carry Retry-After (``retry-after-ms`` and ``retry-after``).
        """
        cap = self.cfg.max_in_flight
        if cap is not None and self.stats.in_flight > cap:  # this request is counted in
            self.stats.rate_limited += 1
            headers: dict[str, str] = {}
            self.told_to_wait(key, retry_after_headers(self.cfg.retry_after_s, headers))
            return Admission(headers=headers, retry_after_s=self.cfg.retry_after_s)
        if not self.limits.active:
            return Admission()
        verdict = self.limits.admit(input_tokens, output_tokens, style)
        if verdict.retry_after_s is None:
            self.stats.admitted.append((self._clock(), input_tokens + output_tokens))
        else:
            self.stats.rate_limited += 1
            self.stats.refused.append(self._clock())
            self.told_to_wait(key, retry_after_headers(verdict.retry_after_s, verdict.headers))
        return verdict

    def finished(self, output_tokens: int) -> None:
        """An admitted answer ended: limits that count output at the end charge it."""
        self.limits.finish(output_tokens)

    def take(
        self, headers: Mapping[str, str], messages: Any, cap: Any, t0: float, style: str = "openai"
    ) -> Arrival:
        """One request as every endpoint takes it: its prompt's key, its plan (``cap``: the
        request's own output limit), a retry that came early noted, rate-limit admission,
        and, when admitted, the fault it gets."""
        key = prompt_key(messages)
        plan = self.plan(headers, cap, t0, key)
        self.arrived(key)
        input_tokens = count_prompt_tokens(messages)
        verdict = self.admit(key, input_tokens, plan.n, style=style)
        fault = self.fault_for(key, headers) if verdict.admitted else None
        return Arrival(key, plan, input_tokens, verdict, fault)

    def answered(
        self, key: bytes, planned_tokens: int, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """An admitted answer to prompt ``key`` of ``planned_tokens`` went out in full,
        reporting this usage (0s: it reported none): ``finished``, then ``completed``."""
        self.finished(planned_tokens)
        self.completed(key, input_tokens, output_tokens)

    def fault_429_headers(self, key: bytes) -> dict[str, str]:
        """Headers of an injected 429: Retry-After plus the configured ``fault_headers``."""
        headers = dict(self.cfg.fault_headers)
        self.told_to_wait(key, retry_after_headers(self.cfg.retry_after_s, headers))
        return headers


def retry_after_headers(seconds: float, headers: dict[str, str]) -> float:
    """Add ``retry-after-ms`` and ``retry-after`` (whole seconds, rounded up) to ``headers``.

    Returns the wait a client honouring the headers observes (the millisecond figure).
    """
    ms = max(1, math.ceil(seconds * 1000))
    headers.setdefault("retry-after-ms", str(ms))
    headers.setdefault("retry-after", str(max(1, math.ceil(seconds))))
    return int(headers["retry-after-ms"]) / 1000.0
