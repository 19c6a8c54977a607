"""Helpers for CLI tests: the mock on a thread of its own, a clean CLI runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.mockserver import MockConfig

from .conftest import ThreadedMock, write_jsonl

__all__ = [
    "cli_runner",
    "first_error_line",
    "prompts",
    "run_cli",
    "start_mock",
]


def start_mock(mocks: list[ThreadedMock], **kw: Any) -> ThreadedMock:
    m = ThreadedMock(MockConfig(**{"tokens": 4, "ttft_s": 0.0, "itl_s": 0.0, **kw}))
    mocks.append(m)
    return m


def prompts(tmp_path: Path, n: int = 5) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(n)])


def first_error_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("llmbatch: error:"))


def run_cli(runner: CliRunner, *args: str) -> Any:
    res = runner.invoke(app, ["run", *args, "--no-progress"])
    assert "Traceback" not in res.output, res.output
    return res


def cli_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner in ``tmp_path`` with no LLMBATCH_* or *_API_KEY variable set."""
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("LLMBATCH_") or k.endswith("_API_KEY"):
            monkeypatch.delenv(k)
    return CliRunner()
