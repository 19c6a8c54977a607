"""``llmbatch run`` read without typer (llmbatch/cli/run_args.py) means what typer reads.

The fast reading must give run_command exactly the keywords typer's command gives it
for the same arguments, and leave to typer everything it does not take plainly.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from llmbatch.cli import app as cli
from llmbatch.cli.run import run_command
from llmbatch.cli.run_args import RUN_OPTIONS, parse_run_args

from .conftest import write_jsonl

pytestmark = pytest.mark.timeout(60)

_KIND_OF = {str: "str", float: "float", int: "int", Path: "path"}


def _typer_run_params() -> list[Any]:
    return list(typer.main.get_command(cli.app).commands["run"].params)  # type: ignore[attr-defined]


def test_table_is_typers_run_command() -> None:
    """Every option of typer's `run`, with its names, type, flags and default, and plain."""
    params = _typer_run_params()
    assert [p.name for p in params if p.param_type_name == "argument"] == ["prompts"]
    defaults = {
        name: p.default
        for name, p in inspect.signature(run_command).parameters.items()
        if name != "prompts"
    }
    table = []
    for p in params:
        if p.param_type_name == "argument":
            continue
        info = p.type_descriptor.parameter_info
        assert p.nargs == 1 and not p.multiple and p.envvar is None and p.callback is None
        assert info.parser is None and info.min is None and info.max is None
        assert not (info.exists or info.resolve_path or info.writable or info.allow_dash)
        ann = p.type_descriptor.annotation
        if ann is bool:
            kind = "pair" if p.secondary_opts else "flag"
        else:
            kind = _KIND_OF[ann]
            assert not p.is_flag
        assert defaults[p.name] == p.default, p.name  # run_command's defaults are typer's
        table.append((p.name, kind, tuple(p.opts), tuple(p.secondary_opts)))
    assert tuple(table) == RUN_OPTIONS
    assert set(defaults) == {row[0] for row in RUN_OPTIONS}


def _typer_kwargs(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The keywords typer's `run` command passes to run_command for ``argv``."""
    seen: list[dict[str, Any]] = []

    def capture(prompts: Path, **kwargs: Any) -> int:
        seen.append({"prompts": prompts, **kwargs})
        return 0

    monkeypatch.setattr(cli, "run_command", capture)
    res = CliRunner().invoke(cli.app, argv)
    assert res.exit_code == 0, res.output
    return seen[0]


def _with_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(run_command).parameters
    return {
        name: kwargs.get(name, p.default) for name, p in params.items() if name != "prompts"
    } | {"prompts": kwargs["prompts"]}


def _corpus(tmp_path: Path) -> list[list[str]]:
    prompts = str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}]))
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    out = str(tmp_path / "out")
    return [
        ["run", prompts],
        ["run", prompts, "--provider", "vllm", "--base-url", "http://h:1/v1", "--model", "m"],
        ["run", "--model=m/x", prompts, "-j", "4", "-p", "mock", "-o", out, "-c", str(cfg)],
        ["run", prompts, "--rpm", "6e4", "--tpm", "1000", "--input-tpm", "1.5"],
        ["run", prompts, "--output-tpm", ".5", "--max-runtime", "30.5", "--ray-workers", "3"],
        ["run", prompts, "--http2", "--text", "--keep-partial", "--retry-failed"],
        ["run", prompts, "--force-resume", "--insecure", "--progress", "--text-layout", "log"],
        ["run", prompts, "--slo", "ttft=0.5,tpot=0.05", "--shard", "1/2", "--engine", "ray"],
        ["run", prompts, "--ray-address", "auto", "--client", "httpx", "--ca-bundle", str(cfg)],
        ["run", prompts, "--no-text", "--no-progress", "--concurrency=auto", "--out=" + out],
        ["run", prompts, "--rpm=1", "--ca-bundle=missing.pem", "--config=missing.toml"],
        ["run", "--base-url", "http://127.0.0.1:8000/v1?a=b", prompts, "--model", "a=b"],
    ]


def test_same_keywords_as_typer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in _corpus(tmp_path):
        fast = parse_run_args(argv)
        assert fast is not None, argv
        assert _with_defaults(fast) == _typer_kwargs(argv, monkeypatch), argv


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["validate", "p.jsonl"],
        ["run"],
        ["run", "--help"],
        ["run", "p.jsonl", "-h"],
        ["run", "p.jsonl", "q.jsonl"],
        ["run", "p.jsonl", "--"],
        ["run", "-", "--model", "m"],
        ["run", "p.jsonl", "--unknown", "x"],
        ["run", "p.jsonl", "--model", "a", "--model", "b"],
        ["run", "p.jsonl", "--text", "--no-text"],
        ["run", "p.jsonl", "--model"],
        ["run", "p.jsonl", "--model", ""],
        ["run", "p.jsonl", "--model", "-x"],
        ["run", "p.jsonl", "--model="],
        ["run", "p.jsonl", "-pmock"],
        ["run", "p.jsonl", "-p=mock"],
        ["run", "p.jsonl", "--http2=1"],
        ["run", "p.jsonl", "--rpm", "abc"],
        ["run", "p.jsonl", "--rpm", "1_000"],
        ["run", "p.jsonl", "--rpm", " 1"],
        ["run", "p.jsonl", "--rpm", "-1"],
        ["run", "p.jsonl", "--ray-workers", "1.5"],
        ["run", "p.jsonl", "--mod", "m"],  # no prefixes: typer says what it means
    ],
)
def test_the_rest_is_left_to_typer(argv: list[str]) -> None:
    assert parse_run_args(argv) is None


def _cli(tmp_path: Path, entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; sys.argv[0] = 'llmbatch'; from llmbatch.{entry} import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=50,
        env={**os.environ, "OPENAI_API_KEY": ""},
    )


@pytest.mark.parametrize(
    "args",
    [
        ["run", "missing.jsonl"],
        ["run", "p.jsonl", "--engine", "spark"],
        ["run", "p.jsonl", "--provider", "openai"],  # no key: exit 2, nothing sent
        ["run", "p.jsonl", "--slo", "ttft=x"],
        ["run", "p.jsonl", "--shard", "3/2"],
    ],
)
def test_console_script_ends_as_typers_command(tmp_path: Path, args: list[str]) -> None:
    """The same message and exit code whether typer or the fast path read the arguments."""
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    assert parse_run_args(args) is not None
    fast, typer_run = _cli(tmp_path, "cli.entry", *args), _cli(tmp_path, "cli.app", *args)
    assert fast.returncode == typer_run.returncode == 2
    assert fast.stderr == typer_run.stderr and fast.stderr.startswith("llmbatch: error: ")
    assert fast.stdout == typer_run.stdout == ""


def test_console_script_runs_other_commands_through_typer(tmp_path: Path) -> None:
    res = _cli(tmp_path, "cli.entry", "run", "p.jsonl", "--rpm", "abc")
    assert res.returncode == 2 and "Invalid value for '--rpm'" in res.stderr
    res = _cli(tmp_path, "cli.entry", "validate", "missing.jsonl")
    assert res.returncode == 2 and "missing.jsonl" in res.stderr


def test_version_without_typer_prints_what_typer_prints(tmp_path: Path) -> None:
    fast, typer_run = (
        _cli(tmp_path, "cli.entry", "--version"),
        _cli(tmp_path, "cli.app", "--version"),
    )
    assert fast.returncode == typer_run.returncode == 0
    assert fast.stdout == typer_run.stdout and fast.stdout.startswith("llmbatch 0.")
