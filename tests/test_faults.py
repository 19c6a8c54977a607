"""Faults of every kind: nothing lost, nothing duplicated, fatal errors stop the run fast.

Every test runs on virtual time (tests/virtualtime.py): stalls, slow first bytes, backoff
and deadlines happen at exactly their configured times, so a timeout is always the fault
that was injected, never the machine's load, and seconds of stalling take no test time."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.cli.job import execute_run
from llmbatch.config.model import RetryPolicy, RunConfig, Timeouts
from llmbatch.errors import RunDirError
from llmbatch.mockserver import MockConfig, MockServer, start_mock_server

from .conftest import ADAPTERS, config_for, read_results, write_jsonl
from .test_run import check_complete

pytestmark = pytest.mark.virtualtime

TRANSIENT = {
    "429": 0.06,
    "500": 0.03,
    "502": 0.03,
    "503": 0.03,
    "reset": 0.04,
    "disconnect": 0.06,
    "stall": 0.03,
    "malformed": 0.04,
    "error_payload": 0.04,
    "overloaded": 0.04,
    "no_done": 0.04,
    "slow_first_byte": 0.03,
}


def tuned(cfg: RunConfig, **retry: float) -> RunConfig:
    """Short timeouts and backoff so faults resolve quickly."""
    return dataclasses.replace(
        cfg,
        timeouts=Timeouts(connect_s=2.0, first_byte_s=0.4, idle_s=0.4, total_s=10.0),
        retry=RetryPolicy(
            max_attempts=int(retry.get("max_attempts", 4)),
            max_total_s=30.0,
            backoff_base_s=0.01,
            backoff_max_s=0.05,
        ),
    )


async def fault_server(faults: dict[str, float], **kw: float) -> MockServer:
    return await start_mock_server(
        MockConfig(
            tokens=12,
            ttft_s=0.0,
            itl_s=0.0,
            faults=faults,
            retry_after_s=0.05,
            stall_s=2.0,
            slow_first_byte_s=1.0,
            **kw,  # type: ignore[arg-type]
        )
    )


@pytest.mark.parametrize("client", ADAPTERS)
async def test_fault_matrix(tmp_path: Path, client: str) -> None:
    server = await fault_server(TRANSIENT)
    try:
        n = 300
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(n)]
        )
        cfg = tuned(config_for(server, tmp_path, client=client, concurrency=32))
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        injected = sum(server.stats.faults.values())
        records = read_results(out.run_dir)
        retries = sum(len(r["llmbatch"]["attempts"]) - 1 for r in records)
        print(f"{client}: faults injected {injected}, retries {retries}, records {len(records)}")
        assert injected >= 0.3 * n  # every kind was exercised
        assert set(server.stats.faults) == set(TRANSIENT)
        assert out.result.metrics.failed == 0
        assert len(records) == n  # one record per id, none lost, none duplicated
        check_complete(out.run_dir, prompts, tokens=12)
        # Every injected fault fails exactly one attempt, and nothing else fails one: the
        # stalls (2 s) and slow first bytes (1 s) are the only timeouts (0.4 s limits).
        timeouts = ("read_timeout", "deadline_exceeded")
        timed_out = sum(
            1 for r in records for a in r["llmbatch"]["attempts"] if a["error"] in timeouts
        )
        injected_timeouts = sum(server.stats.faults.get(k, 0) for k in ("stall", "slow_first_byte"))
        assert timed_out == injected_timeouts
        assert retries == injected
        for r in records:
            attempts = r["llmbatch"]["attempts"]
            for a, nxt in zip(attempts, attempts[1:], strict=False):
                assert a["error"] is not None and nxt["n"] == a["n"] + 1
                if a["status"] == 429:
                    # Retry-After (50 ms) is the wait: above the backoff's 10 ms ceiling.
                    assert a["wait_s"] == pytest.approx(0.05)
    finally:
        await server.close()


@pytest.mark.parametrize(("fault", "code"), [("401", "AuthError"), ("quota", "QuotaExhausted")])
async def test_fatal_for_run_stops_fast_and_stays_resumable(
    tmp_path: Path, fault: str, code: str
) -> None:
    server = await fault_server({fault: 1.0}, fault_attempts=1)
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(200)]
        )
        cfg = tuned(config_for(server, tmp_path, concurrency=8))
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert out.result.stop_reason == "aborted"
        assert code in (out.result.abort_message or "")
        assert server.stats.requests <= 8  # the probe first, then at most one wave
        assert read_results(out.run_dir) == []  # nothing recorded: all of it resumes
        # The cause is fixed (a healthy server now): the same command finishes the job.
        # The fixed server listens on another port; the directory holds no record yet, so
        # it belongs to no target and needs no --force-resume.
        fixed = await fault_server({})
        try:
            cfg2 = tuned(config_for(fixed, tmp_path, concurrency=8))
            again = await execute_run(cfg2, prompts, install_signal_handlers=False)
        finally:
            await fixed.close()
        assert again.result.stop_reason is None and again.result.metrics.succeeded == 200
        check_complete(out.run_dir, prompts, tokens=12)
    finally:
        await server.close()


async def test_unknown_model_on_every_request_aborts(tmp_path: Path) -> None:
    server = await fault_server({"404": 1.0}, fault_attempts=1000)
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(100)]
        )
        cfg = tuned(config_for(server, tmp_path, concurrency=4))
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert out.result.stop_reason == "aborted"
        assert "every request fails the same way: HTTP 404" in (out.result.abort_message or "")
        assert server.stats.requests <= 8
        assert read_results(out.run_dir) == []
    finally:
        await server.close()


async def test_fixing_the_base_url_after_an_abort_resumes(tmp_path: Path) -> None:
    """A base URL without /v1: every request 404s, the run aborts naming the URL and the
    likely fix; the same run with the fixed URL then does all the work in that directory
    (it holds no record, so it belongs to no target yet)."""
    server = await fault_server({})
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(20)]
        )
        root = server.url.removesuffix("/v1")
        good = tuned(config_for(server, tmp_path, concurrency=4))
        wrong = tuned(config_for(server, tmp_path, concurrency=4, base_url=root))
        out = await execute_run(wrong, prompts, install_signal_handlers=False)
        assert out.result.stop_reason == "aborted"
        assert out.result.abort_message == (
            f"every request fails the same way: HTTP 404 from {root}/chat/completions: "
            f"404: Not Found. The base URL {root} has no path: OpenAI-compatible servers "
            f"usually serve under /v1 (--base-url {root}/v1)"
        )
        assert read_results(out.run_dir) == []
        again = await execute_run(good, prompts, install_signal_handlers=False)
        assert again.run_dir == out.run_dir
        assert again.result.stop_reason is None and again.result.metrics.succeeded == 20
        check_complete(out.run_dir, prompts, tokens=12)
        assert orjson.loads((out.run_dir / "run.json").read_bytes())["base_url"] == server.url
        # Now it holds records: another target is refused, as before.
        with pytest.raises(RunDirError, match="holds a run for another target"):
            await execute_run(wrong, prompts, install_signal_handlers=False)
    finally:
        await server.close()


async def test_404_with_a_path_names_the_url_and_the_model(tmp_path: Path) -> None:
    server = await fault_server({"404": 1.0}, fault_attempts=1000)
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(9)]
        )
        cfg = tuned(config_for(server, tmp_path, concurrency=3, model="no-such-model"))
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        why = out.result.abort_message or ""
        assert why.startswith(
            f"every request fails the same way: HTTP 404 from {server.url}/chat/completions: "
        )
        assert "The model does not exist" in why
        assert why.endswith(
            f". A 404 for every request usually means a wrong base URL ({server.url}: is the "
            "API path right?), or the model 'no-such-model' is not one the server serves "
            f"(GET {server.url}/models lists them)"
        )
    finally:
        await server.close()


async def test_api_key_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-very-secret-0123456789"
    monkeypatch.setenv("LLMBATCH_TEST_KEY", secret)
    server = await fault_server({"401": 1.0}, fault_attempts=1)
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(5)]
        )
        cfg = config_for(server, tmp_path, concurrency=1)
        prov = dataclasses.replace(cfg.provider, api_key_env="LLMBATCH_TEST_KEY")
        cfg = tuned(dataclasses.replace(cfg, provider=prov))
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert out.result.stop_reason == "aborted"
        assert secret not in (out.result.abort_message or "")
        assert "[REDACTED]" in (out.result.abort_message or "")
        for path in out.run_dir.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
    finally:
        await server.close()


async def test_keep_partial_and_retry_failed(tmp_path: Path) -> None:
    server = await fault_server({"disconnect": 0.3}, fault_attempts=2)
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(40)]
        )
        base = config_for(server, tmp_path, concurrency=4, keep_partial=True)
        cfg = tuned(base, max_attempts=2)  # 2 attempts, both disconnected: fails
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        failed = [r for r in read_results(out.run_dir) if r["error"] is not None]
        assert failed and out.result.metrics.failed == len(failed)
        for r in failed:
            assert r["error"]["code"] == "stream_interrupted"
            assert r["llmbatch"]["partial_text_kept"] is True
            partial = out.run_dir / r["llmbatch"]["text_file"]
            assert r["llmbatch"]["text_file"].startswith("text/failed/")
            assert partial.suffix == ".partial" and partial.read_text()  # half an answer
        # --retry-failed: only the failed ones are sent again, and now they succeed.
        sent_before = server.stats.requests
        cfg2 = dataclasses.replace(cfg, retry_failed=True)
        again = await execute_run(cfg2, prompts, install_signal_handlers=False)
        assert server.stats.requests - sent_before == len(failed)
        assert again.result.metrics.succeeded == len(failed)
        check_complete(out.run_dir, prompts, tokens=12)
        assert not list((out.run_dir / "text" / "failed").iterdir())  # no stale partials
    finally:
        await server.close()


async def test_hostile_ids_stay_inside_run_dir(tmp_path: Path, mock_server: MockServer) -> None:
    ids = ["../../escape", "/etc/passwd", "a/b\\c", "..", ".hidden", "ü-ñ", "x" * 200]
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": i, "prompt": i} for i in ids])
    out = await execute_run(
        config_for(mock_server, tmp_path), prompts, install_signal_handlers=False
    )
    assert out.result.metrics.succeeded == len(ids)
    text_dir = out.run_dir / "text"
    files = sorted(p.name for p in text_dir.iterdir() if p.is_file())
    assert len(files) == len(ids)
    for name in files:
        assert "/" not in name and not name.startswith(".") and len(name) <= 100
    assert {p.parent for p in out.run_dir.rglob("*.txt")} == {text_dir}
    assert not (tmp_path / "escape").exists()
    rec = {r["custom_id"]: r for r in read_results(out.run_dir)}
    assert rec["../../escape"]["llmbatch"]["text_file"].startswith("text/")
    assert orjson.loads((out.run_dir / "run.json").read_bytes())["provider"] == "vllm"


async def test_disk_full_mid_run_stops_and_resumes_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from llmbatch.errors import OutputError
    from llmbatch.rundir import text

    server = await start_mock_server(MockConfig(tokens=8, ttft_s=0.0, itl_s=0.005))
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(80)]
        )
        cfg = config_for(server, tmp_path, concurrency=4)
        real_write_file = text._write_file
        calls = {"n": 0}

        def failing_write_file(*args: Any) -> None:
            calls["n"] += 1
            if calls["n"] > 10:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write_file(*args)

        monkeypatch.setattr(text, "_write_file", failing_write_file)
        try:
            out = await execute_run(cfg, prompts, install_signal_handlers=False)
        except OutputError as exc:  # the final flush may hit the full disk too
            assert "No space left on device" in str(exc)
        else:
            assert out.result.stop_reason == "aborted"
            assert "No space left on device" in (out.result.abort_message or "")
        assert server.stats.requests < 80  # it stopped instead of going on blind
        monkeypatch.setattr(text, "_write_file", real_write_file)
        again = await execute_run(cfg, prompts, install_signal_handlers=False)
        assert again.result.stop_reason is None
        assert len(read_results(again.run_dir)) == 80
        check_complete(again.run_dir, prompts, tokens=8)
    finally:
        await server.close()


async def test_answer_complete_before_connection_drops_is_kept(tmp_path: Path) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"delta":{"content":"done"}}]}\n\ndata: [DONE]\n\n')
        assert request.transport is not None
        request.transport.abort()  # then the connection drops
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}])
        from llmbatch.config.load import load_config

        cfg = load_config(
            None,
            flags={
                "provider": "vllm",
                "base_url": f"http://127.0.0.1:{port}/v1",
                "run_dir": tmp_path / "run",
                "progress": False,
            },
            environ={},
        )
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        (rec,) = read_results(out.run_dir)
        assert rec["error"] is None and len(rec["llmbatch"]["attempts"]) == 1
        assert (out.run_dir / "text" / "a.txt").read_text() == "done"
    finally:
        await runner.cleanup()


async def test_some_bad_requests_in_a_healthy_job_do_not_abort(tmp_path: Path) -> None:
    # 4xx answers come back at once while good answers are still streaming: the first
    # three to finish are failures, but the job is fine and must run to the end.
    server = await start_mock_server(
        MockConfig(tokens=10, ttft_s=0.0, itl_s=0.02, faults={"400": 0.2}, fault_attempts=100)
    )
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(100)]
        )
        out = await execute_run(
            config_for(server, tmp_path, concurrency=8), prompts, install_signal_handlers=False
        )
        m = out.result.metrics
        assert out.result.stop_reason is None
        assert m.failed == server.stats.faults["400"] and m.succeeded == 100 - m.failed
        assert len(read_results(out.run_dir)) == 100
    finally:
        await server.close()


async def test_stop_that_cancels_in_flight_work_is_resumable(tmp_path: Path) -> None:
    server = await start_mock_server(MockConfig(tokens=20, ttft_s=0.0, itl_s=0.2))
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(3)]
        )
        cfg = dataclasses.replace(
            config_for(server, tmp_path, concurrency=4, max_runtime_s=0.3), grace_s=0.1
        )
        out = await execute_run(cfg, prompts, install_signal_handlers=False)
        # All prompts were taken before the deadline, but none finished: work is left.
        assert out.result.stop_reason == "max_runtime" and out.result.pending_left
        assert read_results(out.run_dir) == []
    finally:
        await server.close()
