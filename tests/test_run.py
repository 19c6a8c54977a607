"""End to end over real sockets: prompts in, exact text and one record per prompt out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.cli.job import execute_run
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server
from llmbatch.records import PromptRecord
from llmbatch.rundir.reader import iter_records

from .conftest import ADAPTERS, config_for, read_results, write_jsonl

EXAMPLE = Path(__file__).resolve().parent.parent / "prompts" / "example.jsonl"


def expected_for(rec: PromptRecord, tokens: int) -> str:
    cap = rec.body.get("max_tokens")
    n = min(tokens, cap) if isinstance(cap, int) else tokens
    return expected_text(rec.body["messages"], n)


def check_complete(run_dir: Path, prompts: Path, tokens: int) -> dict[str, Any]:
    """Every valid prompt has exactly one successful record with the exact text."""
    records = read_results(run_dir)
    ids = [r["custom_id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicated records"
    by_id = {r["custom_id"]: r for r in records}
    for rec in iter_records(prompts):
        if not isinstance(rec, PromptRecord):
            continue
        r = by_id[rec.id]
        assert r["error"] is None, r["error"]
        want = expected_for(rec, tokens)
        assert r["response"]["body"]["choices"][0]["message"]["content"] == want
        assert text_on_disk(run_dir, r) == want
    assert not list((run_dir / "text").glob("*.partial"))
    return by_id


def text_on_disk(run_dir: Path, record: dict[str, Any]) -> str:
    """The text a record points to: its own file, or its span of text.log (log layout)."""
    lb = record["llmbatch"]
    if "text_offset" in lb:
        with open(run_dir / lb["text_file"], "rb") as fh:
            fh.seek(lb["text_offset"])
            return fh.read(lb["text_bytes"]).decode()
    return (run_dir / lb["text_file"]).read_text()


@pytest.mark.parametrize("client", ADAPTERS)
async def test_example_file_exact_text(
    tmp_path: Path, mock_server: MockServer, client: str
) -> None:
    cfg = config_for(mock_server, tmp_path, client=client, concurrency=8)
    out = await execute_run(cfg, EXAMPLE, install_signal_handlers=False)
    assert out.result.metrics.failed == 0
    assert out.result.metrics.succeeded == len(EXAMPLE.read_text().splitlines())
    by_id = check_complete(out.run_dir, EXAMPLE, tokens=16)
    # Token counts come from the server's usage, not estimated.
    some = next(iter(by_id.values()))
    assert some["llmbatch"]["metrics"]["output_tokens_estimated"] is False
    summary = orjson.loads((out.run_dir / "summary.json").read_bytes())
    assert summary["requests"]["succeeded"] == out.result.metrics.succeeded
    # Nothing failed: no empty text/failed/ folder (it comes with the first kept partial).
    assert sorted(p.name for p in out.run_dir.iterdir()) == [
        ".lock",
        "results.jsonl",
        "run.json",
        "summary.json",
        "text",
    ]
    assert all(p.suffix == ".txt" for p in (out.run_dir / "text").iterdir())


async def test_concurrency_never_exceeds_limit(tmp_path: Path) -> None:
    server = await start_mock_server(MockConfig(tokens=4, ttft_s=0.02, itl_s=0.001))
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"p{i}"} for i in range(60)]
        )
        cfg = config_for(server, tmp_path, concurrency=7)
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert out.result.metrics.succeeded == 60
        assert server.stats.max_in_flight == 7  # reached, never exceeded
    finally:
        await server.close()


async def test_bad_lines_become_error_records_and_run_goes_on(
    tmp_path: Path, mock_server: MockServer
) -> None:
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "good1", "prompt": "a"},
            b"{broken",
            {"id": "good1", "prompt": "dup"},
            b'{"id": "u", "prompt": "\xff"}',
            {"id": "nothing"},
            {"id": "good2", "prompt": "b"},
        ],
    )
    out = await execute_run(
        config_for(mock_server, tmp_path), prompts, install_signal_handlers=False
    )
    m = out.result.metrics
    assert (m.succeeded, m.failed, m.input_errors) == (2, 4, 4)
    records = {r["custom_id"]: r for r in read_results(out.run_dir)}
    assert records["#line-2"]["error"]["code"] == "input_error"
    assert f"{prompts}:2: invalid JSON" in records["#line-2"]["error"]["message"]
    assert "duplicate id 'good1'" in records["#line-3"]["error"]["message"]
    assert "invalid UTF-8" in records["#line-4"]["error"]["message"]
    assert 'missing "prompt"' in records["#line-5"]["error"]["message"]
    # Re-running does not duplicate error records either.
    again = await execute_run(
        config_for(mock_server, tmp_path), prompts, install_signal_handlers=False
    )
    assert again.result.metrics.skipped == 6
    assert len(read_results(out.run_dir)) == 6


async def test_resume_after_finished_run_sends_nothing(
    tmp_path: Path, mock_server: MockServer
) -> None:
    cfg = config_for(mock_server, tmp_path)
    await execute_run(cfg, EXAMPLE, install_signal_handlers=False)
    sent = mock_server.stats.requests
    out = await execute_run(cfg, EXAMPLE, install_signal_handlers=False)
    assert mock_server.stats.requests == sent
    assert out.result.metrics.skipped == sent
    check_complete(out.run_dir, EXAMPLE, tokens=16)


@pytest.mark.virtualtime
async def test_resume_after_interrupted_run(tmp_path: Path) -> None:
    # Slow answers and a short --max-runtime-s stop the first run part-way. On virtual
    # time each answer takes exactly 0.05 + 19 x 0.01 = 0.24 s, 4 at a time: 8 are done
    # by 0.48 s; at 0.6 s no more start, and the 4 in flight finish in the grace period.
    server = await start_mock_server(MockConfig(tokens=20, ttft_s=0.05, itl_s=0.01))
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(40)]
        )
        cfg = config_for(server, tmp_path, concurrency=4, max_runtime_s=0.6)
        first = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert first.result.stop_reason == "max_runtime"
        done_first = len(read_results(first.run_dir))
        assert done_first == 12
        cfg2 = config_for(server, tmp_path, concurrency=16)
        second = await execute_run(cfg2, prompts, install_signal_handlers=False)
        assert second.result.stop_reason is None
        assert second.result.metrics.skipped == done_first
        assert len(read_results(second.run_dir)) == 40
        check_complete(second.run_dir, prompts, tokens=20)
    finally:
        await server.close()


async def test_torn_last_line_is_repaired(tmp_path: Path, mock_server: MockServer) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(5)])
    cfg = config_for(mock_server, tmp_path)
    out = await execute_run(cfg, prompts, install_signal_handlers=False)
    results = out.run_dir / "results.jsonl"
    data = results.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    results.write_bytes(data[: last_start + 25])  # a crash mid-write
    again = await execute_run(cfg, prompts, install_signal_handlers=False)
    assert again.result.metrics.succeeded == 1
    check_complete(out.run_dir, prompts, tokens=16)
    assert len(read_results(out.run_dir)) == 5


@pytest.mark.virtualtime
async def test_text_is_visible_while_it_streams(
    tmp_path: Path, flushed: asyncio.Queue[None]
) -> None:
    server = await start_mock_server(MockConfig(tokens=40, ttft_s=0.0, itl_s=0.025))
    try:
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "slow", "prompt": "stream me"}])
        run = asyncio.create_task(
            execute_run(config_for(server, tmp_path), prompts, install_signal_handlers=False)
        )
        partial = tmp_path / "run" / "text" / "slow.partial"
        seen: list[str] = []
        while not run.done():
            # After each writer tick, look at the file as a reader would.
            tick = asyncio.ensure_future(flushed.get())
            await asyncio.wait([tick, run], return_when=asyncio.FIRST_COMPLETED)
            tick.cancel()
            if partial.exists():
                seen.append(partial.read_text())
        await run
        full = expected_text([{"role": "user", "content": "stream me"}], 40)
        growing = [t for t in seen if 0 < len(t) < len(full)]
        # It grew at every writer tick (0.1 s) of the 1 s answer (virtual time: exactly).
        assert len(set(growing)) == 9
        assert all(full.startswith(t) for t in seen)  # and was always a prefix of the answer
        assert (tmp_path / "run" / "text" / "slow.txt").read_text() == full
        assert not partial.exists()
    finally:
        await server.close()


async def test_no_text_files(tmp_path: Path, mock_server: MockServer) -> None:
    import dataclasses

    cfg = dataclasses.replace(config_for(mock_server, tmp_path), text_files=False)
    out = await execute_run(cfg, EXAMPLE, install_signal_handlers=False)
    assert out.result.metrics.failed == 0
    assert [p for p in (out.run_dir / "text").rglob("*") if p.is_file()] == []
    for r in read_results(out.run_dir):
        assert r["llmbatch"]["text_file"] is None
        assert r["response"]["body"]["choices"][0]["message"]["content"]


async def test_summary_counts_the_whole_run_after_a_resume(
    tmp_path: Path, mock_server: MockServer
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(6)])
    cfg = config_for(mock_server, tmp_path)
    first = await execute_run(cfg, prompts, install_signal_handlers=False)
    rows = (first.run_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
    (first.run_dir / "results.jsonl").write_bytes(b"".join(rows[:4]))  # as if killed after 4
    again = await execute_run(cfg, prompts, install_signal_handlers=False)
    summary = orjson.loads((again.run_dir / "summary.json").read_bytes())
    assert summary["requests"]["succeeded"] == 2  # this invocation
    assert summary["requests"]["skipped_already_done"] == 4
    assert summary["requests"]["run_total_succeeded"] == 6
