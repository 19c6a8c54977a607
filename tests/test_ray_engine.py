"""``--engine ray`` on a 2-node Ray cluster inside a loopback-only network namespace.

Each test runs ``unshare -n python -m tests.raycluster SCENARIO DIR`` (see raycluster.py):
the cluster, the mock and the ``llmbatch run --engine ray`` commands all live in the
namespace; the test compares the run directory with a single-process run of the same
prompts against the same kind of mock, here in the test process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.cli.job import execute_run
from llmbatch.config.load import load_config
from llmbatch.mockserver import MockConfig, start_mock_server

from .conftest import read_results, write_jsonl
from .raycluster import AUTO_LIMIT, FAULTS, LIMIT_WINDOW_S, MAX_COST, PACED_RPS, RPM

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _why_not() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install 'llmbatch[ray]')"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip not available: cannot make a loopback-only network namespace"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -n not permitted here: {probe.stderr.decode().strip()}"
    return None


_WHY_NOT = _why_not()  # probed once: it starts a process
pytestmark = [
    pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT)),
    pytest.mark.ray,
    pytest.mark.subprocess,
]


# Every scenario runs once, in this order, on one cluster (one `unshare -n` process):
# each test reads its scenario's report.
SCENARIOS = {"exact": 2000, "kill-worker": 800, "kill-driver": 800, "sigint": 800}
SCENARIOS["max-runtime"] = 800
SCENARIOS["no-survivor"] = 600
SCENARIOS["text-log"] = 600
SCENARIOS["auto"] = 400
SCENARIOS["max-cost"] = 400
SCENARIOS["pacing"] = 300


@pytest.fixture(scope="module")
def ray_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run every scenario on one 2-node cluster; the directory of each, by name."""
    root = tmp_path_factory.mktemp("raycluster")
    for name, n_prompts in SCENARIOS.items():
        (root / name).mkdir()
        write_jsonl(
            root / name / "prompts.jsonl",
            [{"id": f"q{i}", "prompt": f"question {i}: why?"} for i in range(n_prompts)],
        )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        proc = subprocess.run(
            ["unshare", "-n", sys.executable, "-m", "tests.raycluster", str(root), *SCENARIOS],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=600,
        )
    finally:
        _stop_leftover_nodes(root)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return {name: root / name for name in SCENARIOS}


