"""Run summaries for people and programs: the end-of-run text, ``llmbatch report``.

``load_report`` reads a run directory's summary.json (rewritten every 2 s while the run
is going), or recomputes the summary from results.jsonl in one streaming pass. The
recomputed summary counts every record in the file (resumed sessions included) and
has the same shape, except that ITL percentiles are unknown: results.jsonl keeps a
per-request ITL summary, not every gap, so only the pooled ITL mean can be rebuilt.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch.errors import RunDirError
from llmbatch.metrics import SLO, format_cost, format_usd
from llmbatch.rundir.layout import RESULTS, SUMMARY
from llmbatch.rundir.summary import SummaryBuilder, summary_from_results

if TYPE_CHECKING:
    from llmbatch.cli.tables import Table

__all__ = [
    "SummaryBuilder",
    "format_summary",
    "load_report",
    "report_csv",
    "report_json",
    "report_tables",
    "summary_from_results",
]

SUMMARY_FILE = SUMMARY
RESULTS_FILE = RESULTS
LATENCY_METRICS = ("ttft", "answer_ttft", "tpot", "itl", "e2el", "queue")


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def format_summary(summary: dict[str, Any], run_dir: Path | None = None) -> str:
    """A compact plain-text summary of a run (stdout, cron mail)."""
    req = summary["requests"]
    thr = summary["throughput"]
    lat = summary["latency_s"]
    lines = [
        f"requests: {req['succeeded']} succeeded, {req['failed']} failed"
        + (f" ({req['input_errors']} bad input lines)" if req["input_errors"] else "")
        + (f", {req['skipped_already_done']} already done" if req["skipped_already_done"] else "")
        + f" in {summary['duration_s']:.2f}s",
        f"throughput: {thr['requests_per_s']:.2f} req/s, {thr['output_tokens_per_s']:.1f} output "
        f"tok/s (peak {thr['peak_output_tokens_per_s']}/s), retries {summary['retries']}, "
        f"429s {summary['rate_limited_429']}",
    ]
    if summary.get("rate"):
        lines.append("rate used: " + rate_used_text(summary["rate"]))
    lines.append("latency ms      mean      p50      p90      p99")
    reasoned = summary["tokens"].get("requests_with_reasoning")
    for name in ("ttft", "answer_ttft", "tpot", "itl", "e2el"):
        if name == "answer_ttft" and not reasoned:
            continue  # the same as ttft when nothing reasoned aloud
        s = lat[name]
        lines.append(
            f"  {name:<8} {_ms(s['mean']):>9} {_ms(s['p50']):>8} {_ms(s['p90']):>8} "
            f"{_ms(s['p99']):>8}"
        )
    if summary["errors_by_class"]:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(summary["errors_by_class"].items()))
        lines.append(f"errors: {errs}")
    if "goodput" in summary:
        g = summary["goodput"]
        lines.append(
            f"goodput: {g['good_requests']} requests met the SLO ({g['requests_per_s']} req/s)"
        )
    cost_line = format_cost(summary.get("cost"))
    if cost_line:
        lines.append(cost_line)
    if run_dir is not None:
        text = f"{run_dir}/text.log" if (run_dir / "text.log").exists() else f"{run_dir}/text/"
        lines.append(f"outputs: {run_dir}/results.jsonl, {text}")
    return "\n".join(lines)


_RATE_UNITS = {
    "requests": "req/s",
    "tokens": "tok/s",
    "input_tokens": "input tok/s",
    "output_tokens": "output tok/s",
}


def rate_used_text(rate: dict[str, Any]) -> str:
    """``49.3 of 50 req/s, 1,480 of 2,000 tok/s``: each limit's use against its rate."""

    def num(v: float) -> str:
        return f"{v:,.1f}".removesuffix(".0") if v < 100 else f"{v:,.0f}"

    parts = []
    for name, unit in _RATE_UNITS.items():
        entry = rate.get(name)
        if isinstance(entry, dict) and entry.get("limit_per_s"):
            parts.append(f"{num(entry['used_per_s'] or 0.0)} of {num(entry['limit_per_s'])} {unit}")
    return ", ".join(parts)


# -- reading a run directory ------------------------------------------------------------
def load_report(
    run_dir: Path, *, recompute: bool = False, slo: SLO | None = None
) -> dict[str, Any]:
    """The summary of ``run_dir`` plus a ``report`` object saying where it came from.

    summary.json is used unless ``recompute`` or an ``slo`` is given or the file is missing,
    or it covers only the last session of a resumed run (then the whole run is rebuilt
    from results.jsonl). ``report.damaged_lines`` lists results lines that were skipped.
    """
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    summary_path = run_dir / SUMMARY_FILE
    if not recompute and slo is None and summary_path.is_file():
        try:
            summary = orjson.loads(summary_path.read_bytes())
            age_s = time.time() - summary_path.stat().st_mtime
        except (OSError, orjson.JSONDecodeError) as exc:
            raise RunDirError(f"{summary_path}: cannot read: {exc}") from None
        if not isinstance(summary, dict) or not isinstance(summary.get("requests"), dict):
            raise RunDirError(f"{summary_path}: not an llmbatch summary")
        resumed = _last_session_only(summary["requests"])
        if not resumed or not (run_dir / RESULTS_FILE).is_file():
            summary["report"] = {"source": SUMMARY_FILE, "age_s": round(age_s, 1)}
            return summary
    elif not (run_dir / RESULTS_FILE).is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no {SUMMARY_FILE} or {RESULTS_FILE})")
    else:
        resumed = False
    damaged: list[int] = []
    summary = summary_from_results(run_dir / RESULTS_FILE, slo=slo, damaged=damaged)
    summary["report"] = {"source": RESULTS_FILE, "age_s": None, "damaged_lines": damaged}
    if resumed:
        summary["report"]["note"] = "whole run after a resume"
    return summary


