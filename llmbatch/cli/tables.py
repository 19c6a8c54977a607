"""Tables shown by ``report`` and ``compare``: a rich Table on a terminal, aligned text otherwise.

A ``Table`` holds strings only; the modules that build one decide the formatting, and
the CLI decides where it goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import rich.table

__all__ = ["Table", "fmt_ms", "fmt_num", "render_plain", "to_rich"]


@dataclass(frozen=True, slots=True)
class Table:
    """A titled grid of cells; columns from ``numeric_from`` on are right-aligned."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric_from: int = 1


def fmt_ms(seconds: float | None) -> str:
    """Seconds as milliseconds with one decimal; ``-`` when unknown."""
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def fmt_num(value: float | None, decimals: int = 1) -> str:
    """A number with thousands separators; ``-`` when unknown."""
    return "-" if value is None else f"{value:,.{decimals}f}"


def render_plain(table: Table) -> str:
    """The table as aligned plain text (pipes, files, cron mail)."""
    grid = [table.columns, *table.rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(table.columns))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i >= table.numeric_from else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([table.title, line(table.columns), rule, *(line(r) for r in table.rows)])


def to_rich(table: Table) -> rich.table.Table:
    """The table as a ``rich.table.Table`` for a terminal."""
    from rich.table import Table as RichTable

    out = RichTable(title=table.title, title_justify="left")
    for i, name in enumerate(table.columns):
        out.add_column(name, justify="right" if i >= table.numeric_from else "left")
    for row in table.rows:
        out.add_row(*row)
    return out
