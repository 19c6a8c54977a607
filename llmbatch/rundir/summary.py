"""A run summary from results.jsonl records, one at a time (constant memory).

``summary_from_results`` rebuilds summary.json's shape from a whole results.jsonl;
``SummaryBuilder`` takes records as they come (the Ray driver feeds it while the run goes).
ITL percentiles cannot be rebuilt: results.jsonl keeps a per-request ITL summary, not
every gap, so only the pooled ITL mean is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmbatch.metrics import INPUT_ERROR, SLO, RunMetrics
from llmbatch.rundir.resultline import ResultLine
from llmbatch.rundir.results import iter_result_lines

__all__ = ["SummaryBuilder", "summary_from_results"]


def _iter_records(path: Path, damaged: list[int] | None) -> Iterator[dict[str, Any]]:
    """Complete, decodable records; a torn last line of a running run is left out."""
    for _, rec in iter_result_lines(path, damaged=damaged):
        yield rec


def summary_from_results(
    path: Path, *, slo: SLO | None = None, damaged: list[int] | None = None
) -> dict[str, Any]:
    """Recompute a run summary from results.jsonl in one streaming pass.

    Duration is the wall span from the start of the first record's request
    (finished_at − e2el − queue) to the last record; for a resumed run it includes the
    pause between sessions. Line numbers of undecodable lines go to ``damaged``.
    """
    builder = SummaryBuilder(slo=slo)
    for rec in _iter_records(path, damaged):
        builder.add(rec)
    return builder.summary()


class SummaryBuilder:
    """A run summary built from results.jsonl records one at a time (constant memory).

    ``summary_from_results`` feeds it a whole file; a process that learns of records as
    they are written (the Ray driver) feeds them as they come and asks for the summary
    as often as it likes.
    """

    def __init__(self, *, slo: SLO | None = None) -> None:
        self._metrics = RunMetrics(slo=slo or SLO(), started_at=0.0)
        self._base: float | None = None  # run time 0 = the first record's request start
        self._last_end = -math.inf
        self._itl_total_s = 0.0
        self._itl_gaps = 0

    def add(self, rec: dict[str, Any]) -> None:
        """Count one record (a results.jsonl line, decoded); others are ignored."""
        line = ResultLine.parse(rec)
        if line is None:
            return
        metrics = self._metrics
        if line.error_code == INPUT_ERROR:
            metrics.add_input_error()
            return
        outcome = line.outcome()
        rm = outcome.metrics
        finished = line.finished_at
        if finished is None:
            finished = self._last_end if self._last_end > -math.inf else 0.0
        start = finished - rm.queue_s - (rm.e2el_s or 0.0)
        if self._base is None:
            self._base = start
        self._last_end = max(self._last_end, finished)
        metrics.add(outcome, finished_at=finished - self._base)
        itl = line.metrics.get("itl_s")
        itl_mean = itl.get("mean") if isinstance(itl, dict) else None
        if outcome.ok and isinstance(itl_mean, int | float) and rm.chunks > 1:
            self._itl_total_s += itl_mean * (rm.chunks - 1)
            self._itl_gaps += rm.chunks - 1

    def summary(self) -> dict[str, Any]:
        """The summary of the records so far (the summary.json shape)."""
        metrics, base = self._metrics, self._base
        metrics.ended_at = 0.0 if base is None else self._last_end - base
        if base is not None:
            metrics.started_wall = base
        summary = metrics.summary()
        gaps = self._itl_gaps
        summary["latency_s"]["itl"] = {
            "mean": round(self._itl_total_s / gaps, 6) if gaps else None,
            **{f"p{p}": None for p in (50, 90, 95, 99)},
        }
        return summary
