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

from llmbatch.cli.app import app

from .cliutil import first_error_line, prompts, run_cli, start_mock
from .conftest import ThreadedMock, read_results, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


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
    res = run_cli(runner, str(prompts(tmp_path)), "--run-dir", str(user_dir))
    assert res.exit_code == 2, res.output
    assert "is not an llmbatch run directory (no run.json, but it holds results.jsonl" in (
        first_error_line(res.output)
    )
    assert (user_dir / "text" / "draft.partial").read_text() == "my draft"
    assert sorted(p.name for p in user_dir.rglob("*")) == ["draft.partial", "results.jsonl", "text"]


def test_out_naming_a_file(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    res = run_cli(runner, str(prompts(tmp_path)), "--run-dir", str(tmp_path / "afile"))
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
        (b"[run]\noutputs_dir = 5\n", "bad.toml: run.outputs_dir must be a string, got 5"),
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
        (["--max-runtime-s", "-1"], {}, "--max-runtime-s must be greater than 0 seconds, got -1"),
        (["--max-runtime-s", "0"], {}, "--max-runtime-s must be greater than 0 seconds, got 0"),
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


def _run_reporting_maxrss(
    prompts: Path, cwd: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``llmbatch run prompts`` in a child; the child's peak RSS in MB."""
    code = (
        "import resource, sys\n"
        "from llmbatch.cli.app import main\n"
        "sys.argv = ['llmbatch', 'run', sys.argv[1], '--no-progress', '-o', sys.argv[2]]\n"
        "try:\n    main()\n"
        "finally:\n"
        "    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_")}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(prompts), f"run-{prompts.stem}"],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=cwd,
        env=env,
    )
    return proc, int(proc.stderr.split("maxrss_kb")[1].split()[0]) / 1024


