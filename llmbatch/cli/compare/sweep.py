"""Sweeps: each series climbs its profile's ladder until it saturates; the knee per series.

Every step runs ``repeats`` times; a step's figure is the mean over its repeats, and its
spread the range (min to max), so a difference smaller than the run-to-run spread can
be shown as such. A series stops climbing (``SaturationRule``) when:

- its output throughput grew by less than ``min_gain`` over the best step so far, for
  ``patience`` steps in a row (the plateau);
- with SLOs, its goodput fell below the best step's by more than ``min_gain``;
- more than ``max_error_rate`` of a step's requests failed.

The knee is the lowest step whose output throughput reaches ``knee_share`` of the
series' best: past it, more load buys little but latency.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch.cli.compare.measure import Window
from llmbatch.cli.compare.profiles import LoadProfile, Step
from llmbatch.cli.compare.runner import STOP_MAX_ERRORS, StepRun, StopConditions, run_step
from llmbatch.cli.compare.targets import Series
from llmbatch.metrics import SLO

__all__ = [
    "SPREAD_KEYS",
    "SaturationRule",
    "SeriesResult",
    "StepResult",
    "SweepResult",
    "run_sweep",
]

# Figures whose run-to-run spread is kept per step.
SPREAD_KEYS = (
    "request_throughput",
    "output_throughput",
    "request_goodput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "median_tpot_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
)


@dataclass(frozen=True, slots=True)
class SaturationRule:
    """When a series stops climbing, and where its knee is."""

    min_gain: float = 0.10
    patience: int = 1
    max_error_rate: float = 0.10
    knee_share: float = 0.90

    def as_dict(self) -> dict[str, float]:
        """As recorded in compare.json."""
        return {
            "min_gain": self.min_gain,
            "patience": self.patience,
            "max_error_rate": self.max_error_rate,
            "knee_share": self.knee_share,
        }


@dataclass(slots=True)
class StepResult:
    """One step's repeats, their mean figures and their spread."""

    step: Step
    runs: list[StepRun]

    def mean(self, key: str) -> float | None:
        """The mean of ``key`` over the repeats that have it."""
        vals = [r.figures.get(key) for r in self.runs]
        nums = [v for v in vals if isinstance(v, int | float)]
        return sum(nums) / len(nums) if nums else None

    def spread(self, key: str) -> dict[str, float | None]:
        """min, max and sample standard deviation of ``key`` over the repeats."""
        nums = [v for r in self.runs if isinstance(v := r.figures.get(key), int | float)]
        if not nums:
            return {"min": None, "max": None, "std": None}
        m = sum(nums) / len(nums)
        std = math.sqrt(sum((x - m) ** 2 for x in nums) / (len(nums) - 1)) if len(nums) > 1 else 0.0
        return {"min": min(nums), "max": max(nums), "std": round(std, 4)}

    @property
    def error_rate(self) -> float:
        """Failed requests / all requests over the repeats (counted window)."""
        done = sum(r.figures["completed"] + r.figures["failed"] for r in self.runs)
        return sum(r.figures["failed"] for r in self.runs) / done if done else 0.0


@dataclass(slots=True)
class SeriesResult:
    """A series under one profile: its steps, why it stopped, its knee."""

    series: Series
    profile: LoadProfile
    steps: list[StepResult] = field(default_factory=list)
    stopped: str | None = None  # why the ladder ended before its last step
    server: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``<target>-<client>`` plus the profile when it is not closed loop."""
        return (
            self.series.name
            if self.profile.kind == "concurrent"
            else (f"{self.series.name}-{self.profile.kind}")
        )

    def knee(self, rule: SaturationRule) -> StepResult | None:
        """The lowest step reaching ``knee_share`` of the best output throughput."""
        tps = [(s, s.mean("output_throughput") or 0.0) for s in self.steps]
        best = max((tp for _, tp in tps), default=0.0)
        if best <= 0:
            return None
        return next(s for s, tp in tps if tp >= rule.knee_share * best)

    def best(self) -> StepResult | None:
        """The step with the highest mean output throughput."""
        return max(self.steps, key=lambda s: s.mean("output_throughput") or 0.0, default=None)


@dataclass(slots=True)
class SweepResult:
    """Every series' results, in the order they ran, and what the run settings were."""

    out_dir: Path
    prompts: Path
    label: str
    window: Window
    stop: StopConditions
    rule: SaturationRule
    slo: SLO
    repeats: int
    series: list[SeriesResult] = field(default_factory=list)
    signal_received: int | None = None

    def runs(self) -> list[StepRun]:
        """Every run of every step, in order."""
        return [r for sr in self.series for st in sr.steps for r in st.runs]


