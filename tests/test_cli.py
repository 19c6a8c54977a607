"""The CLI: messages, exit codes, nothing sent on bad configuration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.mockserver import MockConfig

from .conftest import ThreadedMock, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def test_version(runner: CliRunner) -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("llmbatch ")


def test_missing_api_key_is_clear_and_sends_nothing(runner: CliRunner, tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}])
    res = runner.invoke(app, ["run", str(p), "--provider", "openai"])
    assert res.exit_code == 2
    assert "set the environment variable OPENAI_API_KEY" in res.output
    assert not (tmp_path / "outputs").exists()


def test_main_job_on_embedded_mock(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(app, ["run", str(ROOT / "prompts" / "example.jsonl")])
    assert res.exit_code == 0, res.output
    assert "59 succeeded, 0 failed" in res.output
    assert (tmp_path / "outputs" / "example-mock" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "nope"], "unknown provider 'nope'"),
        (["--client", "curl"], "unknown client 'curl'"),
        (["--concurrency", "0"], "concurrency must be at least 1"),
        (["--slo", "speed=1"], "unknown metric"),
    ],
)
def test_bad_flags(runner: CliRunner, tmp_path: Path, args: list[str], message: str) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}])
    res = runner.invoke(app, ["run", str(p), *args])
    assert res.exit_code == 2 and message in res.output


def test_bad_config_file(runner: CliRunner, tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}])
    (tmp_path / "config.toml").write_text("[run]\nconcurency = 3\n")
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2 and "unknown key(s) in [run]: concurency" in res.output
    (tmp_path / "config.toml").write_text("[timeouts]\nidle_s = 'soon'\n")
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2 and "idle_s must be a number" in res.output
    (tmp_path / "config.toml").write_text("[run\n")
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2 and "invalid TOML" in res.output


def test_shipped_config_matches_defaults(runner: CliRunner) -> None:
    from llmbatch.config.load import load_config

    assert load_config(ROOT / "config.toml", environ={}) == load_config(None, environ={})


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "contains no prompts"), (b"\n\n", "contains no prompts")],
)
def test_empty_prompt_file(runner: CliRunner, tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "p.jsonl"
    p.write_bytes(content)
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2 and message in res.output


def test_missing_prompt_file(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(app, ["run", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "nope.jsonl: no such file" in res.output


def test_validate(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(app, ["validate", str(ROOT / "prompts" / "example.jsonl")])
    assert res.exit_code == 0 and "59 valid" in res.output
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}, b"{oops"])
    res = runner.invoke(app, ["validate", str(p)])
    assert res.exit_code == 1 and f"{p}:2: invalid JSON" in res.output


def test_run_directory_lock(runner: CliRunner, tmp_path: Path) -> None:
    import fcntl

    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write("4242")
        fh.flush()
        res = runner.invoke(app, ["run", str(p), "--run-dir", str(run_dir)])
    assert res.exit_code == 2 and "in use by another llmbatch run (pid 4242)" in res.output


def test_unreachable_base_url_aborts_with_clear_message(runner: CliRunner, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "fast.toml").write_text("[retry]\nmax_attempts = 2\nbackoff_base_s = 0.01\n")
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": "x"} for i in range(20)])
    res = runner.invoke(
        app,
        [
            "run",
            str(p),
            "-p",
            "vllm",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "-c",
            "fast.toml",
        ],
    )
    assert res.exit_code == 3, res.output
    assert f"cannot connect to http://127.0.0.1:{port}/v1/chat/completions" in res.output
    assert "run the same command to resume" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml", "outputs", "p.jsonl"]


def test_max_runtime_exits_75_and_resumes(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "slow.toml").write_text("[mock]\ntokens = 20\nitl_s = 0.02\n")
    example = str(ROOT / "prompts" / "example.jsonl")
    res = runner.invoke(
        app, ["run", example, "-c", "slow.toml", "-j", "2", "--max-runtime-s", "0.3"]
    )
    assert res.exit_code == 75, res.output
    assert "--max-runtime-s reached" in res.output
    res = runner.invoke(app, ["run", example, "-c", "slow.toml", "-j", "32"])
    assert res.exit_code == 0, res.output
    assert "already done" in res.output


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[providers.x]\nbase_url = 5\n", "providers.x.base_url must be a string"),
        ("[providers.x]\nmodel = 5\n", "providers.x.model must be a string"),
        ("[providers.x]\nheaders = {a = 1}\n", "providers.x.headers.a must be a string"),
        ("[providers.x]\nembedded_mock = true\n", "embedded_mock is llmbatch's own"),
        ("[timeouts]\ntotal_s = 'nan'\n", "total_s must be a finite number"),
        ("[retry]\nmax_attempts = 2.7\n", "max_attempts must be an integer"),
        ("[run]\nconcurrency = 1.5\n", "concurrency must be an integer"),
        ("[run]\nkeep_partial = 'maybe'\n", "keep_partial must be true or false"),
        ("[retry]\nmax_total_s = -1\n", "[retry] times must be positive"),
    ],
)
def test_config_types_are_checked(
    runner: CliRunner, tmp_path: Path, toml: str, message: str
) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}])
    (tmp_path / "bad.toml").write_text(toml)
    res = runner.invoke(app, ["run", str(p), "-c", "bad.toml"])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_unusable_run_directory_is_a_clear_error(runner: CliRunner, tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}])
    (tmp_path / "afile").write_text("not a directory")
    res = runner.invoke(app, ["run", str(p), "--run-dir", str(tmp_path / "afile")])
    assert res.exit_code == 2, res.output
    assert "cannot use run directory" in res.output and "Traceback" not in res.output


@pytest.fixture
def key_mock() -> Iterator[ThreadedMock]:
    """A server started with an API key, as ``vllm serve --api-key token-abc123``."""
    mock = ThreadedMock(MockConfig(tokens=4, ttft_s=0.0, itl_s=0.0, api_key="token-abc123"))
    yield mock
    mock.close()


def test_api_key_env_for_a_server_started_with_a_key(
    runner: CliRunner, tmp_path: Path, key_mock: ThreadedMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--api-key-env names the key's variable for a profile that has none: no config file."""
    server = key_mock
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(3)])
    base = ["run", str(p), "-p", "vllm", "--base-url", server.url, "--no-progress"]
    res = runner.invoke(app, base)
    assert res.exit_code == 3 and "HTTP 401" in res.output, res.output
    res = runner.invoke(app, [*base, "--api-key-env", "VLLM_API_KEY"])
    assert res.exit_code == 2
    assert "set the environment variable VLLM_API_KEY" in res.output
    monkeypatch.setenv("VLLM_API_KEY", "token-abc123")
    res = runner.invoke(app, [*base, "--api-key-env", "VLLM_API_KEY"])
    assert res.exit_code == 0 and "3 succeeded, 0 failed" in res.output, res.output
    for path in (tmp_path / "outputs").rglob("*"):
        assert not path.is_file() or b"token-abc123" not in path.read_bytes(), path


@pytest.mark.parametrize(
    "command",
    ["run", "validate", "mock-server", "report", "compare", "merge", "export", "providers"],
)
def test_help_shows_no_type_placeholder_on_flags(runner: CliRunner, command: str) -> None:
    res = runner.invoke(app, [command, "-h"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert "<bool>" not in res.output and "Usage: llmbatch " + command in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
