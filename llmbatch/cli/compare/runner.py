"""Running one step of a sweep: a run directory, its requests as Samples, its figures.

A step sends the prompts file (cycled, with ``#k`` appended to repeated ids, when it
needs more requests than the file has) to one series at one load level, until the
step's stop condition: ``requests`` sent, ``duration_s`` elapsed (then requests in
flight finish within the grace period), or ``max_errors`` failed requests.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbatch.cli.compare.measure import (
    Sample,
    Window,
    achieved_rate,
    max_in_flight,
    percentile,
    step_figures,
    timeline,
    to_sample,
)
from llmbatch.cli.compare.profiles import Step
from llmbatch.cli.compare.targets import Series
from llmbatch.cli.job import RunHooks, execute_run
from llmbatch.engine import StopReason
from llmbatch.errors import InputError
from llmbatch.metrics import SLO
from llmbatch.records import Outcome, PromptRecord
from llmbatch.rundir.reader import open_prompts

__all__ = ["SERVER_ID_HEADERS", "StepRun", "StopConditions", "run_step"]

# Response headers by which a server says what it is (recorded once per series).
SERVER_ID_HEADERS = (
    "server",
    "via",
    "x-powered-by",
    "openai-version",
    "anthropic-version",
    "x-served-by",
)
# A step that keeps its schedule sends within this share of the requested rate.
RATE_KEPT_SHARE = 0.95
STOP_MAX_ERRORS = "max_errors"


@dataclass(frozen=True, slots=True)
class StopConditions:
    """When a step ends: after ``requests``, after ``duration_s``, or at ``max_errors``."""

    requests: int | None = None
    duration_s: float | None = None
    max_errors: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """As recorded in compare.json."""
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "max_errors": self.max_errors,
        }


@dataclass(slots=True)
class StepRun:
    """One run of one step: where it went, how it ended, its figures."""

    series: Series
    step: Step
    repeat: int
    run_dir: Path
    samples: list[Sample]
    figures: dict[str, Any]
    stop_reason: str | None
    abort_message: str | None
    started_at: float  # wall clock
    excluded: tuple[int, int] = (0, 0)  # (warm-up, cool-down) requests left out
    rate: dict[str, Any] = field(default_factory=dict)
    server: dict[str, str] = field(default_factory=dict)
    signal_received: int | None = None

    @property
    def status(self) -> str:
        """``ok``, ``failures`` or why the step stopped early."""
        if self.stop_reason is not None:
            return self.stop_reason
        return "failures" if self.figures.get("failed") else "ok"


def _cycled(prompts: Path, limit: int | None) -> Iterator[PromptRecord | InputError]:
    """The prompts file's records, again and again (ids ``id#1``, ``id#2``... from the
    second pass), ``limit`` of them; endless without a limit (a duration ends the step).
    The file is read again for each pass: nothing of it is held in memory."""

    def passes() -> Iterator[PromptRecord | InputError]:
        for k in itertools.count():
            records = 0
            for item in open_prompts(prompts):
                if isinstance(item, PromptRecord):
                    records += 1
                    yield item if k == 0 else dataclasses.replace(item, id=f"{item.id}#{k}")
                elif k == 0:  # an input error is reported once, on the first pass
                    yield item
            if not records:
                return

    return itertools.islice(passes(), limit)


async def run_step(
    series: Series,
    step: Step,
    repeat: int,
    prompts: Path,
    run_dir: Path,
    *,
    stop: StopConditions,
    window: Window,
    slo: SLO,
    install_signal_handlers: bool = True,
) -> StepRun:
    """Run ``step`` of ``series`` once into ``run_dir``; its requests as Samples."""
    cfg = dataclasses.replace(
        series.cfg,
        run_dir=run_dir,
        concurrency=step.concurrency,
        adaptive=False,
        max_runtime_s=stop.duration_s,
    )
    outcomes: list[Outcome] = []
    errors = 0
    server: dict[str, str] = {}

    def on_outcome(o: Outcome) -> str | None:
        nonlocal errors
        outcomes.append(o)
        if not o.ok:
            errors += 1
            if stop.max_errors is not None and errors >= stop.max_errors:
                return STOP_MAX_ERRORS
        return None

    def on_headers(headers: Mapping[str, str]) -> None:
        if not server:
            for name in SERVER_ID_HEADERS:
                value = headers.get(name)
                if value:
                    server[name] = value
            server.setdefault("_seen", "1")

    if stop.requests is None and stop.duration_s is None:
        items = open_prompts(prompts)  # the file once
    else:
        items = _cycled(prompts, stop.requests)
    hooks = RunHooks(
        items=items, arrivals=step.arrivals(repeat), on_outcome=on_outcome, on_headers=on_headers
    )
    started_wall = time.time()
    t0 = time.perf_counter()
    output = await execute_run(
        cfg, prompts, slo=slo, install_signal_handlers=install_signal_handlers, hooks=hooks
    )
    res = output.result
    reason = res.stop_reason
    if reason == StopReason.MAX_RUNTIME:
        reason = None  # the duration is a stop condition, not a failure
    pacer = output.pacer
    start = pacer.started_at if pacer is not None and pacer.started_at is not None else t0
    samples = [to_sample(o, start, slo) for o in outcomes]
    counted, warm, cool = window.select(samples)
    if samples and not counted:  # a step shorter than its windows: say so, count it all
        counted, warm, cool = samples, 0, 0
    figures = step_figures(counted, slo)
    figures["window_too_short"] = not window.select(samples)[0] and bool(samples)
    figures["http_versions"] = dict(res.metrics.http_versions)
    figures["timeline"] = timeline(samples)
    server.pop("_seen", None)
    return StepRun(
        series=series,
        step=step,
        repeat=repeat,
        run_dir=output.run_dir,
        samples=samples,
        figures=figures,
        stop_reason=reason,
        abort_message=res.abort_message,
        started_at=started_wall,
        excluded=(warm, cool),
        rate=_rate_report(step, samples, pacer),
        server=server,
        signal_received=output.signal_received,
    )


def _rate_report(step: Step, samples: list[Sample], pacer: Any) -> dict[str, Any]:
    """Requested against achieved rate, and whether the client kept its schedule.

    A step that sent slower than asked is marked, with the cause: requests waiting for
    a slot under ``--max-concurrency`` (the cap bound), or the client itself lagging
    behind its schedule. Either way it is not the server's limit.
    """
    requested = step.request_rate
    achieved = achieved_rate(samples)
    out: dict[str, Any] = {
        "request_rate": requested,
        "achieved_request_rate": None if achieved is None else round(achieved, 4),
    }
    if requested is None:
        return out
    # The rate of the gaps actually drawn: a short Poisson step's own rate strays from
    # the nominal one by ~1/sqrt(n), and the client must be judged against its schedule.
    due = pacer.due if pacer is not None else []
    scheduled = (len(due) - 1) / (due[-1] - due[0]) if len(due) > 1 and due[-1] > due[0] else None
    out["scheduled_request_rate"] = None if scheduled is None else round(scheduled, 4)
    lateness = sorted(pacer.lateness_s) if pacer is not None else []
    if lateness:
        out["schedule_lateness_p99_ms"] = round(percentile(lateness, 99) * 1000, 3)
    target = scheduled or requested
    kept = achieved is None or achieved >= RATE_KEPT_SHARE * target
    out["rate_kept"] = kept
    if not kept:
        cap = step.profile.max_concurrency
        if cap is not None and max_in_flight(samples) >= cap:
            out["rate_limited_by"] = f"--max-concurrency {cap}"
        else:
            out["rate_limited_by"] = "client"
    return out
