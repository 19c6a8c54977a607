"""Per-request timings and run aggregates, with vLLM's benchmark definitions.

- queue_s: record taken from the input -> request sent (slot and rate-limit waits).
- ttft_s: request sent -> first chunk with a token of any kind, reasoning or answer
  (vLLM counts a reasoning token as a token).
- answer_ttft_s: request sent -> first chunk with answer text (after the reasoning);
  the same as ttft_s for a model that does not reason aloud.
- e2el_s: request sent -> last chunk with a token.
- itl_s: gaps between consecutive token chunks (pooled over requests for the run).
- tpot_s: (e2el - ttft) / (output_tokens - 1).
- output_tokens: the server's usage when sent, else the number of token chunks
  (flagged ``output_tokens_estimated``); input_tokens: the server's usage or None.
- reasoning_tokens: the reasoning share of output_tokens, from the usage details when
  the server sends them (``completion_tokens_details.reasoning_tokens``, Anthropic's
  ``output_tokens_details.thinking_tokens``, ...), else the number of reasoning chunks
  (flagged ``reasoning_tokens_estimated``); None for an answer without reasoning.
- cost: the records' costs (pricing/), per 1,000 requests and per million output tokens.
- peak output tokens/s: each request's output tokens spread evenly over its streaming
  time (first to last content chunk), summed in 1 s buckets from the run start; the
  largest complete bucket (a run shorter than 1 s: its mean rate).

Run percentiles come from log-bucketed histograms (1% relative resolution), so
memory stays constant however many requests a run has.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llmbatch.clock import now
from llmbatch.records import Cost, Outcome, RequestMetrics

__all__ = [
    "SLO",
    "CostTotals",
    "Histogram",
    "RunMetrics",
    "format_cost",
    "format_usd",
    "itl_summary",
    "request_metrics_dict",
    "spread_tokens",
]

PERCENTILES = (50, 90, 95, 99)
INPUT_ERROR = "input_error"  # the error code of a prompt line that could not become a request
_LOG_STEP = math.log(1.01)
_MIN_S = 1e-6


def _bucket(value_s: float) -> int:
    """The log bucket of a value (values under 1 µs share the lowest)."""
    v = value_s if value_s > _MIN_S else _MIN_S
    # floor, not int(): int() truncates toward zero, which merged the two buckets
    # around 1 s and put the midpoint of every sub-second bucket above its range.
    return math.floor(math.log(v) / _LOG_STEP)


_FLOOR_BUCKET = _bucket(_MIN_S)


# Values of add_many() are bucketed in batches of about this many (sorted together, the
# values of many requests share few buckets: one bisect per bucket instead of a log()
# per value).
_FOLD_AT = 8192


class Histogram:
    """Constant-memory histogram of positive durations; percentiles within ~1%."""

    __slots__ = ("_buckets", "_pending", "count", "total", "min", "max")

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self._pending: list[float] = []  # values of add_many() not bucketed yet
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def add(self, value_s: float) -> None:
        """Record one value (seconds)."""
        self._buckets[_bucket(value_s)] += 1
        self.count += 1
        self.total += value_s
        if value_s < self.min:
            self.min = value_s
        if value_s > self.max:
            self.max = value_s

    def add_many(self, values_s: list[float]) -> None:
        """Record several values (the pooled ITL: one per streamed token).

        Count, total, min and max are updated at once; the values are bucketed in
        batches (``_FOLD_AT``), before any percentile is read.
        """
        n = len(values_s)
        if not n:
            return
        self.count += n
        self.total += sum(values_s)
        lo, hi = min(values_s), max(values_s)
        if lo < self.min:
            self.min = lo
        if hi > self.max:
            self.max = hi
        pending = self._pending
        pending += values_s
        if len(pending) >= _FOLD_AT:
            self._fold()

    def _fold(self) -> None:
        """Bucket the pending values: sorted once; where they span few buckets (steady
        streams), each bucket's share is counted with one bisect."""
        s = self._pending
        if not s:
            return
        self._pending = []
        s.sort()
        n = len(s)
        buckets = self._buckets
        # Gaps of deltas that came in one read are 0: all of them share the floor bucket.
        i = bisect_right(s, _MIN_S)
        if i:
            buckets[_FLOOR_BUCKET] += i
        lo, hi = max(s[i] if i < n else _MIN_S, _MIN_S), max(s[-1], _MIN_S)
        if i == n:
            pass
        elif (math.log(hi / lo) / _LOG_STEP + 1) * 4 < n - i:
            while i < n:
                b = _bucket(s[i])
                j = bisect_left(s, math.exp((b + 1) * _LOG_STEP), i + 1)
                # exp() and log() may round differently right at an edge: the formula
                # in _bucket decides, as for add().
                while j > i + 1 and _bucket(s[j - 1]) != b:
                    j -= 1
                while j < n and _bucket(s[j]) == b:
                    j += 1
                buckets[b] += j - i
                i = j
        else:
            for v in s[i:]:
                buckets[math.floor(math.log(v) / _LOG_STEP)] += 1

    def bucket_counts(self) -> dict[int, int]:
        """How many values each log bucket holds (bucket k: [1.01^k, 1.01^(k+1)) s)."""
        self._fold()
        return dict(self._buckets)

    def percentile(self, p: float) -> float | None:
        """The p-th percentile (bucket midpoint, clamped to the observed range)."""
        if not self.count:
            return None
        self._fold()
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for b in sorted(self._buckets):
            seen += self._buckets[b]
            if seen >= rank:
                mid = math.exp((b + 0.5) * _LOG_STEP)
                return min(max(mid, self.min), self.max)
        return self.max

    def summary(self) -> dict[str, float | None]:
        """mean and p50/p90/p95/p99, rounded to microseconds."""
        out: dict[str, float | None] = {"mean": _r(self.total / self.count) if self.count else None}
        for p in PERCENTILES:
            out[f"p{p}"] = _r(self.percentile(p))
        return out


