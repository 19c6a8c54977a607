"""Human-readable run summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["format_summary"]


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
        "latency ms      mean      p50      p90      p99",
    ]
    for name in ("ttft", "tpot", "itl", "e2el"):
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
    if run_dir is not None:
        lines.append(f"outputs: {run_dir}/results.jsonl, {run_dir}/text/")
    return "\n".join(lines)
