"""Shared fixtures: a real mock server on 127.0.0.1 with an ephemeral port; the event loop of
each async test (virtual time for the tests marked ``virtualtime``)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.config.load import load_config
from llmbatch.config.model import MockSettings, RunConfig
from llmbatch.mockserver import MockConfig, MockServer, MockStats, start_mock_server

from . import virtualtime

ADAPTERS = ["aiohttp", "httpx", "httpx-aiohttp", "native"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop an async test and its async fixtures run on: tests/virtualtime.py's for a
    test marked ``virtualtime`` (its clock jumps to the next timer when nothing is ready, so
    timings are exact whatever the machine's load), asyncio's own for the rest. A test also
    marked ``subprocess`` (in a module marked ``virtualtime``) keeps the real clock: its
    child waits in real time, and its timers must too."""
    virtual = item.get_closest_marker("virtualtime") is not None
    if virtual and item.get_closest_marker("subprocess") is None:
        return {"virtualtime": virtualtime.new_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture(autouse=True)
def _seeded_backoff(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """On virtual time, the retries' backoff jitter is drawn from a seeded generator: the
    clock and the jitter were all that differed between runs, so a run repeats exactly
    (measured: --concurrency auto's final limit varied 73-104 unseeded, one figure seeded)."""
    if request.node.get_closest_marker("virtualtime") is not None:
        from llmbatch.engine import retry

        monkeypatch.setattr(retry, "_RNG", random.Random(21))


@pytest.fixture
def flushed(monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[None]:
    """A queue that gets an item after every flush of any run directory (each tick of the
    writer): a test waits on it to look at the files between ticks, without sleeping."""
    from llmbatch.rundir.writer import RunDir

    ticks: asyncio.Queue[None] = asyncio.Queue()
    real_flush = RunDir.flush

    async def flush_and_signal(self: RunDir) -> None:
        await real_flush(self)
        ticks.put_nowait(None)

    monkeypatch.setattr(RunDir, "flush", flush_and_signal)
    return ticks


@pytest.fixture
async def mock_server() -> AsyncIterator[MockServer]:
    server = await start_mock_server(MockConfig(tokens=16, ttft_s=0.0, itl_s=0.0))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A CLI runner in ``tmp_path`` with no LLMBATCH_* or *_API_KEY variable set."""
    from .cliutil import cli_runner

    return cli_runner(tmp_path, monkeypatch)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts, or raw bytes lines) as a JSONL file."""
    with open(path, "wb") as fh:
        for row in rows:
            fh.write(row if isinstance(row, bytes) else orjson.dumps(row))
            fh.write(b"\n")
    return path


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's results.jsonl."""
    with open(run_dir / "results.jsonl", "rb") as fh:
        return [orjson.loads(line) for line in fh]


def assert_no_answer_twice(stats: MockStats | dict[str, Any]) -> None:
    """The mock streamed no prompt's answer in full more than once (what a provider bills
    twice), from its own counters: ``server.stats`` or GET /mock/stats's JSON."""
    twice = stats["answered_twice"] if isinstance(stats, dict) else stats.answered_twice
    assert twice == {}, f"answers streamed in full more than once: {twice}"


def config_for(server: MockServer, tmp_path: Path, **flags: Any) -> RunConfig:
    """A RunConfig that sends to ``server`` (an OpenAI-compatible profile with no key)."""
    base = {
        "provider": "vllm",
        "base_url": server.url,
        "model": "mock-model",
        "run_dir": tmp_path / "run",
        "progress": False,
    }
    base.update(flags)
    return load_config(tmp_path / "none.toml" if False else None, flags=base, environ={})


__all__ = [
    "ADAPTERS",
    "MockSettings",
    "OnThread",
    "ThreadedMock",
    "config_for",
    "read_results",
    "write_jsonl",
]


class OnThread:
    """An asyncio server (started by ``start``) on its own event loop in a thread, for
    synchronous CLI tests: the mock, or a scripted RawServer (tests/rawhttp.py)."""

    def __init__(self, start: Callable[[], Awaitable[Any]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Any = self._call(start())
        self.url: str = self.server.url

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self._call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class ThreadedMock(OnThread):
    """The mock server on its own event loop in a thread, for synchronous CLI tests."""

    server: MockServer

    def __init__(self, cfg: MockConfig) -> None:
        super().__init__(lambda: start_mock_server(cfg))


@pytest.fixture
def mocks() -> Iterator[list[ThreadedMock]]:
    """Threaded mocks a test starts (append them); closed at the end."""
    started: list[ThreadedMock] = []
    yield started
    for m in started:
        m.close()
