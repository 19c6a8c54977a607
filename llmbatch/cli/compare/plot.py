"""compare.png (matplotlib, optional): throughput and TTFT p50 against load per series,
for terminals and READMEs; compare.html is the full report."""

from __future__ import annotations

from pathlib import Path

from llmbatch.cli.compare.sweep import SweepResult

__all__ = ["PNG_FILE", "plot_compare"]

PNG_FILE = "compare.png"


def plot_compare(result: SweepResult) -> Path:
    """Write compare.png. Raises ImportError when matplotlib is not installed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), dpi=90, layout="constrained")
    fig.suptitle(f"llmbatch compare — {result.label}")
    ax1, ax2 = fig.subplots(1, 2)
    for sr in result.series:
        xs = [st.step.level for st in sr.steps]
        unit = "req/s" if sr.profile.open_loop else "in flight"
        label = f"{sr.name} ({unit})"
        tp = [st.mean("output_throughput") or 0.0 for st in sr.steps]
        ttft = [st.mean("median_ttft_ms") or 0.0 for st in sr.steps]
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
    path = result.out_dir / PNG_FILE
    fig.savefig(path)
    return path
