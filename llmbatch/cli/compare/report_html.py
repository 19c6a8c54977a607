"""compare.html: one self-contained page (inline SVG and CSS, a few lines of inline JS).

It works offline and fetches nothing. Sections: what was measured; throughput against
offered load per series (knees ringed, repeats as min-max bars); TTFT and ITL
percentiles against load; the TTFT and ITL distributions at each series' knee (empirical
CDFs); errors and 429s over time; the summary tables with the run-to-run spread.
Closed-loop (concurrency) and open-loop (request rate) series are drawn on separate
charts, as their loads are in different units.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from html import escape
from importlib.metadata import version as _dist_version
from pathlib import Path

from llmbatch.cli.compare.measure import Sample
from llmbatch.cli.compare.results import tables
from llmbatch.cli.compare.svg import PALETTE, Line, line_chart
from llmbatch.cli.compare.sweep import SeriesResult, StepResult, SweepResult
from llmbatch.cli.tables import Table

__all__ = ["HTML_FILE", "write_report"]

HTML_FILE = "compare.html"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{border:1px solid #e4e4e4;border-radius:4px;background:#fcfcfc}
svg text{font-size:11px;fill:#333}svg .title{font-size:13px;font-weight:600}
svg .label{font-size:12px;fill:#555}svg .frame{fill:none;stroke:#bbb}
svg .grid{stroke:#e8e8e8}svg .axis{stroke:#999}svg .note{font-size:13px;fill:#888}
svg .bar{stroke-width:1.5}svg .legend{font-size:11px}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer}
td:first-child,th:first-child,td.text{text-align:left}
.note-row{color:#666;font-size:12px}code{background:#f4f4f4;padding:0 3px}
"""

