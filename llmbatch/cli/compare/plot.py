"""compare.png (matplotlib, optional): throughput and TTFT p50 against load per series,
for terminals and READMEs; compare.html is the full report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from llmbatch.cli.compare.runner import STOP_MAX_ERRORS
from llmbatch.cli.compare.sweep import StepResult, SweepResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PNG_FILE", "compare_figure", "plot_compare"]

PNG_FILE = "compare.png"


def plot_compare(result: SweepResult) -> Path:
    """Write compare.png. Raises ImportError when matplotlib is not installed."""
    path = result.out_dir / PNG_FILE
    compare_figure(result).savefig(path)
    return path


def measured(st: StepResult, key: str) -> float:
    """``key``'s mean over the step's runs that measured something; NaN (no point drawn)
    when none did: an aborted run's 0 tok/s and missing TTFT are not a result."""
    vals = [
        v
        for r in st.runs
        if r.stop_reason in (None, STOP_MAX_ERRORS) and r.figures.get("completed")
        if isinstance(v := r.figures.get(key), int | float)
    ]
    return sum(vals) / len(vals) if vals else math.nan


def compare_figure(result: SweepResult) -> Figure:
    """compare.png's figure: throughput and TTFT p50 per step, one line per series."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), dpi=90, layout="constrained")
    fig.suptitle(f"llmbatch compare — {result.label}")
    ax1, ax2 = fig.subplots(1, 2)
    for sr in result.series:
        xs = [st.step.level for st in sr.steps]
        unit = "req/s" if sr.profile.open_loop else "in flight"
        label = f"{sr.name} ({unit})"
        if sr.stopped is not None and sr.stopped.startswith("aborted"):
            label += " (aborted)"
        tp = [measured(st, "output_throughput") for st in sr.steps]
        ttft = [measured(st, "median_ttft_ms") for st in sr.steps]
        ax1.plot(xs, tp, marker="o", label=label)
        knee = sr.knee(result.rule)
        if knee is not None:
            ax1.plot(
                [knee.step.level],
                [knee.mean("output_throughput") or 0.0],
                marker="o",
                markersize=14,
                fillstyle="none",
                color=ax1.lines[-1].get_color(),
            )
        ax2.plot(xs, ttft, marker="o", label=label)
    for ax, title, ylabel in (
        (ax1, "Output throughput (knee ringed)", "output tokens / s"),
        (ax2, "TTFT p50", "ms"),
    ):
        ax.set_title(title)
        ax.set_xlabel("offered load (concurrency or request rate)")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