@dataclass(frozen=True, slots=True)
class SLO:
    """Service-level objectives for goodput; None means not constrained."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2el_s: float | None = None

    def met_by(self, m: RequestMetrics) -> bool:
        """True when a successful request's metrics meet every set objective."""
        if self.ttft_s is not None and (m.ttft_s is None or m.ttft_s > self.ttft_s):
            return False
        tpot = m.tpot_s
        if self.tpot_s is not None and tpot is not None and tpot > self.tpot_s:
            return False
        return not (self.e2el_s is not None and (m.e2el_s is None or m.e2el_s > self.e2el_s))

    @property
    def active(self) -> bool:
        """True when any objective is set."""
        return any(v is not None for v in (self.ttft_s, self.tpot_s, self.e2el_s))


def itl_summary(itl_s: list[float]) -> dict[str, float | None]:
    """Per-request ITL summary written to the result record (mean, p50, p99, max)."""
    if not itl_s:
        return {"mean": None, "p50": None, "p99": None, "max": None}
    s = sorted(itl_s)
    n = len(s)
    return {
        "mean": _r(sum(s) / n),
        "p50": _r(s[(n - 1) // 2]),
        "p99": _r(s[min(n - 1, math.ceil(n * 0.99) - 1)]),
        "max": _r(s[-1]),
    }


def request_metrics_dict(m: RequestMetrics) -> dict[str, Any]:
    """The per-request metrics object of a result record."""
    return {
        "queue_s": _r(m.queue_s),
        "ttft_s": _r(m.ttft_s),
        "e2el_s": _r(m.e2el_s),
        "tpot_s": _r(m.tpot_s),
        "itl_s": itl_summary(m.itl_s),
        "output_tokens": m.output_tokens,
        "output_tokens_estimated": m.output_tokens_estimated,
        "input_tokens": m.input_tokens,
        "chunks": m.chunks,
        "http_version": m.http_version,
        "answer_ttft_s": _r(m.answer_ttft_s),
        "reasoning_tokens": m.reasoning_tokens,
        "reasoning_tokens_estimated": m.reasoning_tokens_estimated,
        "reasoning_chunks": m.reasoning_chunks,
    }


@dataclass
class RunMetrics:
    """Aggregates over a run, updated as each request finishes."""

    slo: SLO = field(default_factory=SLO)
    started_at: float = field(default_factory=now)
    started_wall: float = field(default_factory=time.time)
    ended_at: float | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    input_errors: int = 0
    retries: int = 0
    rate_limited: int = 0
    good: int = 0
    output_tokens: int = 0
    input_tokens: int = 0
    estimated_token_requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    attempt_errors: Counter[str] = field(default_factory=Counter)
    http_versions: Counter[str] = field(default_factory=Counter)  # of succeeded requests
    ttft: Histogram = field(default_factory=Histogram)
    answer_ttft: Histogram = field(default_factory=Histogram)
    reasoning_tokens: int = 0
    reasoning_requests: int = 0  # succeeded requests that reasoned (reasoning_tokens set)
    estimated_reasoning_requests: int = 0
    tpot: Histogram = field(default_factory=Histogram)
    itl: Histogram = field(default_factory=Histogram)
    e2el: Histogram = field(default_factory=Histogram)
    queue: Histogram = field(default_factory=Histogram)
    tokens_per_second_bucket: dict[int, float] = field(default_factory=dict)
    concurrency_limit: int | None = None
    # The rate each known limit allows, per second (requests, input_tokens, ...): the
    # configured caps and what the server stated, the strictest per name.
    rate_limits: dict[str, float] = field(default_factory=dict)
    # Records already in the run directory when this invocation started (a resume).
    done_before_succeeded: int = 0
    done_before_failed: int = 0
    done_before_cost_usd: float = 0.0
    cost: CostTotals = field(default_factory=lambda: CostTotals())

    def add(self, outcome: Outcome, *, finished_at: float | None = None) -> None:
        """Fold one finished request into the aggregates."""
        self.total += 1
        for a in outcome.attempts:
            if a.error is not None:
                self.attempt_errors[a.error] += 1
            if a.status == 429:
                self.rate_limited += 1
        self.retries += max(0, len(outcome.attempts) - 1)
        if outcome.error_code != INPUT_ERROR:
            self.cost.add(outcome.cost, outcome.metrics.output_tokens if outcome.ok else 0)
        if not outcome.ok:
            self.failed += 1
            self.errors[outcome.error_code or "unknown"] += 1
            if outcome.error_code == INPUT_ERROR:
                self.input_errors += 1
            return
        self.succeeded += 1
        m = outcome.metrics
        if m.http_version is not None:
            self.http_versions[m.http_version] += 1
        self.output_tokens += m.output_tokens
        self.input_tokens += m.input_tokens or 0
        if m.output_tokens_estimated:
            self.estimated_token_requests += 1
        # Rounded as the record holds them (request_metrics_dict), so that `llmbatch
        # report` recomputes the same percentiles from results.jsonl: a value within
        # a microsecond of a bucket edge would otherwise land in the next bucket there.
        if m.ttft_s is not None:
            self.ttft.add(round(m.ttft_s, 6))
        if m.answer_ttft_s is not None:
            self.answer_ttft.add(round(m.answer_ttft_s, 6))
        if m.reasoning_tokens is not None:
            self.reasoning_tokens += m.reasoning_tokens
            self.reasoning_requests += 1
            self.estimated_reasoning_requests += m.reasoning_tokens_estimated
        if m.e2el_s is not None:
            self.e2el.add(round(m.e2el_s, 6))
        tpot = m.tpot_s
        if tpot is not None:
            self.tpot.add(round(tpot, 6))
        self.itl.add_many(m.itl_s)
        self.queue.add(round(m.queue_s, 6))
        if self.slo.met_by(m):
            self.good += 1
        end = (finished_at or now()) - self.started_at
        stream_s = (m.e2el_s - m.ttft_s) if m.e2el_s is not None and m.ttft_s is not None else 0.0
        spread_tokens(self.tokens_per_second_bucket, end - stream_s, end, m.output_tokens)

    def forget(self, succeeded: int, failed: int) -> None:
        """Uncount finished requests whose records could not be saved (they run again)."""
        self.succeeded -= succeeded
        self.failed -= failed
        self.total -= succeeded + failed

    def add_input_error(self) -> None:
        """Count a prompt line that could not become a request (no record at hand)."""
        self.total += 1
        self.failed += 1
        self.input_errors += 1
        self.errors[INPUT_ERROR] += 1

    def summary(self) -> dict[str, Any]:
        """The run summary (summary.json and the end-of-run table)."""
        end = self.ended_at or now()
        dur = max(end - self.started_at, 1e-9)
        full_s = int(dur)  # buckets [k, k+1) with 0 <= k < full_s lie wholly inside the run
        if full_s >= 1:
            buckets = self.tokens_per_second_bucket.items()
            peak = round(max((v for k, v in buckets if 0 <= k < full_s), default=0.0))
        else:  # shorter than one bucket: the run's own rate
            peak = round(self.output_tokens / dur)
        out: dict[str, Any] = {
            "started_at": self.started_wall,
            "duration_s": _r(dur),
            "requests": {
                "total": self.total,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "skipped_already_done": self.skipped,
                "input_errors": self.input_errors,
                # This invocation's figures above; the whole run's record counts here
                # (`llmbatch report --recompute` gives whole-run timings too).
                "run_total_succeeded": self.done_before_succeeded + self.succeeded,
                "run_total_failed": self.done_before_failed + self.failed,
            },
            "retries": self.retries,
            "rate_limited_429": self.rate_limited,
            "errors_by_class": dict(self.errors),
            "attempt_errors_by_class": dict(self.attempt_errors),
            "http_versions": dict(self.http_versions),
            "throughput": {
                "requests_per_s": _r(self.succeeded / dur),
                "output_tokens_per_s": _r(self.output_tokens / dur),
                "total_tokens_per_s": _r((self.output_tokens + self.input_tokens) / dur),
                "peak_output_tokens_per_s": peak,
            },
            "tokens": {
                "output": self.output_tokens,
                "input": self.input_tokens,
                "requests_with_estimated_output_tokens": self.estimated_token_requests,
                "reasoning": self.reasoning_tokens,
                "requests_with_reasoning": self.reasoning_requests,
                "requests_with_estimated_reasoning_tokens": self.estimated_reasoning_requests,
            },
            "latency_s": {
                "ttft": self.ttft.summary(),
                "answer_ttft": self.answer_ttft.summary(),
                "tpot": self.tpot.summary(),
                "itl": self.itl.summary(),
                "e2el": self.e2el.summary(),
                "queue": self.queue.summary(),
            },
        }
        out["cost"] = self.cost.summary(self.done_before_cost_usd)
        if self.concurrency_limit is not None:
            out["concurrency_limit"] = self.concurrency_limit
        if self.rate_limits:
            out["rate"] = rate_used(
                self.succeeded, self.input_tokens, self.output_tokens, dur, self.rate_limits
            )
        if self.slo.active:
            out["goodput"] = {
                "slo": {
                    "ttft_s": self.slo.ttft_s,
                    "tpot_s": self.slo.tpot_s,
                    "e2el_s": self.slo.e2el_s,
                },
                "good_requests": self.good,
                "requests_per_s": _r(self.good / dur),
            }
        return out


_COST_PARTS = ("input_usd", "cached_input_usd", "cache_write_usd", "output_usd", "reasoning_usd")


class CostTotals:
    """What a run's requests cost: totals, parts, and what could not be priced."""

    __slots__ = (
        "usd",
        "parts",
        "priced",
        "unpriced",
        "estimated",
        "output_tokens",
        "sources",
        "unpriced_models",
        "max_usd",
    )

    def __init__(self) -> None:
        self.usd = 0.0
        self.parts = dict.fromkeys(_COST_PARTS, 0.0)
        self.priced = 0  # requests with a cost
        self.unpriced = 0  # requests whose model has no known price
        self.estimated = 0  # priced from counted or assumed tokens (no usage reported)
        self.output_tokens = 0  # of the priced requests that succeeded
        self.sources: Counter[str] = Counter()
        self.unpriced_models: list[str] = []  # set by the batch (the engine's PriceBook)
        self.max_usd: float | None = None  # the budget, when there is one

    def add(self, cost: Cost | None, output_tokens: int) -> None:
        """Count one request's cost (None: its model has no price)."""
        if cost is None:
            self.unpriced += 1
            return
        self.priced += 1
        self.usd += cost.usd
        parts = self.parts
        parts["input_usd"] += cost.input_usd
        parts["cached_input_usd"] += cost.cached_input_usd
        parts["cache_write_usd"] += cost.cache_write_usd
        parts["output_usd"] += cost.output_usd
        parts["reasoning_usd"] += cost.reasoning_usd
        if cost.estimated:
            self.estimated += 1
        self.output_tokens += output_tokens
        self.sources[cost.source] += 1

    def per_request_usd(self) -> float | None:
        """Mean cost of a priced request so far (the projection's basis)."""
        return self.usd / self.priced if self.priced else None

    def summary(self, done_before_usd: float = 0.0) -> dict[str, Any]:
        """summary.json's ``cost`` object (USD; null figures when nothing was priced)."""
        priced = self.priced
        usd = self.usd if priced else None
        return {
            "usd": _usd(usd),
            "per_1k_requests_usd": _usd(self.usd / priced * 1000) if priced else None,
            "per_million_output_tokens_usd": _usd(self.usd / self.output_tokens * 1e6)
            if self.output_tokens
            else None,
            **{k: _usd(v) if priced else None for k, v in self.parts.items()},
            "priced_requests": priced,
            "unpriced_requests": self.unpriced,
            "estimated_requests": self.estimated,
            "sources": dict(self.sources),
            "unpriced_models": list(self.unpriced_models),
            # The whole run's cost, resumed sessions included (what max_cost counts).
            "run_total_usd": _usd(done_before_usd + self.usd)
            if priced or done_before_usd
            else None,
            "max_cost_usd": self.max_usd,
        }


def format_cost(cost: dict[str, Any] | None) -> str | None:
    """The summary's cost in one line: total, per 1k requests, per million output tokens,
    and what could not be priced (a model without a price gets no made-up figure)."""
    if not cost:
        return None
    parts: list[str] = []
    if cost.get("usd") is not None:
        line = (
            f"cost: {format_usd(cost['usd'])} ({format_usd(cost['per_1k_requests_usd'])} per 1k "
            f"requests, {format_usd(cost['per_million_output_tokens_usd'])} per million output "
            "tokens"
        )
        if cost.get("estimated_requests"):
            line += f"; {cost['estimated_requests']} estimated: no usage reported"
        parts.append(line + ")")
        run_total = cost.get("run_total_usd")
        if run_total is not None and run_total != cost["usd"]:
            parts.append(f"whole run {format_usd(run_total)}")
        if cost.get("max_cost_usd") is not None:
            parts.append(f"budget {format_usd(cost['max_cost_usd'])}")
    if cost.get("unpriced_requests"):
        models = ", ".join(cost.get("unpriced_models") or []) or "?"
        parts.append(
            f"{'cost: ' if not parts else ''}{cost['unpriced_requests']} requests not priced "
            f"(no price for {models}: see `llmbatch prices`)"
        )
    return ", ".join(parts) if parts else None


def format_usd(usd: float | None) -> str:
    """Money for people: ``$0.004262``, ``$1.691``, ``$12,345.68``; ``-`` when unknown."""
    if usd is None:
        return "-"
    if usd == 0:
        return "$0"
    return f"${usd:,.2f}" if abs(usd) >= 1000 else f"${usd:.4g}"


def _usd(v: float | None) -> float | None:
    return None if v is None else round(v, 8)


def spread_tokens(buckets: dict[int, float], first_s: float, last_s: float, tokens: int) -> None:
    """Add ``tokens`` to 1 s ``buckets``, spread evenly over [first_s, last_s] (run time).

    A request's tokens are counted while they stream, not all in the second it ends,
    so the peak is a rate that was actually reached.
    """
    span = last_s - first_s
    if span <= 0 or math.floor(first_s) == math.floor(last_s):
        key = math.floor(last_s)
        buckets[key] = buckets.get(key, 0.0) + tokens
        return
    for sec in range(math.floor(first_s), math.floor(last_s) + 1):
        overlap = min(last_s, sec + 1) - max(first_s, sec)
        if overlap > 0:
            buckets[sec] = buckets.get(sec, 0.0) + tokens * overlap / span


def rate_used(
    succeeded: int,
    input_tokens: int,
    output_tokens: int,
    duration_s: float,
    rate_limits: dict[str, float],
) -> dict[str, dict[str, float | None]]:
    """summary.json's ``rate``: per known limit, the rate used against the rate it allows.

    Used = succeeded requests (or their tokens) over the run's duration, so a user sees
    whether the limit or the client was the bottleneck.
    """
    used = {
        "requests": succeeded,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "tokens": input_tokens + output_tokens,
    }
    dur = max(duration_s, 1e-9)
    return {
        name: {"used_per_s": _r(used[name] / dur), "limit_per_s": _r(limit_per_s)}
        for name, limit_per_s in rate_limits.items()
        if name in used
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)
