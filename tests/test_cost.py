"""What runs cost, end to end against the mock: records, summary, report, compare,
progress, estimate, and the --max-cost budget (never passed, per the mock's own counts)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

import llmbatch
from llmbatch.cli.app import app
from llmbatch.cli.job import execute_run
from llmbatch.config.load import load_config
from llmbatch.config.model import RunConfig
from llmbatch.engine import StopReason
from llmbatch.errors import BudgetExceeded, ConfigError
from llmbatch.metrics import RunMetrics, format_usd
from llmbatch.mockserver import MockConfig, MockServer, start_mock_server
from llmbatch.progress import cost_text
from llmbatch.ray.lease import ClusterBudget, LeasedBudget
from llmbatch.records import Cost, Outcome, RequestMetrics
from tests.conftest import read_results, write_jsonl

# USD per million tokens: dear, so a few requests make a visible sum.
INPUT_PRICE, OUTPUT_PRICE = 1000.0, 2000.0
PRICES = f"[prices.mock-model]\ninput = {INPUT_PRICE}\noutput = {OUTPUT_PRICE}\n"
TOKENS = 16


@pytest.fixture
async def server() -> Any:
    srv = await start_mock_server(MockConfig(tokens=TOKENS, ttft_s=0.0, itl_s=0.0))
    try:
        yield srv
    finally:
        await srv.close()


def _cfg(tmp_path: Path, server: MockServer, **flags: Any) -> RunConfig:
    (tmp_path / "c.toml").write_text(PRICES)
    base = {
        "provider": "vllm",
        "base_url": server.url,
        "model": "mock-model",
        "run_dir": tmp_path / "run",
        "progress": False,
        "concurrency": "8",
    }
    return load_config(tmp_path / "c.toml", flags={**base, **flags}, environ={})


def _prompts(tmp_path: Path, n: int, **extra: Any) -> Path:
    rows = [{"id": f"q{i}", "prompt": f"question number {i}", **extra} for i in range(n)]
    return write_jsonl(tmp_path / "p.jsonl", rows)


def _billed_by_server(server: MockServer) -> float:
    """What the mock's own usage counters would bill at the test's prices."""
    st = server.stats
    return (st.usage_input_tokens * INPUT_PRICE + st.usage_output_tokens * OUTPUT_PRICE) / 1e6


def _recorded_usd(run_dir: Path) -> float:
    return sum(r["llmbatch"]["cost"]["usd"] for r in read_results(run_dir))


async def test_budget_is_never_passed_and_a_larger_one_resumes(
    tmp_path: Path, server: MockServer
) -> None:
    n = 120
    prompts = _prompts(tmp_path, n, max_tokens=TOKENS)  # worst case close to the real cost
    first = await execute_run(
        _cfg(tmp_path, server, max_cost="1.0"), prompts, install_signal_handlers=False
    )
    res = first.result
    assert res.stop_reason == StopReason.BUDGET and res.pending_left
    assert "more than is left of max_cost $1" in (res.abort_message or "")
    records = read_results(first.run_dir)
    done_first = len(records)
    assert 10 < done_first < n
    assert _billed_by_server(server) <= 1.0  # the server's own count, not ours
    assert _recorded_usd(first.run_dir) == pytest.approx(_billed_by_server(server), rel=1e-6)
    summary = orjson.loads((first.run_dir / "summary.json").read_bytes())
    assert summary["cost"]["max_cost_usd"] == 1.0
    assert summary["cost"]["usd"] == pytest.approx(_recorded_usd(first.run_dir), rel=1e-6)

    # The same job with a larger budget: resumes, counting what was already spent.
    second = await execute_run(
        _cfg(tmp_path, server, max_cost="2.5"), prompts, install_signal_handlers=False
    )
    assert second.result.stop_reason == StopReason.BUDGET
    records = read_results(second.run_dir)
    assert len({r["custom_id"] for r in records}) == len(records) > done_first
    assert _billed_by_server(server) <= 2.5
    assert _recorded_usd(second.run_dir) <= 2.5
    summary = orjson.loads((second.run_dir / "summary.json").read_bytes())
    assert summary["cost"]["run_total_usd"] == pytest.approx(
        _recorded_usd(second.run_dir), rel=1e-6
    )

    third = await execute_run(
        _cfg(tmp_path, server, max_cost="100"), prompts, install_signal_handlers=False
    )
    assert third.result.stop_reason is None
    records = read_results(third.run_dir)
    assert sorted(r["custom_id"] for r in records) == sorted(f"q{i}" for i in range(n))
    assert _recorded_usd(third.run_dir) == pytest.approx(_billed_by_server(server), rel=1e-6)


def test_budget_smaller_than_one_request(tmp_path: Path) -> None:
    """Nothing fits: nothing is sent, nothing recorded, its own exit code (4)."""
    (tmp_path / "c.toml").write_text(PRICES)
    prompts = _prompts(tmp_path, 5, max_tokens=8)
    runner = CliRunner()
    args = ["run", str(prompts), "-c", str(tmp_path / "c.toml"), "-o", str(tmp_path / "r")]
    res = runner.invoke(app, [*args, "--max-cost", "0.000001"])
    assert res.exit_code == 4, res.output
    assert "stopped at the cost budget" in res.output and "larger --max-cost" in res.output
    assert (tmp_path / "r" / "results.jsonl").read_bytes() == b""
    res = runner.invoke(app, [*args, "--max-cost", "5"])  # the same command, a larger budget
    assert res.exit_code == 0, res.output
    assert len(read_results(tmp_path / "r")) == 5
    assert "budget $5" in res.output


def test_budget_needs_a_price(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 2)
    res = CliRunner().invoke(
        app, ["run", str(prompts), "-o", str(tmp_path / "r"), "--max-cost", "1"]
    )
    assert res.exit_code == 2
    assert "no price for model 'mock-model'" in res.output and "[prices.mock-model]" in res.output
    assert not (tmp_path / "r").exists()


def test_cost_everywhere(tmp_path: Path) -> None:
    """Records, summary.json, the end summary, report (table, JSON, CSV, recompute), export
    and compare all carry the cost; an unpriced run says so and shows no figure."""
    (tmp_path / "c.toml").write_text(PRICES)
    prompts = _prompts(tmp_path, 12)
    runner = CliRunner()
    run_dir = tmp_path / "r"
    res = runner.invoke(
        app, ["run", str(prompts), "-c", str(tmp_path / "c.toml"), "-o", str(run_dir)]
    )
    assert res.exit_code == 0, res.output
    records = read_results(run_dir)
    for r in records:
        c = r["llmbatch"]["cost"]
        usage = r["response"]["body"]["usage"]
        expected = (
            usage["prompt_tokens"] * INPUT_PRICE + usage["completion_tokens"] * OUTPUT_PRICE
        ) / 1e6
        assert c["usd"] == pytest.approx(expected)
        assert c["source"] == "config [prices.mock-model]" and c["estimated"] is False
    total = sum(r["llmbatch"]["cost"]["usd"] for r in records)
    summary = orjson.loads((run_dir / "summary.json").read_bytes())["cost"]
    assert summary["usd"] == pytest.approx(total)
    assert summary["per_1k_requests_usd"] == pytest.approx(total / 12 * 1000)
    assert summary["per_million_output_tokens_usd"] == pytest.approx(total / (12 * 32) * 1e6)
    assert f"cost: {format_usd(summary['usd'])}" in res.output

    rep = runner.invoke(app, ["report", str(run_dir)])
    assert "cost per 1k requests" in rep.output and "config [prices.mock-model]" in rep.output
    js = orjson.loads(runner.invoke(app, ["report", str(run_dir), "--json"]).output)
    assert js["cost"]["usd"] == summary["usd"]
    csv = runner.invoke(app, ["report", str(run_dir), "--csv"]).output.splitlines()
    row = dict(zip(csv[0].split(","), csv[1].split(","), strict=True))
    assert float(row["cost.usd"]) == summary["usd"]
    recomputed = orjson.loads(
        runner.invoke(app, ["report", str(run_dir), "--json", "--recompute"]).output
    )
    assert recomputed["cost"]["usd"] == pytest.approx(summary["usd"])

    cmp = runner.invoke(
        app, ["compare", str(prompts), "-c", str(tmp_path / "c.toml"), "-o", str(tmp_path / "cmp")]
    )
    assert cmp.exit_code == 0, cmp.output
    assert "cost/1k req" in cmp.output
    head, first = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[:2]
    row = dict(zip(head.split(","), first.split(","), strict=False))
    assert float(row["cost_usd"]) == pytest.approx(total)

    # Without a price: records say null, the summary says why, no figure is made up.
    plain = runner.invoke(app, ["run", str(prompts), "-o", str(tmp_path / "plain")])
    assert plain.exit_code == 0
    assert all(r["llmbatch"]["cost"] is None for r in read_results(tmp_path / "plain"))
    assert "12 requests not priced (no price for mock-model" in plain.output
    assert "$" not in plain.output


async def test_attempts_cut_mid_stream_are_priced_as_estimated(tmp_path: Path) -> None:
    srv = await start_mock_server(
        MockConfig(tokens=TOKENS, ttft_s=0.0, itl_s=0.0, faults={"disconnect": 1.0})
    )
    try:
        cfg = _cfg(tmp_path, srv)
        out = await execute_run(cfg, _prompts(tmp_path, 4), install_signal_handlers=False)
    finally:
        await srv.close()
    assert out.result.metrics.failed == 0
    for r in read_results(out.run_dir):
        assert len(r["llmbatch"]["attempts"]) == 2
        usage = r["response"]["body"]["usage"]
        clean = (
            usage["prompt_tokens"] * INPUT_PRICE + usage["completion_tokens"] * OUTPUT_PRICE
        ) / 1e6
        cost = r["llmbatch"]["cost"]
        assert cost["estimated"] is True and cost["usd"] > clean  # the cut attempt's tokens


async def test_library_budget(tmp_path: Path) -> None:
    prices = {"mock-model": {"input": INPUT_PRICE, "output": OUTPUT_PRICE}}
    async with llmbatch.Client("mock", prices=prices, max_cost=1e-6) as llm:
        with pytest.raises(BudgetExceeded):
            await llm.complete({"prompt": "hi", "max_tokens": 4})
    async with llmbatch.Client("mock", prices=prices, max_cost=0.5, concurrency=4) as llm:
        r = await llm.complete({"prompt": "hi", "max_tokens": 4})
        assert r.ok
        batch = llm.batch(
            [{"prompt": f"p{i}", "max_tokens": 32} for i in range(200)], tmp_path / "b"
        )
        end = await batch.wait()
        assert end.stop_reason == StopReason.BUDGET and end.pending_left
        spent = sum(rec["llmbatch"]["cost"]["usd"] for rec in read_results(tmp_path / "b"))
        assert r.cost_usd is not None and spent + r.cost_usd <= 0.5
    with pytest.raises(ConfigError, match="max_cost needs a price"):
        async with llmbatch.Client("mock", max_cost=1.0):
            pass


def test_estimate_and_dry_run(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(PRICES)
    prompts = _prompts(tmp_path, 10, max_tokens=20)
    runner = CliRunner()
    base = [str(prompts), "-c", str(tmp_path / "c.toml"), "-o", str(tmp_path / "r")]
    res = runner.invoke(app, ["run", *base, "--dry-run"])
    assert res.exit_code == 0 and "nothing sent" in res.output
    assert not (tmp_path / "r").exists()
    est = orjson.loads(runner.invoke(app, ["estimate", *base, "--json"]).output)
    assert est["requests"] == 10 and est["history"] is None
    assert est["output_tokens"] == {"low": 0, "expected": 200, "high": 200}
    n_in = est["input_tokens"]
    assert est["cost_usd"]["high"] == pytest.approx((n_in * INPUT_PRICE + 200 * OUTPUT_PRICE) / 1e6)
    # After a run of half of it, the estimate skips what is done and uses its lengths.
    assert runner.invoke(app, ["run", *base]).exit_code == 0
    more = _prompts(tmp_path, 14, max_tokens=20)
    est = orjson.loads(
        runner.invoke(
            app,
            [
                "estimate",
                str(more),
                "-c",
                str(tmp_path / "c.toml"),
                "-o",
                str(tmp_path / "r"),
                "--json",
            ],
        ).output
    )
    assert est["already_done"] == 10 and est["requests"] == 4
    assert est["history"]["records"] == 10 and est["history"]["mean_output_tokens"] == 20
    assert est["output_tokens"]["expected"] == est["output_tokens"]["low"] == 80


def test_prices_command() -> None:
    res = CliRunner().invoke(app, ["prices", "gpt-4o-mini", "-p", "openai"])
    assert res.exit_code == 0
    assert "input 0.15" in res.output and "source: genai-prices " in res.output
    res = CliRunner().invoke(app, ["prices"])
    assert res.exit_code == 1 and "self-hosted" in res.output


def test_projected_cost_in_progress() -> None:
    m = RunMetrics()
    assert cost_text(m, 100) == ""
    for _ in range(4):
        m.add(
            Outcome(
                "x",
                200,
                None,
                {},
                None,
                None,
                [],
                RequestMetrics(output_tokens=10),
                cost=Cost(0.25, source="s"),
            )
        )
    m.skipped = 6
    assert cost_text(m, 100) == "cost $1 (projected $23.5)"  # 1 + 0.25 * 90 left
    m.done_before_cost_usd = 2.0
    assert cost_text(m, None) == "cost $3"


@pytest.mark.virtualtime
async def test_cluster_budget_is_one_for_every_worker() -> None:
    """Two workers' LeasedBudgets against one ClusterBudget (the governor actor's)."""
    cluster = ClusterBudget(1.0, spent_usd=0.2)

    def leased(name: str) -> LeasedBudget:
        async def admit(worst: float) -> str:
            await asyncio.sleep(0)
            return cluster.admit(name, worst)

        return LeasedBudget(1.0, admit, lambda w, a: cluster.settle(name, w, a), poll_s=0.01)

    w0, w1 = leased("w0"), leased("w1")
    assert await w0.admit(0.5)
    waiting = asyncio.ensure_future(w1.admit(0.5))  # 0.2 + 0.5 + 0.5 > 1: waits for w0
    await asyncio.sleep(0.03)  # three of its polls (virtual time): it still waits
    assert not waiting.done()
    w0.settle(0.5, 0.1)
    assert await waiting
    cluster.forget("w1")  # w1 lost with 0.5 held: counted as spent, never freed
    assert cluster.budget.spent_usd == pytest.approx(0.8) and cluster.budget.in_flight == 0
    assert not await w0.admit(0.25)  # nothing in flight anywhere, and it does not fit
    assert await w0.admit(0.2)
