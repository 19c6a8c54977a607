"""The library API over real sockets: Client.complete / stream / batch, llmbatch.run.

On virtual time (tests/virtualtime.py): the slow mock's seconds of streaming take none of
the test's time, and which requests are in flight when a test cancels is the same on
every run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

import llmbatch
from llmbatch.mockserver import MockConfig, MockServer, expected_text, start_mock_server

from .conftest import ADAPTERS, read_results, write_jsonl

pytestmark = pytest.mark.virtualtime


def want(prompt: str, n: int = 16) -> str:
    return expected_text([{"role": "user", "content": prompt}], n)


def client_for(server: MockServer, **opts: object) -> llmbatch.Client:
    return llmbatch.Client("vllm", base_url=server.url, model="mock-model", **opts)  # type: ignore[arg-type]


@pytest.fixture
async def slow_server() -> AsyncIterator[MockServer]:
    server = await start_mock_server(MockConfig(tokens=8, ttft_s=0.0, itl_s=0.05))
    try:
        yield server
    finally:
        await server.close()


def test_public_names() -> None:
    for name in ("Client", "Result", "run", "Batch", "LLMBatchError", "RateLimited", "AuthError"):
        assert name in llmbatch.__all__ and getattr(llmbatch, name) is not None
    with pytest.raises(AttributeError):
        _ = llmbatch.Dispatcher  # type: ignore[attr-defined]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_complete_and_stream(mock_server: MockServer, adapter: str) -> None:
    async with client_for(mock_server, client=adapter) as llm:
        r = await llm.complete("Explain TCP slow start")
        assert r.ok and r.text == want("Explain TCP slow start")
        assert r.finish_reason == "stop" and r.error is None and r.attempts == 1
        assert r.usage.output_tokens == 16 and not r.usage.output_estimated
        assert r.timings.ttft_s is not None and r.output_line["custom_id"] == r.id
        msgs = {"messages": [{"role": "user", "content": "Write a haiku"}]}
        deltas = [d async for d in llm.stream(msgs)]
        assert len(deltas) == 16 and "".join(deltas) == want("Write a haiku")


async def test_complete_bad_prompt_is_a_failed_result(mock_server: MockServer) -> None:
    async with client_for(mock_server) as llm:
        r = await llm.complete({"messages": "not a list"})
        assert not r.ok and r.error is not None and r.error.code == "input_error"
        assert "messages" in r.error.message
        with pytest.raises(llmbatch.InputError):
            async for _ in llm.stream({"nothing": 1}):
                pass
    assert mock_server.stats.requests == 0


async def test_stream_retries_before_text_but_not_after() -> None:
    # A reset before any text: retried transparently.
    server = await start_mock_server(
        MockConfig(tokens=16, ttft_s=0.0, itl_s=0.0, faults={"reset": 1.0})
    )
    try:
        async with client_for(server, retry={"backoff_base_s": 0.01}) as llm:
            assert "".join([d async for d in llm.stream("a")]) == want("a")
        assert server.stats.requests == 2
    finally:
        await server.close()
    # A drop mid-stream after text was yielded: raised, not retried (no repeated text).
    server = await start_mock_server(
        MockConfig(tokens=16, ttft_s=0.0, itl_s=0.0, faults={"disconnect": 1.0})
    )
    try:
        async with client_for(server, retry={"backoff_base_s": 0.01}) as llm:
            seen: list[str] = []
            with pytest.raises(llmbatch.TransportError):
                async for d in llm.stream("b"):
                    seen.append(d)
            assert seen and want("b").startswith("".join(seen))
        assert server.stats.requests == 1
    finally:
        await server.close()


async def test_batch_without_out_dir_touches_no_disk(
    mock_server: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    prompts = [f"q{i}" for i in range(30)] + [{"messages": []}, {"id": "x", "prompt": "x"}]
    async with client_for(mock_server, concurrency=8) as llm:
        results = [r async for r in llm.batch(prompts)]
    assert len(results) == 32
    by_line = {r.line: r for r in results}
    assert all(by_line[i + 1].text == want(f"q{i}") for i in range(30))
    bad = by_line[31]
    assert not bad.ok and bad.error is not None and bad.error.code == "input_error"
    assert by_line[32].id == "x" and by_line[32].text == want("x")
    assert list(tmp_path.iterdir()) == []


async def test_batch_accepts_async_iterables_and_files(
    mock_server: MockServer, tmp_path: Path
) -> None:
    async def gen() -> AsyncIterator[str]:
        for i in range(5):
            yield f"a{i}"

    path = write_jsonl(tmp_path / "p.jsonl", [{"id": f"f{i}", "prompt": f"f{i}"} for i in range(4)])
    async with client_for(mock_server) as llm:
        texts = sorted([r.text or "" async for r in llm.batch(gen())])
        assert texts == sorted(want(f"a{i}") for i in range(5))
        ids = sorted([r.id async for r in llm.batch(str(path))])
        assert ids == ["f0", "f1", "f2", "f3"]


async def test_batch_out_dir_writes_run_directory_and_resumes(
    mock_server: MockServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    prompts = [{"id": f"p{i}", "prompt": f"p{i}"} for i in range(20)]
    async with client_for(mock_server) as llm:
        first = [r async for r in llm.batch(prompts[:12], out)]
        assert len(first) == 12
        again = [r async for r in llm.batch(prompts, out)]
        assert sorted(r.id for r in again) == [f"p{i}" for i in range(12, 20)]
        everything = [r async for r in llm.batch(prompts, out, include_done=True)]
        assert sorted(r.id for r in everything) == sorted(p["id"] for p in prompts)
    records = read_results(out)
    assert sorted(r["custom_id"] for r in records) == sorted(p["id"] for p in prompts)
    for r in records:
        assert (out / r["llmbatch"]["text_file"]).read_text() == want(r["custom_id"])
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["requests"]["run_total_succeeded"] == 20
    assert mock_server.stats.requests == 20


async def test_a_missing_prompts_file_pins_no_run_directory(
    mock_server: MockServer, tmp_path: Path
) -> None:
    """InputError before anything is written: the right file then runs in that directory."""
    out = tmp_path / "run"
    async with client_for(mock_server) as llm:
        with pytest.raises(llmbatch.InputError, match="missing.jsonl: no such file"):
            async with llm.batch(str(tmp_path / "missing.jsonl"), run_dir=out) as batch:
                await batch.wait()
        assert not out.exists()
        good = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}])
        async with llm.batch(good, run_dir=out) as batch:
            assert [r.ok async for r in batch] == [True]
    assert orjson.loads((out / "run.json").read_bytes())["prompts"] == str(good.resolve())


async def test_many_callers_share_one_concurrency_limit(slow_server: MockServer) -> None:
    async with client_for(slow_server, concurrency=5) as llm:
        results = await asyncio.gather(*(llm.complete(f"c{i}") for i in range(30)))
        assert all(r.ok and r.text == want(f"c{i}", 8) for i, r in enumerate(results))
        # A batch and single calls together stay under the same limit.
        batch_task = asyncio.create_task(_collect(llm.batch([f"b{i}" for i in range(10)])))
        more = await asyncio.gather(*(llm.complete(f"d{i}") for i in range(10)))
        assert all(r.ok for r in more) and len(await batch_task) == 10
    assert slow_server.stats.max_in_flight == 5


async def _collect(batch: llmbatch.Batch) -> list[llmbatch.Result]:
    return [r async for r in batch]


async def test_cancelling_a_batch_keeps_what_was_done(
    slow_server: MockServer, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    prompts = [{"id": f"p{i}", "prompt": f"p{i}"} for i in range(40)]
    async with client_for(slow_server, concurrency=4) as llm:
        seen: list[str] = []
        six = asyncio.Event()

        async def consume() -> None:
            async with llm.batch(prompts, out) as batch:
                async for r in batch:
                    seen.append(r.id)
                    if len(seen) == 6:
                        six.set()
                        await asyncio.Event().wait()  # block until cancelled

        task = asyncio.create_task(consume())
        await six.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        records = read_results(out)
        # Every result handed out is on disk, complete and exact; requests cut off got none.
        assert {r["custom_id"] for r in records} >= set(seen) and len(records) < 40
        for r in records:
            assert r["error"] is None
            assert (out / r["llmbatch"]["text_file"]).read_text() == want(r["custom_id"], 8)
        assert not list((out / "text").glob("*.partial"))
        # The lock is released and the same batch resumes to the end.
        rest = [r async for r in llm.batch(prompts, out)]
    done = [r["custom_id"] for r in read_results(out)]
    assert sorted(done) == sorted(p["id"] for p in prompts)
    assert len(rest) == 40 - len(records)


async def test_cancelling_plain_iteration_stops_the_batch(slow_server: MockServer) -> None:
    async with client_for(slow_server, concurrency=4) as llm:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in llm.batch([f"p{i}" for i in range(200)]):
                first.set()
                await asyncio.Event().wait()  # cancelled here, between two results

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await llm.aclose()  # waits for the stopped batch to unwind
        sent = slow_server.stats.requests
        # At most one round of requests beyond the first answer: admission stopped.
        assert sent <= 2 * 4


def test_run_from_sync_code(tmp_path: Path) -> None:
    results = llmbatch.run([f"s{i}" for i in range(10)], provider="mock", mock={"tokens": 4})
    assert [r.text for r in results] == [want(f"s{i}", 4) for i in range(10)]
    out = tmp_path / "run"
    first = llmbatch.run(["a", "b"], provider="mock", run_dir=out, mock={"tokens": 4})
    again = llmbatch.run(["a", "b", "c"], provider="mock", run_dir=out, mock={"tokens": 4})
    assert [r.text for r in first] == [want("a", 4), want("b", 4)]
    assert [r.text for r in again] == [want(x, 4) for x in "abc"]


async def test_run_inside_a_running_loop() -> None:
    # As in Jupyter: llmbatch.run is called from code that is itself inside a loop.
    results = llmbatch.run(["j1", "j2"], provider="mock", mock={"tokens": 3})
    assert [r.text for r in results] == [want("j1", 3), want("j2", 3)]


def test_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(llmbatch.ConfigError, match="concurency"):
        llmbatch.Client("mock", concurency=3)
    with pytest.raises(llmbatch.ConfigError, match="concurrency"):
        llmbatch.Client("mock", concurrency=0)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(llmbatch.ConfigError, match="OPENAI_API_KEY"):
        llmbatch.Client("openai")
    assert llmbatch.Client("openai", api_key="sk-test").config.provider.name == "openai"


async def test_progress_callback_sees_every_record(mock_server: MockServer) -> None:
    snaps: list[llmbatch.BatchProgress] = []
    async with client_for(mock_server) as llm:
        n = len([r async for r in llm.batch([f"x{i}" for i in range(7)], progress=snaps.append)])
    assert n == 7 and [s.done for s in snaps] == list(range(1, 8))


async def test_a_finished_batch_stays_finished(mock_server: MockServer) -> None:
    async with client_for(mock_server) as llm:
        batch = llm.batch(["a", "b"])
        assert len([r async for r in batch]) == 2
        assert [r async for r in batch] == []  # iterating again ends at once
        assert batch.end is not None and batch.end.metrics.succeeded == 2


@pytest.fixture
async def endless_server() -> AsyncIterator[MockServer]:
    """Answers that take minutes unless max_tokens caps them."""
    server = await start_mock_server(MockConfig(tokens=100_000, ttft_s=0.0, itl_s=0.01))
    try:
        yield server
    finally:
        await server.close()


@pytest.mark.parametrize("how", ["break", "async_with", "aclose", "cancel"])
async def test_a_stream_left_early_gives_its_slot_back(
    endless_server: MockServer, how: str
) -> None:
    """Concurrency 1: after leaving a stream the next request runs at once, not after the
    first answer's minutes (issue 21: the slot stayed taken after ``break``)."""
    async with client_for(endless_server, concurrency=1) as llm:
        if how == "break":
            async for _ in llm.stream("a"):
                break
        elif how == "async_with":
            async with llm.stream("a") as stream:
                await anext(stream)
        elif how == "aclose":
            stream = llm.stream("a")
            await anext(stream)
            await stream.aclose()
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
        else:

            async def read() -> None:
                async for _ in llm.stream("a"):
                    pass

            task = asyncio.create_task(read())
            await asyncio.wait_for(endless_server.wait_in_flight(1), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        short = await asyncio.wait_for(llm.complete({"prompt": "b", "max_tokens": 2}), 10)
    assert short.ok and short.usage.output_tokens == 2
    assert endless_server.stats.requests == 2 and endless_server.stats.completed == 1