def _report(work: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((work / "report.json").read_text())
    assert "error" not in report, report["error"]
    return report


def _log(work: Path) -> str:
    lines = (work / "llmbatch.log").read_text().splitlines()
    return "\n".join(x for x in lines if x.startswith(("llmbatch", "per worker", "requests")))


def _stop_leftover_nodes(work: Path) -> None:
    """Should the scenario have died, stop the Ray nodes it started (by their pids)."""
    import psutil

    try:
        pids = json.loads((work / "ray-pids.json").read_text())
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            root = psutil.Process(pid)
            if "ray" not in " ".join(root.cmdline()):
                continue  # the pid was reused
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass


async def _single_process(work: Path, *, limited: bool, text_layout: str = "files") -> Path:
    """The reference: the same prompts, one process, the same kind of mock."""
    server = await start_mock_server(
        MockConfig(
            tokens=16,
            ttft_s=0.0,
            itl_s=0.0,
            faults=FAULTS,
            rpm=RPM if limited else None,
            limit_window_s=LIMIT_WINDOW_S,
        )
    )
    try:
        # The scenario's own config (limits, retry), pointed at this mock.
        text = (work / "config.toml").read_text()
        (work / "single.toml").write_text(
            re.sub(r'base_url = "[^"]*"', f'base_url = "{server.url}"', text)
        )
        cfg = load_config(
            work / "single.toml",
            flags={"run_dir": work / "single", "progress": False, "text_layout": text_layout},
            environ={},
        )
        out = await execute_run(cfg, work / "prompts.jsonl", install_signal_handlers=False)
        assert out.result.metrics.failed == 0
    finally:
        await server.close()
    return work / "single"


def _answers(run_dir: Path) -> dict[str, tuple[str, str]]:
    records = read_results(run_dir)
    ids = [r["custom_id"] for r in records]
    assert len(ids) == len(set(ids)), "one record per id"
    out = {}
    for r in records:
        assert r["error"] is None, r
        content = r["response"]["body"]["choices"][0]["message"]["content"]
        out[r["custom_id"]] = (content, _text(run_dir, r["llmbatch"]))
    return out


def _text(run_dir: Path, lb: dict[str, Any]) -> str:
    """A record's answer where its line points: its text file, or its span of text.log."""
    path = run_dir / lb["text_file"]
    if lb["text_file"] != "text.log":
        return path.read_text()
    with open(path, "rb") as fh:
        fh.seek(lb["text_offset"])
        return fh.read(lb["text_bytes"]).decode()


def _assert_paced(times_s: list[float], limit: float, window_s: float, burst: float) -> None:
    """No window of ``window_s`` holds more than ``limit`` (+ the governor's burst and 4%:
    the server counts arrivals, and a CPU-starved worker sends some granted requests late,
    next to later grants; 617 and 624 of 600 + 10 were seen with two other test suites on
    the 2 cores, while pacing per worker instead of per cluster would show ~1,200), and the
    whole run is no faster than the limit allows."""
    times_s = sorted(times_s)
    j = 0
    worst = 0
    for i, t in enumerate(times_s):
        while j < len(times_s) and times_s[j] - t < window_s:
            j += 1
        worst = max(worst, j - i)
    assert worst <= limit * 1.04 + burst, f"{worst} requests within {window_s} s"
    rate_per_s = limit / window_s
    assert times_s[-1] - times_s[0] >= (len(times_s) - burst) / rate_per_s - 0.5


@pytest.mark.timeout(900)  # the module's cluster fixture runs inside the first test's time
async def test_ray_run_equals_single_process_under_one_cluster_wide_limit(
    ray_reports: dict[str, Path],
) -> None:
    work = ray_reports["exact"]
    report = _report(work)
    assert report["exit_codes"] == [0], _log(work)
    ray_answers = _answers(work / "run")
    single = await _single_process(work, limited=True)
    assert ray_answers == _answers(single)  # same ids, same texts, one record each
    assert len(ray_answers) == 2000

    mock = report["mock"]
    assert sum(mock["faults"].values()) >= 50  # ~5% of prompts hit a fault first
    assert mock["rate_limited"] == 0  # the server never had to refuse the cluster
    # 600 per 6 s = 100 requests/s, burst 10: what one process's governor allows.
    _assert_paced(mock["admitted_s"], RPM, LIMIT_WINDOW_S, burst=RPM / 60)

    summary = orjson.loads((work / "run" / "summary.json").read_bytes())
    assert summary["requests"]["succeeded"] == 2000
    per_worker = summary["engine"]["records_per_worker"]
    assert sorted(per_worker) == ["w0", "w1"] and all(n > 100 for n in per_worker.values())
    assert summary["engine"]["rate_budget"]["granted"] >= 2000
    assert not (work / "run" / "parts").exists()


async def _assert_same_as_one_process(work: Path, n: int, *, text_layout: str = "files") -> None:
    ray_answers = _answers(work / "run")
    single = await _single_process(work, limited=False, text_layout=text_layout)
    assert ray_answers == _answers(single)  # same ids, same texts, one record each
    assert len(ray_answers) == n


@pytest.mark.timeout(900)
async def test_ray_run_carries_on_when_a_worker_node_dies(ray_reports: dict[str, Path]) -> None:
    """The dead worker's unfinished prompts go to the surviving worker: one invocation
    finishes the job (exit 0), one record per id; running it again finds nothing to do."""
    work = ray_reports["kill-worker"]
    report = _report(work)
    log = _log(work)
    assert report["killed_pids"] and report["records_at_kill"] < 800, (report, log)
    assert report["exit_codes"] == [0, 0], log
    assert report["records_after_first_run"] == {"lines": 800, "ids": 800}, log
    assert "worker lost" in log and "go to the other workers" in log
    await _assert_same_as_one_process(work, 800)


@pytest.mark.timeout(900)
async def test_ray_run_resumes_exactly_after_the_driver_is_killed(
    ray_reports: dict[str, Path],
) -> None:
    work = ray_reports["kill-driver"]
    report = _report(work)
    first, second = report["exit_codes"]
    assert first == -9 and report["records_at_kill"] < 800, (report, _log(work))
    assert second == 0, _log(work)
    await _assert_same_as_one_process(work, 800)


@pytest.mark.timeout(900)
async def test_ray_run_stops_gracefully_on_sigint(ray_reports: dict[str, Path]) -> None:
    """First Ctrl-C: the workers finish what they have in flight, the records made are
    kept (one per id), exit 130; the same command then completes the job."""
    work = ray_reports["sigint"]
    report = _report(work)
    log = _log(work)
    assert report["exit_codes"] == [130, 0], log
    kept = report["records_after_stop"]
    assert report["records_at_signal"] >= 150
    assert kept["lines"] == kept["ids"] and report["records_at_signal"] <= kept["ids"] < 800
    assert "SIGINT: stopping the workers" in log and "interrupted" in log
    await _assert_same_as_one_process(work, 800)


@pytest.mark.timeout(900)
async def test_ray_run_stops_at_max_runtime(ray_reports: dict[str, Path]) -> None:
    """--max-runtime-s: exit 75 with the records made kept; the same command completes."""
    work = ray_reports["max-runtime"]
    report = _report(work)
    log = _log(work)
    assert report["exit_codes"] == [75, 0], log
    kept = report["records_after_stop"]
    # (On a loaded machine the workers may not have made a record yet within 4 s.)
    assert kept["lines"] == kept["ids"] < 800, (kept, log)
    assert "--max-runtime-s reached" in log
    await _assert_same_as_one_process(work, 800)


@pytest.mark.timeout(900)
async def test_ray_max_cost_is_one_budget_for_the_cluster(ray_reports: dict[str, Path]) -> None:
    """--max-cost under --engine ray: the governor actor's one budget; the mock's own
    usage counters never bill more than it; exit 4, and a larger budget resumes."""
    work = ray_reports["max-cost"]
    report = _report(work)
    log = _log(work)
    assert report["exit_codes"] == [4, 0], log
    kept = report["records_after_stop"]
    assert 0 < kept["lines"] == kept["ids"] < 400, (kept, log)
    assert report["billed_after_stop"] <= MAX_COST, report
    assert "stopped at the cost budget" in log
    records = read_results(work / "run")
    spent = sum(r["llmbatch"]["cost"]["usd"] for r in records)
    assert spent == pytest.approx(report["billed"], rel=1e-6)
    summary = orjson.loads((work / "run" / "summary.json").read_bytes())
    assert summary["cost"]["max_cost_usd"] == 1000.0
    assert summary["engine"]["rate_budget"]["cost_budget"]["spent_usd"] == pytest.approx(spent)
    await _assert_same_as_one_process(work, 400)


@pytest.mark.timeout(900)
async def test_ray_concurrency_auto_is_decided_for_the_cluster(
    ray_reports: dict[str, Path],
) -> None:
    """--concurrency auto against a server that serves 12 at once (429 beyond): the
    governor's one controller shares its limit between the workers, so the server sees
    the cluster settle near 12 in flight, not at 2 workers x a limit of their own."""
    work = ray_reports["auto"]
    report = _report(work)
    assert report["exit_codes"] == [0], _log(work)
    await _assert_same_as_one_process(work, 400)
    settled = sorted(report["in_flight"][len(report["in_flight"]) // 2 :])
    median = settled[len(settled) // 2]
    assert AUTO_LIMIT * 0.5 <= median <= AUTO_LIMIT * 1.5, settled
    mock = report["mock"]
    assert mock["rate_limited"] < 0.25 * mock["requests"], mock
    summary = orjson.loads((work / "run" / "summary.json").read_bytes())
    conc = summary["engine"]["rate_budget"]["concurrency"]
    assert sorted(conc["shares"]) == ["w0", "w1"]
    assert summary["concurrency_limit"] == conc["limit"] <= 2 * AUTO_LIMIT


@pytest.mark.timeout(900)
async def test_ray_run_with_no_worker_left_stops_and_keeps_every_record(
    ray_reports: dict[str, Path],
) -> None:
    """Every worker lost mid-run (the worker node's processes and the head node's worker
    actor, SIGKILL by pid): the run ends with exit 3 and says no worker is left; every
    record written before is kept, one per id, no part is left; once the node is back,
    the same command completes the job exactly."""
    n = SCENARIOS["no-survivor"]
    work = ray_reports["no-survivor"]
    report = _report(work)
    log = _log(work)
    assert report["head_actor_pids"] and report["killed_pids"], (report, log)
    assert report["records_at_kill"] < n, (report, log)
    assert report["exit_codes"] == [3, 0], log
    assert "run aborted: no worker left: every worker was lost" in log, log
    assert "run the same command" in log
    kept = report["records_after_first_run"]
    assert report["lost_at_kill"] == [], report["lost_at_kill"]
    assert kept["lines"] == kept["ids"] and len(report["ids_at_kill"]) <= kept["ids"] < n, kept
    assert not report["parts_left"]
    await _assert_same_as_one_process(work, n)


def _log_ids(run_dir: Path) -> list[str]:
    """The ids of text.log's answers in file order (header line, bytes, newline)."""
    data, pos, ids = (run_dir / "text.log").read_bytes(), 0, []
    while pos < len(data):
        nl = data.index(b"\n", pos)
        head = orjson.loads(data[pos:nl])
        ids.append(head["custom_id"])
        pos = nl + 1 + head["bytes"] + 1
    return ids


@pytest.mark.timeout(900)
async def test_ray_text_layout_log_writes_one_text_log_and_resumes(
    ray_reports: dict[str, Path],
) -> None:
    """--engine ray --text-layout log: the answers go into the run directory's one
    text.log as in one process (no file per answer); after a SIGKILL of the driver the
    same command completes it, with each answer in text.log once, where its record
    points, equal to a one-process run's."""
    n = SCENARIOS["text-log"]
    work = ray_reports["text-log"]
    report = _report(work)
    first, second = report["exit_codes"]
    assert first == -9 and report["records_at_kill"] < n, (report, _log(work))
    assert second == 0, _log(work)
    await _assert_same_as_one_process(work, n, text_layout="log")
    run = work / "run"
    assert sorted(_log_ids(run)) == sorted(r["custom_id"] for r in read_results(run))
    assert not (run / "text").exists() and not (run / "parts").exists()


@pytest.mark.timeout(900)
async def test_ray_run_keeps_to_a_limit_only_the_server_states(
    ray_reports: dict[str, Path],
) -> None:
    """Two workers, one budget: 50 per sliding second stated only in OpenAI-style headers,
    ``--concurrency auto``, answers of ~0.26 s. The workers' headers reach the one lease
    governor, which paces the cluster as one process: exact answers, few 429s (the
    server's log), and the summary states the limit it learned. (Wall clock with Ray on 2
    shared cores: the achieved rate is printed, not asserted.)"""
    n = SCENARIOS["pacing"]
    work = ray_reports["pacing"]
    report = _report(work)
    assert report["exit_codes"] == [0], _log(work)
    await _assert_same_as_one_process(work, n)
    mock = report["mock"]
    limit = mock["limits"]["requests"]
    print(
        f"ray pacing: {limit['achieved_per_s']:.1f} of {limit['allowed_per_s']:.0f} req/s, "
        f"429s {mock['rate_limited']} of {mock['requests']}"
    )
    assert mock["rate_limited"] <= 0.05 * n, mock["refused_s"]
    summary = orjson.loads((work / "run" / "summary.json").read_bytes())
    stated = summary["rate"]["requests"]
    assert stated["limit_per_s"] == pytest.approx(PACED_RPS, rel=0.1)
    assert sorted(summary["engine"]["rate_budget"]["granted_per_worker"]) == ["w0", "w1"]
