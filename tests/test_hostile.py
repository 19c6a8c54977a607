"""Bad input and hostile conditions through the CLI (issue 16): every case gets one clear
message naming its place and the documented exit code, and no user file is touched."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli import app
from llmbatch.mockserver import MockConfig, MockServer, start_mock_server

from .conftest import read_results, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


class ThreadedMock:
    """The mock server on its own event loop in a thread, for synchronous CLI tests."""

    def __init__(self, cfg: MockConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: MockServer = self._call(start_mock_server(cfg))
        self.url = self.server.url

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self._call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def mocks() -> Iterator[list[ThreadedMock]]:
    started: list[ThreadedMock] = []
    yield started
    for m in started:
        m.close()


def start_mock(mocks: list[ThreadedMock], **kw: Any) -> ThreadedMock:
    m = ThreadedMock(MockConfig(**{"tokens": 4, "ttft_s": 0.0, "itl_s": 0.0, **kw}))
    mocks.append(m)
    return m


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("LLMBATCH_") or k.endswith("_API_KEY"):
            monkeypatch.delenv(k)
    return CliRunner()


def prompts(tmp_path: Path, n: int = 5) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(n)])


def first_error_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("llmbatch: error:"))


def run_cli(runner: CliRunner, *args: str) -> Any:
    res = runner.invoke(app, ["run", *args, "--no-progress"])
    assert "Traceback" not in res.output, res.output
    return res


# -- run identity ----------------------------------------------------------------------------
def test_results_from_another_base_url_are_not_reused(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    one, two = start_mock(mocks), start_mock(mocks)
    p = prompts(tmp_path)
    res = run_cli(runner, str(p), "-p", "vllm", "--base-url", one.url, "--model", "m")
    assert res.exit_code == 0, res.output
    res = run_cli(runner, str(p), "-p", "vllm", "--base-url", two.url, "--model", "m")
    assert res.exit_code == 2, res.output
    line = first_error_line(res.output)
    assert f"holds a run for another target: base_url {one.url!r} (now {two.url!r})" in line
    assert "--force-resume" in line
    assert two.server.stats.requests == 0
    # The model is part of the identity too (same --out, other model).
    out = str(tmp_path / "outputs" / "p-vllm-m")
    res = run_cli(runner, str(p), "-p", "vllm", "--base-url", one.url, "--model", "x", "-o", out)
    assert res.exit_code == 2 and "model 'm' (now 'x')" in res.output
    # The user says to go on: the run continues and run.json keeps what it was before.
    res = run_cli(
        runner, str(p), "-p", "vllm", "--base-url", two.url, "--model", "m", "--force-resume"
    )
    assert res.exit_code == 0 and "5 already done" in res.output
    meta = orjson.loads((tmp_path / "outputs" / "p-vllm-m" / "run.json").read_bytes())
    assert meta["base_url"] == two.url and meta["history"][0]["base_url"] == one.url


def test_old_run_json_is_accepted_and_upgraded(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    server = start_mock(mocks)
    p = prompts(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = {"prompts": str(p.resolve()), "provider": "vllm", "model": "m"}
    (run_dir / "run.json").write_bytes(orjson.dumps(old))
    res = run_cli(
        runner, str(p), "-p", "vllm", "--base-url", server.url, "--model", "m", "-o", "run"
    )
    assert res.exit_code == 0, res.output
    meta = orjson.loads((run_dir / "run.json").read_bytes())
    assert meta == {**old, "kind": "openai", "base_url": server.url, "params": {}}


def test_a_directory_that_is_not_a_run_directory_is_never_adopted(
    runner: CliRunner, tmp_path: Path
) -> None:
    user_dir = tmp_path / "mine"
    (user_dir / "text").mkdir(parents=True)
    (user_dir / "results.jsonl").write_text('{"custom_id": "0"}\n')
    (user_dir / "text" / "draft.partial").write_text("my draft")
    res = run_cli(runner, str(prompts(tmp_path)), "--out", str(user_dir))
    assert res.exit_code == 2, res.output
    assert "is not an llmbatch run directory (no run.json, but it holds results.jsonl" in (
        first_error_line(res.output)
    )
    assert (user_dir / "text" / "draft.partial").read_text() == "my draft"
    assert sorted(p.name for p in user_dir.rglob("*")) == ["draft.partial", "results.jsonl", "text"]


def test_out_naming_a_file(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    res = run_cli(runner, str(prompts(tmp_path)), "--out", str(tmp_path / "afile"))
    assert res.exit_code == 2
    assert "it is a file, not a directory" in first_error_line(res.output)
    assert "Errno" not in res.output


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[run]\nclient = "caf\xe9"\n', "bad.toml: not UTF-8 text (byte 0xe9 at offset 19)"),
        (b"[timeout]\nidle_s = 5\n", "bad.toml: unknown section [timeout] (known: [run],"),
        (b"concurrency = 4\n", "bad.toml: unknown top-level key 'concurrency' (it belongs under"),
        (b"[run]\nout_dir = 5\n", "bad.toml: run.out_dir must be a string, got 5"),
        (b"[run]\nclient = 5\n", "bad.toml: run.client must be a string, got 5"),
        (b"[run]\nconcurrency = 'abc'\n", "bad.toml: run.concurrency must be an integer"),
        (b"[providers.vllm.limits]\nrpm = -5\n", "bad.toml: providers.vllm.limits.rpm must be"),
    ],
)
def test_config_file_errors_name_file_and_key(
    runner: CliRunner, tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "bad.toml").write_bytes(content)
    res = run_cli(runner, str(prompts(tmp_path)), "-p", "vllm", "-c", "bad.toml")
    assert res.exit_code == 2, res.output
    assert message in first_error_line(res.output)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--concurrency", "abc"], {}, "--concurrency must be an integer, got 'abc'"),
        (["--rpm", "-5"], {}, "--rpm must be positive, got -5"),
        ([], {"LLMBATCH_CONCURRENCY": "abc"}, "LLMBATCH_CONCURRENCY must be an integer"),
        ([], {"LLMBATCH_BASE_URL": "ftp://x"}, "LLMBATCH_BASE_URL must start with http://"),
        (["--max-runtime", "-1"], {}, "--max-runtime must be greater than 0 seconds, got -1"),
        (["--max-runtime", "0"], {}, "--max-runtime must be greater than 0 seconds, got 0"),
        (
            ["--base-url", "http://127.0.0.1:99999/v1"],
            {},
            "--base-url: invalid URL 'http://127.0.0.1:99999/v1': Port out of range",
        ),
        (["--base-url", "http://[::1/v1"], {}, "--base-url: invalid URL 'http://[::1/v1'"),
        (["--base-url", "http:///v1"], {}, "--base-url: invalid URL 'http:///v1': no host"),
    ],
)
def test_errors_blame_the_flag_or_the_variable(
    runner: CliRunner, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    # A config file is present, but it is not to blame.
    (tmp_path / "config.toml").write_text("[run]\nconcurrency = 4\n")
    res = runner.invoke(app, ["run", str(prompts(tmp_path)), "-p", "vllm", *args], env=env)
    assert res.exit_code == 2, res.output
    line = first_error_line(res.output)
    assert message in line and "config.toml" not in line
    assert not (tmp_path / "outputs").exists()  # refused at start: nothing sent or made


def test_dash_h_is_help(runner: CliRunner) -> None:
    for args in (["-h"], ["run", "-h"], ["report", "-h"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Usage:" in res.output, args


# -- input ---------------------------------------------------------------------------------
def test_unknown_message_role_is_refused_at_input(runner: CliRunner, tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "messages": [{"role": "wizard", "content": "hi"}]},
            {"id": "b", "messages": [{"role": "developer", "content": "hi"}]},
        ],
    )
    res = runner.invoke(app, ["validate", str(p)])
    assert res.exit_code == 1
    assert f"{p}:1: messages[0] has unknown role 'wizard' (one of system, developer" in res.output
    assert "1 valid" in res.output


@pytest.mark.timeout(180)
def test_a_50_mb_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    with open(p, "wb") as fh:
        fh.write(b'{"id": "small", "prompt": "hi"}\n{"id": "big", "prompt": "')
        block = b"x" * (1 << 20)
        for _ in range(50):
            fh.write(block)
        fh.write(b'"}\n{"id": "after", "prompt": "hi"}\n')
    code = (
        "import resource, sys\n"
        "from llmbatch.cli import main\n"
        "sys.argv = ['llmbatch', 'run', sys.argv[1], '--no-progress', '-o', 'run']\n"
        "try:\n    main()\n"
        "finally:\n"
        "    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_")}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(p)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "2 succeeded, 1 failed (1 bad input lines)" in proc.stdout
    (bad,) = [r for r in read_results(tmp_path / "run") if r["error"]]
    assert bad["error"]["message"] == f"{p}:2: line longer than 16 MiB (the limit for one prompt)"
    maxrss_mb = int(proc.stderr.split("maxrss_kb")[1].split()[0]) / 1024
    # Sending it took 366 MB here (1 GB in the report); now the 16 MiB read buffer at most.
    assert maxrss_mb < 200, maxrss_mb


def test_keep_partial_leaves_no_empty_files(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    # A third of the prompts get HTTP 500 on every attempt: they fail having streamed nothing.
    server = start_mock(mocks, faults={"500": 0.34}, fault_attempts=100, retry_after_s=0.0)
    (tmp_path / "fast.toml").write_text("[retry]\nmax_attempts = 2\nbackoff_base_s = 0.001\n")
    p = prompts(tmp_path, 30)
    res = run_cli(
        runner, str(p), "-p", "vllm", "--base-url", server.url, "-c", "fast.toml",
        "--keep-partial", "-o", "run",
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    failed = [r for r in read_results(tmp_path / "run") if r["error"]]
    assert failed and all(r["error"]["code"] == "server_error" for r in failed)
    assert all(r["llmbatch"]["partial_text_kept"] is False for r in failed)
    assert all(r["llmbatch"]["text_file"] is None for r in failed)
    assert list((tmp_path / "run" / "text" / "failed").iterdir()) == []


# -- damaged results ---------------------------------------------------------------------
def test_garbage_line_in_results_is_warned_about_with_its_line_number(
    runner: CliRunner, tmp_path: Path
) -> None:
    p = prompts(tmp_path, 4)
    res = run_cli(runner, str(p), "-o", "run")
    assert res.exit_code == 0
    results = tmp_path / "run" / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(lines[0] + b"\x00garbage{\n" + b"".join(lines[2:]))
    expected = (
        "llmbatch: warning: run/results.jsonl: damaged line skipped (not a JSON record): line 2"
    )
    res = run_cli(runner, str(p), "-o", "run")  # the lost record's request runs again
    assert res.exit_code == 0 and expected in res.output and "3 already done" in res.output
    res = runner.invoke(app, ["report", "run", "--recompute"])
    assert res.exit_code == 0 and expected in res.output
    for fmt in ("openai-batch", "csv"):
        for extra in ([], ["--ordered"]):
            res = runner.invoke(app, ["export", "run", "-f", fmt, "-o", "x.out", *extra])
            assert res.exit_code == 0 and expected in res.output, (fmt, extra)


def test_report_after_a_no_op_resume_describes_the_whole_run(
    runner: CliRunner, tmp_path: Path
) -> None:
    example = str(ROOT / "prompts" / "example.jsonl")
    assert run_cli(runner, example).exit_code == 0
    res = run_cli(runner, example)
    assert res.exit_code == 0 and "59 already done" in res.output
    res = runner.invoke(app, ["report", "outputs/example-mock"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.startswith("requests succeeded"))
    assert row.split()[-1] == "59", res.output
    assert "results.jsonl (whole run after a resume)" in res.output
    as_json = orjson.loads(runner.invoke(app, ["report", "outputs/example-mock", "--json"]).output)
    assert as_json["requests"]["succeeded"] == 59
