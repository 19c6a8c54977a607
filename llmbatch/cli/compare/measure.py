"""One step's figures, from its requests: warm-up and cool-down left out, vLLM's names.

Every finished request of a step becomes a :class:`Sample` (when it was sent, how it
went). :class:`Window` decides which samples count: the first and last part of a step
(by time, ``5s``; by count, ``20``; or by share, ``10%``) are excluded, as GuideLLM's
warm-up and cool-down. :func:`step_figures` turns the samples that count into the
fields of ``vllm bench serve``'s result JSON (``request_throughput``,
``output_throughput``, ``mean_ttft_ms``, ``median_tpot_ms``, ``p99_itl_ms``, ...), with
the same definitions: percentiles by linear interpolation, standard deviations over the
population, ITL pooled over every gap of every request.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmbatch.errors import ConfigError
from llmbatch.metrics import SLO
from llmbatch.records import Outcome

__all__ = ["PERCENTILES", "Sample", "Window", "percentile", "step_figures", "to_sample"]

PERCENTILES = (90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass(slots=True)
class Sample:
    """One finished request of a step; times in seconds from the step's start."""

    sent_s: float
    ok: bool
    error: str | None
    rate_limited: int  # 429 answers among its attempts
    ttft_s: float | None
    e2el_s: float | None
    tpot_s: float | None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    input_tokens: int = 0
    good: bool = False
    cost_usd: float | None = None  # None: its model has no known price

    @property
    def done_s(self) -> float:
        """When it finished (its send time for a request that failed before any answer)."""
        return self.sent_s + (self.e2el_s or 0.0)


def to_sample(o: Outcome, t0: float, slo: SLO) -> Sample:
    """The Sample of a finished request; ``t0`` is the step's start (perf_counter)."""
    m = o.metrics
    sent = m.sent_at if m.sent_at is not None else t0
    return Sample(
        sent_s=sent - t0,
        ok=o.ok,
        error=o.error_code,
        rate_limited=sum(1 for a in o.attempts if a.status == 429),
        ttft_s=m.ttft_s if o.ok else None,
        e2el_s=m.e2el_s if o.ok else None,
        tpot_s=m.tpot_s if o.ok else None,
        itl_s=list(m.itl_s) if o.ok else [],
        output_tokens=m.output_tokens if o.ok else 0,
        input_tokens=(m.input_tokens or 0) if o.ok else 0,
        good=o.ok and slo.active and slo.met_by(m),
        cost_usd=o.cost.usd if o.cost is not None else None,
    )


@dataclass(frozen=True, slots=True)
class Window:
    """What is left out at each end of a step: seconds, a request count or a share."""

    warmup: str = "0"
    cooldown: str = "0"

    def __post_init__(self) -> None:
        for flag, spec in (("--warmup", self.warmup), ("--cooldown", self.cooldown)):
            _parse_amount(spec, flag)

    def select(self, samples: Sequence[Sample]) -> tuple[list[Sample], int, int]:
        """(samples that count, excluded at the start, excluded at the end), in send order."""
        ordered = sorted(samples, key=lambda s: s.sent_s)
        n = len(ordered)
        if not n:
            return [], 0, 0
        first, last = ordered[0].sent_s, ordered[-1].sent_s
        lo, hi = 0, n
        kind, amount = _parse_amount(self.warmup, "--warmup")
        if kind == "s":
            while lo < n and ordered[lo].sent_s < first + amount:
                lo += 1
        else:
            lo = min(n, int(amount if kind == "n" else n * amount))
        kind, amount = _parse_amount(self.cooldown, "--cooldown")
        if kind == "s":
            while hi > lo and ordered[hi - 1].sent_s > last - amount:
                hi -= 1
        else:
            hi = max(lo, n - int(amount if kind == "n" else n * amount))
        return ordered[lo:hi], lo, n - hi

    def as_dict(self) -> dict[str, str]:
        """As recorded in compare.json."""
        return {"warmup": self.warmup, "cooldown": self.cooldown}


