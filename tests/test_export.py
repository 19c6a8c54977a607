"""``llmbatch export``: openai-batch, anthropic-batch and csv, in file or input order."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.cli.export import iter_results
from llmbatch.cli.job import execute_run
from llmbatch.mockserver import MockServer, expected_text

from .conftest import config_for, read_results, write_jsonl

TOKENS = 16
MSGS = [{"role": "user", "content": "Why is the sky blue?"}]
ROWS: list[Any] = [
    {"custom_id": "chat", "url": "/v1/chat/completions", "body": {"messages": MSGS}},
    {"custom_id": "cmpl", "url": "/v1/completions", "body": {"prompt": "Roses are"}},
    {"custom_id": "msg", "url": "/v1/messages", "body": {"messages": MSGS, "max_tokens": 5}},
    b"{not json",
    {"custom_id": "empty", "url": "/v1/completions", "body": {"prompt": ""}},  # mock: 400
]
EXPECTED = {
    "chat": expected_text(MSGS, TOKENS),
    "cmpl": expected_text([{"role": "user", "content": "Roses are"}], TOKENS),
    "msg": expected_text(MSGS, 5),
}
INPUT_ORDER = ["chat", "cmpl", "msg", "#line-4", "empty"]


@pytest.fixture
async def run_dir(tmp_path: Path, mock_server: MockServer) -> Path:
    """A finished run with three successes (one per format) and two failures."""
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS)
    out = await execute_run(
        config_for(mock_server, tmp_path), prompts, install_signal_handlers=False
    )
    assert (out.result.metrics.succeeded, out.result.metrics.failed) == (3, 2)
    return out.run_dir


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def export(runner: CliRunner, run_dir: Path, *args: str) -> str:
    res = runner.invoke(app, ["export", str(run_dir), *args])
    assert res.exit_code == 0, res.output
    return res.stdout


def jsonl(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


def reverse_results(run_dir: Path) -> None:
    """Put results.jsonl in an order unlike the input's (as concurrency would)."""
    path = run_dir / "results.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(reversed(lines)))


def test_openai_batch_is_results_without_llmbatch_key(runner: CliRunner, run_dir: Path) -> None:
    lines = jsonl(export(runner, run_dir, "--format", "openai-batch"))
    results = read_results(run_dir)
    assert lines == [{k: v for k, v in r.items() if k != "llmbatch"} for r in results]
    assert all(set(line) == {"id", "custom_id", "response", "error"} for line in lines)


def test_anthropic_batch(runner: CliRunner, run_dir: Path) -> None:
    lines = {
        x["custom_id"]: x["result"] for x in jsonl(export(runner, run_dir, "-f", "anthropic-batch"))
    }
    assert set(lines) == set(INPUT_ORDER)
    for cid, text in EXPECTED.items():
        result = lines[cid]
        assert result["type"] == "succeeded"
        msg = result["message"]
        assert msg["type"] == "message" and msg["role"] == "assistant"
        assert msg["content"] == [{"type": "text", "text": text}]
        assert set(msg) == {
            "id",
            "type",
            "role",
            "model",
            "content",
            "stop_reason",
            "stop_sequence",
            "usage",
        }
    assert lines["chat"]["message"]["stop_reason"] == "end_turn"
    assert lines["msg"]["message"]["stop_reason"] == "max_tokens"
    assert lines["cmpl"]["message"]["usage"]["output_tokens"] == TOKENS
    for cid in ("#line-4", "empty"):
        result = lines[cid]
        assert result["type"] == "errored"
        assert result["error"]["type"] == "error"
        assert result["error"]["error"]["type"] == "invalid_request_error"
    assert lines["empty"]["error"]["error"]["message"].startswith("bad_request: HTTP 400")
    assert lines["#line-4"]["error"]["error"]["message"].startswith("input_error: ")


def test_csv(runner: CliRunner, run_dir: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(export(runner, run_dir, "--format", "csv"))))
    assert list(rows[0]) == [
        "custom_id",
        "status",
        "error_code",
        "text",
        "output_tokens",
        "ttft_s",
        "e2el_s",
    ]
    by_id = {r["custom_id"]: r for r in rows}
    assert set(by_id) == set(INPUT_ORDER)
    for cid, text in EXPECTED.items():
        row = by_id[cid]
        assert (row["status"], row["error_code"], row["text"]) == ("succeeded", "", text)
        assert int(row["output_tokens"]) == len(text.split())
        assert 0 < float(row["ttft_s"]) <= float(row["e2el_s"])
    assert (by_id["empty"]["status"], by_id["empty"]["error_code"]) == ("errored", "bad_request")
    assert by_id["#line-4"]["error_code"] == "input_error"
    assert by_id["#line-4"]["ttft_s"] == "" and by_id["#line-4"]["text"] == ""


@pytest.mark.parametrize("fmt", ["openai-batch", "anthropic-batch", "csv"])
def test_ordered_follows_input_lines(runner: CliRunner, run_dir: Path, fmt: str) -> None:
    file_order = [r["custom_id"] for r in read_results(run_dir)]
    reverse_results(run_dir)
    out = export(runner, run_dir, "--format", fmt, "--ordered")
    if fmt == "csv":
        ids = [r["custom_id"] for r in csv.DictReader(io.StringIO(out))]
    else:
        ids = [x["custom_id"] for x in jsonl(out)]
    assert ids == INPUT_ORDER
    unordered = jsonl(export(runner, run_dir, "--format", "openai-batch"))
    assert [x["custom_id"] for x in unordered] == list(reversed(file_order))


def test_output_file_and_torn_tail(runner: CliRunner, run_dir: Path, tmp_path: Path) -> None:
    path = run_dir / "results.jsonl"
    path.write_bytes(path.read_bytes() + b'{"custom_id": "torn", "resp')  # a crash mid-write
    target = tmp_path / "out.jsonl"
    res = runner.invoke(
        app, ["export", str(run_dir), "-f", "openai-batch", "--ordered", "-o", str(target)]
    )
    assert res.exit_code == 0, res.output
    assert f"exported 5 records to {target}" in res.stderr
    assert res.stdout == ""
    assert [x["custom_id"] for x in jsonl(target.read_text())] == INPUT_ORDER
    assert not list(tmp_path.glob(".out.jsonl.*"))
    assert [r["custom_id"] for r in iter_results(run_dir)] == [
        r["custom_id"] for r in read_results_safe(run_dir)
    ]


def read_results_safe(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for line in (run_dir / "results.jsonl").read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass
    return out


def test_errors_exit_2(runner: CliRunner, run_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no results.jsonl" in res.output
    res = runner.invoke(app, ["export", str(run_dir), "--format", "xml"])
    assert res.exit_code == 2 and "unknown format 'xml'" in res.output
    res = runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "no" / "dir.csv")])
    assert res.exit_code == 2 and "cannot write" in res.output