# Click a header to sort its table by that column.
_JS = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var rows = Array.from(t.tBodies[0].rows);
      var num = function (r) { return parseFloat(r.cells[i].textContent.replace(/,/g, '')); };
      var asc = th.dataset.asc !== '1';
      rows.sort(function (a, b) {
        var x = num(a), y = num(b);
        if (isNaN(x) || isNaN(y)) {
          x = a.cells[i].textContent; y = b.cells[i].textContent;
          return asc ? x.localeCompare(y) : y.localeCompare(x);
        }
        return asc ? x - y : y - x;
      });
      th.dataset.asc = asc ? '1' : '0';
      rows.forEach(function (r) { t.tBodies[0].appendChild(r); });
    });
  });
});
"""


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _load_lines(
    group: list[tuple[int, SeriesResult]],
    key: str,
    result: SweepResult,
    *,
    suffix: str = "",
    dashed: bool = False,
    knees: bool = False,
) -> list[Line]:
    lines = []
    for i, sr in group:
        pts: list[tuple[float, float]] = []
        bars: list[tuple[float, float] | None] = []
        for st in sr.steps:
            v = st.mean(key)
            if v is None:
                continue
            sp = st.spread(key)
            pts.append((st.step.level, v))
            lo, hi = sp["min"], sp["max"]
            bars.append((lo, hi) if lo is not None and hi is not None else None)
        knee = sr.knee(result.rule) if knees else None
        lines.append(
            Line(
                sr.name + suffix,
                _color(i),
                pts,
                bars,
                dashed=dashed,
                marks=[knee.step.level] if knee is not None else [],
            )
        )
    return lines


def _cdf(values: list[float]) -> list[tuple[float, float]]:
    """An empirical CDF (x in the values' unit, y in %), thinned to at most 200 points."""
    values = sorted(values)
    n = len(values)
    if not n:
        return []
    stride = max(1, n // 200)
    pts = [(values[i], 100.0 * (i + 1) / n) for i in range(0, n, stride)]
    if pts[-1][0] != values[-1]:
        pts.append((values[-1], 100.0))
    return pts


def _counted(st: StepResult, result: SweepResult) -> list[Sample]:
    out: list[Sample] = []
    for r in st.runs:
        out.extend(result.window.select(r.samples)[0])
    return out


def _distribution_lines(
    indexed: list[tuple[int, SeriesResult]],
    result: SweepResult,
    values_of: Callable[[list[Sample]], list[float]],
) -> list[Line]:
    lines = []
    for i, sr in indexed:
        knee = sr.knee(result.rule) or (sr.steps[-1] if sr.steps else None)
        if knee is None:
            continue
        vals = values_of(_counted(knee, result))
        lines.append(
            Line(
                f"{sr.name} @ {knee.step.tag}",
                _color(i),
                _cdf(vals),
                step=True,
                dashed=sr.profile.open_loop,
            )
        )
    return lines


def _timeline_lines(indexed: list[tuple[int, SeriesResult]], result: SweepResult) -> list[Line]:
    """Errors and 429s per second, on the sweep's clock (each run at its start time)."""
    runs = result.runs()
    if not runs:
        return []
    origin = min(r.started_at for r in runs)
    lines = []
    for i, sr in indexed:
        err: list[tuple[float, float]] = []
        lim: list[tuple[float, float]] = []
        for st in sr.steps:
            for r in st.runs:
                for row in r.figures.get("timeline", []):
                    t = r.started_at - origin + row["t_s"]
                    err.append((t, float(row["errors"])))
                    lim.append((t, float(row["429"])))
        lines.append(Line(f"{sr.name} errors", _color(i), err, dots=False))
        lines.append(Line(f"{sr.name} 429s", _color(i), lim, dashed=True, dots=False))
    return lines


def _table_html(table: Table, *, sortable: bool = True) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(
            f"<td{' class=text' if i < table.numeric_from else ''}>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    cls = ' class="sortable"' if sortable else ""
    return (
        f"<h3>{escape(table.title)}</h3><table{cls}><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _meta_html(result: SweepResult) -> str:
    rows = []
    for sr in result.series:
        d = sr.series.describe()
        server = ", ".join(f"{k}: {v}" for k, v in sr.server.items()) or "-"
        rows.append(
            "<tr>"
            + "".join(
                f"<td class=text>{escape(str(x))}</td>"
                for x in (
                    sr.name,
                    d["name"],
                    d["base_url"],
                    d["model"] or "-",
                    d["client"],
                    sr.profile.label,
                    server,
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("series", "target", "base URL", "model", "client", "profile", "server")
    )
    s = result.stop
    stop = ", ".join(
        f"{k} {v}"
        for k, v in (
            ("requests", s.requests),
            ("duration", f"{s.duration_s:g} s" if s.duration_s else None),
            ("max errors", s.max_errors),
        )
        if v is not None
    )
    return (
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<p class="meta">warm-up excluded: <code>{escape(result.window.warmup)}</code> · '
        f"cool-down excluded: <code>{escape(result.window.cooldown)}</code> · repeats: "
        f"{result.repeats} · stop each step at: {escape(stop or 'the end of the prompts')} · "
        f"saturation: throughput gain &lt; {result.rule.min_gain:.0%} for "
        f"{result.rule.patience} step(s), or errors &gt; {result.rule.max_error_rate:.0%}"
        + (", or goodput falling" if result.slo.active else "")
        + "</p>"
    )


def render_report(result: SweepResult) -> str:
    """The report's HTML text."""
    # One colour per target × client, whatever the profile: its closed- and open-loop
    # series are told apart by their charts (and by dashes in the shared ones).
    colours = {
        name: i for i, name in enumerate(dict.fromkeys(sr.series.name for sr in result.series))
    }
    indexed = [(colours[sr.series.name], sr) for sr in result.series]
    closed = [(i, sr) for i, sr in indexed if not sr.profile.open_loop]
    open_ = [(i, sr) for i, sr in indexed if sr.profile.open_loop]
    charts: list[str] = []
    for group, unit, tag in (
        (closed, "concurrency (requests in flight)", "closed"),
        (open_, "requested rate (req/s)", "open"),
    ):
        if not group:
            continue
        loop = "closed loop" if tag == "closed" else "open loop"
        charts.append(
            line_chart(
                f"Output throughput vs offered load ({loop})",
                unit,
                "output tokens / s",
                _load_lines(group, "output_throughput", result, knees=True),
                log_x=True,
                chart_id=f"throughput-{tag}",
            )
        )
        for metric, name in (("ttft", "TTFT"), ("itl", "ITL")):
            charts.append(
                line_chart(
                    f"{name} p50 (solid) and p99 (dashed) vs load ({loop})",
                    unit,
                    "ms",
                    _load_lines(group, f"median_{metric}_ms", result, suffix=" p50")
                    + _load_lines(group, f"p99_{metric}_ms", result, suffix=" p99", dashed=True),
                    log_x=True,
                    chart_id=f"{metric}-{tag}",
                )
            )
    charts.append(
        line_chart(
            "TTFT distribution at each series' knee (open loop dashed)",
            "TTFT (ms)",
            "% of requests at or below",
            _distribution_lines(
                indexed, result, lambda ss: [s.ttft_s * 1000 for s in ss if s.ttft_s is not None]
            ),
            chart_id="ttft-cdf",
        )
    )
    charts.append(
        line_chart(
            "ITL distribution at each series' knee (open loop dashed)",
            "gap between tokens (ms)",
            "% of gaps at or below",
            _distribution_lines(
                indexed, result, lambda ss: [g * 1000 for s in ss for g in s.itl_s]
            ),
            chart_id="itl-cdf",
        )
    )
    charts.append(
        line_chart(
            "Errors (solid) and 429s (dashed) per second over the sweep",
            "time since the sweep started (s)",
            "per second",
            _timeline_lines(indexed, result),
            empty_note="no requests",
            chart_id="errors-time",
        )
    )
    step_table, knee_table = tables(result)
    notes = []
    for sr in result.series:
        for st in sr.steps:
            for r in st.runs:
                if r.rate.get("rate_kept") is False:
                    notes.append(
                        f"{r.run_dir.name}: sent {r.rate.get('achieved_request_rate')} req/s of "
                        f"{r.rate.get('scheduled_request_rate') or r.rate.get('request_rate')} "
                        f"scheduled, held back by {r.rate.get('rate_limited_by')} "
                        "(a client-side limit, not the server's)"
                    )
    notes_html = "".join(f'<p class="note-row">{escape(n)}</p>' for n in notes)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>llmbatch compare: {escape(result.label)}</title>"
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>llmbatch compare: {escape(result.label)}</h1>"
        f'<p class="meta">llmbatch {escape(_dist_version("llmbatch"))} · '
        f"{escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} · prompts "
        f"<code>{escape(str(result.prompts))}</code></p>"
        f"<h2>What was measured</h2>{_meta_html(result)}"
        f'<h2>Charts</h2><div class="charts">{"".join(charts)}</div>'
        f"<h2>Summary</h2>{_table_html(knee_table)}{_table_html(step_table)}{notes_html}"
        '<p class="meta">± is half the range over repeats; "within spread" marks a difference '
        "smaller than the run-to-run spread. Figures use vLLM's definitions (TTFT, TPOT, ITL, "
        "E2EL); warm-up and cool-down requests are left out.</p>"
        f"<script>{_JS}</script></body></html>\n"
    )


def write_report(result: SweepResult) -> Path:
    """Write compare.html into the compare directory."""
    path = result.out_dir / HTML_FILE
    path.write_text(render_report(result), encoding="utf-8")
    return path