@pytest.mark.subprocess
@pytest.mark.timeout(180)
def test_a_50_mb_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    with open(p, "wb") as fh:
        fh.write(b'{"id": "small", "prompt": "hi"}\n{"id": "big", "prompt": "')
        block = b"x" * (1 << 20)
        for _ in range(50):
            fh.write(block)
        fh.write(b'"}\n{"id": "after", "prompt": "hi"}\n')
    small = write_jsonl(tmp_path / "small.jsonl", [{"id": "small", "prompt": "hi"}])
    proc, maxrss_mb = _run_reporting_maxrss(p, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "2 succeeded, 1 failed (1 bad input lines)" in proc.stdout
    (bad,) = [r for r in read_results(tmp_path / "run-big") if r["error"]]
    assert bad["error"]["message"] == f"{p}:2: line longer than 16 MiB (the limit for one prompt)"
    # Against the same run without the line (what the imports and the pool take): sending
    # it took 366 MB more in the report; now at most the 16 MiB read buffer and its copies.
    _, baseline_mb = _run_reporting_maxrss(small, tmp_path)
    assert maxrss_mb - baseline_mb < 80, (maxrss_mb, baseline_mb)
    print(f"peak RSS {maxrss_mb:.0f} MB, without the line {baseline_mb:.0f} MB")


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
    assert not (tmp_path / "run" / "text" / "failed").exists()  # nothing kept: no folder


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


# -- hostile conditions ------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_")}
    env["LLMBATCH_LOOP"] = "asyncio"
    return env


def run_child(
    args: list[str], cwd: Path, preexec: Any = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmbatch", "run", *args, "--no-progress"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(),
        preexec_fn=preexec,
        timeout=timeout_s,
    )


def summary_counts(stdout: str) -> tuple[int, int]:
    first = stdout.splitlines()[0]  # "requests: 32 succeeded, 0 failed ..."
    words = first.replace(",", "").split()
    return int(words[1]), int(words[3])


@pytest.mark.subprocess
def test_full_disk_one_line_counts_match_what_was_saved(tmp_path: Path) -> None:
    import resource

    # RLIMIT_FSIZE stands in for a full disk: every write past 60 kB fails (EFBIG), the
    # same OSError path as ENOSPC, without needing a small file system.
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    p = prompts(tmp_path, 400)
    proc = run_child([str(p), "-o", "run"], tmp_path, preexec=limit_file_size)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "run aborted" in line]
    assert errors == ["llmbatch: run aborted: writing to run failed: File too large"]
    saved = read_results(tmp_path / "run")  # every line whole: nothing torn
    succeeded, failed = summary_counts(proc.stdout)
    assert (succeeded, failed) == (len(saved), 0) and 0 < succeeded < 400
    assert "could not be saved to run/results.jsonl (not counted above)" in proc.stderr
    assert not [f.name for f in (tmp_path / "run").iterdir() if f.name.endswith(".tmp")]
    again = run_child([str(p), "-o", "run"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{400 - succeeded} succeeded, 0 failed, {succeeded} already done" in again.stdout


@pytest.mark.subprocess
@pytest.mark.parametrize(("soft", "hard", "capped"), [(256, 256, 64), (256, 4096, None)])
def test_open_file_limit_caps_or_raises_at_start(
    tmp_path: Path, soft: int, hard: int, capped: int | None
) -> None:
    import resource

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    p = prompts(tmp_path, 600)
    proc = run_child([str(p), "-j", "1000", "-o", "run"], tmp_path, preexec=limit_files)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Too many open files" not in proc.stderr and "Traceback" not in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "open-file limit" in line]
    if capped is None:  # the soft limit was raised towards the hard one: nothing to say
        assert notes == []
    else:
        assert notes == [
            f"llmbatch: warning: the open-file limit (256, hard limit 256) allows about "
            f"{capped} requests in flight, not 1000: concurrency capped at {capped} "
            "(raise it with ulimit -n to go higher)"
        ]
    assert summary_counts(proc.stdout) == (600, 0)


LIBRARY_UNDER_LOW_LIMIT = """
import asyncio, sys, warnings
import llmbatch

async def main():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with llmbatch.Client("mock", concurrency=1000, mock={"tokens": 4}) as llm:
            results = [r async for r in llm.batch([f"q{i}" for i in range(600)])]
    print(sum(r.ok for r in results), len(results), llm.config.concurrency)
    for w in caught:
        print(w.category.__name__, w.message, file=sys.stderr)

asyncio.run(main())
"""


@pytest.mark.subprocess
def test_library_client_fits_the_open_file_limit_and_warns(tmp_path: Path) -> None:
    import resource

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.run(
        [sys.executable, "-c", LIBRARY_UNDER_LOW_LIMIT],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(),
        preexec_fn=limit_files,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Too many open files" not in proc.stderr and "Traceback" not in proc.stderr
    # counted per request: a socket, a text file, the embedded mock's end: 64 fit in 256 - 64
    assert proc.stdout.split() == ["600", "600", "64"]
    assert proc.stderr.splitlines() == [
        "ConcurrencyCappedWarning the open-file limit (256, hard limit 256) allows about 64 "
        "requests in flight, not 1000: concurrency capped at 64 (raise it with ulimit -n to "
        "go higher)"
    ]


@pytest.mark.subprocess
@pytest.mark.timeout(60)
async def test_second_ctrl_c_prints_no_tracebacks_from_the_embedded_mock(tmp_path: Path) -> None:
    import signal

    # Long answers from the embedded mock: the second Ctrl-C cuts them mid-stream.
    (tmp_path / "slow.toml").write_text("[mock]\ntokens = 3000\nttft_s = 0.0\nitl_s = 0.01\n")
    p = prompts(tmp_path, 20)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmbatch", "run", str(p), "-c", "slow.toml", "-j", "8",
        "-o", "run", "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path, env=child_env(),
    )  # fmt: skip
    text = tmp_path / "run" / "text"
    async with asyncio.timeout(30):  # until 8 answers are streaming into their files
        while len([f for f in text.glob("*.partial") if f.stat().st_size]) < 8:
            await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 10)
    assert b"SIGINT: finishing 8 requests in flight" in line
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines() == ["llmbatch: interrupted; run the same command to resume"]


class SilentServer:
    """Accepts connections, reads requests, never answers; counts what it was sent."""

    def __init__(self) -> None:
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        )
        self.server = fut.result(10)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        while await reader.read(65536):
            pass
        writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in self.writers:
                w.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_server_that_never_answers_stops_the_run_on_first_attempts(
    runner: CliRunner, tmp_path: Path, silent_server: SilentServer
) -> None:
    (tmp_path / "t.toml").write_text("[timeouts]\nconnect_s = 0.5\nfirst_byte_s = 0.5\n")
    p = prompts(tmp_path, 40)
    res = run_cli(
        runner, str(p), "-p", "vllm", "--base-url", silent_server.url, "-c", "t.toml", "-j", "4"
    )
    assert res.exit_code == 3, res.output
    assert (
        "llmbatch: run aborted: the first 3 attempts all failed the same way and nothing has "
        "answered: no response headers within 0.5s"
    ) in res.output
    # The probe, the wave it let go, maybe the probe's own retry: never 6 attempts of each.
    assert silent_server.connections <= 6, silent_server.connections
    assert read_results(tmp_path / "outputs" / "p-vllm") == []  # all of it resumes


