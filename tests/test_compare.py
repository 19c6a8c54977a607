"""``llmbatch report`` on a finished run and ``llmbatch compare`` on the embedded mock."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.cli.compare import plan_combinations
from llmbatch.cli.job import execute_run
from llmbatch.errors import ConfigError
from llmbatch.mockserver import MockServer

from .conftest import config_for, write_jsonl

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
FAST_MOCK = "[mock]\ntokens = 8\nttft_s = 0.005\nitl_s = 0.001\n"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("LLMBATCH_") or k.endswith("_API_KEY"):
            monkeypatch.delenv(k)
    (tmp_path / "config.toml").write_text(FAST_MOCK)
    return CliRunner()


def _prompts(tmp_path: Path, n: int) -> Path:
    return write_jsonl(
        tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"q {i}"} for i in range(n)]
    )


# -- report ------------------------------------------------------------------------------
@pytest.fixture
async def finished_run(tmp_path: Path, mock_server: MockServer) -> Path:
    prompts = write_jsonl(
        tmp_path / "in.jsonl", [*({"id": i, "prompt": f"p{i}"} for i in range(12)), b"{bad"]
    )
    cfg = config_for(mock_server, tmp_path, concurrency=4)
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    return out.run_dir


def test_report_json_csv_and_table(runner: CliRunner, finished_run: Path) -> None:
    res = runner.invoke(app, ["report", str(finished_run), "--json"])
    assert res.exit_code == 0, res.output
    summary = orjson.loads(res.output)
    assert summary["requests"]["succeeded"] == 12 and summary["requests"]["input_errors"] == 1
    assert summary["tokens"]["output"] == 12 * 16
    assert summary["report"]["source"] == "summary.json"

    res = runner.invoke(app, ["report", str(finished_run), "--csv"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert len(rows) == 1
    assert rows[0]["requests.succeeded"] == "12" and rows[0]["tokens.output"] == "192"
    assert float(rows[0]["latency_s.ttft.p50"]) == summary["latency_s"]["ttft"]["p50"]

    res = runner.invoke(app, ["report", str(finished_run)])
    assert res.exit_code == 0, res.output
    assert "requests succeeded" in res.output and "latency (ms)" in res.output
    assert "ttft" in res.output and "source" in res.output


def test_report_recomputes_from_results(runner: CliRunner, finished_run: Path) -> None:
    saved = orjson.loads((finished_run / "summary.json").read_bytes())
    (finished_run / "summary.json").unlink()  # missing: recompute from results.jsonl
    res = runner.invoke(app, ["report", str(finished_run), "--json"])
    assert res.exit_code == 0, res.output
    got = orjson.loads(res.output)
    assert got["report"]["source"] == "results.jsonl"
    for key in ("succeeded", "failed", "input_errors", "total"):
        assert got["requests"][key] == saved["requests"][key]
    assert got["tokens"] == saved["tokens"]
    assert got["latency_s"]["ttft"]["p50"] == saved["latency_s"]["ttft"]["p50"]
    assert got["latency_s"]["itl"]["p50"] is None  # not every gap is in results.jsonl
    assert got["latency_s"]["itl"]["mean"] == pytest.approx(
        saved["latency_s"]["itl"]["mean"], rel=1e-3, abs=1e-6
    )
    res = runner.invoke(app, ["report", str(finished_run), "--slo", "ttft=10", "--json"])
    assert res.exit_code == 0 and orjson.loads(res.output)["goodput"]["good_requests"] == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no such run directory"),
        (["."], "not a run directory"),
        ([".", "--json", "--csv"], "exclude each other"),
    ],
)
def test_report_usage_errors(runner: CliRunner, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["report", *args])
    assert res.exit_code == 2 and message in res.output


# -- compare -----------------------------------------------------------------------------
def test_compare_two_clients_two_concurrencies(runner: CliRunner, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 30)
    out = tmp_path / "cmp"
    args = ["compare", str(prompts), "--client", "aiohttp", "--client", "httpx"]
    res = runner.invoke(app, [*args, "--concurrency", "2,8", "--limit", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    names = ["mock-aiohttp-c2", "mock-aiohttp-c8", "mock-httpx-c2", "mock-httpx-c8"]
    assert "llmbatch compare: p.jsonl (first 20)" in res.output
    assert "TTFT p50 ms" in res.output and "out tok/s" in res.output
    for name in names:
        assert name in res.output
        assert (out / name / "results.jsonl").is_file()
    assert len((out / "prompts.jsonl").read_text().splitlines()) == 20

    doc = orjson.loads((out / "compare.json").read_bytes())
    assert [r["combination"] for r in doc["runs"]] == names
    for r in doc["runs"]:
        assert r["ok"] == 20 and r["failed"] == 0 and r["status"] == "ok"
        assert r["output_tokens_per_s"] > 0 and r["ttft_p50_s"] > 0
        assert r["summary"]["tokens"]["output"] == 20 * 8
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [r["combination"] for r in rows] == names
    assert {r["concurrency"] for r in rows} == {"2", "8"}
    assert [r["client"] for r in rows] == ["aiohttp", "aiohttp", "httpx", "httpx"]

    png = out / "compare.png"
    if HAS_MATPLOTLIB:
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"chart: {png}" in res.output
    else:
        assert not png.exists() and "matplotlib is not installed" in res.output


def test_compare_without_matplotlib_skips_the_chart(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(_prompts(tmp_path, 4)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "matplotlib is not installed, no chart" in res.output
    assert (out / "compare.json").is_file() and not (out / "compare.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "2,x"], "expected comma-separated integers"),
        (["--concurrency", "0"], "must be >= 1"),
        (["--client", "curl"], "unknown client 'curl'"),
        (["--provider", "openai"], "set the environment variable OPENAI_API_KEY"),
    ],
)
def test_compare_usage_errors_send_nothing(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    res = runner.invoke(app, ["compare", str(_prompts(tmp_path, 2)), *args])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "outputs").exists()


def test_compare_refuses_a_used_directory(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    (out / "old").mkdir(parents=True)
    res = runner.invoke(app, ["compare", str(_prompts(tmp_path, 2)), "--out", str(out)])
    assert res.exit_code == 2 and "exists and is not empty" in res.output
    res = runner.invoke(app, ["compare", str(tmp_path / "nope.jsonl")])
    assert res.exit_code == 2 and "nope.jsonl: no such file" in res.output


def test_plan_deduplicates_and_checks_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = plan_combinations(None, ["mock", "mock"], ["aiohttp"], [4, 4, 8])
    assert [c.name for c, _ in plan] == ["mock-aiohttp-c4", "mock-aiohttp-c8"]
    assert plan[1][1].concurrency == 8
    with pytest.raises(ConfigError):
        plan_combinations(None, ["openai"], [], [], flags={})
