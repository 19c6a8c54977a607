"""``llmbatch compare``: the same prompts against every provider × client × concurrency.

Combinations run one after another, each in its own run directory under one compare
directory (``outputs/compare-<stem>-<timestamp>/<provider>-<client>-c<N>/``); the
embedded mock provider starts a fresh in-process server for each. After every run the
comparison is rewritten to compare.json and compare.csv; at the end, with matplotlib
installed, compare.png charts throughput and TTFT per combination.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from llmbatch.cli.tables import Table, fmt_ms, fmt_num
from llmbatch.config.load import RunConfig, load_config, resolve_api_key
from llmbatch.engine import StopReason
from llmbatch.errors import RunDirError
from llmbatch.metrics import SLO

__all__ = [
    "Combination",
    "CompareResult",
    "CompareRow",
    "compare_table",
    "limit_prompts",
    "make_compare_dir",
    "plan_combinations",
    "plot_compare",
    "run_compare",
    "write_tables",
]

JSON_FILE = "compare.json"
CSV_FILE = "compare.csv"
PNG_FILE = "compare.png"
PROMPTS_FILE = "prompts.jsonl"

# compare.csv / compare.json row fields: (key, table header, path in summary, kind)
_COLUMNS: list[tuple[str, str, tuple[str, ...], str]] = [
    ("ok", "ok", ("requests", "succeeded"), "int"),
    ("failed", "failed", ("requests", "failed"), "int"),
    ("requests_per_s", "req/s", ("throughput", "requests_per_s"), "num2"),
    ("output_tokens_per_s", "out tok/s", ("throughput", "output_tokens_per_s"), "num"),
    ("peak_output_tokens_per_s", "peak tok/s", ("throughput", "peak_output_tokens_per_s"), "int"),
    ("ttft_p50_s", "TTFT p50 ms", ("latency_s", "ttft", "p50"), "ms"),
    ("ttft_p99_s", "TTFT p99 ms", ("latency_s", "ttft", "p99"), "ms"),
    ("tpot_p50_s", "TPOT p50 ms", ("latency_s", "tpot", "p50"), "ms"),
    ("itl_p50_s", "ITL p50 ms", ("latency_s", "itl", "p50"), "ms"),
    ("itl_p99_s", "ITL p99 ms", ("latency_s", "itl", "p99"), "ms"),
    ("e2el_p50_s", "E2EL p50 ms", ("latency_s", "e2el", "p50"), "ms"),
    ("retries", "retries", ("retries",), "int"),
    ("rate_limited_429", "429s", ("rate_limited_429",), "int"),
]


@dataclass(frozen=True, slots=True)
class Combination:
    """One provider × client × concurrency to run."""

    provider: str
    client: str
    concurrency: int

    @property
    def name(self) -> str:
        """``<provider>-<client>-c<N>``: the run directory's name and the row label."""
        return f"{self.provider}-{self.client}-c{self.concurrency}"


@dataclass(slots=True)
class CompareRow:
    """One finished combination: where its run went and its summary."""

    combo: Combination
    run_dir: Path
    summary: dict[str, Any]
    stop_reason: str | None = None
    abort_message: str | None = None

    @property
    def status(self) -> str:
        """``ok``, ``failures`` (some requests failed) or the reason the run stopped."""
        if self.stop_reason is not None:
            return self.stop_reason
        return "failures" if self.summary["requests"]["failed"] else "ok"

    def values(self) -> dict[str, Any]:
        """The row's figures in base units (seconds, per second), keyed as in compare.csv."""
        out: dict[str, Any] = {
            "combination": self.combo.name,
            "provider": self.combo.provider,
            "client": self.combo.client,
            "concurrency": self.combo.concurrency,
            "status": self.status,
        }
        for key, _, path, _ in _COLUMNS:
            v: Any = self.summary
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            out[key] = v
        g = self.summary.get("goodput")
        out["goodput_requests_per_s"] = g["requests_per_s"] if g else None
        out["run_dir"] = str(self.run_dir)
        return out


@dataclass(slots=True)
class CompareResult:
    """The rows so far and the files written; ``signal_received`` when interrupted."""

    out_dir: Path
    prompts: Path
    label: str = ""
    rows: list[CompareRow] = field(default_factory=list)
    signal_received: int | None = None


def plan_combinations(
    config_path: Path | None,
    providers: Sequence[str],
    clients: Sequence[str],
    concurrencies: Sequence[int],
    *,
    flags: dict[str, Any] | None = None,
) -> list[tuple[Combination, RunConfig]]:
    """Every combination with its validated config (API keys checked): nothing is sent.

    An empty ``providers`` or ``clients`` means the configured default.
    """
    base = flags or {}
    out: list[tuple[Combination, RunConfig]] = []
    provider_list: list[str | None] = [*providers] or [None]
    client_list: list[str | None] = [*clients] or [None]
    conc_list: list[int | None] = [*concurrencies] or [None]
    for provider in provider_list:
        for client in client_list:
            for conc in conc_list:
                cfg = load_config(
                    config_path,
                    flags={**base, "provider": provider, "client": client, "concurrency": conc},
                )
                resolve_api_key(cfg.provider)
                combo = Combination(cfg.provider.name, cfg.client, cfg.concurrency)
                if all(c != combo for c, _ in out):
                    out.append((combo, cfg))
    return out


def make_compare_dir(out_dir: Path, prompts: Path, out: Path | None) -> Path:
    """Create the compare directory: ``out``, or ``<out_dir>/compare-<stem>-<timestamp>``.

    A non-empty directory is refused: its runs would resume instead of being measured.
    """
    target = out or out_dir / f"compare-{prompts.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if target.exists() and any(target.iterdir()):
            raise RunDirError(f"{target}: compare directory exists and is not empty")
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{target}: cannot create: {exc.strerror}") from None
    return target


