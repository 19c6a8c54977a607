"""``llmbatch report`` on a finished run and ``llmbatch compare`` on the embedded mock."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.cli.compare.measure import Sample, Window, percentile, step_figures
from llmbatch.cli.compare.profiles import parse_profile
from llmbatch.cli.compare.targets import parse_target, plan_series, public_url
from llmbatch.cli.job import execute_run
from llmbatch.errors import ConfigError
from llmbatch.metrics import SLO
from llmbatch.mockserver import MockConfig, MockServer

from .chromium import CHROMIUM, open_page
from .conftest import ThreadedMock, config_for, read_results, write_jsonl

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
    assert "knee per series" in res.output
    for name in names:
        assert (out / name / "results.jsonl").is_file()
    assert len((out / "prompts.jsonl").read_text().splitlines()) == 20

    doc = orjson.loads((out / "compare.json").read_bytes())
    assert [Path(r["run_dir"]).name for r in doc["runs"]] == names
    assert [s["name"] for s in doc["series"]] == ["mock-aiohttp", "mock-httpx"]
    for r in doc["runs"]:
        assert r["completed"] == 20 and r["failed"] == 0 and r["status"] == "ok"
        assert r["output_throughput"] > 0 and r["median_ttft_ms"] > 0
        assert r["total_output_tokens"] == 20 * 8 and r["request_rate"] == "inf"
        assert r["base_url"] == "embedded-mock" and r["llmbatch_version"]
    rows = list(csv.DictReader(io.StringIO((out / "compare.csv").read_text())))
    assert [Path(r["run_dir"]).name for r in rows] == names
    assert [r["max_concurrency"] for r in rows] == ["2", "8", "2", "8"]
    assert [r["client"] for r in rows] == ["aiohttp", "aiohttp", "httpx", "httpx"]
    assert (out / "compare.html").read_text().startswith("<!DOCTYPE html>")

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
    assert (out / "compare.html").is_file()


def test_sweep_finds_each_targets_knee_within_one_step(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    """Two servers serving 4 and 16 streams at full speed: each knee within one ladder step,
    and the small one stops climbing once its throughput stopped growing."""
    ladder = [2, 4, 8, 16, 32]
    urls = {}
    for name, cap in (("small", 4), ("big", 16)):
        m = ThreadedMock(MockConfig(tokens=10, ttft_s=0.005, itl_s=0.005, capacity=cap))
        mocks.append(m)
        urls[name] = m.url
    out = tmp_path / "cmp"
    args = ["compare", str(_prompts(tmp_path, 8)), "--out", str(out), "--requests", "32"]
    for name, url in urls.items():
        args += ["--target", f"{name}={url},model=m"]
    res = runner.invoke(app, [*args, "-j", ",".join(map(str, ladder))])
    assert res.exit_code == 0, res.output
    doc = orjson.loads((out / "compare.json").read_bytes())
    series = {s["target"]["name"]: s for s in doc["series"]}
    for name, cap in (("small", 4), ("big", 16)):
        knee = series[name]["knee"]
        assert abs(ladder.index(int(knee)) - ladder.index(cap)) <= 1, (name, series[name])
        assert series[name]["target"]["base_url"] == urls[name]
        assert series[name]["server"]["server"].startswith("Python/")  # aiohttp's Server
    small_levels = [st["level"] for st in series["small"]["steps"]]
    assert series["small"]["stopped_early"] == "throughput stopped growing"
    assert max(small_levels) <= 16 and len(small_levels) < len(ladder)
    # What a user reads: every step's run directory, and the knee table.
    for st in series["small"]["steps"]:
        for run in st["runs"]:
            assert (out / run / "results.jsonl").is_file()
    assert "throughput stopped growing" in res.output


@pytest.mark.subprocess
@pytest.mark.timeout(120)
def test_open_and_closed_loop_in_one_report_rendered_in_chromium(
    tmp_path: Path, mocks: list[ThreadedMock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Poisson sweep and a concurrency sweep of one target, repeated twice: one report,
    opened in headless Chromium: no console error, every chart drawn with its data."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (.ci/run installs it with apt-get)")
    import asyncio

    m = ThreadedMock(MockConfig(tokens=8, ttft_s=0.002, itl_s=0.002, capacity=8))
    mocks.append(m)
    monkeypatch.chdir(tmp_path)
    url_with_secret = m.url.replace("http://", "http://user:sk-secret-123@")
    out = tmp_path / "cmp"
    prompts = _prompts(tmp_path, 10)
    args = [
        "compare",
        str(prompts),
        "--target",
        f"mock={url_with_secret},model=m",
        "--profile",
        "poisson:40,80",
        "--profile",
        "concurrent:2,4",
        "--requests",
        "24",
        "--warmup",
        "2",
        "--cooldown",
        "10%",
        "--repeats",
        "2",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = orjson.loads((out / "compare.json").read_bytes())
    assert [s["profile"]["kind"] for s in doc["series"]] == ["poisson", "concurrent"]
    runs = doc["runs"]
    assert len(runs) == 8 and {r["repeat"] for r in runs} == {1, 2}
    for r in runs:
        assert r["warmup_excluded"] == 2 and r["cooldown_excluded"] == 2
        assert r["completed"] == 20 and r["num_prompts"] == 24
        assert r["base_url"] == m.url  # without the credentials
    poisson = [r for r in runs if r["profile"] == "poisson"]
    assert {r["request_rate"] for r in poisson} == {40.0, 80.0}
    assert all(r["achieved_request_rate"] > 0 and "rate_kept" in r for r in poisson)
    html = out / "compare.html"
    for f in (html, out / "compare.json", out / "compare.csv"):
        text = f.read_text()
        assert "sk-secret-123" not in text and "user:" not in text
    assert "http://" not in html.read_text().replace(m.url, "").replace(
        "http://www.w3.org/2000/svg", ""
    )  # nothing to fetch: the only URLs are the target's and SVG's namespace

    script = """(() => Array.from(document.querySelectorAll('svg.chart')).map(svg => {
        const r = svg.getBoundingClientRect();
        const lines = Array.from(svg.querySelectorAll('polyline.series'));
        return {id: svg.id, w: r.width, h: r.height, lines: lines.length,
                drawn: lines.filter(l => l.getBBox().width > 0).length};
    }))()"""
    page = asyncio.run(open_page(html, script))
    assert page.errors == []
    charts = {c["id"]: c for c in page.value}
    expected = {
        "throughput-closed",
        "ttft-closed",
        "itl-closed",
        "throughput-open",
        "ttft-open",
        "itl-open",
        "ttft-cdf",
        "itl-cdf",
        "errors-time",
    }
    assert set(charts) == expected
    for c in charts.values():
        assert c["w"] > 100 and c["h"] > 100 and c["lines"] >= 1 and c["drawn"] >= 1, c


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "2,x"], "expected comma-separated integers"),
        (["--concurrency", "0"], "must be >= 1"),
        (["--client", "curl"], "unknown client 'curl'"),
        (["--provider", "openai"], "set the environment variable OPENAI_API_KEY"),
        (["--profile", "weird:1"], "unknown kind 'weird'"),
        (["--profile", "poisson"], "give the request rates"),
        (["--profile", "concurrent:1.5"], "a concurrency is a whole number"),
        (["--profile", "poisson:5", "--burstiness", "0"], "--burstiness must be > 0"),
        (["-j", "2", "--max-concurrency", "4"], "only for request-rate profiles"),
        (["--profile", "poisson:5", "--ramp-up", "linear"], "--ramp-up needs --ramp-up-s"),
        (["--target", "x"], "expected NAME=URL"),
        (["--target", "a=http://h/v1,colour=red"], "unknown or empty option"),
        (["--target", "a=ftp://h/v1"], "must start with http:// or https://"),
        (["--target", "a=http://h/v1,key-env=NOPE_KEY"], "set the environment variable NOPE_KEY"),
        (["--warmup", "ten"], "--warmup: expected seconds"),
        (["--duration", "0"], "--duration must be > 0"),
    ],
)
def test_compare_usage_errors_send_nothing(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    res = runner.invoke(app, ["compare", str(_prompts(tmp_path, 2)), *args])
    assert res.exit_code == 2 and message in res.output, res.output
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
    plan = plan_series(None, ["mock"], [], ["aiohttp", "aiohttp", "httpx"])
    assert [s.name for s in plan] == ["mock-aiohttp", "mock-httpx"]
    with pytest.raises(ConfigError):
        plan_series(None, ["openai"], [], [])
    with pytest.raises(ConfigError, match="given twice"):
        plan_series(None, ["mock"], ["mock=http://127.0.0.1:1/v1"], [])


def test_targets_and_public_urls() -> None:
    t = parse_target("fast=https://u:p@api.example.test:8443/v1?key=abc,model=m1,key-env=K")
    assert (t.name, t.model, t.api_key_env, t.kind) == ("fast", "m1", "K", "openai")
    assert public_url(t.base_url) == "https://api.example.test:8443/v1"
    assert public_url("http://[::1]:8000/v1#frag") == "http://[::1]:8000/v1"


def test_windows_and_percentiles() -> None:
    samples = [Sample(i * 0.1, True, None, 0, 0.01 * (i + 1), 0.2, 0.01) for i in range(20)]
    kept, warm, cool = Window("0.5s", "3").select(samples)
    assert (warm, cool, len(kept)) == (5, 3, 12) and kept[0].sent_s == pytest.approx(0.5)
    kept, warm, cool = Window("10%", "0.35s").select(samples)
    assert (warm, cool) == (2, 4)  # sent after 1.9 - 0.35 s: 1.6, 1.7, 1.8, 1.9
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5  # numpy's linear interpolation
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    fig = step_figures(samples[:4], SLO(ttft_s=0.025))
    assert fig["completed"] == 4 and fig["request_goodput"] is not None
    assert fig["mean_ttft_ms"] == 25.0 and fig["median_ttft_ms"] == 25.0
    assert fig["p99_ttft_ms"] == pytest.approx(39.7)


def test_profiles() -> None:
    p = parse_profile("poisson:20,5,10", burstiness=0.5, max_concurrency=8, seed=3)
    assert [s.level for s in p.steps()] == [5, 10, 20]
    step = p.steps()[0]
    assert step.concurrency == 8 and step.tag == "r5" and step.request_rate == 5
    arrivals = step.arrivals(repeat=1)
    assert arrivals is not None and arrivals.seed == 4 and arrivals.burstiness == 0.5
    sync = parse_profile("synchronous")
    assert sync.kind == "concurrent" and sync.levels == (1.0,)
    assert sync.steps()[0].arrivals() is None and sync.steps()[0].tag == "c1"


def test_stop_conditions_duration_and_max_errors(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    """--duration ends a step by time (the prompts cycle meanwhile); --max-errors ends it at
    that many failed requests, and a failing step saturates the series."""
    slow = ThreadedMock(MockConfig(tokens=4, ttft_s=0.02, itl_s=0.0))
    # Half the distinct prompts get a 400 (a cycled prompt gets the same answer again).
    failing = ThreadedMock(
        MockConfig(tokens=4, ttft_s=0.0, itl_s=0.0, faults={"400": 0.5}, fault_attempts=10**6)
    )
    mocks += [slow, failing]
    prompts = _prompts(tmp_path, 3)
    out = tmp_path / "cmp"
    res = runner.invoke(
        app,
        ["compare", str(prompts), "--target", f"slow={slow.url},model=m", "-j", "2"]
        + ["--duration", "0.5", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    (run,) = orjson.loads((out / "compare.json").read_bytes())["runs"]
    # More requests than the file has (cycled ids), and an end: the duration stopped it.
    assert 3 < run["num_prompts"] == run["completed"] < 200
    ids = [r["custom_id"] for r in read_results(out / "slow-aiohttp-c2")]
    assert "q0#1" in ids and len(set(ids)) == len(ids)

    out2 = tmp_path / "cmp2"
    res = runner.invoke(
        app,
        ["compare", str(_prompts(tmp_path, 10)), "--target", f"bad={failing.url},model=m"]
        + ["-j", "1,2"]
        + ["--requests", "50", "--max-errors", "4", "--out", str(out2)],
    )
    assert res.exit_code == 1, res.output  # requests failed; nothing aborted
    doc = orjson.loads((out2 / "compare.json").read_bytes())
    (run,) = doc["runs"]
    assert run["status"] == "max_errors" and 4 <= run["failed"] < 50
    assert set(run["errors"]) == {"bad_request"} and run["completed"] > 0
    assert doc["series"][0]["stopped_early"].startswith("errors: ")


def test_repeats_mark_differences_within_the_spread() -> None:
    from llmbatch.cli.compare.profiles import Step
    from llmbatch.cli.compare.sweep import StepResult, spread_note

    class Run:
        def __init__(self, tp: float) -> None:
            self.figures = {"output_throughput": tp}

    step = Step(parse_profile("concurrent:4"), 4)

    def result(*tps: float) -> StepResult:
        return StepResult(step, [Run(tp) for tp in tps])  # type: ignore[misc]

    a, b, c = result(100, 120), result(105, 109), result(140, 142)
    assert a.mean("output_throughput") == 110 and a.spread("output_throughput")["max"] == 120
    assert spread_note(a, b, "output_throughput")  # 3 apart, spread 20
    assert not spread_note(a, c, "output_throughput")  # 31 apart
    assert not spread_note(result(100), result(101), "output_throughput")  # no spread known


def test_a_rate_the_cap_holds_back_is_reported_as_such(
    runner: CliRunner, tmp_path: Path, mocks: list[ThreadedMock]
) -> None:
    """400 req/s asked, at most 2 in flight of ~20 ms requests: about 100 req/s go out,
    and the step says the cap held it back (not the server)."""
    m = ThreadedMock(MockConfig(tokens=4, ttft_s=0.02, itl_s=0.0))
    mocks.append(m)
    out = tmp_path / "cmp"
    res = runner.invoke(
        app,
        ["compare", str(_prompts(tmp_path, 5)), "--target", f"s={m.url},model=m"]
        + ["--profile", "constant:400", "--max-concurrency", "2", "--requests", "30"]
        + ["--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    (run,) = orjson.loads((out / "compare.json").read_bytes())["runs"]
    assert run["request_rate"] == 400 and run["max_concurrency"] == 2
    assert run["rate_kept"] is False and run["rate_limited_by"] == "--max-concurrency 2"
    assert run["achieved_request_rate"] < 0.95 * run["scheduled_request_rate"]
    assert run["max_concurrent_requests"] <= 2
    assert "held back by --max-concurrency 2: not the server's limit" in res.output
    assert "(short)" in res.output


async def test_compare_chart_draws_no_point_for_an_aborted_run(
    tmp_path: Path, mock_server: MockServer
) -> None:
    """A target that aborts (nothing listens there) has no figures: its line has no point
    (not 0 tok/s and 0 ms) and its legend says "(aborted)", as the table does."""
    from llmbatch.cli.compare.plot import compare_figure
    from llmbatch.cli.compare.runner import StopConditions
    from llmbatch.cli.compare.sweep import SaturationRule, SweepResult, run_sweep

    targets = [f"live={mock_server.url},model=m", "dead=http://127.0.0.1:9/v1,model=m"]
    series = plan_series(None, [], targets, [])
    prompts = _prompts(tmp_path, 6)
    result = SweepResult(
        out_dir=tmp_path,
        prompts=prompts,
        label="p.jsonl",
        window=Window(),
        stop=StopConditions(),
        rule=SaturationRule(),
        slo=SLO(),
        repeats=1,
    )
    plan = [(s, parse_profile("concurrent:2,4")) for s in series]
    await run_sweep(plan, prompts, result, install_signal_handlers=False)
    assert result.series[1].stopped is not None and result.series[1].stopped.startswith("aborted")
    for ax in compare_figure(result).axes:
        live, *_, dead = [line for line in ax.lines if line.get_label()[0] != "_"]
        assert live.get_label() == "live-aiohttp (in flight)"
        assert [y > 0 for y in live.get_ydata()] == [True, True]
        assert dead.get_label() == "dead-aiohttp (in flight) (aborted)"
        assert all(math.isnan(y) for y in dead.get_ydata())  # nothing drawn
