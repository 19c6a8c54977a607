"""Crash safety with a real process: SIGKILL, SIGINT and SIGTERM at arbitrary points.

The mock server runs in the test process; llmbatch runs as a child process. The test
waits on the server's own completion count (no sleeps), then signals the child.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import orjson
import pytest

from llmbatch.mockserver import MockConfig, MockServer, start_mock_server

from .conftest import write_jsonl
from .test_run import check_complete

pytestmark = pytest.mark.subprocess

N = 120
TOKENS = 10


async def start_child(
    server: MockServer, prompts: Path, run_dir: Path, *extra: str
) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMBATCH_")}
    env["LLMBATCH_LOOP"] = "asyncio"
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmbatch",
        "run",
        str(prompts),
        "--provider",
        "vllm",
        "--base-url",
        server.url,
        "--model",
        "mock-model",
        "--run-dir",
        str(run_dir),
        "--concurrency",
        "8",
        "--no-progress",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(run_dir.parent),
    )


@pytest.fixture
async def slow_server() -> MockServer:
    # Each answer takes ~0.1 s, so a run of 120 at 8 in flight lasts ~1.5 s.
    server = await start_mock_server(MockConfig(tokens=TOKENS, ttft_s=0.02, itl_s=0.008))
    yield server  # type: ignore[misc]
    await server.close()


def assert_consistent(run_dir: Path, *, killed: bool = False) -> list[dict[str, object]]:
    """Every line parses and no id repeats. Right after a SIGKILL the last line may be
    torn (the kernel may cut a write short when a fatal signal arrives); the next run
    cuts it off, so nothing torn survives a resume."""
    raw = (run_dir / "results.jsonl").read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    assert killed or tail == b"", "a torn line survived a resume"
    records = [orjson.loads(line) for line in lines]
    ids = [r["custom_id"] for r in records]
    assert len(ids) == len(set(ids))
    return records


@pytest.mark.timeout(120)
async def test_sigkill_at_random_points_then_resume(
    tmp_path: Path, slow_server: MockServer
) -> None:
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"id": f"k{i}", "prompt": f"kill {i}"} for i in range(N)]
    )
    run_dir = tmp_path / "run"
    rng = random.Random(1234)
    for _ in range(3):
        base = slow_server.stats.completed
        proc = await start_child(slow_server, prompts, run_dir)
        await slow_server.wait_completed(base + rng.randint(1, 25))
        proc.kill()
        await proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        assert_consistent(run_dir, killed=True) if (run_dir / "results.jsonl").exists() else None
    proc = await start_child(slow_server, prompts, run_dir)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    records = assert_consistent(run_dir)
    assert len(records) == N
    check_complete(run_dir, prompts, tokens=TOKENS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_signal_finishes_in_flight_and_exits_resumable(
    tmp_path: Path, slow_server: MockServer, sig: int, code: int
) -> None:
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"id": f"s{i}", "prompt": f"sig {i}"} for i in range(N)]
    )
    run_dir = tmp_path / "run"
    proc = await start_child(slow_server, prompts, run_dir)
    await slow_server.wait_completed(10)
    proc.send_signal(sig)
    _, err = await proc.communicate()
    assert proc.returncode == code, err.decode()
    assert "run the same command to resume" in err.decode()
    records = assert_consistent(run_dir)
    # In-flight requests were allowed to finish: everything the server completed is recorded.
    assert 10 <= len(records) < N
    assert len(records) == slow_server.stats.completed
    assert not list((run_dir / "text").glob("*.partial"))
    proc = await start_child(slow_server, prompts, run_dir)
    await proc.communicate()
    assert proc.returncode == 0
    check_complete(run_dir, prompts, tokens=TOKENS)


@pytest.mark.timeout(60)
async def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    # Answers take 20 s: only a second SIGINT (cancel now) can end this quickly.
    server = await start_mock_server(MockConfig(tokens=5, ttft_s=20.0, itl_s=0.0))
    try:
        prompts = write_jsonl(
            tmp_path / "p.jsonl", [{"id": i, "prompt": f"q{i}"} for i in range(20)]
        )
        run_dir = tmp_path / "run"
        proc = await start_child(server, prompts, run_dir)
        await asyncio.wait_for(server.wait_in_flight(8), 20)
        proc.send_signal(signal.SIGINT)
        # Standard signals do not queue: wait until the first one was taken in.
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert b"SIGINT: finishing 8 requests in flight" in line
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 130, err.decode()
        assert assert_consistent(run_dir) == []
        assert not [p for p in (run_dir / "text").rglob("*") if p.is_file()]
    finally:
        await server.close()
