"""Start-up cost: which heavy modules a command imports (no wall-clock bounds here;
bench/startup.py measures the CPU time)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from llmbatch.mockserver import MockServer

from .conftest import write_jsonl

pytestmark = pytest.mark.timeout(60)

# Modules that a command must not pay for unless it uses them.
NOT_FOR_VERSION = ("aiohttp", "httpx", "rich", "tenacity", "pydantic", "asyncio", "orjson", "typer")
NOT_FOR_A_RUN = (
    "pydantic",  # typer's coercion of plain options goes around it (llmbatch/cli/typer_fast.py)
    "rich",  # the progress bar and tables only on a terminal
    "tenacity",  # only once a request needs a retry
    "httpx",  # only for --client httpx / httpx-aiohttp
    "h2",
    "aiohttp.web",  # the mock server only when the embedded mock is the provider
    "llmbatch.mockserver",
    "uvloop",  # not for fewer than 100 prompts (run_command.UVLOOP_MIN_PROMPTS)
    "typer",  # plain arguments are read without it (llmbatch/cli/run_args.py, entry.py)
    "llmbatch.cli.app",
    "llmbatch.rundir.shard",  # only for --shard
    "llmbatch.cli.tables",  # only for `llmbatch report` and compare
    "llmbatch.result",  # Result objects only for library callers (api._result)
    "tomllib",  # only when there is a config file
    "ray",
    "llmbatch.ray.engine",
)

_DUMP = """
import atexit, sys
out = sys.argv.pop(1)
def dump():
    names = sorted(sys.modules)
    ca = sys.modules.get("llmbatch.cli.deferred_ca")
    if ca is not None:  # aiohttp's default contexts whose CAs are still not loaded
        names.append(f"deferred-ca-pending={ca.pending_contexts()}")
    open(out, "w").write("\\n".join(names))
atexit.register(dump)
sys.argv[0] = "llmbatch"
from llmbatch.cli.entry import main
main()
"""


async def _modules_after(tmp_path: Path, *args: str) -> tuple[int, set[str], str]:
    dump = tmp_path / "modules.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _DUMP,
        str(dump),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # no ./config.toml
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, set(dump.read_text().split()), out.decode()


def _loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


async def test_version_imports_nothing_heavy(tmp_path: Path) -> None:
    code, modules, out = await _modules_after(tmp_path, "--version")
    assert code == 0 and out.startswith("llmbatch ")
    assert [m for m in NOT_FOR_VERSION if _loaded(modules, m)] == []


async def test_one_prompt_run_imports_only_what_it_uses(
    mock_server: MockServer, tmp_path: Path
) -> None:
    prompts = write_jsonl(tmp_path / "one.jsonl", [{"id": "q1", "prompt": "hello"}])
    args = ["run", str(prompts), "--provider", "vllm", "--base-url", mock_server.url]
    args += ["--model", "mock-model", "--out", str(tmp_path / "run"), "--no-progress"]
    args += ["--rpm", "6e4", "--max-runtime", "30.5"]  # plain float values, fast coercion
    code, modules, out = await _modules_after(tmp_path, *args)
    assert code == 0, out
    assert "1 succeeded, 0 failed" in out
    assert (tmp_path / "run" / "text" / "q1.txt").read_text()
    assert [m for m in NOT_FOR_A_RUN if _loaded(modules, m)] == []
    # aiohttp's two import-time contexts never loaded the CA bundle: plain HTTP
    assert "deferred-ca-pending=2" in modules


async def test_plain_option_values_keep_typers_rules(tmp_path: Path) -> None:
    """Values the fast coercion does not recognise get typer's own checks and message."""
    prompts = write_jsonl(tmp_path / "one.jsonl", [{"id": "q1", "prompt": "hello"}])
    code, _, out = await _modules_after(tmp_path, "run", str(prompts), "--rpm", "abc")
    assert code == 2
    assert "Invalid value for '--rpm'" in out


def test_uvloop_only_for_runs_of_many_prompts(tmp_path: Path) -> None:
    import os

    from llmbatch.cli.run import UVLOOP_MIN_PROMPTS
    from llmbatch.cli.run import few_prompts as _few_prompts

    few = write_jsonl(tmp_path / "few.jsonl", [{"prompt": f"q{i}"} for i in range(99)])
    many = write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"q{i}"} for i in range(100)])
    assert UVLOOP_MIN_PROMPTS == 100
    assert _few_prompts(few) and not _few_prompts(many)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    assert not _few_prompts(fifo)  # judged without opening it (a read would block here)
    assert not _few_prompts(tmp_path / "missing.jsonl")
