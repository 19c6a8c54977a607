"""compare.json, compare.csv and the terminal tables of a sweep.

Each run of a step becomes one record with ``vllm bench serve``'s field names where the
quantity is the same (``date``, ``model_id``, ``request_rate``, ``burstiness``,
``max_concurrency``, ``num_prompts``, ``duration``, ``completed``, ``failed``,
``request_throughput``, ``request_goodput``, ``output_throughput``,
``total_token_throughput``, ``max_concurrent_requests``, and ``mean_/median_/std_/p90_/
p95_/p99_`` of ``ttft``, ``tpot``, ``itl``, ``e2el`` in ``_ms``), plus what was measured
(target, base URL without credentials, client, profile, llmbatch version, the server's
identification headers) and llmbatch's own figures (achieved rate, 429s, exclusions,
``cost_usd``, ``cost_per_1k_requests_usd``, ``cost_per_million_output_tokens_usd``: what
the counted requests cost, where their model has a price).
"""

from __future__ import annotations

import csv
import io
import time
from importlib.metadata import version as _dist_version
from typing import Any

import orjson

from llmbatch.cli.compare.runner import StepRun
from llmbatch.cli.compare.sweep import SweepResult, series_dict, spread_note
from llmbatch.cli.tables import Table, fmt_num
from llmbatch.metrics import format_usd

__all__ = ["CSV_FILE", "JSON_FILE", "compare_document", "run_record", "tables", "write_results"]

JSON_FILE = "compare.json"
CSV_FILE = "compare.csv"


def run_record(run: StepRun) -> dict[str, Any]:
    """One run as a vLLM-compatible result record (plus llmbatch's fields)."""
    p = run.series.cfg.provider
    prof = run.step.profile
    target = run.series.describe()
    figures = {k: v for k, v in run.figures.items() if k != "timeline"}
    return {
        "date": time.strftime("%Y%m%d-%H%M%S", time.localtime(run.started_at)),
        "backend": f"llmbatch-{p.kind}",
        "label": run.series.name,
        "model_id": p.model,
        "base_url": target["base_url"],
        "target": run.series.target,
        "client": run.series.client,
        "llmbatch_version": _dist_version("llmbatch"),
        "profile": prof.kind,
        "request_rate": run.step.request_rate if prof.open_loop else "inf",
        "burstiness": prof.burstiness if prof.kind == "poisson" else None,
        "max_concurrency": prof.max_concurrency if prof.open_loop else int(run.step.level),
        "num_prompts": len(run.samples),
        "repeat": run.repeat + 1,
        "status": run.status,
        **figures,
        **{k: v for k, v in run.rate.items() if k != "request_rate"},
        "warmup_excluded": run.excluded[0],
        "cooldown_excluded": run.excluded[1],
        "server": run.server,
        "run_dir": str(run.run_dir),
    }


def compare_document(result: SweepResult) -> dict[str, Any]:
    """The whole of compare.json."""
    return {
        "llmbatch_version": _dist_version("llmbatch"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "prompts": str(result.prompts),
        "label": result.label,
        "settings": {
            **result.window.as_dict(),
            **result.stop.as_dict(),
            "repeats": result.repeats,
            "saturation": result.rule.as_dict(),
            "slo": {
                "ttft_s": result.slo.ttft_s,
                "tpot_s": result.slo.tpot_s,
                "e2el_s": result.slo.e2el_s,
            }
            if result.slo.active
            else None,
        },
        "series": [series_dict(sr, result.rule) for sr in result.series],
        "runs": [
            {**run_record(r), "timeline": r.figures.get("timeline", [])} for r in result.runs()
        ],
    }


def write_results(result: SweepResult) -> dict[str, Any]:
    """Write compare.json and compare.csv (one row per run, scalar fields); return the doc."""
    doc = compare_document(result)
    (result.out_dir / JSON_FILE).write_bytes(
        orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    rows = [run_record(r) for r in result.runs()]
    buf = io.StringIO()
    if rows:
        # Every scalar field of any row (open-loop rows have a few more), in first-seen order.
        fields = list(
            dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, dict | list))
        )
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in fields} for r in rows)
    (result.out_dir / CSV_FILE).write_text(buf.getvalue())
    return doc


