"""The progress line on a terminal: the figures that matter stay visible at any width."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.progress import LineState, fit_line

ROOT = Path(__file__).resolve().parent.parent

# The moment: 369 of 1,000 done, retries under way after 34 failed attempts.
BUSY = LineState(
    done=369,
    total=1000,
    tokens_per_s=2727,
    in_flight=32,
    failed_attempts=34,
    retrying=3,
    last_error="rate_limited",
    elapsed_s=75,
)


@pytest.mark.parametrize(
    ("width", "line"),
    [
        (80, "369/1,000  2,727 tok/s  in flight 32  errors 0  elapsed 1:15  left 2:08"),
        (
            120,
            "llmbatch  369/1,000  2,727 tok/s  errors 0  retrying 3 (34 failed attempts, "
            "last rate_limited)  elapsed 1:15  left 2:08",
        ),
        (
            160,
            "llmbatch  ━━━━━━━━━━━━━━━━━━━━━━━━━  369/1,000  2,727 tok/s  in flight 32  "
            "errors 0  retrying 3 (34 failed attempts, last rate_limited)  elapsed 1:15  "
            "left 2:08",
        ),
    ],
)
def test_line_keeps_the_count_and_labelled_times(width: int, line: str) -> None:
    assert fit_line(BUSY, width).plain == line


@pytest.mark.parametrize("width", range(12, 200, 7))
def test_line_fits_and_never_cuts_a_figure(width: int) -> None:
    text = fit_line(BUSY, width).plain
    parts = text.split("  ")
    assert len(text) <= width and "369/1,000" in parts and "…" not in text
    figures = {p for p in parts if not p.startswith("━")}  # the bar is drawn to fit
    assert figures <= set(fit_line(BUSY, 500).plain.split("  "))


def test_clock_and_unknown_total() -> None:
    st = LineState(done=5, skipped=2, total=None, elapsed_s=3725, failed=1)
    assert fit_line(st, 60).plain == "7 done  0 tok/s  in flight 0  errors 1  elapsed 1:02:05"


def test_cli_progress_line_at_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("LLMBATCH_"):
            monkeypatch.delenv(k)
    prompts = ROOT / "prompts" / "example.jsonl"
    res = CliRunner().invoke(app, ["run", str(prompts), "--progress"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    first = res.output.splitlines()[0]
    assert "  59/59  " in first and "  errors 0  elapsed " in first and len(first) <= 80
    assert res.output.splitlines()[1].startswith("requests: 59 succeeded")
