"""Line charts as inline SVG text: axes, ticks, lines with error bars, a legend.

Small on purpose: the compare report is one offline HTML file, so its charts are drawn
here, in Python, with nothing fetched and no chart library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["PALETTE", "Line", "line_chart"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
W, H = 560, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 70


@dataclass(slots=True)
class Line:
    """One line: points (x, y) with an optional (low, high) error bar each."""

    name: str
    color: str
    points: list[tuple[float, float]]
    bars: list[tuple[float, float] | None] = field(default_factory=list)
    dashed: bool = False
    marks: list[float] = field(default_factory=list)  # x values to ring (the knee)
    step: bool = False  # a staircase (an empirical CDF)
    dots: bool = True  # a marker per point (off for dense time series)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick at or above hi: nothing drawn past it
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo * 0.999 <= v <= hi * 1.001:
                out.append(v)
    return out or [lo, hi]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10000:
        return f"{v / 1000:g}k"
    return f"{v:g}" if abs(v) >= 0.01 else f"{v:.1e}"


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    lines: Sequence[Line],
    *,
    log_x: bool = False,
    empty_note: str = "no data",
    chart_id: str = "",
) -> str:
    """An SVG line chart (y from 0); ``empty_note`` is written when there is nothing."""
    pts = [p for ln in lines for p in ln.points]
    bars = [b for ln in lines for b in ln.bars if b is not None]
    legend = _legend_layout(lines)
    height = max(H, int(max((y for _, y, _ in legend), default=0)) + 10)
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {W} {height}" width="{W}" '
        f'height="{height}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{W / 2}" y="18" text-anchor="middle" class="title">{escape(title)}</text>',
    ]
    x0, x1 = LEFT, W - RIGHT
    y0, y1 = H - BOTTOM, TOP
    if not pts:
        legend = []
        parts.append(
            f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" class="frame"/>'
            f'<text x="{W / 2}" y="{(y0 + y1) / 2}" text-anchor="middle" class="note">'
            f"{escape(empty_note)}</text></svg>"
        )
        return "".join(parts)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + [b[1] for b in bars]
    use_log = log_x and min(xs) > 0 and max(xs) / min(xs) >= 4
    xlo, xhi = min(xs), max(xs)
    if use_log:
        levels = sorted(set(xs))
        xticks = levels if len(levels) <= 8 else _log_ticks(xlo, xhi)
        lx0, lx1 = math.log10(xlo), math.log10(xhi)
        if lx1 == lx0:
            lx1 = lx0 + 1

        def sx(x: float) -> float:
            return x0 + (math.log10(x) - lx0) / (lx1 - lx0) * (x1 - x0)
    else:
        xticks = _nice_ticks(min(0.0, xlo) if xlo >= 0 and xlo < xhi / 3 else xlo, xhi)
        tlo, thi = xticks[0], xticks[-1]

        def sx(x: float) -> float:
            return x0 + (x - tlo) / ((thi - tlo) or 1) * (x1 - x0)

    yticks = _nice_ticks(0.0, max(ys) if max(ys) > 0 else 1.0)
    ytop = yticks[-1]

    def sy(y: float) -> float:
        return y0 - y / (ytop or 1) * (y0 - y1)

    parts.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" class="frame"/>')
    for t in yticks:
        parts.append(
            f'<line x1="{x0}" x2="{x1}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
            f'<text x="{x0 - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    for t in xticks:
        parts.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{y0}" y2="{y0 + 4}" class="axis"/>'
            f'<text x="{sx(t):.1f}" y="{y0 + 16}" text-anchor="middle">{_fmt(t)}</text>'
        )
    parts.append(
        f'<text x="{(x0 + x1) / 2}" y="{y0 + 32}" text-anchor="middle" class="label">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(14 {(y0 + y1) / 2}) rotate(-90)" text-anchor="middle" '
        f'class="label">{escape(y_label)}</text>'
    )
    for ln in lines:
        if not ln.points:
            continue
        coords = []
        for i, (x, y) in enumerate(ln.points):
            if ln.step and i:
                coords.append(f"{sx(x):.1f},{sy(ln.points[i - 1][1]):.1f}")
            coords.append(f"{sx(x):.1f},{sy(y):.1f}")
        dash = ' stroke-dasharray="6 4"' if ln.dashed else ""
        parts.append(
            f'<polyline class="series" data-series="{escape(ln.name)}" points="{" ".join(coords)}"'
            f' fill="none" stroke="{ln.color}" stroke-width="2"{dash}/>'
        )
        if ln.dots and not ln.step:
            for (x, y), bar in zip(ln.points, ln.bars or [None] * len(ln.points), strict=False):
                parts.append(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{ln.color}">'
                    f"<title>{escape(ln.name)}: {_fmt(x)} → {y:,.2f}</title></circle>"
                )
                if bar is not None and bar[1] > bar[0]:
                    parts.append(
                        f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(bar[0]):.1f}" '
                        f'y2="{sy(bar[1]):.1f}" stroke="{ln.color}" class="bar"/>'
                    )
        for x in ln.marks:
            ym = dict(ln.points).get(x)
            if ym is not None:
                parts.append(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(ym):.1f}" r="8" fill="none" '
                    f'stroke="{ln.color}" stroke-width="2" class="knee"><title>knee of '
                    f"{escape(ln.name)}: {_fmt(x)}</title></circle>"
                )
    for lx, ly, ln in legend:
        dash = ' stroke-dasharray="6 4"' if ln.dashed else ""
        parts.append(
            f'<line x1="{lx}" x2="{lx + 20}" y1="{ly - 4}" y2="{ly - 4}" stroke="{ln.color}" '
            f'stroke-width="2"{dash}/><text x="{lx + 24}" y="{ly}" class="legend">'
            f"{escape(ln.name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend_layout(lines: Sequence[Line]) -> list[tuple[float, float, Line]]:
    """(x, y, line) of each legend entry under the plot, wrapping into rows."""
    out = []
    lx, ly = float(LEFT), float(H - BOTTOM + 46)
    for ln in lines:
        width = 28 + 6.5 * len(ln.name)
        if lx + width > W - RIGHT and lx > LEFT:
            lx, ly = float(LEFT), ly + 14
        out.append((lx, ly, ln))
        lx += width + 10
    return out