def saturated(steps: Sequence[StepResult], rule: SaturationRule, slo: SLO) -> str | None:
    """Why a series should stop climbing after its last step (None: go on)."""
    last = steps[-1]
    if last.error_rate > rule.max_error_rate:
        return f"errors: {last.error_rate:.0%} of requests failed"
    if slo.active and len(steps) > 1:
        best_good = max(s.mean("request_goodput") or 0.0 for s in steps[:-1])
        good = last.mean("request_goodput") or 0.0
        if best_good > 0 and good < best_good * (1 - rule.min_gain):
            return "goodput fell"
    if len(steps) > rule.patience:
        head = steps[: -rule.patience]
        best = max(s.mean("output_throughput") or 0.0 for s in head)
        tail = [s.mean("output_throughput") or 0.0 for s in steps[-rule.patience :]]
        if best > 0 and all(tp < best * (1 + rule.min_gain) for tp in tail):
            return "throughput stopped growing"
    return None


async def run_sweep(
    plan: Sequence[tuple[Series, LoadProfile]],
    prompts: Path,
    result: SweepResult,
    *,
    on_start: Callable[[str], None] | None = None,
    after_step: Callable[[SweepResult], object] | None = None,
    install_signal_handlers: bool = True,
) -> SweepResult:
    """Climb every series' ladder (results into ``result``); a signal ends the sweep."""
    for series, profile in plan:
        sr = SeriesResult(series, profile)
        result.series.append(sr)
        ladder = profile.steps()
        for i, step in enumerate(ladder):
            st = StepResult(step, [])
            sr.steps.append(st)
            for rep in range(result.repeats):
                name = _run_name(sr, step, rep, result.repeats)
                if on_start is not None:
                    on_start(name)
                run = await run_step(
                    series,
                    step,
                    rep,
                    prompts,
                    result.out_dir / name,
                    stop=result.stop,
                    window=result.window,
                    slo=result.slo,
                    install_signal_handlers=install_signal_handlers,
                )
                st.runs.append(run)
                if run.server and not sr.server:
                    sr.server = dict(run.server)
                if after_step is not None:
                    after_step(result)
                if run.signal_received is not None:
                    result.signal_received = run.signal_received
                    sr.stopped = "interrupted"
                    return result
                if run.stop_reason is not None and run.stop_reason != STOP_MAX_ERRORS:
                    sr.stopped = f"aborted: {run.abort_message or run.stop_reason}"
                    break
            if sr.stopped is not None:
                break
            why = saturated(sr.steps, result.rule, result.slo)
            if why is not None:
                if i < len(ladder) - 1:
                    sr.stopped = why
                break
        if after_step is not None:
            after_step(result)
    return result


def _run_name(sr: SeriesResult, step: Step, rep: int, repeats: int) -> str:
    """``<series>-c8`` / ``<series>-poisson-r12.5``, ``-rep2`` for a second repeat."""
    return f"{sr.name}-{step.tag}" + (f"-rep{rep + 1}" if repeats > 1 else "")


def spread_note(a: StepResult, b: StepResult, key: str) -> bool:
    """True when ``a`` and ``b`` differ in ``key`` by less than their run-to-run spread."""
    va, vb = a.mean(key), b.mean(key)
    if va is None or vb is None:
        return False
    sa, sb = a.spread(key), b.spread(key)
    width = max(
        (sa["max"] or 0.0) - (sa["min"] or 0.0),
        (sb["max"] or 0.0) - (sb["min"] or 0.0),
    )
    return width > 0 and abs(va - vb) <= width


def series_dict(sr: SeriesResult, rule: SaturationRule) -> dict[str, Any]:
    """A series as recorded in compare.json."""
    knee = sr.knee(rule)
    return {
        "name": sr.name,
        "target": sr.series.describe(),
        "profile": sr.profile.as_dict(),
        "server": sr.server,
        "stopped_early": sr.stopped,
        "knee": None if knee is None else knee.step.level,
        "knee_output_throughput": None if knee is None else knee.mean("output_throughput"),
        "steps": [
            {
                "level": st.step.level,
                "concurrency": None if sr.profile.open_loop else int(st.step.level),
                "request_rate": st.step.request_rate,
                "repeats": len(st.runs),
                "mean": {k: st.mean(k) for k in SPREAD_KEYS},
                "spread": {k: st.spread(k) for k in SPREAD_KEYS},
                "error_rate": round(st.error_rate, 4),
                "runs": [r.run_dir.name for r in st.runs],
            }
            for st in sr.steps
        ],
    }
