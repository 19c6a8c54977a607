"""--text-layout log: every answer in one append-only text.log, offsets in each record.

Both layouts give the same answers and records; the log layout creates no file per
request, shows answers live in text.partial.log, and survives SIGKILL and resume.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from llmbatch.cli.app import app
from llmbatch.cli.job import execute_run
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.mockserver.answers import prompt_key
from llmbatch.mockserver.faults import FaultPicker

from .conftest import config_for, read_results, write_jsonl
from .test_crash import assert_consistent, start_child
from .test_run import check_complete, text_on_disk

# On virtual time (tests/virtualtime.py) but the SIGKILL test: its child runs for real.
pytestmark = [pytest.mark.timeout(120), pytest.mark.virtualtime]


def frames(path: Path) -> list[tuple[dict[str, Any], bytes]]:
    """The (header, text) frames of text.log or text.partial.log, in file order."""
    raw = path.read_bytes()
    out, pos = [], 0
    while pos < len(raw):
        nl = raw.index(b"\n", pos)
        head = orjson.loads(raw[pos:nl])
        n = head.get("bytes", 0) if not (head.get("restart") or head.get("done")) else None
        if n is None:
            out.append((head, b""))
            pos = nl + 1
            continue
        out.append((head, raw[nl + 1 : nl + 1 + n]))
        assert raw[nl + 1 + n : nl + 2 + n] == b"\n"
        pos = nl + 2 + n
    return out


@pytest.mark.parametrize("layout", ["files", "log"])
async def test_both_layouts_exact_texts(
    tmp_path: Path, mock_server: MockServer, layout: str
) -> None:
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"id": f"q/{i}", "prompt": f"question {i}"} for i in range(40)]
    )
    cfg = config_for(mock_server, tmp_path, concurrency=8, text_layout=layout)
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert out.result.metrics.succeeded == 40
    check_complete(out.run_dir, prompts, tokens=16)
    if layout == "files":
        assert not (out.run_dir / "text.log").exists()
        assert len(list((out.run_dir / "text").glob("*.txt"))) == 40
        return
    assert not (out.run_dir / "text").exists()  # no file per request at all
    by_id = {r["custom_id"]: r for r in read_results(out.run_dir)}
    logged = frames(out.run_dir / "text.log")
    assert sorted(h["custom_id"] for h, _ in logged) == sorted(by_id)
    for head, text in logged:  # the log reads on its own too, frame by frame
        assert head["complete"] is True
        assert text.decode() == text_on_disk(out.run_dir, by_id[head["custom_id"]])


async def test_log_layout_live_view_grows_then_is_done(
    tmp_path: Path, flushed: asyncio.Queue[None]
) -> None:
    server = await start_mock_server(MockConfig(tokens=40, ttft_s=0.0, itl_s=0.025))
    try:
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "slow", "prompt": "stream me"}])
        cfg = config_for(server, tmp_path, text_layout="log")
        run = asyncio.create_task(execute_run(cfg, prompts, install_signal_handlers=False))
        live = tmp_path / "run" / "text.partial.log"
        seen: list[str] = []
        while not run.done():
            tick = asyncio.ensure_future(flushed.get())
            await asyncio.wait([tick, run], return_when=asyncio.FIRST_COMPLETED)
            tick.cancel()
            if live.exists():  # what a reader (tail -f) has so far
                seen.append("".join(t.decode() for h, t in frames(live) if "bytes" in h))
        await run
        full = expected_text([{"role": "user", "content": "stream me"}], 40)
        growing = [t for t in seen if 0 < len(t) < len(full)]
        # It grew at every writer tick (0.1 s) of the 1 s answer (virtual time: exactly).
        assert len(set(growing)) == 9
        assert all(full.startswith(t) for t in seen)
        final = frames(live)
        assert final[-1][0] == {"custom_id": "slow", "done": True}
        assert "".join(t.decode() for h, t in final if "bytes" in h) == full
        (rec,) = read_results(tmp_path / "run")
        assert text_on_disk(tmp_path / "run", rec) == full
    finally:
        await server.close()


async def test_log_layout_retry_starts_over(tmp_path: Path) -> None:
    # Every first attempt drops mid-stream; the retry's text replaces what it streamed.
    server = await start_mock_server(
        MockConfig(tokens=30, ttft_s=0.0, itl_s=0.004, faults={"disconnect": 1.0})
    )
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": f"retry {i}"} for i in range(6)]
        )
        cfg = config_for(server, tmp_path, text_layout="log", concurrency=3)
        cfg = dataclasses.replace(
            cfg, retry=dataclasses.replace(cfg.retry, backoff_base_s=0.01, backoff_max_s=0.02)
        )
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert out.result.metrics.succeeded == 6
        check_complete(out.run_dir, prompts, tokens=30)
        assert all(len(r["llmbatch"]["attempts"]) == 2 for r in read_results(out.run_dir))
    finally:
        await server.close()


async def test_log_layout_keeps_partial_answers_of_failures(tmp_path: Path) -> None:
    mock = MockConfig(tokens=30, ttft_s=0.0, itl_s=0.004, faults={"disconnect": 0.5})

    def drops(text: str) -> bool:  # the mock's own choice for a first attempt
        key = prompt_key([{"role": "user", "content": text}])
        return FaultPicker(mock).pick(key, {}) is not None

    texts = [f"keep {i}" for i in range(40)]
    ok = [t for t in texts if not drops(t)][:4]
    bad = [t for t in texts if t not in ok and drops(t)][:4]
    server = await start_mock_server(mock)
    try:
        # One at a time, a success first: the run is not taken for a systematic failure.
        rows = [{"id": t.replace(" ", "-"), "prompt": t} for t in ok[:1] + bad + ok[1:]]
        prompts = write_jsonl(tmp_path / "p.jsonl", rows)
        cfg = config_for(server, tmp_path, text_layout="log", concurrency=1, keep_partial=True)
        cfg = dataclasses.replace(cfg, retry=dataclasses.replace(cfg.retry, max_attempts=1))
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert (out.result.metrics.succeeded, out.result.metrics.failed) == (4, 4)
        heads = {h["custom_id"]: h for h, _ in frames(out.run_dir / "text.log")}
        for r in read_results(out.run_dir):
            want = expected_text(
                [{"role": "user", "content": r["custom_id"].replace("-", " ")}], 30
            )
            if r["error"] is None:
                assert text_on_disk(out.run_dir, r) == want
                assert heads[r["custom_id"]]["complete"] is True
            elif r["llmbatch"]["partial_text_kept"]:
                kept = text_on_disk(out.run_dir, r)
                assert kept and want.startswith(kept) and kept != want
                assert heads[r["custom_id"]]["complete"] is False
            else:  # dropped before any text: nothing to keep
                assert r["custom_id"] not in heads
        assert any(r["llmbatch"]["partial_text_kept"] for r in read_results(out.run_dir))
    finally:
        await server.close()


@pytest.fixture
async def slow_server() -> MockServer:
    server = await start_mock_server(MockConfig(tokens=10, ttft_s=0.02, itl_s=0.008))
    yield server  # type: ignore[misc]
    await server.close()


@pytest.mark.subprocess
async def test_log_layout_sigkill_at_random_points_then_resume(
    tmp_path: Path, slow_server: MockServer
) -> None:
    n = 120
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"id": f"k{i}", "prompt": f"kill {i}"} for i in range(n)]
    )
    run_dir = tmp_path / "run"
    rng = random.Random(99)
    for _ in range(3):
        base = slow_server.stats.completed
        proc = await start_child(slow_server, prompts, run_dir, "--text-layout", "log")
        await slow_server.wait_completed(base + rng.randint(1, 25))
        proc.kill()
        await proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        if (run_dir / "results.jsonl").exists():
            for r in assert_consistent(run_dir):  # every record's text is on disk
                assert text_on_disk(run_dir, r)
    proc = await start_child(slow_server, prompts, run_dir, "--text-layout", "log")
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert len(assert_consistent(run_dir)) == n
    check_complete(run_dir, prompts, tokens=10)
    # Answers of killed requests were cut back on resume: every frame belongs to a record.
    logged = [h["custom_id"] for h, _ in frames(run_dir / "text.log")]
    assert len(logged) == len(set(logged)) == n


def test_text_layout_flag_is_checked(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prompt": "x"}])
    res = CliRunner().invoke(app, ["run", str(p), "--text-layout", "tar"])
    assert res.exit_code == 2 and "unknown text layout 'tar'" in res.output


def test_merge_of_log_layout_shards_moves_each_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": f"m{i}", "prompt": f"m {i}"} for i in range(30)])
    dirs = []
    for i in range(3):
        res = runner.invoke(app, ["run", str(p), "--shard", f"{i}/3", "--text-layout", "log"])
        assert res.exit_code == 0, res.output
        dirs.append(tmp_path / "outputs" / f"p-mock-shard{i}of3")
    res = runner.invoke(app, ["merge", *map(str, dirs), "--run-dir", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    merged = tmp_path / "merged"
    records = read_results(merged)
    assert len(records) == 30
    for r in records:  # the mock's default answer length, read where the record points
        body = r["response"]["body"]["choices"][0]["message"]["content"]
        assert text_on_disk(merged, r) == body
    assert sorted(h["custom_id"] for h, _ in frames(merged / "text.log")) == sorted(
        r["custom_id"] for r in records
    )