def _last_session_only(requests: dict[str, Any]) -> bool:
    """True when summary.json counts fewer records than the whole run has (a resume)."""
    whole = (requests.get("run_total_succeeded"), requests.get("run_total_failed"))
    session = (requests.get("succeeded"), requests.get("failed"))
    return all(isinstance(v, int) for v in (*whole, *session)) and whole != session


# -- rendering ----------------------------------------------------------------------------
def report_tables(summary: dict[str, Any], run_dir: Path | None = None) -> list[Table]:
    """Two tables: the run's counts and throughput, then latency percentiles in ms."""
    from llmbatch.cli.tables import (  # not for a run's summary (format_summary)
        Table,
        fmt_ms,
        fmt_num,
    )

    req = summary["requests"]
    thr = summary["throughput"]
    tok = summary["tokens"]
    src = summary.get("report") or {}
    where = str(run_dir) if run_dir is not None else "run"
    source = src.get("source", SUMMARY_FILE)
    if src.get("age_s") is not None:
        source += f" (written {src['age_s']:.0f} s ago)"
    if src.get("note"):
        source += f" ({src['note']})"
    rows = [
        ["requests succeeded", str(req["succeeded"])],
        ["requests failed", str(req["failed"])],
        ["  of which bad input lines", str(req["input_errors"])],
        ["skipped (already done)", str(req["skipped_already_done"])],
        ["duration s", fmt_num(summary["duration_s"], 2)],
        ["requests/s", fmt_num(thr["requests_per_s"], 2)],
        ["output tokens/s", fmt_num(thr["output_tokens_per_s"])],
        ["total tokens/s", fmt_num(thr["total_tokens_per_s"])],
        ["peak output tokens/s (1 s)", fmt_num(thr["peak_output_tokens_per_s"], 0)],
        ["output tokens", fmt_num(tok["output"], 0)],
        ["input tokens", fmt_num(tok["input"], 0)],
        [
            "requests with estimated output tokens",
            str(tok["requests_with_estimated_output_tokens"]),
        ],
        ["retries", str(summary["retries"])],
        ["429 responses", str(summary["rate_limited_429"])],
    ]
    for name, n in sorted(summary.get("errors_by_class", {}).items()):
        rows.append([f"error: {name}", str(n)])
    if "goodput" in summary:
        g = summary["goodput"]
        slo = ", ".join(f"{k}<={v}" for k, v in g["slo"].items() if v is not None)
        rows.append([f"goodput requests ({slo})", str(g["good_requests"])])
        rows.append(["goodput requests/s", fmt_num(g["requests_per_s"], 2)])
    cost = summary.get("cost") or {}
    if cost.get("usd") is not None or cost.get("unpriced_requests"):
        rows.append(["cost", format_usd(cost.get("usd"))])
        rows.append(["cost per 1k requests", format_usd(cost.get("per_1k_requests_usd"))])
        rows.append(
            [
                "cost per million output tokens",
                format_usd(cost.get("per_million_output_tokens_usd")),
            ]
        )
        if cost.get("run_total_usd") is not None and cost.get("run_total_usd") != cost.get("usd"):
            rows.append(["cost of the whole run", format_usd(cost["run_total_usd"])])
        if cost.get("max_cost_usd") is not None:
            rows.append(["budget (max_cost)", format_usd(cost["max_cost_usd"])])
        if cost.get("estimated_requests"):
            rows.append(["requests with estimated cost", str(cost["estimated_requests"])])
        if cost.get("unpriced_requests"):
            models = ", ".join(cost.get("unpriced_models") or []) or "?"
            rows.append([f"requests not priced ({models})", str(cost["unpriced_requests"])])
        for src in cost.get("sources") or {}:
            rows.append(["price", src])
    rows.append(["source", source])
    run = Table(f"llmbatch report: {where}", ["", "value"], rows)
    lat = Table("latency (ms)", ["metric", "mean", "p50", "p90", "p95", "p99"])
    for name in LATENCY_METRICS:
        s = summary["latency_s"].get(name)
        if s is None:  # a summary written before this metric existed
            continue
        lat.rows.append([name, *(fmt_ms(s[k]) for k in ("mean", "p50", "p90", "p95", "p99"))])
    return [run, lat]


def report_json(summary: dict[str, Any]) -> str:
    """The summary as indented JSON."""
    return orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def report_csv(summary: dict[str, Any]) -> str:
    """The summary as CSV: a header of dotted keys (``latency_s.ttft.p50``) and one row."""
    import csv

    flat = _flatten(summary)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(flat.keys())
    writer.writerow("" if v is None else v for v in flat.values())
    return buf.getvalue()