def limit_prompts(prompts: Path, limit: int, dest: Path) -> Path:
    """Copy the first ``limit`` non-blank lines of ``prompts`` to ``dest``."""
    from llmbatch.errors import InputError

    n = 0
    try:
        with open(prompts, "rb") as src, open(dest, "wb") as dst:
            for raw in src:
                if n >= limit:
                    break
                if raw.strip():
                    dst.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    n += 1
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=str(prompts)) from None
    return dest


async def run_compare(
    plan: Sequence[tuple[Combination, RunConfig]],
    prompts: Path,
    out_dir: Path,
    *,
    slo: SLO | None = None,
    label: str = "",
    on_start: Callable[[int, Combination], None] | None = None,
    install_signal_handlers: bool = True,
) -> CompareResult:
    """Run each combination in turn; compare.json/.csv are rewritten after each run.

    A run stopped by a signal ends the comparison (``signal_received`` is set); a run
    aborted by a fatal error is recorded as such and the next combination runs.
    """
    from llmbatch.cli.job import execute_run

    result = CompareResult(out_dir=out_dir, prompts=prompts, label=label or prompts.name)
    for i, (combo, cfg) in enumerate(plan):
        if on_start is not None:
            on_start(i, combo)
        cfg = dataclasses.replace(cfg, run_dir=out_dir / combo.name)
        output = await execute_run(
            cfg, prompts, slo=slo, install_signal_handlers=install_signal_handlers
        )
        res = output.result
        stop = res.stop_reason
        if stop == StopReason.MAX_RUNTIME and not res.pending_left:
            stop = None
        result.rows.append(
            CompareRow(combo, output.run_dir, res.metrics.summary(), stop, res.abort_message)
        )
        write_tables(result)
        if output.signal_received is not None:
            result.signal_received = output.signal_received
            break
    return result


def compare_table(result: CompareResult) -> Table:
    """Rows = combinations; the figures that decide between them."""
    has_goodput = any("goodput" in r.summary for r in result.rows)
    cols = ["combination", *(c[1] for c in _COLUMNS)]
    if has_goodput:
        cols.append("goodput req/s")
    table = Table(f"llmbatch compare: {result.label}", cols)
    for row in result.rows:
        v = row.values()
        label = row.combo.name if row.stop_reason is None else f"{row.combo.name} ({row.status})"
        cells = [label]
        for key, _, _, kind in _COLUMNS:
            x = v[key]
            if kind == "ms":
                cells.append(fmt_ms(x))
            elif kind == "num2":
                cells.append(fmt_num(x, 2))
            elif kind == "num":
                cells.append(fmt_num(x))
            else:
                cells.append("-" if x is None else f"{x:,}")
        if has_goodput:
            cells.append(fmt_num(v["goodput_requests_per_s"], 2))
        table.rows.append(cells)
    return table


def write_tables(result: CompareResult) -> tuple[Path, Path]:
    """Write compare.json (rows plus each run's full summary) and compare.csv."""
    rows = [r.values() for r in result.rows]
    doc = {
        "prompts": str(result.prompts),
        "label": result.label,
        "runs": [{**v, "summary": r.summary} for v, r in zip(rows, result.rows, strict=True)],
    }
    json_path = result.out_dir / JSON_FILE
    csv_path = result.out_dir / CSV_FILE
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if x is None else x) for k, x in v.items()} for v in rows)
    csv_path.write_text(buf.getvalue())
    return json_path, csv_path


def plot_compare(result: CompareResult) -> Path:
    """Write compare.png: output throughput (mean and peak) and TTFT p50/p99 per
    combination. Raises ImportError when matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    names = [r.combo.name for r in result.rows]
    vals = [r.values() for r in result.rows]

    def series(key: str, scale: float = 1.0) -> list[float]:
        return [(v[key] or 0.0) * scale for v in vals]

    x = list(range(len(names)))
    w = 0.38
    fig = Figure(figsize=(max(8.0, 1.6 * len(names) + 3), 4.6), dpi=90, layout="constrained")
    total = sum(r.summary["requests"]["total"] for r in result.rows[:1])
    fig.suptitle(f"llmbatch compare — {result.label}, {total} requests per run")
    ax1, ax2 = fig.subplots(1, 2)
    for ax, title, ylabel, (k1, l1, c1), (k2, l2, c2), scale in (
        (
            ax1,
            "Output throughput (higher is better)",
            "output tokens / s",
            ("output_tokens_per_s", "mean over run", "#4C72B0"),
            ("peak_output_tokens_per_s", "peak 1 s", "#A1C4E8"),
            1.0,
        ),
        (
            ax2,
            "Time to first token (lower is better)",
            "TTFT (ms)",
            ("ttft_p50_s", "p50", "#DD8452"),
            ("ttft_p99_s", "p99", "#F2C1A0"),
            1000.0,
        ),
    ):
        b1 = ax.bar([i - w / 2 for i in x], series(k1, scale), w, label=l1, color=c1)
        b2 = ax.bar([i + w / 2 for i in x], series(k2, scale), w, label=l2, color=c2)
        for bars, ys in ((b1, series(k1, scale)), (b2, series(k2, scale))):
            ax.bar_label(bars, labels=[_short(y) for y in ys], fontsize=8, padding=2)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("provider-client-concurrency")
        ax.set_xticks(x, names, rotation=20, ha="right", fontsize=9)
        ax.margins(y=0.22)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(fontsize=8, loc="upper right", ncols=2)
    path = result.out_dir / PNG_FILE
    fig.savefig(path)
    return path


def _short(v: float) -> str:
    """A bar label: 950, 16.9k."""
    return f"{v / 1000:.1f}k" if v >= 10_000 else f"{v:.0f}"