def _parse_amount(spec: str, flag: str) -> tuple[str, float]:
    """``5s`` -> ('s', 5.0); ``20`` -> ('n', 20); ``10%`` -> ('share', 0.1)."""
    text = spec.strip().lower()
    try:
        if text.endswith("%"):
            v = float(text[:-1]) / 100
            if not 0 <= v < 1:
                raise ValueError
            return "share", v
        if text.endswith("s"):
            v = float(text[:-1])
            if not v >= 0 or math.isinf(v):
                raise ValueError
            return "s", v
        n = int(text)
        if n < 0:
            raise ValueError
        return "n", float(n)
    except ValueError:
        raise ConfigError(
            f"{flag}: expected seconds (5s), a request count (20) or a share (10%), got {spec!r}"
        ) from None


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile with linear interpolation (numpy's default, as vLLM uses)."""
    n = len(sorted_values)
    if n == 1:
        return sorted_values[0]
    rank = (n - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def _distribution(name: str, values: list[float]) -> dict[str, float | None]:
    """mean/median/std/pNN of ``values`` (seconds) in ms, under vLLM's keys."""
    out: dict[str, float | None] = {}
    if not values:
        for stat in ("mean", "median", "std", *(f"p{p}" for p in PERCENTILES)):
            out[f"{stat}_{name}_ms"] = None
        return out
    values.sort()
    n = len(values)
    mean = sum(values) / n
    out[f"mean_{name}_ms"] = _ms(mean)
    out[f"median_{name}_ms"] = _ms(percentile(values, 50))
    out[f"std_{name}_ms"] = _ms(math.sqrt(sum((v - mean) ** 2 for v in values) / n))
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = _ms(percentile(values, p))
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def max_in_flight(samples: Sequence[Sample]) -> int:
    """The most requests in flight at once (successful ones, from send to last token)."""
    events = sorted(
        [(s.sent_s, 1) for s in samples if s.ok] + [(s.done_s, -1) for s in samples if s.ok],
        key=lambda e: (e[0], e[1]),
    )
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def timeline(samples: Sequence[Sample], bucket_s: float = 1.0) -> list[dict[str, Any]]:
    """Per bucket of send time: requests sent, failed, and 429 answers (the report's chart)."""
    if not samples:
        return []
    last = max(s.sent_s for s in samples)
    n = int(last // bucket_s) + 1
    rows = [{"t_s": round(i * bucket_s, 3), "sent": 0, "errors": 0, "429": 0} for i in range(n)]
    for s in samples:
        row = rows[min(n - 1, int(max(0.0, s.sent_s) // bucket_s))]
        row["sent"] += 1
        row["errors"] += 0 if s.ok else 1
        row["429"] += s.rate_limited
    return rows


def step_figures(samples: Sequence[Sample], slo: SLO) -> dict[str, Any]:
    """The vLLM-named figures of the samples that count (a window's selection)."""
    ok = [s for s in samples if s.ok]
    if samples:
        start = min(s.sent_s for s in samples)
        end = max(s.done_s for s in samples)
        duration = max(end - start, 1e-9)
    else:
        duration = 0.0
    out_tokens = sum(s.output_tokens for s in ok)
    in_tokens = sum(s.input_tokens for s in ok)
    per_s = (lambda x: round(x / duration, 4)) if duration else (lambda x: None)
    figures: dict[str, Any] = {
        "duration": round(duration, 4),
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": per_s(len(ok)),
        "request_goodput": per_s(sum(1 for s in ok if s.good)) if slo.active else None,
        "output_throughput": per_s(out_tokens),
        "total_token_throughput": per_s(out_tokens + in_tokens),
        "max_concurrent_requests": max_in_flight(samples),
        "rate_limited_429": sum(s.rate_limited for s in samples),
        "errors": dict(Counter(s.error for s in samples if not s.ok and s.error)),
        **_cost_figures(samples),
    }
    figures.update(_distribution("ttft", [s.ttft_s for s in ok if s.ttft_s is not None]))
    figures.update(_distribution("tpot", [s.tpot_s for s in ok if s.tpot_s is not None]))
    figures.update(_distribution("itl", [g for s in ok for g in s.itl_s]))
    figures.update(_distribution("e2el", [s.e2el_s for s in ok if s.e2el_s is not None]))
    return figures


def _cost_figures(samples: Sequence[Sample]) -> dict[str, float | None]:
    """What the samples cost (priced ones only; None when none was priced)."""
    priced = [s for s in samples if s.cost_usd is not None]
    if not priced:
        return dict.fromkeys(_COST_KEYS)
    usd = sum(s.cost_usd or 0.0 for s in priced)
    out_tokens = sum(s.output_tokens for s in priced)
    return {
        "cost_usd": round(usd, 8),
        "cost_per_1k_requests_usd": round(usd / len(priced) * 1000, 8),
        "cost_per_million_output_tokens_usd": round(usd / out_tokens * 1e6, 8)
        if out_tokens
        else None,
    }


_COST_KEYS = ("cost_usd", "cost_per_1k_requests_usd", "cost_per_million_output_tokens_usd")


def achieved_rate(samples: Sequence[Sample]) -> float | None:
    """Requests actually sent per second: (n - 1) / (last send - first send)."""
    sends = sorted(s.sent_s for s in samples)
    if len(sends) < 2 or sends[-1] <= sends[0]:
        return None
    return (len(sends) - 1) / (sends[-1] - sends[0])