def _pm(mean: float | None, spread: dict[str, float | None], decimals: int = 1) -> str:
    """``1,234.5 ±12.0`` (half the min-max range) when repeated, else the value."""
    if mean is None:
        return "-"
    lo, hi = spread["min"], spread["max"]
    text = fmt_num(mean, decimals)
    if lo is not None and hi is not None and hi > lo:
        text += f" ±{(hi - lo) / 2:,.{decimals}f}"
    return text


def tables(result: SweepResult) -> list[Table]:
    """Every step (rows) with its figures; then one row per series: knee, peak, verdict."""
    priced = any(r.figures.get("cost_usd") is not None for r in result.runs())
    steps = Table(
        f"llmbatch compare: {result.label}",
        [
            "series",
            "load",
            "status",
            "req/s",
            "out tok/s",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "TPOT p50 ms",
            "ITL p50 ms",
            "E2EL p50 ms",
            "errors",
            "429s",
            "achieved req/s",
            *(["cost/1k req", "cost/M out tok"] if priced else []),
        ],
        numeric_from=3,
    )
    for sr in result.series:
        for st in sr.steps:
            statuses = sorted({r.status for r in st.runs})
            rates = [r.rate.get("achieved_request_rate") for r in st.runs]
            ach = [x for x in rates if x is not None]
            kept = all(r.rate.get("rate_kept", True) for r in st.runs)
            achieved = "-"
            if st.step.request_rate is not None and ach:
                achieved = fmt_num(sum(ach) / len(ach), 2) + ("" if kept else " (short)")
            steps.rows.append(
                [
                    sr.name,
                    st.step.tag,
                    ",".join(statuses),
                    _pm(st.mean("request_throughput"), st.spread("request_throughput"), 2),
                    _pm(st.mean("output_throughput"), st.spread("output_throughput")),
                    _pm(st.mean("median_ttft_ms"), st.spread("median_ttft_ms")),
                    _pm(st.mean("p99_ttft_ms"), st.spread("p99_ttft_ms")),
                    _pm(st.mean("median_tpot_ms"), st.spread("median_tpot_ms"), 2),
                    _pm(st.mean("median_itl_ms"), st.spread("median_itl_ms"), 2),
                    _pm(st.mean("median_e2el_ms"), st.spread("median_e2el_ms")),
                    str(sum(r.figures["failed"] for r in st.runs)),
                    str(sum(r.figures["rate_limited_429"] for r in st.runs)),
                    achieved,
                    *(
                        [
                            format_usd(st.mean("cost_per_1k_requests_usd")),
                            format_usd(st.mean("cost_per_million_output_tokens_usd")),
                        ]
                        if priced
                        else []
                    ),
                ]
            )
    return [steps, knee_table(result)]


def knee_table(result: SweepResult) -> Table:
    """One row per series: its knee, its best throughput and how it compares to the best."""
    table = Table(
        "knee per series (lowest load within "
        f"{result.rule.knee_share:.0%} of the series' best output throughput)",
        ["series", "profile", "knee", "peak out tok/s", "vs best", "stopped"],
        numeric_from=2,
    )
    bests = [(sr, sr.best()) for sr in result.series]
    top = max(
        (b for _, b in bests if b is not None),
        key=lambda b: b.mean("output_throughput") or 0.0,
        default=None,
    )
    for sr, best in bests:
        knee = sr.knee(result.rule)
        vs = "-"
        if best is not None and top is not None:
            tp, tp_top = best.mean("output_throughput") or 0.0, top.mean("output_throughput") or 0.0
            if best is top:
                vs = "best"
            elif spread_note(best, top, "output_throughput"):
                vs = "within spread"
            elif tp_top > 0:
                vs = f"{(tp - tp_top) / tp_top:+.0%}"
        table.rows.append(
            [
                sr.name,
                sr.profile.label,
                "-" if knee is None else knee.step.tag,
                "-"
                if best is None
                else _pm(best.mean("output_throughput"), best.spread("output_throughput")),
                vs,
                sr.stopped or "-",
            ]
        )
    return table