def test_busy_server_is_not_a_wrong_job(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    # Every prompt's first two attempts get 503: load, not a wrong target: no abort.
    server = start_mock(mocks, faults={"503": 1.0}, fault_attempts=2, retry_after_s=0.0)
    (tmp_path / "fast.toml").write_text("[retry]\nbackoff_base_s = 0.001\n")
    p = prompts(tmp_path, 10)
    res = run_cli(runner, str(p), "-p", "vllm", "--base-url", server.url, "-c", "fast.toml")
    assert res.exit_code == 0, res.output
    assert "10 succeeded, 0 failed" in res.output and "retries 20" in res.output


def test_progress_line_shows_failing_attempts_and_wall_clock(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import re

    from llmbatch.engine.stream import LiveCounts
    from llmbatch.progress import ProgressView

    live = LiveCounts()
    live.in_flight = 4
    view = ProgressView(40, lambda: (0, 0, 0), live, interactive=False, every_s=10.0)
    view.render()
    live.failed_attempts, live.retrying, live.last_error = 12, 4, "read_timeout"
    view.render()
    quiet, busy = capsys.readouterr().err.splitlines()
    stamp = r"\[llmbatch\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} +\d+\.\ds done 0/40"
    assert re.match(stamp + r"  0 tok/s  in flight 4  errors 0$", quiet), quiet
    assert re.match(
        stamp + r"  0 tok/s  in flight 4  errors 0  failed attempts 12 \(last read_timeout\), "
        r"retrying 4$",
        busy,
    ), busy


def test_library_logs_are_one_line_per_cause(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from llmbatch.notices import one_line_per_cause

    with one_line_per_cause():
        for _ in range(1000):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logging.getLogger("asyncio").exception("socket.accept() out of system resource")
        logging.getLogger("aiohttp.server").error("Error handling request")
    assert capsys.readouterr().err.splitlines() == [
        "llmbatch: warning: asyncio: socket.accept() out of system resource: OSError: "
        "[Errno 24] Too many open files (repeats not shown)",
        "llmbatch: warning: aiohttp.server: Error handling request (repeats not shown)",
        "llmbatch: warning: 999 more library messages like the above were not shown",
    ]
    assert logging.getLogger("asyncio").propagate  # restored afterwards


def test_library_options_blame_the_option() -> None:
    import llmbatch
    from llmbatch.errors import ConfigError

    for options, message in (
        ({"concurrency": "abc"}, "option 'concurrency' must be an integer, got 'abc'"),
        ({"base_url": "http://[::1/v1"}, "option 'base_url': invalid URL 'http://[::1/v1'"),
    ):
        with pytest.raises(ConfigError) as info:
            llmbatch.Client(provider="vllm", **options)
        assert message in str(info.value)
